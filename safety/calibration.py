"""Calibrating thresholds on an operator's own labelled images.

The operator brings a folder with one sub-folder per label: ``safe/`` (also ``sfw/``, ``neutral/``)
for images that must pass, and one per category (``sexual_explicit/``, ``sexual_suggestive/``,
``gore/``; ``nsfw/`` is an alias of ``sexual_explicit``). For each category we measure, at each
strictness level's threshold, precision and recall against the safe images, and suggest the lowest
threshold whose false-positive rate on the safe images stays within a target.

Pure functions over scores: the CLI computes the scores with the real stage and prints the tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SAFE_LABELS = frozenset({"safe", "sfw", "neutral"})
LABEL_ALIASES = {"nsfw": "sexual_explicit"}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path, its category (``None`` for safe) and its scores."""

    path: Path
    category: str | None
    scores: Mapping[str, float]


@dataclass(frozen=True)
class LevelReport:
    """How one category's threshold at one strictness level does on the labelled set."""

    category: str
    level: str
    threshold: float
    precision: float
    recall: float
    false_positive_rate: float
    positives: int
    negatives: int


@dataclass(frozen=True)
class Suggestion:
    """The lowest threshold whose false-positive rate on safe images is within the target."""

    category: str
    threshold: float
    false_positive_rate: float
    recall: float


def find_images(root: Path, categories: Iterable[str]) -> list[tuple[Path, str | None]]:
    """List ``(path, category)`` for every image under ``root``'s label folders.

    Raises:
        ValueError: ``root`` is not a folder, a sub-folder has an unknown label, or no image was found.
    """
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder")
    known = set(categories)
    found: list[tuple[Path, str | None]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = LABEL_ALIASES.get(folder.name.lower(), folder.name.lower())
        if label not in known and label not in SAFE_LABELS:
            valid = ", ".join(sorted(SAFE_LABELS | known | set(LABEL_ALIASES)))
            raise ValueError(f"folder {folder.name!r}: unknown label (use {valid})")
        category = None if label in SAFE_LABELS else label
        found.extend((p, category) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"no images under {str(root)!r} (expected sub-folders such as safe/ and nsfw/)")
    return found


def _split(samples: Sequence[Sample], category: str, key: str) -> tuple[list[float], list[float]]:
    positives = [s.scores[key] for s in samples if s.category == category]
    negatives = [s.scores[key] for s in samples if s.category is None]
    return positives, negatives


def _rates(positives: Sequence[float], negatives: Sequence[float], threshold: float) -> tuple[float, float, float]:
    tp = sum(score >= threshold for score in positives)
    fp = sum(score >= threshold for score in negatives)
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / len(positives) if positives else math.nan
    fpr = fp / len(negatives) if negatives else math.nan
    return precision, recall, fpr


def evaluate(
    samples: Sequence[Sample], thresholds: Mapping[str, Mapping[str, float]], *, score_prefix: str = "nsfw."
) -> list[LevelReport]:
    """Precision/recall/FPR per category (rows) at each level's threshold (``thresholds[level][category]``)."""
    reports = []
    for level, per_category in thresholds.items():
        for category, threshold in per_category.items():
            positives, negatives = _split(samples, category, score_prefix + category)
            precision, recall, fpr = _rates(positives, negatives, threshold)
            reports.append(
                LevelReport(category, level, threshold, precision, recall, fpr, len(positives), len(negatives))
            )
    return reports


def suggest(samples: Sequence[Sample], category: str, *, target_fpr: float, score_prefix: str = "nsfw.") -> Suggestion:
    """The lowest threshold (best recall) whose false-positive rate on safe images is <= ``target_fpr``.

    Raises:
        ValueError: ``target_fpr`` outside 0..1, or there are no safe images to measure it on.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target false-positive rate {target_fpr} is outside 0..1")
    positives, negatives = _split(samples, category, score_prefix + category)
    if not negatives:
        raise ValueError("calibration needs safe images (a safe/ folder) to measure false positives")
    # Candidate thresholds: just above each safe score, and the lowest positive score.
    candidates = sorted({math.nextafter(score, math.inf) for score in negatives} | set(positives))
    for threshold in candidates:
        _, recall, fpr = _rates(positives, negatives, threshold)
        if fpr <= target_fpr:
            return Suggestion(category, threshold, fpr, recall)
    top = math.nextafter(max(negatives), math.inf)
    _, recall, fpr = _rates(positives, negatives, top)
    return Suggestion(category, top, fpr, recall)
