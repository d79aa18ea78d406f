"""The Discord front end: the bot client, the /imagine cog, its persistent buttons and messages.

Only this package imports ``discord``; it talks to the service core in ``bot`` and nothing else.
"""
