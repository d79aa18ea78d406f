"""Prometheus metrics and health endpoints for the bot and for each worker process.

Contract. A process whose ``IMAGINEBOT_METRICS_PORT`` is set serves, on ``IMAGINEBOT_METRICS_HOST``:

- ``GET /metrics``: the Prometheus text format (no global registry: each process builds its own).
- ``GET /healthz``: 200 while the event loop answers (liveness; what the image's HEALTHCHECK calls).
- ``GET /readyz``: 200 when the process's readiness check passes, else 503 (readiness).

Who feeds what:

- The bot: ``async with start_observability(settings, service, ready=...) as obs``. Job events (a job
  finished, its verdicts, batch sizes) come from :meth:`ImagineService.subscribe`; queue depth per
  server is read from storage at scrape time, so it is never out of step.
- The Redis transport (bot side) implements :class:`TransportProbe`: ``async transport_stats() ->
  TransportStats`` (stream lag and pending counts per stream and group, live workers from their heartbeat
  keys) and registers it with ``obs.watch(probe)`` (or ``probes=`` above). It is awaited at each scrape
  with a 2 s timeout; one that raises or times out reports ``imaginebot_redis_up 0`` and no stream series.
- A worker process: ``async with start_worker_observability(settings, ready=...) as obs`` (None when the
  port is unset); it calls ``obs.metrics.observe_batch(jobs, images)`` per pipeline call,
  ``observe_run(seconds)`` per job and ``observe_verdict(stage, category, decision)`` per judged image.

Metrics (all prefixed ``imaginebot_``): ``queue_depth{guild}``, ``queue_oldest_seconds{guild}``,
``jobs_running``, ``job_wait_seconds`` (accepted -> started), ``job_run_seconds`` (started -> finished),
``batch_jobs``, ``batch_images``, ``verdicts_total{stage,category,decision}``,
``jobs_finished_total{state}``, ``redis_up``, ``stream_lag{stream,group}``,
``stream_pending{stream,group}``, ``workers``, ``worker_heartbeat_age_seconds{worker}``,
``worker_capacity{worker}``, ``worker_busy{worker}``; plus the process collectors (CPU, memory, fds).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from bot.config import Settings
from bot.jobs import ACTIVE_STATES, JobState
from bot.service import ImagineService, JobUpdate
from bot.storage import Storage

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0  # seconds a scrape waits for storage or Redis before reporting what it has
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
# Verdicts are counted once, when the dispatcher records them; approved/rejected only re-announce them.
_JUDGED = frozenset({JobState.DONE, JobState.FLAGGED, JobState.BLOCKED})
_RAN = _JUDGED | {JobState.FAILED, JobState.CANCELLED}  # the ends of a run (wait and run time are known)

Readiness = Callable[[], bool | Awaitable[bool]]


@dataclass(frozen=True)
class StreamStats:
    """One consumer group on one job stream.

    Attributes:
        stream: the stream key (one per model).
        group: the consumer group reading it.
        lag: entries not yet delivered to the group (``XINFO GROUPS`` ``lag``); None when Redis cannot tell.
        pending: entries delivered but not yet acknowledged (``XPENDING``).
    """

    stream: str
    group: str
    lag: int | None
    pending: int


@dataclass(frozen=True)
class WorkerBeat:
    """A live worker, from its heartbeat key (gone once the key expires).

    Attributes:
        worker_id: the worker's consumer name.
        seen_at: when it last beat (seconds since the epoch).
        capacity: jobs it can run at once.
        busy: jobs it is running now.
        models: the models it has loaded.
    """

    worker_id: str
    seen_at: float
    capacity: int
    busy: int = 0
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransportStats:
    """What the Redis transport reports at one scrape."""

    streams: tuple[StreamStats, ...] = ()
    workers: tuple[WorkerBeat, ...] = ()


class TransportProbe(Protocol):
    """Reads the transport's live state; awaited at each scrape."""

    async def transport_stats(self) -> TransportStats: ...


