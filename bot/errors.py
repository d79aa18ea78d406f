"""Exceptions raised by ``bot``.

Tree::

    BotError                    base of everything raised here
    ├── AttachmentTooLargeError an image cannot fit the upload limit, even at its smallest
    ├── ConfigError             a setting is invalid (names the field and the value)
    ├── IllegalTransitionError  a job state change the state machine forbids
    ├── JobNotFoundError        no job with that id
    ├── StorageError            the database cannot be used (e.g. its schema is newer than this code)
    └── UserFacingError         carries the only text a user sees
        ├── QueueFullError      the guild's queue or the user's cap is full
        ├── CooldownError       the user asked again within the server's cooldown
        ├── InvalidSettingError a /settings value is out of bounds (names the setting and the bound)
        ├── PromptBlockedError  the prompt filter refused the prompt
        └── InvalidRequestError an option of a request is out of range
"""

from __future__ import annotations


class BotError(Exception):
    """Base class for errors raised by the ``bot`` package."""


class AttachmentTooLargeError(BotError):
    """Even the smallest version of an image is larger than the upload limit.

    Attributes:
        limit: the upload limit in bytes.
        smallest: the size in bytes of the smallest version that was tried.
    """

    def __init__(self, message: str, *, limit: int, smallest: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.smallest = smallest


class ConfigError(BotError, ValueError):
    """A configuration value is invalid."""


class IllegalTransitionError(BotError):
    """The job state machine forbids this change."""


class JobNotFoundError(BotError, KeyError):
    """No job has this id."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else "job not found"


class StorageError(BotError):
    """The database cannot be opened or used as asked; the message says why."""


class UserFacingError(BotError):
    """An error whose message is safe and meant to be shown to the user as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFullError(UserFacingError):
    """A per-user or per-guild queue cap is reached."""


class CooldownError(UserFacingError):
    """The user's last accepted job in this server is more recent than its cooldown allows.

    Attributes:
        retry_after: whole seconds until the next request is accepted.
    """

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidSettingError(UserFacingError, ValueError):
    """A server setting is invalid; the message names the setting and what is allowed."""


class InvalidRequestError(UserFacingError, ValueError):
    """A request option is invalid; the message names the option and the value."""


class PromptBlockedError(UserFacingError):
    """The prompt filter blocked a request; the message names the category in plain words."""

    def __init__(self, message: str, category: str | None) -> None:
        super().__init__(message)
        self.category = category
