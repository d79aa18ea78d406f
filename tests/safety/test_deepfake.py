from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from skimage import data

from safety.deepfake import (
    MATCH_REASON,
    NAMED_PROTECTED_REASON,
    FaceStage,
    NamedPeople,
    RealismScorer,
)
from safety.errors import StageUnavailableError
from safety.faces import NudeNetFaceDetector
from safety.gallery import ProtectedGallery
from safety.identity import FaceEmbedder
from safety.policy import ImageStage, Policy
from safety.verdict import UNAVAILABLE_REASON, Decision, Verdict

PROTECTED_NAME = "Eileen Collins"  # the astronaut's own name: scikit-image's photo is of her


@dataclass(frozen=True)
class Context:
    prompt: str = "a portrait photo"
    guild_id: str | None = "g1"
    strictness: str = "standard"
    allow_suggestive: bool = False
    width: int = 512
    height: int = 512


class FixedRealism:
    """Rates every crop with the same photo probability; records the batches it was asked about."""

    version = "fake-realism"

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.batches: list[int] = []

    def photo_probability(self, crops: Sequence[Image.Image]) -> list[float]:
        self.batches.append(len(crops))
        return [self.probability] * len(crops)


class ShortRealism:
    version = "broken-realism"

    def photo_probability(self, crops: Sequence[Image.Image]) -> list[float]:
        return []


class SubstringNames:
    """Finds protected names and a fixed list of public figures by case-insensitive substring."""

    def __init__(self, public_figures: Sequence[str] = ("Ada Lovelace",)) -> None:
        self.public_figures = tuple(public_figures)
        self.asked_with: list[tuple[str, ...]] = []

    def people_named(self, prompt: str, protected_names: Sequence[str]) -> NamedPeople:
        self.asked_with.append(tuple(protected_names))
        text = prompt.casefold()
        return NamedPeople(
            protected=tuple(n for n in protected_names if n.casefold() in text),
            public=tuple(n for n in self.public_figures if n.casefold() in text),
        )


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


@dataclass(frozen=True)
class Models:
    detector: NudeNetFaceDetector
    embedder: FaceEmbedder

    def protect(self, gallery: ProtectedGallery, image: Image.Image, guild_id: str | None) -> None:
        gallery.add(PROTECTED_NAME, [image], guild_id=guild_id, embedder=self.embedder, detector=self.detector)

    def stage(
        self, gallery: ProtectedGallery, realism: RealismScorer | None = None, names: SubstringNames | None = None
    ) -> FaceStage:
        return FaceStage(
            detector=self.detector,
            embedder=self.embedder,
            gallery=gallery,
            names=names or SubstringNames(),
            realism=realism,
        )


@pytest.fixture(scope="module")
def models() -> Models:
    return Models(NudeNetFaceDetector.load(), FaceEmbedder.load())


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo("astronaut")


@pytest.fixture
def gallery(tmp_path: Path) -> ProtectedGallery:
    return ProtectedGallery(tmp_path / "protected")


def judge(face_stage: FaceStage, image: Image.Image, context: Context | None = None) -> Verdict:
    [verdict] = face_stage.check([image], context or Context())
    return verdict


