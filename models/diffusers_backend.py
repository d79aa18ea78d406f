"""The diffusers backend: a :class:`~models.types.Generator` over any text-to-image pipeline.

Targets SD-Turbo, SD 1.5, SDXL and SDXL-Turbo (anything ``AutoPipelineForText2Image`` can load),
plus the bundled tiny and demo models (:mod:`models.tiny`, :mod:`models.train_demo`). Every image
gets its own ``torch.Generator``, so an image depends on its prompt and seed alone, never on the
batch it ran in.

A model with a native side (``ModelPreset.native_side``: trained at one small size) is run at that
side, keeping the request's aspect, and its images are resized (Lanczos) to the requested size;
image-to-image inputs are brought down to the native size first. Every other model draws at the
requested size directly.

diffusers' own safety checker and SDXL's own watermark are switched off: the bot judges and marks
every image itself, and neither of diffusers' habits (a bare-bool verdict that blacks the image out,
a watermark that skips small images) fits that.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise
from typing import Any

import diffusers
import torch
from diffusers.pipelines.auto_pipeline import AutoPipelineForImage2Image, AutoPipelineForText2Image
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL import Image

from models.catalog import preset_for
from models.devices import choose_device_and_dtype
from models.errors import GenerationError, ModelLoadError
from models.types import (
    BatchKey,
    CancelCheck,
    GeneratedImages,
    GenerationRequest,
    ProgressCallback,
    StepProgress,
)

logger = logging.getLogger(__name__)

# __init__ arguments that turn off diffusers' built-in safety checker and watermark, passed only to
# pipeline classes that accept them (SDXL has no safety checker; only SDXL has add_watermarker).
_SAFETY_OFF: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False, "add_watermarker": False}


def _safety_off_kwargs(class_name: str) -> dict[str, Any]:
    pipeline_class = getattr(diffusers, class_name, None)
    if pipeline_class is None:  # a custom pipeline: we cannot know its arguments, pass none
        return {}
    accepted = inspect.signature(pipeline_class.__init__).parameters
    return {name: value for name, value in _SAFETY_OFF.items() if name in accepted}


class DiffusersGenerator:
    """Generates batches of compatible requests with one loaded diffusers pipeline.

    Not reentrant: calls to :meth:`generate` are serialised by a lock (the worker thread owns it).

    Args:
        pipeline: A loaded text-to-image pipeline, already on its device.
        model_id: The model id or directory the pipeline was loaded from.
        native_side: Draw at this side and resize to the requested size (see the module docstring);
            ``None`` draws at the requested size.
    """

    def __init__(self, pipeline: Any, model_id: str, *, native_side: int | None = None) -> None:
        if native_side is not None and (native_side <= 0 or native_side % 8):
            raise ValueError(f"native_side {native_side} must be a positive multiple of 8")
        self._pipe = pipeline
        self._native_side = native_side
        self._img2img: Any = None  # built on first use, sharing every component with _pipe
        self._model_id = model_id
        self._lock = threading.Lock()
        self._pipe.set_progress_bar_config(disable=True)

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = True,
        native_side: int | None = None,
    ) -> DiffusersGenerator:
        """Load a text-to-image pipeline from a hub id or a local directory.

        Args:
            model: Hub id (``"stabilityai/sd-turbo"``) or a directory holding ``model_index.json``.
            device: Target device; see :func:`choose_device_and_dtype`.
            dtype: Target precision; see :func:`choose_device_and_dtype`.
            local_files_only: Never reach the hub, use local files or the cache only.
            native_side: The side the model draws at; ``None`` takes the model's preset
                (:func:`models.catalog.preset_for`), which has none for most models.

        Returns:
            A generator whose :attr:`model_id` is ``model``.

        Raises:
            ModelLoadError: The model is missing, is not a diffusers pipeline, or failed to load.
            ValueError: ``device`` is invalid or unavailable.
        """
        try:
            # Annotated as a tuple, but returns the model_index dict alone unless asked for more.
            config: Any = DiffusionPipeline.load_config(model, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {model!r} is not a loadable diffusers pipeline: {exc}") from exc
        class_name = str(config.get("_class_name", ""))
        torch_device, torch_dtype = choose_device_and_dtype(device, dtype, sdxl="XL" in class_name)
        kwargs: dict[str, Any] = {
            # `dtype` since diffusers 0.42 (our floor); `torch_dtype` is deprecated there.
            "dtype": torch_dtype,
            "local_files_only": local_files_only,
            **_safety_off_kwargs(class_name),
        }
        try:
            try:
                pipeline = AutoPipelineForText2Image.from_pretrained(model, **kwargs)  # type: ignore[no-untyped-call]
            except ValueError:  # not in AutoPipeline's text-to-image table: let the index decide
                pipeline = DiffusionPipeline.from_pretrained(model, **kwargs)
            pipeline = pipeline.to(torch_device)
        except Exception as exc:  # any failure while loading weights is a load error, cause kept
            raise ModelLoadError(f"could not load model {model!r}: {exc}") from exc
        logger.info("loaded %s (%s) on %s as %s", model, type(pipeline).__name__, torch_device, torch_dtype)
        return cls(pipeline, model, native_side=native_side or preset_for(model).native_side)

    @property
    def model_id(self) -> str:
        """The model id or directory this generator was loaded from."""
        return self._model_id

    @property
    def native_side(self) -> int | None:
        """The side this model draws at before resizing, or ``None`` (it draws at the requested size)."""
        return self._native_side

    @property
    def device(self) -> torch.device:
        """The device the pipeline runs on."""
        device: torch.device = self._pipe.device
        return device

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> list[GeneratedImages]:
        """Generate every request in one pipeline call; the result is aligned with ``requests``.

        Args:
            requests: Requests that share one :class:`~models.types.BatchKey`.
            on_progress: Called after every denoising step, on the calling thread.
            is_cancelled: Polled per job after every step and once after the run. A cancelled job
                comes back with ``cancelled=True`` and no images; when every job is cancelled the
                pipeline stops early.

        Returns:
            One :class:`~models.types.GeneratedImages` per request.

        Raises:
            ValueError: The requests have different batch keys.
            GenerationError: The pipeline raised; the original exception is the cause.
        """
        if not requests:
            return []
        key = self._check_batch(requests)
        cancelled: set[str] = set()

        def poll() -> None:
            if is_cancelled is not None:
                cancelled.update(r.job_id for r in requests if r.job_id not in cancelled and is_cancelled(r.job_id))

        poll()
        active = [r for r in requests if r.job_id not in cancelled]  # jobs cancelled already never start
        images = dict(zip(map(id, active), self._run(active, key, cancelled, poll, on_progress), strict=True))
        poll()  # a job cancelled during the last step is still cancelled
        return [
            GeneratedImages(r.job_id, (), cancelled=True)
            if r.job_id in cancelled
            else GeneratedImages(r.job_id, images[id(r)])
            for r in requests
        ]

    def _check_batch(self, requests: Sequence[GenerationRequest]) -> BatchKey:
        key = requests[0].key
        for request in requests[1:]:
            if request.key != key:
                raise ValueError(f"request {request.job_id!r} has batch key {request.key}, expected {key}")
        # key.model is not compared with model_id: the worker routes requests by model name, and a
        # name ("builtin:tiny") may resolve to the directory this generator was loaded from.
        return key

    def _run(
        self,
        requests: list[GenerationRequest],
        key: BatchKey,
        cancelled: set[str],
        poll: Callable[[], None],
        on_progress: ProgressCallback | None,
    ) -> list[tuple[Image.Image, ...]]:
        """Run the pipeline once over every image of ``requests``; one tuple of images per request."""
        if not requests:
            return []
        job_ids = tuple(r.job_id for r in requests)
        # CPU generators on MPS: diffusers draws MPS noise on the CPU (and MPS generators are flaky).
        generator_device = "cpu" if self.device.type == "mps" else self.device

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_progress is not None:
                on_progress(StepProgress(job_ids, step + 1, getattr(pipe, "num_timesteps", key.steps)))
            poll()
            if cancelled.issuperset(job_ids):
                # The denoising loop checks `self.interrupt` (backed by `_interrupt`) at the top of
                # every step and skips the rest; diffusers resets it at the start of each call.
                pipe._interrupt = True
            return callback_kwargs

        # Flattened: one prompt, negative prompt and generator per image. The negative prompt is
        # always passed; diffusers only uses it when guidance > 1 (CFG on).
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in requests for _ in r.seeds],
            "negative_prompt": [r.negative_prompt for r in requests for _ in r.seeds],
            "generator": [torch.Generator(generator_device).manual_seed(s) for r in requests for s in r.seeds],
            "num_inference_steps": key.steps,
            "guidance_scale": key.guidance,
            "output_type": "pil",
            "callback_on_step_end": on_step_end,
        }
        width, height = self._drawing_size(key.width, key.height)
        with self._lock, torch.inference_mode():
            if key.strength is None:
                pipe, kwargs["width"], kwargs["height"] = self._pipe, width, height
            else:  # image-to-image takes its size from the init images
                pipe, kwargs["strength"] = self._image_to_image(), key.strength
                kwargs["image"] = [_resized(r.init_image, width, height) for r in requests for _ in r.seeds]
            try:
                output = pipe(**kwargs)
            except Exception as exc:
                raise GenerationError(f"model {self._model_id!r} failed on jobs {list(job_ids)}: {exc}") from exc
        flat = [_resized(image, key.width, key.height) for image in output.images]
        bounds = list(accumulate((len(r.seeds) for r in requests), initial=0))
        return [tuple(flat[start:end]) for start, end in pairwise(bounds)]

    def _drawing_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the pipeline draws at: the request's, or the native side keeping the aspect."""
        if self._native_side is None:
            return width, height
        scale = self._native_side / max(width, height)

        def fit(side: int) -> int:
            return max(8, round(side * scale / 8) * 8)

        return fit(width), fit(height)

    def _image_to_image(self) -> Any:
        """The image-to-image pipeline of this model, sharing every weight with the loaded one.

        Raises:
            GenerationError: the model has no image-to-image variant.
        """
        if self._img2img is None:
            try:
                self._img2img = AutoPipelineForImage2Image.from_pipe(self._pipe)  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise GenerationError(f"model {self._model_id!r} cannot vary or upscale images: {exc}") from exc
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


def _resized(image: Image.Image | None, width: int, height: int) -> Image.Image:
    if image is None:
        raise ValueError("an image-to-image request has no init image")
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)
