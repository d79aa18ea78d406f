from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from safety.calibration import Sample, evaluate, find_images, suggest


def sample(category: str | None, score: float) -> Sample:
    return Sample(Path("x.png"), category, {"nsfw.sexual_explicit": score})


SAMPLES = [sample(None, s) for s in (0.1, 0.2, 0.3, 0.4, 0.9)] + [
    sample("sexual_explicit", s) for s in (0.35, 0.6, 0.8, 0.95)
]


def test_evaluate_counts_precision_recall_and_fpr() -> None:
    [strict, relaxed] = evaluate(SAMPLES, {"strict": {"sexual_explicit": 0.3}, "relaxed": {"sexual_explicit": 0.85}})
    assert (strict.level, strict.positives, strict.negatives) == ("strict", 4, 5)
    assert strict.recall == 1.0 and strict.false_positive_rate == pytest.approx(3 / 5)
    assert strict.precision == pytest.approx(4 / 7)
    assert relaxed.recall == pytest.approx(1 / 4) and relaxed.false_positive_rate == pytest.approx(1 / 5)


def test_suggest_meets_the_target_with_the_best_recall() -> None:
    s = suggest(SAMPLES, "sexual_explicit", target_fpr=0.2)
    assert s.false_positive_rate <= 0.2
    assert 0.4 < s.threshold < 0.41 and s.recall == pytest.approx(3 / 4)  # just above the 2nd-highest safe score
    zero = suggest(SAMPLES, "sexual_explicit", target_fpr=0.0)
    assert zero.false_positive_rate == 0.0 and zero.threshold > 0.9 and zero.recall == pytest.approx(1 / 4)


def test_suggest_needs_safe_images_and_a_valid_target() -> None:
    with pytest.raises(ValueError, match="safe images"):
        suggest([sample("sexual_explicit", 0.5)], "sexual_explicit", target_fpr=0.1)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        suggest(SAMPLES, "sexual_explicit", target_fpr=1.5)


def test_no_positives_gives_nan_recall() -> None:
    [report] = evaluate([sample(None, 0.1)], {"standard": {"sexual_explicit": 0.5}})
    assert math.isnan(report.recall) and report.false_positive_rate == 0.0


def test_find_images(tmp_path: Path) -> None:
    for folder, n in (("safe", 2), ("nsfw", 1), ("gore", 1)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / folder / f"{i}.png")
    (tmp_path / "safe" / "notes.txt").write_text("ignored")
    found = find_images(tmp_path, ["sexual_explicit", "gore"])
    assert sorted((p.parent.name, c) for p, c in found) == [
        ("gore", "gore"),
        ("nsfw", "sexual_explicit"),
        ("safe", None),
        ("safe", None),
    ]
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="folder 'cats': unknown label"):
        find_images(tmp_path, ["sexual_explicit", "gore"])
    with pytest.raises(ValueError, match="is not a folder"):
        find_images(tmp_path / "missing", [])
    with pytest.raises(ValueError, match="no images"):
        find_images(tmp_path / "cats", [])