def test_a_protected_face_is_blocked_without_saying_who(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    models.protect(gallery, astronaut, None)
    verdict = judge(models.stage(gallery, FixedRealism(0.9)), ImageOps.mirror(astronaut))
    assert (verdict.decision, verdict.stage, verdict.category) == (Decision.BLOCK, "faces", "protected_identity")
    assert verdict.reason == MATCH_REASON and "Collins" not in verdict.reason
    assert verdict.scores["faces.count"] == 1.0
    assert verdict.scores["faces.min_distance"] < gallery.threshold
    assert verdict.scores["faces.max_realism"] == 0.9


def test_a_guilds_protected_face_is_blocked_only_in_that_guild(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    models.protect(gallery, astronaut, "g1")
    face_stage = models.stage(gallery, FixedRealism(0.9))
    assert judge(face_stage, astronaut, Context(guild_id="g1")).decision is Decision.BLOCK
    assert judge(face_stage, astronaut, Context(guild_id="g2")).decision is Decision.ALLOW
    assert judge(face_stage, astronaut, Context(guild_id=None)).decision is Decision.ALLOW


@pytest.mark.parametrize("guild_id", ["g1", "g2", None])
def test_a_globally_protected_face_is_blocked_in_every_guild(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image, guild_id: str | None
) -> None:
    models.protect(gallery, astronaut, None)
    verdict = judge(models.stage(gallery, FixedRealism(0.9)), astronaut, Context(guild_id=guild_id))
    assert verdict.decision is Decision.BLOCK


def test_a_match_blocks_even_a_painted_face_and_strictness_never_relaxes_it(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    models.protect(gallery, astronaut, None)
    painted = ImageOps.posterize(astronaut, 3)
    relaxed = Context(strictness="relaxed", allow_suggestive=True)
    verdict = judge(models.stage(gallery, FixedRealism(0.0)), painted, relaxed)
    assert (verdict.decision, verdict.category) == (Decision.BLOCK, "protected_identity")


def test_naming_a_protected_person_with_a_realistic_face_blocks(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    models.protect(gallery, photo("camera"), "g1")  # the protected person is not the one pictured
    names = SubstringNames()
    prompt = Context(prompt="eileen collins shaking hands")
    verdict = judge(models.stage(gallery, FixedRealism(0.8), names), astronaut, prompt)
    assert (verdict.decision, verdict.category) == (Decision.BLOCK, "protected_name")
    assert verdict.reason == NAMED_PROTECTED_REASON and "Collins" not in verdict.reason
    assert verdict.scores["faces.named_protected"] == 1.0
    assert verdict.scores["faces.min_distance"] > gallery.threshold
    assert names.asked_with == [(PROTECTED_NAME,)]
    # Another guild's protected names are not passed to its prompts, so there the prompt is harmless.
    assert (
        judge(
            models.stage(gallery, FixedRealism(0.8)), astronaut, Context(prompt=prompt.prompt, guild_id="g2")
        ).decision
        is Decision.ALLOW
    )


def test_naming_a_public_figure_with_a_realistic_face_is_flagged(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    verdict = judge(models.stage(gallery, FixedRealism(0.8)), astronaut, Context(prompt="Ada Lovelace at a desk"))
    assert (verdict.decision, verdict.category) == (Decision.FLAG, "real_person")
    assert verdict.scores["faces.named_public"] == 1.0
    assert "faces.min_distance" not in verdict.scores  # nobody is protected in this guild


@pytest.mark.parametrize("prompt", ["Ada Lovelace at a desk", "Eileen Collins in orbit"])
def test_a_face_that_is_not_realistic_is_allowed_even_when_named(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image, prompt: str
) -> None:
    models.protect(gallery, photo("camera"), None)
    verdict = judge(models.stage(gallery, FixedRealism(0.2)), astronaut, Context(prompt=prompt))
    assert verdict.decision is Decision.ALLOW
    assert verdict.scores["faces.max_realism"] == 0.2


def test_an_image_without_faces_is_allowed(models: Models, gallery: ProtectedGallery, astronaut: Image.Image) -> None:
    models.protect(gallery, astronaut, None)
    realism = FixedRealism(0.9)
    verdict = judge(models.stage(gallery, realism), photo("coffee"), Context(prompt="Eileen Collins' coffee"))
    assert (verdict.decision, verdict.reason) == (Decision.ALLOW, "no faces")
    assert verdict.scores["faces.count"] == 0.0
    assert realism.batches == []  # no crops, no call


def test_without_a_realism_scorer_every_face_counts_as_realistic(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    painted = ImageOps.posterize(astronaut, 3)
    verdict = judge(models.stage(gallery, realism=None), painted, Context(prompt="Ada Lovelace, oil painting"))
    assert verdict.decision is Decision.FLAG
    assert verdict.scores["faces.realism_known"] == 0.0 and "faces.max_realism" not in verdict.scores
    assert verdict.model_versions["faces.realism"] == "unknown"


def test_one_verdict_per_image_with_one_realism_batch(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    models.protect(gallery, astronaut, None)
    realism = FixedRealism(0.9)
    verdicts = models.stage(gallery, realism).check([astronaut, photo("coffee"), photo("camera")], Context())
    assert [v.decision for v in verdicts] == [Decision.BLOCK, Decision.ALLOW, Decision.ALLOW]
    assert realism.batches == [2]  # both faces rated in one call


def test_scores_and_model_versions_are_recorded(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    models.protect(gallery, photo("camera"), None)
    verdict = judge(models.stage(gallery, FixedRealism(0.7)), astronaut)
    assert verdict.decision is Decision.ALLOW
    assert {"faces.count", "faces.min_distance", "faces.max_realism", "faces.realism_known"} <= set(verdict.scores)
    assert {"faces.0.distance", "faces.0.realism", "faces.0.detector_score", "faces.0.size"} <= set(verdict.scores)
    assert verdict.model_versions["faces.detector"] == models.detector.version
    assert verdict.model_versions["faces.embedder"] == models.embedder.version
    assert verdict.model_versions["faces.realism"] == "fake-realism"


def test_a_broken_realism_scorer_fails_closed_in_the_policy(
    models: Models, gallery: ProtectedGallery, astronaut: Image.Image
) -> None:
    face_stage: ImageStage = models.stage(gallery, ShortRealism())
    with pytest.raises(ValueError, match="0 scores for 1 faces"):
        face_stage.check([astronaut], Context())
    [verdict] = Policy([face_stage]).check([astronaut], Context())
    assert (verdict.decision, verdict.reason) == (Decision.BLOCK, UNAVAILABLE_REASON)


def test_missing_weights_make_the_stage_unavailable_at_load(tmp_path: Path) -> None:
    with pytest.raises(StageUnavailableError):
        FaceEmbedder.load(tmp_path)
    with pytest.raises(StageUnavailableError):
        NudeNetFaceDetector.load(tmp_path / "320n.onnx")


def test_bad_realism_threshold_is_refused(models: Models, gallery: ProtectedGallery) -> None:
    with pytest.raises(ValueError, match="realism_threshold"):
        FaceStage(
            detector=models.detector,
            embedder=models.embedder,
            gallery=gallery,
            names=SubstringNames(),
            realism_threshold=1.5,
        )