class Metrics:
    """The metrics of one process, in a registry of its own.

    Counters and histograms are fed with the ``observe_*`` methods; state read at scrape time comes from
    refreshers (async functions run by :meth:`refresh` before each scrape) and the collectors they fill.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.wait = Histogram("imaginebot_job_wait_seconds", "Seconds from accepted to started.",
                              buckets=WAIT_BUCKETS, registry=self.registry)  # fmt: skip
        self.run = Histogram("imaginebot_job_run_seconds", "Seconds from started to finished.",
                             buckets=RUN_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_jobs = Histogram("imaginebot_batch_jobs", "Jobs per pipeline call.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_images = Histogram("imaginebot_batch_images", "Images per pipeline call.",
                                      buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.verdicts = Counter("imaginebot_verdicts", "Safety verdicts per image, by stage, category and decision.",
                                ["stage", "category", "decision"], registry=self.registry)  # fmt: skip
        self.finished = Counter("imaginebot_jobs_finished", "Jobs that reached a final state, by state.",
                                ["state"], registry=self.registry)  # fmt: skip
        ProcessCollector(registry=self.registry)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def observe_batch(self, jobs: int, images: int | None = None) -> None:
        """One pipeline call of ``jobs`` jobs (``images`` images in all, where known)."""
        self.batch_jobs.observe(jobs)
        if images is not None:
            self.batch_images.observe(images)

    def observe_wait(self, seconds: float) -> None:
        self.wait.observe(max(0.0, seconds))

    def observe_run(self, seconds: float) -> None:
        self.run.observe(max(0.0, seconds))

    def observe_verdict(self, stage: str, category: str | None, decision: str) -> None:
        self.verdicts.labels(stage, category or "none", decision).inc()

    def observe_finished(self, state: JobState | str) -> None:
        self.finished.labels(str(state)).inc()

    def add_collector(self, collector: Collector, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        """Register a collector of live state; ``refresh`` (if any) runs before every scrape."""
        self.registry.register(collector)
        if refresh is not None:
            self._refreshers.append(refresh)

    async def refresh(self) -> None:
        """Bring the live-state collectors up to date; a slow or failing source is logged, not raised."""
        for refresher in list(self._refreshers):
            try:
                await asyncio.wait_for(refresher(), PROBE_TIMEOUT)
            except Exception:
                logger.warning("metrics source %r failed", refresher, exc_info=True)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class QueueCollector(Collector):
    """Queue depth per server and running jobs, read from storage (the source of truth) at scrape time."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._depth: dict[str, int] = {}
        self._oldest: dict[str, float] = {}
        self._running = 0

    async def refresh(self) -> None:
        jobs = await self._storage.jobs_in_states(ACTIVE_STATES)
        now = time.time()
        depth: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for job in jobs:
            if job.state is JobState.QUEUED:
                guild = job.request.guild_id
                depth[guild] = depth.get(guild, 0) + 1
                oldest[guild] = max(oldest.get(guild, 0.0), now - job.created_at)
        self._depth, self._oldest = depth, oldest
        self._running = sum(1 for job in jobs if job.state is JobState.RUNNING)

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("imaginebot_queue_depth", "Queued jobs per server.", labels=["guild"])
        oldest = GaugeMetricFamily("imaginebot_queue_oldest_seconds", "Age of the oldest queued job per server.",
                                   labels=["guild"])  # fmt: skip
        for guild, count in sorted(self._depth.items()):
            depth.add_metric([guild], count)
            oldest.add_metric([guild], self._oldest[guild])
        yield depth
        yield oldest
        yield GaugeMetricFamily("imaginebot_jobs_running", "Jobs running now.", value=self._running)


class TransportCollector(Collector):
    """Stream lag, pending counts and worker heartbeats from the registered :class:`TransportProbe` s."""

    def __init__(self) -> None:
        self.probes: list[TransportProbe] = []
        self._stats: list[TransportStats] = []
        self._up = 0

    async def refresh(self) -> None:
        self._up = 1
        stats = []
        for probe in list(self.probes):
            try:
                stats.append(await asyncio.wait_for(probe.transport_stats(), PROBE_TIMEOUT))
            except Exception as exc:
                logger.warning("transport probe failed: %s: %s", type(exc).__name__, exc)
                self._up = 0
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        if not self.probes:
            return
        yield GaugeMetricFamily("imaginebot_redis_up", "1 if every transport probe answered.", value=self._up)
        lag = GaugeMetricFamily("imaginebot_stream_lag", "Entries not yet delivered to the consumer group.",
                                labels=["stream", "group"])  # fmt: skip
        pending = GaugeMetricFamily("imaginebot_stream_pending", "Entries delivered but not yet acknowledged.",
                                    labels=["stream", "group"])  # fmt: skip
        age = GaugeMetricFamily("imaginebot_worker_heartbeat_age_seconds", "Seconds since each worker's last beat.",
                                labels=["worker"])  # fmt: skip
        capacity = GaugeMetricFamily("imaginebot_worker_capacity", "Jobs each worker runs at once.", labels=["worker"])
        busy = GaugeMetricFamily("imaginebot_worker_busy", "Jobs each worker is running.", labels=["worker"])
        now = time.time()
        workers = 0
        for stats in self._stats:
            for s in stats.streams:
                if s.lag is not None:
                    lag.add_metric([s.stream, s.group], s.lag)
                pending.add_metric([s.stream, s.group], s.pending)
            for w in stats.workers:
                workers += 1
                age.add_metric([w.worker_id], max(0.0, now - w.seen_at))
                capacity.add_metric([w.worker_id], w.capacity)
                busy.add_metric([w.worker_id], w.busy)
        yield lag
        yield pending
        yield GaugeMetricFamily("imaginebot_workers", "Workers with a live heartbeat.", value=workers)
        yield from (age, capacity, busy)


