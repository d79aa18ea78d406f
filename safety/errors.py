"""Exceptions raised by ``safety``.

Tree::

    SafetyError                 base of everything raised here
    └── StageUnavailableError   a stage's model or weights are missing or failed to load

A content decision is never an exception: it is a :class:`safety.verdict.Verdict`.
"""

from __future__ import annotations


class SafetyError(Exception):
    """Base class for errors raised by the ``safety`` package."""


class StageUnavailableError(SafetyError):
    """A safety stage cannot run (missing weights, failed load)."""
