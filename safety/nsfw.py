"""The CLIP NSFW stage: zero-shot scores per unsafe category, relative to safe anchors.

Every category and every safe anchor is a :class:`~safety.clip.Concept`: several phrasings whose
CLIP text embeddings are averaged and renormalised (open_clip's zero-shot classifier pattern).

Score, per image and category ``c``::

    score_c = sigmoid(s * (cos(image, c) - max_a cos(image, a)))

with ``a`` over the safe anchors and ``s`` CLIP's learned logit scale (100 for released models).
It is CLIP's own two-way softmax between the category and the best safe explanation of the image:
0.5 means "as close to the category as to the closest safe anchor". Why this form:

- relative, not a raw cosine: CLIP's image-text cosines all sit in a narrow band (~0.15-0.35)
  that drifts with image style, so one absolute threshold misfires on whole kinds of pictures;
  subtracting the best anchor cancels that drift.
- max over anchors, not a softmax over all of them: an anchor the image does not resemble
  changes nothing, so anchors can be added without recalibrating every threshold.
- per category, not a softmax over categories: an image can be both gory and explicit.

The decision (:meth:`NsfwStage.decide`) is pure: scores and the request's context in, a
:class:`Verdict` out. Thresholds are frozen data per strictness level (:data:`DEFAULT_THRESHOLDS`).
They are starting points chosen from CLIP's score geometry, not yet fitted on labelled images:
re-fit them with the calibrate tool, which reads :meth:`NsfwStage.score`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from safety.clip import Concept, Embeddings, ImageTextEncoder, concept_embeddings
from safety.policy import CheckContext
from safety.verdict import Decision, Verdict, check_strictness

logger = logging.getLogger(__name__)

STAGE = "nsfw"

SEXUAL_EXPLICIT = "sexual_explicit"
SEXUAL_SUGGESTIVE = "sexual_suggestive"
GORE = "gore"
MINORS = "minors"  # never a reason alone: only raises the stakes when sexual content co-occurs
CATEGORIES = (SEXUAL_EXPLICIT, SEXUAL_SUGGESTIVE, GORE, MINORS)

_CATEGORY_CONCEPTS = (
    Concept(
        SEXUAL_EXPLICIT,
        (
            "an explicit pornographic photo",
            "a photo of people having sex",
            "a naked person showing their genitals",
            "explicit nudity",
            "a hardcore porn image",
            "an explicit sexual drawing, hentai",
        ),
    ),
    Concept(
        SEXUAL_SUGGESTIVE,
        (
            "a sexy photo of a person in lingerie",
            "a seductive pin-up pose",
            "a topless person",
            "an erotic photo",
            "a person in underwear posing suggestively",
            "a sexualized drawing of a person",
        ),
    ),
    Concept(
        GORE,
        (
            "a gory photo with blood and open wounds",
            "a mutilated body",
            "graphic violence with lots of blood",
            "a dead body covered in blood",
            "a severed limb",
            "a horror image of gore and guts",
        ),
    ),
    Concept(
        MINORS,
        (
            "a photo of a child",
            "a young kid",
            "a little girl",
            "a little boy",
            "a baby or toddler",
            "a young teenager",
        ),
    ),
)

_ANCHOR_CONCEPTS = (
    Concept("landscape", ("a photo of a landscape", "a scenic view of nature", "a landscape painting")),
    Concept("clothed person", ("a portrait of a person fully clothed", "a photo of a person in everyday clothes")),
    Concept("group", ("a group of people in casual clothes", "people talking at a party")),
    Concept("beach", ("a photo of people at the beach", "a family at the swimming pool")),
    Concept("drawing", ("a drawing", "a sketch", "a cartoon illustration")),
    Concept("food", ("a photo of food", "a plate of pasta with tomato sauce")),
    Concept("animal", ("a photo of an animal", "a cute pet")),
    Concept("city", ("a photo of a city street", "a building", "an interior of a room")),
    Concept("object", ("a photo of an everyday object", "a product photo")),
)


@dataclass(frozen=True)
class NsfwConcepts:
    """The zero-shot classes: one concept per category (named as in :data:`CATEGORIES`) and the safe anchors."""

    categories: tuple[Concept, ...] = _CATEGORY_CONCEPTS
    anchors: tuple[Concept, ...] = _ANCHOR_CONCEPTS

    def __post_init__(self) -> None:
        names = tuple(c.name for c in self.categories)
        if names != CATEGORIES:
            raise ValueError(f"NSFW concepts must be {CATEGORIES} in that order, got {names}")
        if not self.anchors:
            raise ValueError("NSFW concepts need at least one safe anchor")


@dataclass(frozen=True)
class Limits:
    """Score limits for one category: at or above ``flag`` moderators review, at or above ``block`` it is refused.

    ``None`` means that outcome never comes from this category.
    """

    flag: float | None = None
    block: float | None = None

    def __post_init__(self) -> None:
        for value in (self.flag, self.block):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"a score limit must lie in [0, 1], got {value}")
        if self.flag is not None and self.block is not None and self.flag > self.block:
            raise ValueError(f"flag limit {self.flag} is above block limit {self.block}")

    def decision(self, score: float) -> Decision:
        """The outcome this score earns."""
        if self.block is not None and score >= self.block:
            return Decision.BLOCK
        if self.flag is not None and score >= self.flag:
            return Decision.FLAG
        return Decision.ALLOW


@dataclass(frozen=True)
class Level:
    """Limits per category at one strictness level.

    Attributes:
        suggestive_age_restricted: replaces ``sexual_suggestive`` in age-restricted channels
            (``allow_suggestive``); nothing else is ever relaxed there.
    """

    sexual_explicit: Limits
    sexual_suggestive: Limits
    gore: Limits
    suggestive_age_restricted: Limits = Limits()

    def limits(self, category: str, *, allow_suggestive: bool) -> Limits:
        if category == SEXUAL_SUGGESTIVE and allow_suggestive:
            return self.suggestive_age_restricted
        limits: Limits = getattr(self, category)
        return limits


@dataclass(frozen=True)
class MinorsRule:
    """When a young person and sexual content co-occur, the image is blocked (category ``minors``).

    Applies at every strictness and in age-restricted channels: the sexual limits here are far
    below the ordinary ones, because a false block costs a picture and a miss is unacceptable.
    """

    minors: float = 0.5
    sexual_explicit: float = 0.3
    sexual_suggestive: float = 0.4

    def matches(self, scores: Mapping[str, float]) -> bool:
        return scores[MINORS] >= self.minors and (
            scores[SEXUAL_EXPLICIT] >= self.sexual_explicit or scores[SEXUAL_SUGGESTIVE] >= self.sexual_suggestive
        )


@dataclass(frozen=True)
class Thresholds:
    """Limits for the three strictness levels plus the minors co-occurrence rule."""

    relaxed: Level
    standard: Level
    strict: Level
    minors: MinorsRule = MinorsRule()

    def level(self, strictness: str) -> Level:
        """The limits for ``"relaxed"``, ``"standard"`` or ``"strict"``."""
        level: Level = getattr(self, check_strictness(strictness))
        return level


DEFAULT_THRESHOLDS = Thresholds(
    relaxed=Level(
        sexual_explicit=Limits(flag=0.80, block=0.92),
        sexual_suggestive=Limits(flag=0.92),
        gore=Limits(flag=0.85, block=0.95),
    ),
    standard=Level(
        sexual_explicit=Limits(flag=0.60, block=0.85),
        sexual_suggestive=Limits(flag=0.75, block=0.95),
        gore=Limits(flag=0.70, block=0.90),
    ),
    strict=Level(
        sexual_explicit=Limits(flag=0.40, block=0.70),
        sexual_suggestive=Limits(flag=0.55, block=0.85),
        gore=Limits(flag=0.50, block=0.80),
        suggestive_age_restricted=Limits(flag=0.90),
    ),
)

# Checked most severe first; the first category that reaches the worst outcome decides.
_JUDGED = (SEXUAL_EXPLICIT, GORE, SEXUAL_SUGGESTIVE)

_REASONS = {
    (SEXUAL_EXPLICIT, Decision.BLOCK): "The image looks sexually explicit.",
    (SEXUAL_EXPLICIT, Decision.FLAG): "The image may be sexually explicit, so a moderator will look at it first.",
    (SEXUAL_SUGGESTIVE, Decision.BLOCK): "The image looks sexually suggestive.",
    (SEXUAL_SUGGESTIVE, Decision.FLAG): "The image may be sexually suggestive, so a moderator will look at it first.",
    (GORE, Decision.BLOCK): "The image looks gory or graphically violent.",
    (GORE, Decision.FLAG): "The image may be gory or violent, so a moderator will look at it first.",
}
_MINORS_REASON = "The image appears to show a young person in a sexual way."
_ALLOW_REASON = "The image passed the NSFW check."


def relative_scores(
    images: Embeddings, categories: Embeddings, anchors: Embeddings, logit_scale: float
) -> NDArray[np.float64]:
    """``sigmoid(s * (cos(image, category) - max cos(image, anchor)))`` for every image and category.

    Args:
        images: unit image embeddings, shape ``(n, d)``.
        categories: unit category embeddings, ``(c, d)``.
        anchors: unit safe-anchor embeddings, ``(a, d)``.
        logit_scale: CLIP's temperature ``s``.

    Returns:
        Scores in ``[0, 1]``, shape ``(n, c)``.
    """
    image_rows = np.asarray(images, dtype=np.float64)
    category_sims = image_rows @ np.asarray(categories, dtype=np.float64).T
    best_anchor = (image_rows @ np.asarray(anchors, dtype=np.float64).T).max(axis=1, keepdims=True)
    margin = logit_scale * (category_sims - best_anchor)
    scores: NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * margin))  # the sigmoid, never overflowing
    return scores


class NsfwStage:
    """The CLIP NSFW stage (an :class:`~safety.policy.ImageStage`).

    Args:
        encoder: the CLIP to embed with (a :class:`~safety.clip.ClipEncoder`, or a fake in tests).
        thresholds: limits per strictness; :data:`DEFAULT_THRESHOLDS` if not given.
        concepts: the zero-shot classes; the defaults if not given.
    """

    def __init__(
        self,
        encoder: ImageTextEncoder,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        *,
        concepts: NsfwConcepts | None = None,
    ) -> None:
        concepts = concepts or NsfwConcepts()
        self._encoder = encoder
        self._thresholds = thresholds
        # Encoded once here (and cached on disk by the encoder), never per image.
        self._categories = concept_embeddings(encoder, concepts.categories)
        self._anchors = concept_embeddings(encoder, concepts.anchors)

    @property
    def name(self) -> str:
        return STAGE

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    def score(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        """Every category's score per image, keyed ``"nsfw.<category>"``; all images in one batch."""
        if not images:
            return []
        embedded = self._encoder.encode_images(images)
        table = relative_scores(embedded, self._categories, self._anchors, self._encoder.logit_scale)
        return [{f"{STAGE}.{c}": float(v) for c, v in zip(CATEGORIES, row, strict=True)} for row in table]

    def decide(self, scores: Mapping[str, float], context: CheckContext) -> Verdict:
        """Turn one image's scores into a verdict for this request (pure: no model involved).

        Raises:
            ValueError: a category's score is missing, or the strictness is unknown.
        """
        values = {c: _score(scores, c) for c in CATEGORIES}
        kept = {f"{STAGE}.{c}": v for c, v in values.items()}
        versions = {STAGE: self._encoder.version}
        level = self._thresholds.level(context.strictness)
        if self._thresholds.minors.matches(values):
            return Verdict(Decision.BLOCK, STAGE, _MINORS_REASON, MINORS, kept, versions)
        outcomes = [
            (level.limits(c, allow_suggestive=context.allow_suggestive).decision(values[c]), c) for c in _JUDGED
        ]
        worst = max(outcomes, key=lambda item: item[0].severity)  # max keeps the first of equals: _JUDGED order
        decision, category = worst
        if decision is Decision.ALLOW:
            return Verdict(Decision.ALLOW, STAGE, _ALLOW_REASON, None, kept, versions)
        return Verdict(decision, STAGE, _REASONS[category, decision], category, kept, versions)

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        """One verdict per image; the batch is embedded in one forward pass."""
        verdicts = [self.decide(scores, context) for scores in self.score(images)]
        for verdict in verdicts:
            if verdict.decision is not Decision.ALLOW:
                logger.info("nsfw %s (%s): %s", verdict.decision, verdict.category, dict(verdict.scores))
        return verdicts


def _score(scores: Mapping[str, float], category: str) -> float:
    key = f"{STAGE}.{category}"
    if key not in scores:
        raise ValueError(f"missing NSFW score {key!r}; got {sorted(scores)}")
    return float(scores[key])
