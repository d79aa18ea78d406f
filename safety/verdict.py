"""The value every safety decision is expressed in."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Decision(StrEnum):
    """What happens to an image. Ordered by severity: the most severe stage wins."""

    ALLOW = "allow"  # may be stored, marked and posted
    FLAG = "flag"  # held for moderators; never posted unreviewed
    BLOCK = "block"  # never stored or posted

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Decision.ALLOW: 0, Decision.FLAG: 1, Decision.BLOCK: 2}

logger = logging.getLogger(__name__)

STRICTNESS = ("relaxed", "standard", "strict")  # how strict a server's safety checks are


def check_strictness(strictness: str) -> str:
    """Return ``strictness`` if it is one of :data:`STRICTNESS`, else raise ValueError naming it."""
    if strictness not in STRICTNESS:
        raise ValueError(f"unknown strictness {strictness!r}: expected relaxed, standard or strict")
    return strictness


UNAVAILABLE_REASON = "safety check unavailable"

# Categories no appeal can reopen: sexual content with minors, protected people (named or matched
# by face), a check that could not run, and a malformed image. Their blocks stay blocks.
HARD_CATEGORIES = frozenset(
    {"minors", "protected_person", "protected_identity", "protected_name", "unavailable", "malformed"}
)


def appealable(category: str | None) -> bool:
    """Whether a block in ``category`` may be sent to moderators for review."""
    return category not in HARD_CATEGORIES


def for_appeal(verdict: Verdict) -> Verdict:
    """The verdict on the rerun of an appeal a moderator accepted: an appealable block becomes a flag,
    so the image is kept for moderators to look at (never posted unreviewed); hard blocks stay."""
    if verdict.decision is not Decision.BLOCK or not appealable(verdict.category):
        return verdict
    return Verdict(Decision.FLAG, verdict.stage, f"{verdict.reason} (on appeal)", verdict.category,
                   verdict.scores, verdict.model_versions)  # fmt: skip


def _frozen(mapping: Mapping[str, object] | None) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Verdict:
    """A decision about one image, with everything needed to audit it later.

    Attributes:
        decision: allow, flag or block.
        stage: the stage that decided (for ``allow``, ``"policy"``).
        category: the content category that decided, if any (e.g. ``"sexual"``).
        reason: one sentence a user can read.
        scores: every score every stage computed, keyed ``"<stage>.<score>"``.
        model_versions: the model (and version) behind each stage.
    """

    decision: Decision
    stage: str
    reason: str
    category: str | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decision", Decision(self.decision))
        object.__setattr__(self, "scores", _frozen(self.scores))
        object.__setattr__(self, "model_versions", _frozen(self.model_versions))

    @classmethod
    def unavailable(cls, stage: str, error: BaseException | str) -> Verdict:
        """The fail-closed verdict: a stage that could not run blocks the image.

        The technical detail is logged here, never shown to the user.
        """
        logger.error("safety stage %s unavailable, blocking: %s", stage, error)
        return cls(Decision.BLOCK, stage, UNAVAILABLE_REASON, category="unavailable")


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Merge per-stage verdicts for one image: the most severe decides, every score is kept."""
    items = list(verdicts)
    if not items:
        # No stage judged the image: that is a missing check, so it blocks (fail closed).
        return Verdict.unavailable("policy", "no stage judged the image")
    scores: dict[str, float] = {}
    versions: dict[str, str] = {}
    for v in items:
        scores.update(v.scores)
        versions.update(v.model_versions)
    # Of equally severe blocks a hard category decides (the member is told it, and no appeal reopens it);
    # otherwise max keeps the first of equals: stage order.
    worst = max(items, key=lambda v: (v.decision.severity, v.decision is Decision.BLOCK and not appealable(v.category)))
    if worst.decision is Decision.ALLOW:
        return Verdict(Decision.ALLOW, "policy", "passed every safety check", None, scores, versions)
    return Verdict(worst.decision, worst.stage, worst.reason, worst.category, scores, versions)
