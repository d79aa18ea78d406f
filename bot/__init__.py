"""The service core and (later) the Discord front end of imaginebot."""

__version__ = "0.1.0"
