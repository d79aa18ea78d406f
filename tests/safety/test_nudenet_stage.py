"""The optional NudeNet stage: decisions with a fake detector, then the real shipped 320n model."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from safety.errors import StageUnavailableError
from safety.nudenet_stage import LABELS, NUDITY, SEXUAL_EXPLICIT, NudeNetStage
from safety.verdict import Decision


@dataclass(frozen=True)
class Context:
    prompt: str = "a picture"
    guild_id: str | None = "1"
    strictness: str = "standard"
    allow_suggestive: bool = False
    width: int = 64
    height: int = 64


class FakeDetector:
    """Answers ``detect_batch`` with canned detections, one list per image, and records its calls."""

    def __init__(self, *answers: list[Mapping[str, Any]]) -> None:
        self._answers = list(answers)
        self.calls: list[list[tuple[int, ...]]] = []

    def detect_batch(self, image_paths: list[NDArray[np.uint8]], batch_size: int = 4) -> list[list[Mapping[str, Any]]]:
        self.calls.append([a.shape for a in image_paths])
        assert batch_size >= len(image_paths)  # one ONNX run for the whole batch
        return self._answers[: len(image_paths)]


def _found(label: str, score: float) -> Mapping[str, Any]:
    return {"class": label, "score": score, "box": [0, 0, 10, 10]}


IMAGE = Image.new("RGB", (32, 24), (200, 180, 160))


@pytest.mark.parametrize(
    ("label", "score", "strictness", "allow_suggestive", "expected", "category"),
    [
        ("FEMALE_GENITALIA_EXPOSED", 0.8, "relaxed", False, Decision.BLOCK, SEXUAL_EXPLICIT),
        ("MALE_GENITALIA_EXPOSED", 0.4, "standard", False, Decision.FLAG, SEXUAL_EXPLICIT),
        ("ANUS_EXPOSED", 0.4, "strict", True, Decision.BLOCK, SEXUAL_EXPLICIT),  # never relaxed
        ("FEMALE_BREAST_EXPOSED", 0.75, "standard", False, Decision.BLOCK, NUDITY),
        ("FEMALE_BREAST_EXPOSED", 0.75, "relaxed", False, Decision.FLAG, NUDITY),
        ("BUTTOCKS_EXPOSED", 0.75, "standard", True, Decision.ALLOW, None),  # age-restricted channel
        ("BUTTOCKS_EXPOSED", 0.75, "strict", True, Decision.FLAG, NUDITY),
        ("FEMALE_BREAST_COVERED", 0.95, "strict", False, Decision.ALLOW, None),
        ("MALE_BREAST_EXPOSED", 0.95, "strict", False, Decision.ALLOW, None),
    ],
)
def test_exposed_parts_decide_by_score_and_strictness(
    label: str, score: float, strictness: str, allow_suggestive: bool, expected: Decision, category: str | None
) -> None:
    stage = NudeNetStage(FakeDetector([_found(label, score)]), version="fake-nudenet")
    (verdict,) = stage.check([IMAGE], Context(strictness=strictness, allow_suggestive=allow_suggestive))
    assert (verdict.decision, verdict.category) == (expected, category)
    assert verdict.stage == "nudenet"
    assert verdict.model_versions == {"nudenet": "fake-nudenet"}
    assert verdict.scores[f"nudenet.{label.lower()}"] == pytest.approx(score)
    assert {f"nudenet.{name.lower()}" for name in LABELS} <= set(verdict.scores)  # every label's score kept


def test_batch_goes_to_the_detector_once_as_bgr_arrays() -> None:
    detector = FakeDetector([], [_found("FACE_MALE", 0.9), _found("FACE_MALE", 0.5)])
    stage = NudeNetStage(detector)
    small = Image.new("RGBA", (10, 6), (255, 0, 0, 255))
    verdicts = stage.check([IMAGE, small], Context())
    assert detector.calls == [[(24, 32, 3), (6, 10, 3)]]
    assert [v.decision for v in verdicts] == [Decision.ALLOW, Decision.ALLOW]
    assert verdicts[1].scores["nudenet.face_male"] == pytest.approx(0.9)  # the best box per label
    assert stage.check([], Context()) == []


def test_malformed_output_raises_so_the_policy_fails_closed() -> None:
    with pytest.raises(ValueError, match="malformed"):
        NudeNetStage(FakeDetector([{"class": "ANUS_EXPOSED"}])).check([IMAGE], Context())
    with pytest.raises(ValueError, match="1 results for 2 images"):
        NudeNetStage(FakeDetector([])).check([IMAGE, IMAGE], Context())
    with pytest.raises(ValueError, match="'lenient'"):
        NudeNetStage(FakeDetector([])).check([IMAGE], Context(strictness="lenient"))


def test_load_without_nudenet_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)  # makes `import nudenet` fail as if not installed
    with pytest.raises(StageUnavailableError, match=r"imaginebot\[nudenet\]"):
        NudeNetStage.load()


@pytest.fixture(scope="module")
def real_stage() -> NudeNetStage:
    pytest.importorskip("nudenet")
    return NudeNetStage.load()


def test_real_detector_runs_on_real_photos(real_stage: NudeNetStage) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    astronaut = Image.fromarray(skimage_data.astronaut())  # a clothed woman: a face, no nudity
    coffee = Image.fromarray(skimage_data.coffee())
    verdicts = real_stage.check([astronaut, coffee], Context(strictness="strict"))
    assert [v.decision for v in verdicts] == [Decision.ALLOW, Decision.ALLOW]
    assert verdicts[0].scores["nudenet.face_female"] > 0.5  # proves the shipped model really ran
    assert verdicts[1].scores["nudenet.face_female"] == 0.0
    assert verdicts[0].model_versions["nudenet"].startswith("nudenet-3.")
