"""The in-process GPU worker: one thread owns the model and all torch work.

Shaped like aiosqlite's connection: callers on the event loop ``await worker.run(...)``; the work
is queued to a dedicated thread, and results and progress come back through the loop with
``call_soon_threadsafe``. The event loop is never blocked by torch.

For each batch the worker runs generate → safety policy → watermark, and fails closed: a policy
that raises (or returns the wrong number of verdicts) blocks every image of the request, a
watermark that fails blocks that image. Blocked images are dropped here and never leave the worker.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

from PIL import Image

from models.errors import WorkerClosedError
from models.types import (
    BatchWatermarker,
    GeneratedImages,
    GenerationRequest,
    Generator,
    SafetyPolicy,
    StepProgress,
    Verdict,
    Watermarker,
)

logger = logging.getLogger(__name__)

GeneratorLoader = Callable[[str], Generator]
T = TypeVar("T")


class OutcomeKind(StrEnum):
    """How a request left the worker."""

    COMPLETED = "completed"  # generated and judged; see each image's verdict
    CANCELLED = "cancelled"  # cancelled before or while generating; no images
    FAILED = "failed"  # loading or generation raised; ``error`` says why


@dataclass(frozen=True)
class WorkerVerdict:
    """A verdict the worker makes itself when a stage it runs fails (satisfies ``Verdict``)."""

    decision: str
    stage: str
    reason: str
    category: str | None = None
    scores: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    model_versions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def fail_closed(stage: str) -> WorkerVerdict:
    return WorkerVerdict("block", stage, "safety check unavailable", category="unavailable")


@dataclass(frozen=True)
class ImageOutcome:
    """One image of a request. ``image`` is None when the verdict blocks it."""

    index: int
    seed: int
    output_id: str
    image: Image.Image | None
    verdict: Verdict


@dataclass(frozen=True)
class JobOutcome:
    """What became of one request in a batch. ``timings`` are seconds per stage of the batch."""

    job_id: str
    kind: OutcomeKind
    images: tuple[ImageOutcome, ...] = ()
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    retryable: bool = False  # failed for want of memory (CUDA OOM): a smaller batch may succeed


def is_out_of_memory(exc: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError`` / ``torch.OutOfMemoryError``, recognised without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError"


def output_id(job_id: str, index: int) -> str:
    return f"{job_id}-{index}"


@dataclass
class _Work:
    requests: Sequence[GenerationRequest]
    on_progress: Callable[[StepProgress], None] | None
    future: asyncio.Future[list[JobOutcome]]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class Worker:
    """Owns a generator on a dedicated thread and runs batches through generate → safety → mark.

    Args:
        load_generator: builds a generator for a model id; called on the worker thread.
        policy: judges every generated image.
        watermarker: marks every image that is not blocked; a ``BatchWatermarker`` gets all of a
            request's images in one ``mark_many`` call.
    """

    def __init__(self, load_generator: GeneratorLoader, policy: SafetyPolicy, watermarker: Watermarker) -> None:
        self._load = load_generator
        self._policy = policy
        self._watermarker = watermarker
        self._queue: queue.SimpleQueue[_Work | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._cancelled: set[str] = set()
        self._cancel_lock = threading.Lock()
        self._generator: Generator | None = None
        self._model: str | None = None  # the name the resident generator was loaded for
        self._closed = False

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="imaginebot-worker", daemon=True)
            self._thread.start()

    async def aclose(self) -> None:
        """Finish the batch in hand, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def preload(self, model: str) -> None:
        """Load a model now (on the worker thread) instead of on the first batch."""
        await self.run_on_thread(lambda: self._generator_for(model))

    async def run_on_thread(self, fn: Callable[[], object]) -> None:
        # Loading shares the thread with generation so only one thread ever touches torch state.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def call() -> None:
            try:
                fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(_set_exception, done, exc)
            else:
                loop.call_soon_threadsafe(_set_result, done, None)

        self._queue.put(call)
        await done

    def capacity(self) -> int:
        """Batches that may run at once: one thread owns torch, so one (none once closed)."""
        return 0 if self._closed else 1

    def can_start(self, model: str, in_flight: Sequence[str]) -> bool:
        """One batch at a time, of any model (it is loaded when the batch starts)."""
        return len(in_flight) < self.capacity()

    @property
    def outage(self) -> str | None:
        """Why no batch can be dispatched now; an in-process worker is never unreachable."""
        return None

    def cancel(self, job_id: str) -> None:
        """Ask the worker to drop a request; checked between denoising steps. Thread-safe."""
        with self._cancel_lock:
            self._cancelled.add(job_id)

    def is_cancelled(self, job_id: str) -> bool:
        with self._cancel_lock:
            return job_id in self._cancelled

    async def run(
        self, requests: Sequence[GenerationRequest], on_progress: Callable[[StepProgress], None] | None = None
    ) -> list[JobOutcome]:
        """Run one batch of compatible requests; one outcome per request, in order.

        ``on_progress`` is called on the event loop.
        """
        if self._closed or self._thread is None:
            raise WorkerClosedError("the worker is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[JobOutcome]] = loop.create_future()
        self._queue.put(_Work(tuple(requests), on_progress, future, loop))
        return await future

    # --- worker thread ---

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if not isinstance(item, _Work):
                if item is _STOP or not callable(item):
                    return
                item()
                continue
            try:
                outcomes = self._process(item)
            except BaseException as exc:  # never let the thread die; the caller gets the error
                logger.exception("worker batch crashed")
                item.loop.call_soon_threadsafe(_set_exception, item.future, exc)
            else:
                item.loop.call_soon_threadsafe(_set_result, item.future, outcomes)
            finally:
                with self._cancel_lock:
                    self._cancelled.difference_update(r.job_id for r in item.requests)

    def _generator_for(self, model: str) -> Generator:
        if self._generator is None or self._model != model:
            # One model resident at a time: drop the old one before loading, to halve peak memory.
            self._generator = None
            self._generator = self._load(model)
            self._model = model
        return self._generator

    def _process(self, work: _Work) -> list[JobOutcome]:
        requests = work.requests
        live = [r for r in requests if not self.is_cancelled(r.job_id)]
        results: dict[str, GeneratedImages] = {}
        timings: dict[str, float] = {}
        if live:
            t0 = time.perf_counter()
            try:
                generator = self._generator_for(live[0].model)
                timings["load"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                generated = generator.generate(
                    live, on_progress=self._progress_relay(work), is_cancelled=self.is_cancelled
                )
                timings["generate"] = time.perf_counter() - t1
            except Exception as exc:
                logger.exception("generation failed for %s", [r.job_id for r in live])
                error, retry = f"{type(exc).__name__}: {exc}", is_out_of_memory(exc)
                return [JobOutcome(r.job_id, OutcomeKind.FAILED, error=error, retryable=retry) for r in requests]
            results = {g.job_id: g for g in generated}
        outcomes = []
        for request in requests:
            result = results.get(request.job_id)
            if result is None or result.cancelled or self.is_cancelled(request.job_id):
                outcomes.append(JobOutcome(request.job_id, OutcomeKind.CANCELLED))
                continue
            images = self._judge_and_mark(request, result.images, timings)
            outcomes.append(JobOutcome(request.job_id, OutcomeKind.COMPLETED, images))
        frozen = MappingProxyType(dict(timings))
        return [JobOutcome(o.job_id, o.kind, o.images, o.error, frozen) for o in outcomes]

    def _progress_relay(self, work: _Work) -> Callable[[StepProgress], None] | None:
        callback = work.on_progress
        if callback is None:
            return None

        def relay(progress: StepProgress) -> None:
            work.loop.call_soon_threadsafe(callback, progress)

        return relay

    def _judge_and_mark(
        self, request: GenerationRequest, images: Sequence[Image.Image], timings: dict[str, float]
    ) -> tuple[ImageOutcome, ...]:
        t0 = time.perf_counter()
        verdicts = self._judge(request, images)
        t1 = time.perf_counter()
        oids = [output_id(request.job_id, index) for index in range(len(images))]
        todo = [index for index, verdict in enumerate(verdicts) if verdict.decision != "block"]
        marked = dict(zip(todo, self._mark([images[i] for i in todo], [oids[i] for i in todo]), strict=True))
        outcomes = []
        for index, verdict in enumerate(verdicts):
            oid, seed = oids[index], request.seeds[index]
            if verdict.decision == "block":
                outcomes.append(ImageOutcome(index, seed, oid, None, verdict))
            elif (image := marked[index]) is None:  # an unmarked image must never be stored or posted
                outcomes.append(ImageOutcome(index, seed, oid, None, fail_closed("provenance")))
            else:
                outcomes.append(ImageOutcome(index, seed, oid, image, verdict))
        t2 = time.perf_counter()
        timings["safety"] = timings.get("safety", 0.0) + (t1 - t0)
        timings["mark"] = timings.get("mark", 0.0) + (t2 - t1)
        return tuple(outcomes)

    def _mark(self, images: Sequence[Image.Image], oids: Sequence[str]) -> list[Image.Image | None]:
        """The marked image per input, or None where marking failed (the caller blocks that image).

        A ``BatchWatermarker`` marks them all in one call; one that raises, or returns the wrong
        number of results, fails every image of the call.
        """
        if not images:
            return []
        marker = self._watermarker
        if not isinstance(marker, BatchWatermarker):
            return [self._mark_one(image, oid) for image, oid in zip(images, oids, strict=True)]
        try:
            results = list(marker.mark_many(images, oids))
        except Exception:
            logger.exception("watermarking %s failed; blocking them", ", ".join(oids))
            return [None] * len(images)
        if len(results) != len(images):
            logger.error("watermarker returned %d results for %d images; blocking them", len(results), len(images))
            return [None] * len(images)
        marked: list[Image.Image | None] = []
        for oid, result in zip(oids, results, strict=True):
            if isinstance(result, Image.Image):
                marked.append(result)
            else:
                error = result if isinstance(result, BaseException) else None
                logger.error("watermarking %s failed; blocking it", oid, exc_info=error)
                marked.append(None)
        return marked

    def _mark_one(self, image: Image.Image, oid: str) -> Image.Image | None:
        try:
            return self._watermarker.mark(image, oid)
        except Exception:
            logger.exception("watermarking %s failed; blocking it", oid)
            return None

    def _judge(self, request: GenerationRequest, images: Sequence[Image.Image]) -> list[Verdict]:
        try:
            verdicts = list(self._policy.check(images, request))
        except Exception:  # fail closed: a policy error blocks every image of the request
            logger.exception("safety policy raised for job %s; blocking its images", request.job_id)
            return [fail_closed("policy") for _ in images]
        if len(verdicts) != len(images):
            logger.error("safety policy returned %d verdicts for %d images", len(verdicts), len(images))
            return [fail_closed("policy") for _ in images]
        return verdicts


def _set_result(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[T], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
