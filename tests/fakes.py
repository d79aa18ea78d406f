"""Fakes that implement the real interfaces (a Generator, a failing stage), never mocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.types import CancelCheck, GeneratedImages, GenerationRequest, ProgressCallback, StepProgress


class FakeGenerator:
    """Deterministic noise images from each seed, with real progress and cancellation behaviour.

    Args:
        step_seconds: sleep per step, so tests can cancel or kill mid-run.
        fail_with: raise this from ``generate``.
        flat: return one flat colour (what a broken fp16 VAE does).
    """

    def __init__(
        self,
        model_id: str = "fake",
        *,
        step_seconds: float = 0.0,
        fail_with: Exception | None = None,
        flat: bool = False,
    ) -> None:
        self._model_id = model_id
        self.step_seconds = step_seconds
        self.fail_with = fail_with
        self.flat = flat
        self.calls: list[list[str]] = []
        self.requests: list[GenerationRequest] = []
        self.step_started = threading.Event()

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> list[GeneratedImages]:
        self.calls.append([r.job_id for r in requests])
        self.requests.extend(requests)
        if self.fail_with is not None:
            raise self.fail_with
        ids = tuple(r.job_id for r in requests)
        steps = requests[0].steps
        for step in range(steps):
            self.step_started.set()
            time.sleep(self.step_seconds)
            if on_progress:
                on_progress(StepProgress(ids, step + 1, steps))
            if is_cancelled and all(is_cancelled(i) for i in ids):
                return [GeneratedImages(i, (), cancelled=True) for i in ids]
        results = []
        for r in requests:
            if is_cancelled and is_cancelled(r.job_id):
                results.append(GeneratedImages(r.job_id, (), cancelled=True))
            else:
                results.append(GeneratedImages(r.job_id, tuple(self._image(s, r.width, r.height) for s in r.seeds)))
        return results

    def _image(self, seed: int, width: int, height: int) -> Image.Image:
        if self.flat:
            return Image.new("RGB", (width, height), (0, 0, 0))
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels)
