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
        ├── InvalidRequestError an option of a request is out of range
        ├── BannedError         the member is banned from the bot in this server
        ├── ReviewNotFoundError no review of that job (in this server)
        ├── AlreadyDecidedError another moderator decided the review first
        └── NotAllowedError     the member may not do this (not a moderator, not theirs to appeal)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.records import BanRecord, ReviewRecord


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

    def __init__(self, message: str, category: str | None, job_id: str | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.job_id = job_id  # the blocked request, kept so its requester may appeal


class BannedError(UserFacingError):
    """The member is banned from using the bot in this server (the message says until when)."""

    def __init__(self, ban: BanRecord) -> None:
        until = "until a moderator lifts it" if ban.until is None else f"until <t:{int(ban.until)}:f>"
        super().__init__(f"You are banned from using this bot in this server, {until}.")
        self.ban = ban


class ReviewNotFoundError(UserFacingError):
    """No review of that job, or not in this server."""


class AlreadyDecidedError(UserFacingError):
    """Someone decided (or opened) this review first; ``review`` is how it stands."""

    def __init__(self, review: ReviewRecord) -> None:
        if review.pending:
            message = "A review of this job is already waiting for a moderator."
        else:
            message = f"Already decided: {review.decision} by <@{review.decided_by}>."
        super().__init__(message)
        self.review = review


class NotAllowedError(UserFacingError):
    """The member may not do this; the message says who may."""
