"""Composition root: wires settings, storage, the worker, the safety policy and provenance together.

This is the one place where ``bot``, ``safety`` and ``models`` meet; every entry point (the CLI
today, the Discord runner later) opens the service through :func:`open_service`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from bot.config import Settings
from bot.errors import ConfigError
from bot.jobs import MAX_IMAGES, JobRequest
from bot.moderation import PSEUDONYM_KEY, Moderation, pseudonym
from bot.observability import start_worker_observability
from bot.outputs import ImageStore
from bot.remote import RedisRunner, RemoteConfig, RemoteWorker
from bot.runner import Runner
from bot.service import ImagineService
from bot.storage import Storage
from bot.verify import Verifier
from models import catalog
from models.devices import choose_device_and_dtype
from models.types import Generator
from models.worker import Worker
from safety.clip import ClipSpec
from safety.credentials import ContentCredentials
from safety.faces import FaceDetector
from safety.identity import FaceEmbedder
from safety.provenance import MarkChain, MetadataSigner, key_file
from safety.suite import SafetySuite, build_suite, load_face_detector
from safety.watermark import MIN_SIDE as WATERMARK_MIN_SIDE
from safety.watermark import InvisibleWatermark, payload_id

if TYPE_CHECKING:
    from safety.watermark_torch import TorchWatermark

logger = logging.getLogger(__name__)

METADATA_KEY = "provenance.key"
WATERMARK_KEY = "watermark.key"


def quiet_model_libraries(*, offline: bool) -> None:
    """Keep diffusers/transformers to errors only and without progress bars; our logs say what matters.

    Must run before they are imported: some of their warnings are emitted at import time.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # never even try the hub when told to stay offline


def load_generator(settings: Settings, model: str) -> Generator:
    """Load a model by name (built-in, hub id or local directory). Runs on the worker thread."""
    quiet_model_libraries(offline=settings.offline)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from models.diffusers_backend import DiffusersGenerator  # torch + diffusers: import lazily

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    source = catalog.resolve(model, settings.models_dir)
    device = None if settings.device == "auto" else settings.device
    return DiffusersGenerator.from_pretrained(source, device=device, local_files_only=settings.offline)


def build_safety(settings: Settings) -> SafetySuite:
    """Load the configured safety stages (blocking: seconds for CLIP). Unloadable stages block."""
    quiet_model_libraries(offline=settings.offline)
    return build_suite(
        settings.safety_stages,
        clip=ClipSpec.parse(settings.clip_model),
        gallery_dir=settings.protected_dir,
        cache_dir=settings.cache_dir / "clip",
        device=None if settings.device == "auto" else settings.device,
        face_detector=settings.face_detector,
    )


def open_credentials(settings: Settings) -> ContentCredentials:
    """The C2PA signer: the operator's chain + key, else the local CA (generated on first run).

    Raises:
        ConfigError: only one of c2pa_cert / c2pa_key is set, or a file is unreadable or not PEM.
    """
    try:
        return ContentCredentials.open(settings.keys_dir, chain=settings.c2pa_cert, key=settings.c2pa_key)
    except ValueError as exc:
        raise ConfigError(f"IMAGINEBOT_C2PA_CERT / IMAGINEBOT_C2PA_KEY: {exc}") from None


def load_watermark(settings: Settings) -> InvisibleWatermark | TorchWatermark:
    """The invisible watermark, keyed by ``keys/watermark.key`` (random, mode 0600, made on first use).

    Where generation runs on CUDA (``settings.device``, "auto" resolved as the generator resolves
    it) the watermark is batched on that GPU too (:class:`~safety.watermark_torch.TorchWatermark`,
    the same marks); elsewhere it is the NumPy/OpenCV one.
    """
    key = key_file(settings.keys_dir / WATERMARK_KEY)
    try:
        device, _ = choose_device_and_dtype(None if settings.device == "auto" else settings.device, None)
    except ValueError:  # the generator reports an unusable device when it loads; marking works on the CPU
        return InvisibleWatermark(key)
    if device.type != "cuda":
        return InvisibleWatermark(key)
    from safety.watermark_torch import TorchWatermark

    return TorchWatermark(key, device=device)


def open_verifier(settings: Settings, storage: Storage) -> Verifier:
    """A verifier with every kind of evidence: our C2PA anchor, the metadata key, the watermark key.

    Blocking (~0.2 s, key files and the watermark's carrier map): from async code, use a thread.
    """
    return Verifier(
        storage,
        credentials=open_credentials(settings),
        metadata=MetadataSigner.from_key_file(settings.keys_dir / METADATA_KEY),
        watermark=load_watermark(settings),
    )


def default_quantum(settings: Settings) -> int:
    """The cost of one default 4-image job of the default model: one such job per guild per turn."""
    if settings.scheduler_quantum:
        return settings.scheduler_quantum
    p = catalog.preset_for(settings.model)
    request = JobRequest.create(
        "x", model=settings.model, seed=0, steps=p.steps, width=p.width, height=p.height, guidance=p.guidance,
        count=MAX_IMAGES,
    )  # fmt: skip
    return request.cost


def load_face_models(settings: Settings) -> tuple[FaceDetector, FaceEmbedder]:
    """The face detector and embedder /mod protect add needs (seconds to load; call from a thread)."""
    return load_face_detector(settings.face_detector), FaceEmbedder.load()


