"""The moderators' web dashboard (``imaginebot dashboard``): review queue, jobs, gallery, audit log,
protected people and metrics for one server per session, served by Starlette with server-rendered
Jinja2 pages and no JavaScript.

It runs as its own process on the bot's SQLite file; see :mod:`bot.dashboard.auth` for who may use
it and :mod:`bot.dashboard.desk` for how its decisions reach Discord.
"""

from __future__ import annotations

from bot.dashboard.app import create_app
from bot.dashboard.auth import login_link

__all__ = ["create_app", "login_link"]
