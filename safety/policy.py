"""The safety policy: runs every configured stage on a batch and combines their verdicts.

Fail closed: a stage that raises, returns the wrong number of verdicts, or was configured but
could not load turns into a ``block`` verdict with the reason "safety check unavailable".
A policy with no stages cannot be built: a check that checks nothing is a missing check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from safety.verdict import Verdict, combine

logger = logging.getLogger(__name__)


class CheckContext(Protocol):
    """What a stage may know about the request behind the images (structural: any object with these)."""

    @property
    def prompt(self) -> str: ...

    @property
    def guild_id(self) -> str | None: ...

    @property
    def strictness(self) -> str: ...

    @property
    def allow_suggestive(self) -> bool: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


class ImageStage(Protocol):
    """One safety stage: judges a batch of images of one request, one verdict per image."""

    @property
    def name(self) -> str: ...

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> Sequence[Verdict]: ...


class Policy:
    """Runs stages in order and combines their verdicts per image (the most severe decides).

    Args:
        stages: the stages to run; at least one.
        unavailable: names of stages that are configured but could not load; while any is listed,
            every image is blocked.
    """

    def __init__(self, stages: Sequence[ImageStage], *, unavailable: Sequence[str] = ()) -> None:
        if not stages and not unavailable:
            raise ValueError("a safety policy needs at least one stage")
        self._stages = tuple(stages)
        self._unavailable = tuple(unavailable)

    @property
    def active_stages(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._stages)

    @property
    def unavailable_stages(self) -> tuple[str, ...]:
        return self._unavailable

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        """Judge every image; never raises for a stage's failure."""
        per_image: list[list[Verdict]] = [[] for _ in images]
        for name in self._unavailable:
            for verdicts in per_image:
                verdicts.append(Verdict.unavailable(name, "stage configured but not loaded"))
        for stage in self._stages:
            for verdicts, verdict in zip(per_image, self._run_stage(stage, images, context), strict=True):
                verdicts.append(verdict)
        return [combine(v) for v in per_image]

    @staticmethod
    def _run_stage(stage: ImageStage, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        try:
            verdicts = list(stage.check(images, context))
        except Exception as exc:  # fail closed: any error in a stage blocks, never skips
            logger.exception("safety stage %s raised", stage.name)
            return [Verdict.unavailable(stage.name, exc) for _ in images]
        if len(verdicts) != len(images):
            error = f"returned {len(verdicts)} verdicts for {len(images)} images"
            return [Verdict.unavailable(stage.name, error) for _ in images]
        return verdicts