class JobObserver:
    """Counts what happens to jobs from the service's updates (it never edits the service).

    A finished job is looked up once (its timestamps and verdicts) on a kept background task. A batch is
    recognised by its progress: the service announces one denoising step of a pipeline call as one update
    per job, all in the same event-loop turn, so the jobs announced together the first time are one batch.
    """

    def __init__(self, service: ImagineService, metrics: Metrics) -> None:
        self._storage = service.storage
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._stepping: list[str] = []  # job ids announced in this loop turn's step
        self._batched: set[str] = set()  # running jobs already counted in a batch
        self._unsubscribe = service.subscribe(self.on_update)

    def on_update(self, update: JobUpdate) -> None:
        if update.step is not None:
            if not self._stepping:
                asyncio.get_running_loop().call_soon(self._close_step)
            self._stepping.append(update.job_id)
        elif update.state.finished:
            self._batched.discard(update.job_id)
            self._metrics.observe_finished(update.state)
            self._spawn(self._record_finished(update.job_id, update.state))

    def _close_step(self) -> None:
        ids, self._stepping = self._stepping, []
        if not ids or self._batched.intersection(ids):
            return
        self._batched.update(ids)
        self._spawn(self._record_batch(ids))

    async def _record_batch(self, job_ids: Sequence[str]) -> None:
        images = 0
        for job_id in job_ids:
            images += (await self._storage.get_job(job_id)).request.count
        self._metrics.observe_batch(len(job_ids), images)

    async def _record_finished(self, job_id: str, state: JobState) -> None:
        job = await self._storage.get_job(job_id)
        if job.started_at is None or state not in _RAN:
            return  # never ran (cancelled while queued), or a moderator's decision on a job counted before
        self._metrics.observe_wait(job.started_at - job.created_at)
        if job.finished_at is not None:
            self._metrics.observe_run(job.finished_at - job.started_at)
        if state in _JUDGED:
            for verdict in await self._storage.verdicts_for(job_id):
                self._metrics.observe_verdict(verdict.stage, verdict.category, verdict.decision)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A job deleted meanwhile (/privacy delete) is expected; anything else is worth a line in the log.
            logger.warning("job metrics lost: %r", task.exception())

    async def settle(self) -> None:
        """Wait until every update received so far is counted (tests and shutdown)."""
        await asyncio.sleep(0)  # let a step closing this turn start its task
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


class MetricsServer:
    """A tiny aiohttp server for ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(self, metrics: Metrics, ready: Readiness | None = None) -> None:
        self._metrics = metrics
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; :attr:`port` tells which)."""
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        logger.info("metrics on http://%s:%d/metrics", host, self.port)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        await self._metrics.refresh()
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _serve_ready(self, request: web.Request) -> web.Response:
        ready = await is_ready(self._ready)
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "not ready\n")


async def is_ready(check: Readiness | None) -> bool:
    """Run a readiness check (sync or async); one that raises or hangs means not ready."""
    if check is None:
        return True
    try:
        result = check()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, PROBE_TIMEOUT)
        return bool(result)
    except Exception:
        logger.warning("readiness check failed", exc_info=True)
        return False


@dataclass
class Observability:
    """What a running endpoint gives its process: the metrics to feed, and where it listens."""

    metrics: Metrics
    port: int
    transport: TransportCollector = field(default_factory=TransportCollector)
    jobs: JobObserver | None = None

    def watch(self, probe: TransportProbe) -> None:
        """Report ``probe``'s streams and workers from the next scrape on."""
        self.transport.probes.append(probe)


@contextlib.asynccontextmanager
async def start_observability(
    settings: Settings,
    service: ImagineService,
    *,
    ready: Readiness | None = None,
    probes: Sequence[TransportProbe] = (),
) -> AsyncIterator[Observability | None]:
    """The bot's endpoint: job metrics from ``service``; ready when ``ready`` says so and storage answers.

    Yields None (and serves nothing) when ``settings.metrics_port`` is 0.
    """

    async def bot_ready() -> bool:
        await service.storage.schema_version()  # the database answers
        return await is_ready(ready)

    metrics = Metrics()
    queue = QueueCollector(service.storage)
    metrics.add_collector(queue, queue.refresh)
    async with _serve(settings, metrics, bot_ready, probes) as obs:
        if obs is None:
            yield None
            return
        obs.jobs = JobObserver(service, metrics)
        try:
            yield obs
        finally:
            await obs.jobs.aclose()


def start_worker_observability(
    settings: Settings, *, ready: Readiness | None = None, probes: Sequence[TransportProbe] = ()
) -> contextlib.AbstractAsyncContextManager[Observability | None]:
    """A worker process's endpoint: it feeds ``obs.metrics`` itself; ready when ``ready`` says so.

    Yields None (and serves nothing) when ``settings.metrics_port`` is 0.
    """
    return _serve(settings, Metrics(), ready, probes)


@contextlib.asynccontextmanager
async def _serve(
    settings: Settings, metrics: Metrics, ready: Readiness | None, probes: Sequence[TransportProbe]
) -> AsyncIterator[Observability | None]:
    if not settings.metrics_port:
        yield None
        return
    server = MetricsServer(metrics, ready)
    await server.start(settings.metrics_host, settings.metrics_port)
    obs = Observability(metrics, server.port)
    metrics.add_collector(obs.transport, obs.transport.refresh)
    for probe in probes:
        obs.watch(probe)
    try:
        yield obs
    finally:
        await server.aclose()