def open_moderation(settings: Settings, service: ImagineService) -> Moderation:
    """The moderation rules over ``service``, with the pseudonym key of this data directory."""
    return Moderation(service, pseudonym_key=key_file(settings.keys_dir / PSEUDONYM_KEY))


def remote_config(settings: Settings) -> RemoteConfig:
    """The Redis transport's timings and limits from the settings (the bot's and the workers' agree)."""
    return RemoteConfig(
        claim_idle_seconds=settings.redis_claim_idle_seconds, max_deliveries=settings.redis_max_deliveries,
        result_ttl_seconds=settings.redis_result_ttl_seconds, heartbeat_seconds=settings.worker_heartbeat_seconds,
    )  # fmt: skip


def load_marks(settings: Settings, *, create_keys: bool = True) -> MarkChain:
    """The worker's marks: pixels first (watermark), then the metadata signature over the final pixels.

    A failing mark blocks the image in the worker (fail closed). Blocking (~0.15 s: the carrier map).

    Raises:
        ConfigError: ``create_keys`` is False and a key is missing: a remote worker must mark with the
            bot's keys (copied from its data directory), or the bot could not verify its own images.
    """
    if not create_keys:
        missing = [n for n in (WATERMARK_KEY, METADATA_KEY) if not (settings.keys_dir / n).is_file()]
        if missing:
            raise ConfigError(f"{', '.join(str(settings.keys_dir / n) for n in missing)} missing: copy the keys/ "
                              "directory of the bot's data directory to this worker (IMAGINEBOT_DATA_DIR)")  # fmt: skip
    signer = MetadataSigner.from_key_file(settings.keys_dir / METADATA_KEY)
    return MarkChain(load_watermark(settings), signer)


async def load_safety(settings: Settings) -> SafetySuite:
    """The configured safety stages, loaded on a thread; every unavailable stage is logged as an error."""
    safety = await asyncio.to_thread(build_safety, settings)
    logger.info("safety stages: %s", ", ".join(f"{s.name} ({'active' if s.active else 'UNAVAILABLE'})"
                                               for s in safety.statuses))  # fmt: skip
    for status in safety.unavailable:
        logger.error("safety stage %s unavailable: every image will be blocked (%s)", status.name, status.detail)
    return safety


@asynccontextmanager
async def open_worker(settings: Settings, safety: SafetySuite, *, create_keys: bool = True) -> AsyncIterator[Worker]:
    """A started in-process worker: generate (``load_generator``) -> ``safety`` -> marks."""
    marks = await asyncio.to_thread(lambda: load_marks(settings, create_keys=create_keys))
    async with Worker(lambda model: load_generator(settings, model), safety.policy, marks) as worker:
        yield worker


@asynccontextmanager
async def open_runner(settings: Settings, safety: SafetySuite) -> AsyncIterator[Runner]:
    """What runs batches: remote workers through Redis when ``redis_url`` is set, else a worker thread here."""
    if settings.redis_url is None:
        async with open_worker(settings, safety) as worker:
            yield worker
        return
    for name in (METADATA_KEY, WATERMARK_KEY):  # the workers mark with this data directory's keys
        await asyncio.to_thread(key_file, settings.keys_dir / name)
    async with RedisRunner.from_url(settings.redis_url.get(), remote_config(settings)) as runner:
        yield runner


async def serve_worker(
    settings: Settings, *, redis_url: str, models: Sequence[str], max_batch_images: int, name: str
) -> None:
    """``imaginebot worker``: load the model(s) and the safety and provenance stages once, then serve
    the models' streams until SIGTERM/SIGINT (the batch in hand is finished first)."""
    safety = await load_safety(settings)
    async with open_worker(settings, safety, create_keys=False) as worker:
        await worker.preload(models[0])  # a bad model fails here, before any job is taken
        redis = Redis.from_url(redis_url, decode_responses=False, socket_connect_timeout=2, socket_timeout=10)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        logger.warning("worker %s serving %s through Redis", name, ", ".join(models))

        async def redis_answers() -> bool:  # /readyz: the model is loaded; ready while Redis answers
            try:
                return bool(await redis.ping())
            except Exception:
                return False

        try:
            async with start_worker_observability(settings, ready=redis_answers) as obs:  # /healthz for the image
                remote = RemoteWorker(redis, worker, remote_config(settings), name=name, models=models,
                                      max_batch_images=max_batch_images,
                                      metrics=obs.metrics if obs is not None else None)  # fmt: skip
                await remote.serve(stop)
        finally:
            await redis.aclose()


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[ImagineService]:
    """Open storage, start the runner and the service (resuming unfinished jobs); close all on exit."""
    storage = await Storage.open(settings.db_path)
    try:
        credentials = await asyncio.to_thread(open_credentials, settings)
        safety = await load_safety(settings)
        async with open_runner(settings, safety) as runner:
            store = ImageStore(settings.images_dir)
            await asyncio.to_thread(store.sweep_temporary)
            privacy_key = key_file(settings.keys_dir / PSEUDONYM_KEY)
            service = ImagineService(
                settings, storage, runner, store, quantum=default_quantum(settings), prompt_gate=safety.prompt,
                credentials=credentials, payload_of=payload_id, min_side=WATERMARK_MIN_SIDE, rules=safety.rules,
                pseudonym=lambda user_id: pseudonym(privacy_key, user_id),
            )  # fmt: skip
            try:
                await service.start()  # every process that dispatches first resumes unfinished jobs
                yield service
            finally:
                await service.aclose()
    finally:
        await storage.aclose()
