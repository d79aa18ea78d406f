"""Values and protocols at the ``models`` seam.

Everything that crosses into or out of ``models`` is a frozen dataclass declared here, and every
collaborator the worker needs from another package (a safety policy, a watermarker) is a
``Protocol`` declared here too, so ``models`` depends on nobody (structural typing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class BatchKey:
    """Requests with equal keys can run in one pipeline call."""

    model: str
    width: int
    height: int
    steps: int
    guidance: float
    strength: float | None = None  # image-to-image strength; None for text-to-image


@dataclass(frozen=True)
class GenerationRequest:
    """One job's worth of images: ``len(seeds)`` images of one prompt.

    Image ``i`` is generated from ``seeds[i]`` with its own ``torch.Generator``, so an image depends
    on its seed alone, never on which other requests share its batch.

    With ``init_image`` (already ``width`` x ``height``) and ``strength`` the request is
    image-to-image: variations and upscales start from that picture, and ``strength`` (0..1] says
    how far from it they may move; the pipeline then runs ``int(steps * strength)`` steps.
    """

    job_id: str
    prompt: str
    negative_prompt: str
    seeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    guidance: float
    model: str
    guild_id: str | None = None
    strictness: str = "standard"
    allow_suggestive: bool = False
    init_image: Image.Image | None = field(default=None, compare=False, repr=False)
    strength: float | None = None
    appealed: bool = False  # the rerun of an appeal a moderator accepted: appealable blocks become flags

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError(f"seeds must not be empty for job {self.job_id!r}")
        for seed in self.seeds:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {seed} is outside 0..{MAX_SEED}")
        if self.width <= 0 or self.height <= 0 or self.width % 8 or self.height % 8:
            raise ValueError(f"size {self.width}x{self.height} must be positive multiples of 8")
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if (self.init_image is None) != (self.strength is None):
            raise ValueError(f"job {self.job_id!r}: init_image and strength go together")
        if self.init_image is not None and self.strength is not None:
            if self.init_image.size != (self.width, self.height):
                raise ValueError(f"init image is {self.init_image.size}, expected {(self.width, self.height)}")
            if not 0.0 < self.strength <= 1.0 or int(self.steps * self.strength) < 1:
                raise ValueError(f"strength {self.strength} with {self.steps} steps runs no denoising step")

    @property
    def key(self) -> BatchKey:
        return BatchKey(self.model, self.width, self.height, self.steps, self.guidance, self.strength)


@dataclass(frozen=True)
class StepProgress:
    """Reported after each denoising step of a batch (on the worker thread)."""

    job_ids: tuple[str, ...]
    step: int
    total: int


ProgressCallback = Callable[[StepProgress], None]
CancelCheck = Callable[[str], bool]


@dataclass(frozen=True)
class GeneratedImages:
    """What a generator returns for one request, in the order of ``request.seeds``.

    A cancelled request has ``cancelled=True`` and no images: an interrupted image is never returned.
    """

    job_id: str
    images: tuple[Image.Image, ...]
    cancelled: bool = False


class Generator(Protocol):
    """Turns a batch of compatible requests (equal :class:`BatchKey`) into images."""

    @property
    def model_id(self) -> str: ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> list[GeneratedImages]:
        """Generate every request; the result list is aligned with ``requests``."""
        ...


class Verdict(Protocol):
    """A safety decision about one image, as the worker needs to see it."""

    @property
    def decision(self) -> str:
        """``"allow"``, ``"flag"`` or ``"block"``."""
        ...

    @property
    def stage(self) -> str: ...

    @property
    def category(self) -> str | None: ...

    @property
    def reason(self) -> str: ...

    @property
    def scores(self) -> Mapping[str, float]: ...

    @property
    def model_versions(self) -> Mapping[str, str]: ...


class SafetyPolicy(Protocol):
    """Judges generated images; must return exactly one verdict per image."""

    def check(self, images: Sequence[Image.Image], request: GenerationRequest) -> Sequence[Verdict]: ...


class Watermarker(Protocol):
    """Marks an image that will be stored or posted with its output id."""

    def mark(self, image: Image.Image, output_id: str) -> Image.Image: ...


@runtime_checkable
class BatchWatermarker(Watermarker, Protocol):
    """A watermarker that marks all images of a request in one call (batched on a GPU, say).

    The worker uses :meth:`mark_many` when a watermarker has it, else :meth:`Watermarker.mark`
    image by image.
    """

    def mark_many(self, images: Sequence[Image.Image], output_ids: Sequence[str]) -> Sequence[Image.Image | Exception]:
        """One result per image, in order: the marked image, or the exception that blocks it."""
        ...
