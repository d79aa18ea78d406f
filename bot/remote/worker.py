"""The worker's side of the Redis transport: :class:`RemoteWorker`, the loop of ``imaginebot worker``.

It serves the streams of its models with an in-process :class:`models.worker.Worker` (generate →
safety → mark on its thread), one batch at a time:

1. **Take** an entry: first ``XAUTOCLAIM`` one that a dead worker left pending longer than the
   claim idle time, else ``XREADGROUP`` a new one. An entry delivered more than ``max_deliveries``
   times goes to the dead-letter stream instead and its jobs fail with a message for the user; so
   does an entry that cannot be decoded.
2. **Run** it, keeping ownership meanwhile (``XCLAIM ... JUSTID`` of its own entry every third of
   the claim idle time resets the idle clock without counting a delivery), relaying progress over
   pub/sub and honouring cancellation (the cancel key when it starts, the cancel channel while it
   runs: ``Worker.cancel`` is checked between denoising steps). Jobs that already have a result
   (a duplicate delivery) are not run again. A batch above ``--max-batch`` images runs in chunks;
   one that fails for want of GPU memory is retried in halves.
3. **Return** the results in one transaction: the result hashes (with a TTL), ``XACK`` + ``XDEL``
   of the entry, a ``done`` message per job.

A heartbeat key (expiring after three beats) announces its capacity, models and batch limit. With a
``Metrics`` (``imaginebot worker`` with ``IMAGINEBOT_METRICS_PORT``) it counts its pipeline calls, run
times and verdicts for its own ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bot.jobs import WORKERS_COULD_NOT_READ, WORKERS_GAVE_UP
from bot.remote.runner import ensure_group
from bot.remote.wire import (
    GROUP,
    Fields,
    RemoteConfig,
    WorkerInfo,
    decode_entry,
    encode_outcome,
    entry_job_ids,
    stop_tasks,
)
from models.types import GenerationRequest, StepProgress
from models.worker import JobOutcome, OutcomeKind, Worker

if TYPE_CHECKING:
    from bot.observability import Metrics

logger = logging.getLogger(__name__)

BLOCK_MS = 1000  # how long one XREADGROUP waits for a new entry
PROGRESS_EVERY = 0.25  # seconds between progress messages of a batch (the last step is always sent)


class RemoteWorker:
    """Serves batches from Redis Streams with an in-process worker.

    Args:
        redis: a ``redis.asyncio.Redis`` with ``decode_responses=False``.
        worker: a started :class:`Worker`.
        config: timings and limits (the bot's and the workers' must agree on the prefix).
        name: this worker's consumer name, unique among live workers.
        models: the models it serves (their streams are the ones it reads).
        max_batch_images: the most images one pipeline call may generate here.
        metrics: where to count pipeline calls, run times and verdicts (None: nowhere).
    """

    def __init__(
        self,
        redis: Redis,
        worker: Worker,
        config: RemoteConfig,
        *,
        name: str,
        models: Sequence[str],
        max_batch_images: int,
        metrics: Metrics | None = None,
    ) -> None:
        if not models:
            raise ValueError("a worker needs at least one model")
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be at least 1, got {max_batch_images}")
        self._redis = redis
        self._worker = worker
        self.config = config
        self._keys = config.keys
        self.name = name
        self.models = tuple(models)
        self._streams = [self._keys.stream(m) for m in self.models]
        self._max_batch = max_batch_images
        self._metrics = metrics
        self._busy = False
        self._loaded: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches this worker finished (for tests and logs)

    # --- the loop ---

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; the batch in hand is finished first."""
        side = [asyncio.create_task(self._heartbeat(), name="imaginebot-heartbeat"),
                asyncio.create_task(self._listen_cancels(), name="imaginebot-cancels")]  # fmt: skip
        try:
            await self._ensure_groups()
            while not stop.is_set():
                try:
                    taken = await self._take()
                    if taken is not None:
                        await self._handle(*taken)
                except (RedisError, OSError) as exc:
                    logger.warning("Redis error (%s); retrying", exc)
                    await asyncio.sleep(min(1.0, self.config.heartbeat_seconds))
                except Exception:  # the entry stays pending: reclaimed later, dead-lettered if it keeps failing
                    logger.exception("a batch crashed this worker's loop; going on")
                    await asyncio.sleep(1.0)
        finally:
            await stop_tasks([*side, *self._tasks])
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._keys.worker(self.name))

    async def _ensure_groups(self) -> None:
        for stream in self._streams:
            await ensure_group(self._redis, stream)

    async def _take(self) -> tuple[str, str, Fields, int] | None:
        """The next entry to run: a dead worker's, else a new one; with its delivery count."""
        try:
            for stream in self._streams:
                claimed = await self._redis.xautoclaim(stream, GROUP, self.name, self._claim_idle_ms, "0-0", count=1)
                for entry_id, fields in claimed[1]:
                    if fields is None:  # deleted while pending (Redis 6.2 reports it so)
                        await self._redis.xack(stream, GROUP, entry_id)
                        continue
                    pending = await self._redis.xpending_range(stream, GROUP, entry_id, entry_id, 1)
                    deliveries = int(pending[0]["times_delivered"]) if pending else 1
                    logger.warning("reclaimed entry %s of %s (delivery %d)", entry_id.decode(), stream, deliveries)
                    return stream, entry_id.decode(), fields, deliveries
            response: Any = await self._redis.xreadgroup(
                GROUP, self.name, dict.fromkeys(self._streams, ">"), count=1, block=BLOCK_MS
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_groups()  # Redis lost the groups (restarted without persistence)
            return None
        for stream, entries in response or []:
            for entry_id, fields in entries:
                return stream.decode(), entry_id.decode(), fields, 1
        return None

    @property
    def _claim_idle_ms(self) -> int:
        return max(1, int(self.config.claim_idle_seconds * 1000))

    # --- one entry ---

    async def _handle(self, stream: str, entry_id: str, fields: Fields, deliveries: int) -> None:
        ids = entry_job_ids(fields)
        if deliveries > self.config.max_deliveries:
            logger.error("entry %s (jobs %s) delivered %d times: dead-lettered", entry_id, ids, deliveries)
            await self._dead_letter(stream, entry_id, fields, WORKERS_GAVE_UP.format(n=deliveries - 1))
            return
        try:
            requests = await asyncio.to_thread(decode_entry, fields)
        except ValueError as exc:
            logger.error("entry %s of %s cannot be decoded: %s", entry_id, stream, exc)
            await self._dead_letter(stream, entry_id, fields, WORKERS_COULD_NOT_READ.format(reason=exc))
            return
        keeper = asyncio.create_task(self._keep_ownership(stream, entry_id), name="imaginebot-keep")
        self._busy = True
        try:
            todo = await self._not_yet_done(requests)
            started = time.monotonic()
            outcomes = await self._run_all(todo) if todo else []
            self._observe(outcomes, time.monotonic() - started)
        finally:
            self._busy = False
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self._finish(stream, entry_id, outcomes)
        self.batches += 1

    async def _not_yet_done(self, requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
        """Drop jobs that already have a result (a duplicate delivery); mark the cancelled ones."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for r in requests:
                pipe.exists(self._keys.result(r.job_id))
                pipe.exists(self._keys.cancel(r.job_id))
            flags = await pipe.execute()
        todo = []
        for i, r in enumerate(requests):
            done, cancelled = flags[2 * i], flags[2 * i + 1]
            if done:
                logger.info("job %s already has a result; not running it again", r.job_id)
                continue
            if cancelled:
                self._worker.cancel(r.job_id)
            todo.append(r)
        return todo

    async def _run_all(self, requests: Sequence[GenerationRequest]) -> list[JobOutcome]:
        outcomes: list[JobOutcome] = []
        for chunk in _chunks(requests, self._max_batch):
            outcomes.extend(await self._run_resilient(chunk))
        return outcomes

    async def _run_resilient(self, requests: Sequence[GenerationRequest]) -> list[JobOutcome]:
        """Run a chunk; when it fails for want of memory (CUDA OOM), retry it in halves."""
        self._loaded = requests[0].model
        outcomes = await self._worker.run(requests, on_progress=self._progress_relay())
        if len(requests) > 1 and any(o.retryable for o in outcomes):
            half = len(requests) // 2
            logger.warning("out of memory with %d jobs; retrying in halves", len(requests))
            return [*await self._run_resilient(requests[:half]), *await self._run_resilient(requests[half:])]
        if self._metrics is not None:
            self._metrics.observe_batch(len(requests), sum(len(r.seeds) for r in requests))
        return outcomes

    def _observe(self, outcomes: Sequence[JobOutcome], seconds: float) -> None:
        """Run time per job (the entry's, as the bot measures a batch) and the verdict of every image."""
        if self._metrics is None:
            return
        for outcome in outcomes:
            self._metrics.observe_run(seconds)
            for image in outcome.images:
                self._metrics.observe_verdict(image.verdict.stage, image.verdict.category, image.verdict.decision)

    def _progress_relay(self) -> Callable[[StepProgress], None]:
        last = 0.0

        def relay(progress: StepProgress) -> None:
            nonlocal last
            now = time.monotonic()
            if progress.step < progress.total and now - last < PROGRESS_EVERY:
                return
            last = now
            message = json.dumps({"job_ids": list(progress.job_ids), "step": progress.step, "total": progress.total})
            self._spawn(self._publish(self._keys.progress_channel, message))

        return relay

    async def _publish(self, channel: str, message: str) -> None:
        with contextlib.suppress(RedisError, OSError):  # progress is best effort
            await self._redis.publish(channel, message)

    async def _finish(self, stream: str, entry_id: str, outcomes: Sequence[JobOutcome]) -> None:
        """Store the results, acknowledge and delete the entry, announce the jobs: one transaction."""
        encoded = await asyncio.to_thread(lambda: [encode_outcome(o) for o in outcomes])
        async with self._redis.pipeline(transaction=True) as pipe:
            for outcome, fields in zip(outcomes, encoded, strict=True):
                key = self._keys.result(outcome.job_id)
                pipe.delete(key)
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(key, self.config.result_ttl_seconds)
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            for outcome in outcomes:
                pipe.publish(self._keys.done_channel, outcome.job_id)
            await pipe.execute(raise_on_error=False)  # an XACK without its group (Redis restarted) is fine

    async def _dead_letter(self, stream: str, entry_id: str, fields: Fields, error: str) -> None:
        outcomes = [JobOutcome(job_id, OutcomeKind.FAILED, error=error) for job_id in entry_job_ids(fields)]
        record = {b"stream": stream.encode(), b"entry": entry_id.encode(), b"worker": self.name.encode(),
                  b"error": error.encode(), b"ids": fields.get(b"ids", b""),
                  b"jobs": fields.get(b"jobs", b"")}  # fmt: skip
        await self._redis.xadd(self._keys.dead, record, maxlen=10_000, approximate=True)  # type: ignore[arg-type]
        await self._finish(stream, entry_id, outcomes)

    async def _keep_ownership(self, stream: str, entry_id: str) -> None:
        """Reset the entry's idle time while it runs, so live workers do not reclaim a long job."""
        interval = max(0.05, self.config.claim_idle_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._redis.xclaim(stream, GROUP, self.name, 0, [entry_id], justid=True)
            except (RedisError, OSError) as exc:
                logger.warning("could not refresh entry %s: %s", entry_id, exc)

    # --- side tasks ---

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.name, 1, self.models, self._max_batch, self._loaded, self._busy)

    async def _heartbeat(self) -> None:
        ttl_ms = self.config.heartbeat_ttl_ms
        while True:
            try:
                await self._redis.set(self._keys.worker(self.name), self.info().to_json(), px=ttl_ms)
            except (RedisError, OSError) as exc:
                logger.debug("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_seconds)

    async def _listen_cancels(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._keys.cancel_channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._worker.cancel(message["data"].decode())
            except (RedisError, OSError) as exc:
                logger.debug("cancel channel lost: %s", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _chunks(requests: Sequence[GenerationRequest], max_images: int) -> list[list[GenerationRequest]]:
    """Consecutive chunks of at most ``max_images`` images (a larger single request is its own chunk)."""
    chunks: list[list[GenerationRequest]] = []
    size = 0
    for request in requests:
        if chunks and size + len(request.seeds) <= max_images:
            chunks[-1].append(request)
            size += len(request.seeds)
        else:
            chunks.append([request])
            size = len(request.seeds)
    return chunks
