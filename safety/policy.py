"""The safety policy: runs every configured stage on a batch and combines their verdicts.

Fail closed: a stage that raises, takes longer than the policy's timeout, returns the wrong number
of verdicts, or was configured but could not load turns into a ``block`` verdict with the reason
"safety check unavailable".
A policy with no stages cannot be built: a check that checks nothing is a missing check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol

from PIL import Image

from safety.verdict import Verdict, combine, for_appeal

logger = logging.getLogger(__name__)

# Generous for CPU inference of a 4-image batch; a stage stuck longer than this blocks.
DEFAULT_TIMEOUT = 120.0


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


class AppealContext(Protocol):
    """A context that may be the rerun of an appeal a moderator accepted."""

    @property
    def appealed(self) -> bool: ...


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
        timeout: seconds one stage may take for one batch before its images are blocked.
    """

    def __init__(
        self, stages: Sequence[ImageStage], *, unavailable: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if not stages and not unavailable:
            raise ValueError("a safety policy needs at least one stage")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._stages = tuple(stages)
        self._unavailable = tuple(unavailable)
        self._timeout = timeout
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imaginebot-safety")

    @property
    def active_stages(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._stages)

    @property
    def unavailable_stages(self) -> tuple[str, ...]:
        return self._unavailable

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        """Judge every image; never raises for a stage's failure.

        On the rerun of an accepted appeal (a context whose ``appealed`` is true), an appealable block
        becomes a flag: the image goes to moderators, who have already agreed to look at it.
        """
        verdicts = [combine(by_stage.values()) for by_stage in self.judge(images, context)]
        if getattr(context, "appealed", False):
            return [for_appeal(v) for v in verdicts]
        return verdicts

    def judge(self, images: Sequence[Image.Image], context: CheckContext) -> list[dict[str, Verdict]]:
        """Every stage's verdict on every image, by stage name (what :meth:`check` combines)."""
        per_image: list[dict[str, Verdict]] = [{} for _ in images]
        for name in self._unavailable:
            for verdicts in per_image:
                verdicts[name] = Verdict.unavailable(name, "stage configured but not loaded")
        for stage in self._stages:
            for verdicts, verdict in zip(per_image, self._run_stage(stage, images, context), strict=True):
                verdicts[stage.name] = verdict
        return per_image

    def _run_stage(self, stage: ImageStage, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        future = self._runner.submit(stage.check, images, context)
        try:
            verdicts = list(future.result(timeout=self._timeout))
        except FutureTimeout:
            # The stuck call keeps its thread; later checks get a fresh one instead of queueing behind it.
            logger.error("safety stage %s took longer than %.1f s", stage.name, self._timeout)
            self._runner.shutdown(wait=False, cancel_futures=True)
            self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imaginebot-safety")
            return [Verdict.unavailable(stage.name, f"timed out after {self._timeout} s") for _ in images]
        except Exception as exc:  # fail closed: any error in a stage blocks, never skips
            logger.exception("safety stage %s raised", stage.name)
            return [Verdict.unavailable(stage.name, exc) for _ in images]
        if len(verdicts) != len(images):
            error = f"returned {len(verdicts)} verdicts for {len(images)} images"
            return [Verdict.unavailable(stage.name, error) for _ in images]
        return verdicts
