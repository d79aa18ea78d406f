"""Exceptions raised by ``bot.dashboard``.

Tree::

    DashboardError          base of everything raised here (a BotError)
    └── AuthError           a login token or session cookie is missing, tampered with, expired or used
"""

from __future__ import annotations

from bot.errors import BotError


class DashboardError(BotError):
    """Base class for errors raised by the dashboard."""


class AuthError(DashboardError):
    """A login token or session is not valid; the message is safe to show (it names no secret)."""
