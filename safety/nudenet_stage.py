"""An optional second opinion on nudity: NudeNet's body-part detector (the 320n ONNX model it ships).

Licence: the ``nudenet`` package is AGPL-3.0 (the LICENSE files it ships; its PyPI metadata says
MIT, but the licence text is the AGPL). So it is an optional extra (``pip install
'imaginebot[nudenet]'``), imported lazily in :meth:`NudeNetStage.load` and nowhere else, and a
deployment that enables it takes on the AGPL's terms for the network service it runs.

The detector finds labelled boxes (``FEMALE_GENITALIA_EXPOSED``, ``FACE_FEMALE``, ...) with a
confidence each. Every label's best confidence is kept as a score (``"nudenet.<label>"``, 0.0
when absent). Two groups decide: exposed genitalia or anus (``sexual_explicit``) and exposed
breasts or buttocks (``nudity``), each with flag/block limits per strictness; an age-restricted
channel (``allow_suggestive``) relaxes ``nudity`` only. It knows nothing about age: the minors
rule lives in the CLIP stage.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from safety.errors import StageUnavailableError
from safety.nsfw import Limits
from safety.policy import CheckContext
from safety.verdict import Decision, Verdict, check_strictness

logger = logging.getLogger(__name__)

STAGE = "nudenet"
SEXUAL_EXPLICIT = "sexual_explicit"
NUDITY = "nudity"

# The labels the 320n model emits (nudenet 3.4); a label not listed here is still kept as a score.
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
GROUPS: Mapping[str, tuple[str, ...]] = {
    SEXUAL_EXPLICIT: ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"),
    NUDITY: ("FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"),
}

Detection = Mapping[str, Any]


class Detector(Protocol):
    """The part of ``nudenet.NudeDetector`` the stage calls (structural: tests pass fakes)."""

    def detect_batch(self, image_paths: list[NDArray[np.uint8]], batch_size: int = 4) -> list[list[Detection]]: ...


@dataclass(frozen=True)
class NudeNetLevel:
    """Limits on the detector's confidence at one strictness level.

    Attributes:
        sexual_explicit: for exposed genitalia or anus; never relaxed.
        nudity: for exposed breasts or buttocks.
        nudity_age_restricted: replaces ``nudity`` in age-restricted channels.
    """

    sexual_explicit: Limits
    nudity: Limits
    nudity_age_restricted: Limits = field(default_factory=Limits)

    def limits(self, group: str, *, allow_suggestive: bool) -> Limits:
        if group == NUDITY:
            return self.nudity_age_restricted if allow_suggestive else self.nudity
        return self.sexual_explicit


@dataclass(frozen=True)
class NudeNetThresholds:
    """NudeNet limits for the three strictness levels."""

    relaxed: NudeNetLevel
    standard: NudeNetLevel
    strict: NudeNetLevel

    def level(self, strictness: str) -> NudeNetLevel:
        """The limits for ``"relaxed"``, ``"standard"`` or ``"strict"``."""
        level: NudeNetLevel = getattr(self, check_strictness(strictness))
        return level


# NudeNet reports boxes from confidence 0.2 up; its exposed-part boxes on real nudity mostly score 0.5-0.9.
DEFAULT_NUDENET_THRESHOLDS = NudeNetThresholds(
    relaxed=NudeNetLevel(sexual_explicit=Limits(flag=0.45, block=0.65), nudity=Limits(flag=0.60)),
    standard=NudeNetLevel(sexual_explicit=Limits(flag=0.30, block=0.50), nudity=Limits(flag=0.40, block=0.70)),
    strict=NudeNetLevel(
        sexual_explicit=Limits(flag=0.25, block=0.35),
        nudity=Limits(flag=0.30, block=0.50),
        nudity_age_restricted=Limits(flag=0.60),
    ),
)

_REASONS = {
    (SEXUAL_EXPLICIT, Decision.BLOCK): "The image shows explicit nudity.",
    (SEXUAL_EXPLICIT, Decision.FLAG): "The image may show explicit nudity, so a moderator will look at it first.",
    (NUDITY, Decision.BLOCK): "The image shows nudity.",
    (NUDITY, Decision.FLAG): "The image may show nudity, so a moderator will look at it first.",
}


class NudeNetStage:
    """NudeNet as an :class:`~safety.policy.ImageStage`; build it with :meth:`load`.

    Args:
        detector: a ``nudenet.NudeDetector`` (or a fake with the same ``detect_batch``).
        thresholds: limits per strictness.
        version: what verdicts record as the model.
    """

    def __init__(
        self,
        detector: Detector,
        thresholds: NudeNetThresholds = DEFAULT_NUDENET_THRESHOLDS,
        *,
        version: str = "nudenet/320n",
    ) -> None:
        self._detector = detector
        self._thresholds = thresholds
        self._version = version

    @classmethod
    def load(cls, thresholds: NudeNetThresholds = DEFAULT_NUDENET_THRESHOLDS) -> NudeNetStage:
        """Load the 320n detector that the ``nudenet`` package ships.

        Raises:
            StageUnavailableError: ``nudenet`` is not installed, or its model fails to load.
        """
        try:
            from nudenet import NudeDetector  # lazy: AGPL-3.0, an optional extra
        except ImportError as exc:
            raise StageUnavailableError(
                "NudeNet is not installed; install the optional extra: pip install 'imaginebot[nudenet]'"
            ) from exc
        try:
            detector = NudeDetector()
        except Exception as exc:  # onnxruntime raises its own exception types
            raise StageUnavailableError(f"NudeNet 320n detector failed to load: {exc}") from exc
        version = f"nudenet-{importlib.metadata.version('nudenet')}/320n"
        logger.info("loaded %s", version)
        return cls(detector, thresholds, version=version)

    @property
    def name(self) -> str:
        return STAGE

    def detect(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        """Every label's best confidence per image, keyed ``"nudenet.<label>"``; one batch."""
        if not images:
            return []
        # NudeNet was built around cv2.imread, so it gets the BGR arrays a file would have given it.
        arrays = [np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]) for image in images]
        found = self._detector.detect_batch(arrays, batch_size=len(arrays))
        if len(found) != len(images):
            raise ValueError(f"NudeNet returned {len(found)} results for {len(images)} images")
        return [_best_per_label(detections) for detections in found]

    def decide(self, scores: Mapping[str, float], context: CheckContext) -> Verdict:
        """Turn one image's label scores into a verdict for this request (pure)."""
        level = self._thresholds.level(context.strictness)
        kept = dict(scores)
        versions = {STAGE: self._version}
        outcomes = []
        for group in GROUPS:
            limits = level.limits(group, allow_suggestive=context.allow_suggestive)
            outcomes.append((limits.decision(_group_score(scores, group)), group))
        decision, group = max(outcomes, key=lambda item: item[0].severity)  # first of equals: explicit
        if decision is Decision.ALLOW:
            return Verdict(Decision.ALLOW, STAGE, "The image passed the nudity check.", None, kept, versions)
        return Verdict(decision, STAGE, _REASONS[group, decision], group, kept, versions)

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        """One verdict per image."""
        return [self.decide(scores, context) for scores in self.detect(images)]


def _best_per_label(detections: Sequence[Detection]) -> dict[str, float]:
    best = {f"{STAGE}.{label.lower()}": 0.0 for label in LABELS}
    for detection in detections:
        label, score = detection.get("class"), detection.get("score")
        if not isinstance(label, str) or not isinstance(score, int | float):
            raise ValueError(f"malformed NudeNet detection: {detection!r}")
        key = f"{STAGE}.{label.lower()}"
        best[key] = max(best.get(key, 0.0), float(score))
    return best


def _group_score(scores: Mapping[str, float], group: str) -> float:
    return max(float(scores.get(f"{STAGE}.{label.lower()}", 0.0)) for label in GROUPS[group])
