"""Rows of the database as frozen values: what storage returns and what the service records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bot.jobs import JobState
from models.types import Verdict


def _frozen(mapping: Mapping[str, object]) -> MappingProxyType[str, object]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class OutputRecord:
    """One stored image of a job (``index`` is its position in the job's seeds)."""

    job_id: str
    index: int
    path: str
    sha256: str
    width: int
    height: int
    seed: int
    preview_path: str | None = None  # blurred preview, only for flagged images
    phash: int | None = None  # 64-bit perceptual hash (unsigned), for the provenance registry
    payload_id: int | None = None  # 48-bit invisible-watermark payload, when the image carries one
    c2pa: bool = False  # the stored file carries a signed C2PA manifest


@dataclass(frozen=True)
class VerdictRecord:
    """The safety verdict about image ``index`` of a job, with every score kept for audit."""

    job_id: str
    index: int
    stage: str
    decision: str
    category: str | None
    reason: str
    scores: Mapping[str, float] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only copies, so a record cannot change behind the back of whoever holds it.
        object.__setattr__(self, "scores", _frozen(self.scores))
        object.__setattr__(self, "model_versions", _frozen(self.model_versions))

    @classmethod
    def from_verdict(cls, job_id: str, index: int, verdict: Verdict) -> VerdictRecord:
        """Record a safety verdict (anything shaped like ``models.types.Verdict``)."""
        return cls(
            job_id=job_id,
            index=index,
            stage=verdict.stage,
            decision=str(verdict.decision),
            category=verdict.category,
            reason=verdict.reason,
            scores=verdict.scores,
            model_versions=verdict.model_versions,
        )


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job; the creation event has ``from_state=None``."""

    id: int
    job_id: str
    from_state: JobState | None
    to_state: JobState
    at: float
    detail: str | None


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the audit log (moderation decisions, setting changes, deletions)."""

    id: int
    at: float
    action: str
    guild_id: str | None
    actor_id: str | None
    target: str | None
    detail: Mapping[str, object]

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", _frozen(self.detail))


@dataclass(frozen=True)
class ReviewRecord:
    """A flagged job or an appeal waiting for (or decided by) a moderator.

    Attributes:
        kind: ``"flag"`` (the safety layer held the job) or ``"appeal"`` (the requester asked for a
            review of a block).
        state: ``"pending"``, ``"approved"`` or ``"rejected"``.
        category: the category that held or blocked the job, if any.
        decision: the action taken (``approve``, ``reject``, ``strike``, ``ban``), once decided.
        card_channel_id, card_message_id: the card in the review channel, once posted.
        delivered_at: when the bot posted the decision's outcome (None: not yet).
    """

    job_id: str
    guild_id: str
    user_id: str
    kind: str
    state: str
    category: str | None
    requested_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    decision: str | None = None
    card_channel_id: str | None = None
    card_message_id: str | None = None
    delivered_at: float | None = None

    @property
    def pending(self) -> bool:
        return self.state == "pending"


@dataclass(frozen=True)
class StrikeRecord:
    """One strike against a member in a server, with the moderator and the job behind it."""

    id: int
    guild_id: str
    user_id: str
    job_id: str | None
    moderator_id: str
    reason: str
    at: float


@dataclass(frozen=True)
class BanRecord:
    """A member banned from the bot in a server; ``until`` None means until a moderator lifts it."""

    guild_id: str
    user_id: str
    until: float | None
    moderator_id: str
    reason: str
    at: float

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now
