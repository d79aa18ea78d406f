"""The deepfake-face stage: no realistic images of protected people, and real people get a human look.

For every face in an image the stage asks three things:

1. Is it a protected person? The face's embedding is compared with the protected gallery of the
   request's guild (global people plus that guild's); nearer than the gallery's threshold blocks,
   whatever the prompt says and however painted the face looks.
2. Does it look like a photograph? A :class:`RealismScorer` rates each face crop. Without one,
   every face counts as realistic: the stage fails closed, and the verdict records
   ``faces.realism_known = 0``.
3. Does the prompt name a real person? A :class:`NameMatcher` (the prompt filter's) says which
   protected names and which public figures the prompt mentions.

Decisions, per image: a gallery match blocks; a prompt naming a protected person together with a
realistic face blocks; a prompt naming any real person together with a realistic face is flagged
for moderators; everything else, including images without faces, is allowed. Like the rules on
minors, protected identities never relax with the guild's strictness or ``allow_suggestive``:
this stage reads neither, since a deepfake of a real person is not a matter of taste. The
reasons never say who was matched or named, so a blocked user learns nothing about who is
protected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from safety.faces import FaceBox, FaceDetector, crop_face
from safety.gallery import ProtectedGallery
from safety.identity import Embedder
from safety.policy import CheckContext
from safety.verdict import Decision, Verdict

logger = logging.getLogger(__name__)

MATCH_REASON = "The image shows a face that matches a protected person."
NAMED_PROTECTED_REASON = "The prompt names a protected person and the image shows a realistic face."
NAMED_REAL_REASON = (
    "The prompt names a real person and the image shows a realistic face, so a moderator will review it."
)


class RealismScorer(Protocol):
    """Rates how much each face crop looks like a photograph (0 = drawing, 1 = photo)."""

    @property
    def version(self) -> str: ...

    def photo_probability(self, crops: Sequence[Image.Image]) -> list[float]: ...


class PeopleInPrompt(Protocol):
    """The real people a prompt names: protected ones, and public figures."""

    @property
    def protected(self) -> tuple[str, ...]: ...

    @property
    def public(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class NamedPeople:
    """A plain :class:`PeopleInPrompt`."""

    protected: tuple[str, ...] = ()
    public: tuple[str, ...] = ()


class NameMatcher(Protocol):
    """Finds the people a prompt names, given the names protected in the request's guild."""

    def people_named(self, prompt: str, protected_names: Sequence[str]) -> PeopleInPrompt: ...


@dataclass(frozen=True)
class _Face:
    box: FaceBox
    distance: float | None  # to the nearest protected person in scope; None when nobody is
    matched: bool
    realism: float


class FaceStage:
    """Blocks protected faces and flags realistic faces of named real people (``ImageStage``).

    Args:
        detector: finds faces.
        embedder: embeds each face for the gallery comparison.
        gallery: the protected people.
        names: finds real people named in the prompt.
        realism: rates face crops as photographs; None treats every face as realistic.
        realism_threshold: photo probability at or above which a face counts as realistic.
    """

    name = "faces"

    def __init__(
        self,
        *,
        detector: FaceDetector,
        embedder: Embedder,
        gallery: ProtectedGallery,
        names: NameMatcher,
        realism: RealismScorer | None = None,
        realism_threshold: float = 0.5,
    ) -> None:
        if not 0.0 <= realism_threshold <= 1.0:
            raise ValueError(f"realism_threshold must lie in 0..1, got {realism_threshold}")
        self._detector = detector
        self._embedder = embedder
        self._gallery = gallery
        self._names = names
        self._realism = realism
        self.realism_threshold = realism_threshold

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        boxes = [self._detector.detect(image) for image in images]
        realism = self._rate_realism(images, boxes)
        protected_names = self._gallery.names(context.guild_id)
        named = self._names.people_named(context.prompt, protected_names)
        # With nobody protected in this guild there is nothing to compare with: skip the embeddings.
        compare = bool(protected_names)
        verdicts = []
        for image, image_boxes, image_realism in zip(images, boxes, realism, strict=True):
            faces = [
                self._face(image, box, score, context.guild_id) if compare else _Face(box, None, False, score)
                for box, score in zip(image_boxes, image_realism, strict=True)
            ]
            verdicts.append(self._decide(faces, named))
        return verdicts

    def _rate_realism(self, images: Sequence[Image.Image], boxes: Sequence[Sequence[FaceBox]]) -> list[list[float]]:
        """Photo probabilities per face per image, in one batch; 1.0 for all when no scorer is set."""
        if self._realism is None:
            return [[1.0] * len(b) for b in boxes]
        crops = [crop_face(image, box) for image, image_boxes in zip(images, boxes, strict=True) for box in image_boxes]
        scores = list(self._realism.photo_probability(crops)) if crops else []
        if len(scores) != len(crops):
            raise ValueError(f"realism scorer returned {len(scores)} scores for {len(crops)} faces")
        per_image, start = [], 0
        for image_boxes in boxes:
            per_image.append([float(s) for s in scores[start : start + len(image_boxes)]])
            start += len(image_boxes)
        return per_image

    def _face(self, image: Image.Image, box: FaceBox, realism: float, guild_id: str | None) -> _Face:
        nearest = self._gallery.nearest(self._embedder.embed(image, box), guild_id)
        if nearest is None:
            return _Face(box, None, False, realism)
        return _Face(box, nearest.distance, nearest.distance < self._gallery.threshold, realism)

    def _decide(self, faces: Sequence[_Face], named: PeopleInPrompt) -> Verdict:
        scores, versions = self._record(faces, named)
        realistic = any(f.realism >= self.realism_threshold for f in faces)
        if any(f.matched for f in faces):
            decision, category, reason = Decision.BLOCK, "protected_identity", MATCH_REASON
        elif realistic and named.protected:
            decision, category, reason = Decision.BLOCK, "protected_name", NAMED_PROTECTED_REASON
        elif realistic and named.public:
            decision, category, reason = Decision.FLAG, "real_person", NAMED_REAL_REASON
        else:
            reason = "no protected or named real person's face" if faces else "no faces"
            return Verdict(Decision.ALLOW, self.name, reason, scores=scores, model_versions=versions)
        return Verdict(decision, self.name, reason, category, scores, versions)

    def _record(self, faces: Sequence[_Face], named: PeopleInPrompt) -> tuple[dict[str, float], dict[str, str]]:
        """Every score behind the decision, keyed ``faces.*``; no names, only counts and distances."""
        scores: dict[str, float] = {
            "faces.count": float(len(faces)),
            "faces.named_protected": float(len(named.protected)),
            "faces.named_public": float(len(named.public)),
            "faces.realism_known": 0.0 if self._realism is None else 1.0,
        }
        distances = [f.distance for f in faces if f.distance is not None]
        if distances:
            scores["faces.min_distance"] = round(min(distances), 4)
        if faces and self._realism is not None:
            scores["faces.max_realism"] = round(max(f.realism for f in faces), 4)
        for i, face in enumerate(faces):
            scores[f"faces.{i}.detector_score"] = face.box.score
            scores[f"faces.{i}.size"] = float(max(face.box.width, face.box.height))
            if face.distance is not None:
                scores[f"faces.{i}.distance"] = round(face.distance, 4)
            if self._realism is not None:
                scores[f"faces.{i}.realism"] = round(face.realism, 4)
        versions = {
            "faces.detector": self._detector.version,
            "faces.embedder": self._embedder.version,
            "faces.realism": "unknown" if self._realism is None else self._realism.version,
        }
        return scores, versions
