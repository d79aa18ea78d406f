"""The bot's side of the Redis transport: :class:`RedisRunner`, a :class:`bot.runner.Runner`.

``run`` sends one batch as one stream entry (``XADD`` to the model's stream) and waits for one
result per job. The rules that make it reliable:

- **Credits.** The live workers announce their slots and models (heartbeat keys that expire);
  ``can_start(model, in_flight)`` says yes only while the batches in flight plus the new one can all
  be held by workers that serve their models (:func:`slots_suffice`), so streams stay shallow and a
  job never waits in the stream of a model whose workers are all busy or gone.
- **Idempotent results.** A result is applied once per job id: the first one resolves the job's
  waiter, anything later (a duplicate ``done``, a second worker's copy) finds no waiter and is
  ignored. Results are deleted once read.
- **Idempotent sending.** Before adding an entry the runner looks for the job in the stream and
  for a stored result, so a bot restarted while its jobs ran waits for them instead of re-running.
- **Nothing lost.** Every poll the runner checks its sent jobs: a job neither in its stream nor
  with a result (Redis restarted without persistence, say) is sent again. While Redis is down
  nothing can start and ``outage`` says so; batches in flight keep waiting, and sending retries
  when Redis is back. Jobs stay ``queued``/``running`` in SQLite all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bot.observability import StreamStats, TransportStats, WorkerBeat
from bot.remote.wire import (
    GROUP,
    Fields,
    RemoteConfig,
    WorkerInfo,
    decode_outcome,
    encode_entry,
    entry_job_ids,
    stop_tasks,
)
from models.types import BatchKey, GenerationRequest, StepProgress
from models.worker import JobOutcome

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[StepProgress], None]

UNREACHABLE = ("The image workers can't be reached right now (since {since} UTC). Your jobs are kept and "
               "will start as soon as they are back.")  # fmt: skip
NO_WORKERS = "No image worker is online right now. Your jobs are kept and will start when one is."


@dataclass(eq=False)
class _Flight:
    """One job the runner is waiting for."""

    request: GenerationRequest
    future: asyncio.Future[JobOutcome]
    on_progress: ProgressCallback | None
    sent: bool = False  # its entry was added (or found): from now on a vanished entry means "send again"
    collecting: bool = field(default=False)


async def ensure_group(redis: Redis, stream: str) -> None:
    """Create the stream's consumer group from the start of the stream (entries added before it count)."""
    try:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class RedisRunner:
    """Runs batches on remote workers through Redis Streams.

    Args:
        redis: a ``redis.asyncio.Redis`` with ``decode_responses=False``.
        config: timings and limits.
    """

    def __init__(self, redis: Redis, config: RemoteConfig | None = None) -> None:
        self._redis = redis
        self.config = config or RemoteConfig()
        self._keys = self.config.keys
        self._flights: dict[str, _Flight] = {}
        self._lock = asyncio.Lock()  # sending and re-checking never interleave
        self._up = asyncio.Event()
        self._down_since: float | None = None
        self._checked = False  # a first look at Redis has been taken
        self._workers: tuple[WorkerInfo, ...] = ()
        self._cancels: set[str] = set()  # cancellations not yet delivered to Redis
        self._groups: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    @classmethod
    def from_url(cls, url: str, config: RemoteConfig | None = None) -> RedisRunner:
        return cls(Redis.from_url(url, decode_responses=False, socket_connect_timeout=2, socket_timeout=10), config)

    # --- lifecycle ---

    async def start(self) -> None:
        """Take a first look at Redis (never raises: an outage is a state), then keep watching."""
        await self._poll_once()
        self._loops = [asyncio.create_task(self._watch(), name="imaginebot-redis-watch"),
                       asyncio.create_task(self._listen(), name="imaginebot-redis-listen")]  # fmt: skip

    async def aclose(self) -> None:
        await stop_tasks([*self._loops, *self._tasks])
        self._loops = []
        await self._redis.aclose()

    async def __aenter__(self) -> RedisRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the Runner protocol ---

    def capacity(self) -> int:
        """Batches the live workers can hold at once, whatever their models (0 while Redis is down)."""
        return sum(w.capacity for w in self._workers) if self._up.is_set() else 0

    def can_start(self, model: str, in_flight: Sequence[str]) -> bool:
        return self._up.is_set() and slots_suffice([*in_flight, model], self._workers)

    @property
    def outage(self) -> str | None:
        if self._down_since is not None:
            return UNREACHABLE.format(since=time.strftime("%H:%M", time.gmtime(self._down_since)))
        if self._checked and not self._workers:
            return NO_WORKERS
        return None

    @property
    def workers(self) -> tuple[WorkerInfo, ...]:
        """The live workers, as their last heartbeats announced them."""
        return self._workers

    async def preload(self, model: str) -> None:
        """Nothing to load here: workers load their models when they start."""

    async def run(
        self, requests: Sequence[GenerationRequest], on_progress: ProgressCallback | None = None
    ) -> list[JobOutcome]:
        loop = asyncio.get_running_loop()
        flights = [_Flight(r, loop.create_future(), on_progress) for r in requests]
        for flight in flights:
            self._flights[flight.request.job_id] = flight
        try:
            while True:  # Redis down: wait for it, then send; the jobs stay running in SQLite meanwhile
                await self._up.wait()
                try:
                    async with self._lock:
                        await self._send(flights)
                    break
                except RedisError as exc:
                    self._went_down(exc)
            return list(await asyncio.gather(*(f.future for f in flights)))
        finally:
            for flight in flights:
                if self._flights.get(flight.request.job_id) is flight:
                    del self._flights[flight.request.job_id]

    def cancel(self, job_id: str) -> None:
        """Set the job's cancel key and tell the workers now (pub/sub); retried until Redis takes it."""
        self._cancels.add(job_id)
        self._spawn(self._deliver_cancels())

    # --- sending ---

    async def _send(self, flights: Sequence[_Flight]) -> None:
        """Add entries for the jobs that are neither in a stream nor finished (idempotent)."""
        live = await self._live_job_ids({f.request.model for f in flights})
        todo = []
        for flight in flights:
            job_id = flight.request.job_id
            if flight.future.done():
                continue
            if job_id in live:
                flight.sent = True  # still queued or running at a worker (this bot restarted meanwhile)
            elif await self._redis.exists(self._keys.result(job_id)):
                flight.sent = True
                self._spawn(self._collect(job_id))
            elif not flight.future.done():
                todo.append(flight)
        for group in _by_batch_key(todo):
            stream = self._keys.stream(group[0].request.model)
            if stream not in self._groups:
                await ensure_group(self._redis, stream)
                self._groups.add(stream)
            fields = await asyncio.to_thread(encode_entry, [f.request for f in group])
            await self._redis.xadd(stream, fields)  # type: ignore[arg-type]
            for flight in group:
                flight.sent = True

    async def _live_job_ids(self, models: Iterable[str]) -> set[str]:
        """Job ids of every entry in these models' streams (shallow: at most the in-flight batches)."""
        ids: set[str] = set()
        for model in models:
            entries: list[tuple[bytes, Fields]] = await self._redis.xrange(self._keys.stream(model))  # type: ignore[assignment]
            for _, fields in entries:
                ids.update(entry_job_ids(fields))
        return ids

    async def _recheck(self) -> None:
        """Collect results whose ``done`` message was missed; send again what vanished from Redis."""
        async with self._lock:
            sent = [f for f in self._flights.values() if f.sent and not f.future.done()]
            if not sent:
                return
            live = await self._live_job_ids({f.request.model for f in sent})
            vanished = []
            for flight in sent:
                job_id = flight.request.job_id
                if job_id in live:
                    continue
                if await self._redis.exists(self._keys.result(job_id)):
                    self._spawn(self._collect(job_id))
                elif not flight.future.done():  # checked after the await: a collect may have finished
                    vanished.append(flight)
            if vanished:
                logger.warning("jobs %s vanished from Redis (restarted without persistence?); sending them again",
                               ", ".join(f.request.job_id for f in vanished))  # fmt: skip
                self._groups.clear()
                await self._send(vanished)

    # --- results and progress ---

    async def _collect(self, job_id: str) -> None:
        flight = self._flights.get(job_id)
        if flight is None or flight.future.done() or flight.collecting:
            return  # not ours, already applied, or being applied: a duplicate changes nothing
        flight.collecting = True
        try:
            fields: Fields = await self._redis.hgetall(self._keys.result(job_id))  # type: ignore[assignment]
            if not fields:
                return
            try:
                outcome = await asyncio.to_thread(decode_outcome, fields)
            except ValueError as exc:
                logger.error("job %s: unreadable result (%s); waiting for another", job_id, exc)
                await self._redis.delete(self._keys.result(job_id))
                return
            if not flight.future.done():
                flight.future.set_result(outcome)
            await self._redis.delete(self._keys.result(job_id))
        except RedisError as exc:
            logger.warning("job %s: reading its result failed (%s); retrying on the next poll", job_id, exc)
        finally:
            flight.collecting = False

    def _on_progress(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
            ids, step, total = [str(i) for i in data["job_ids"]], int(data["step"]), int(data["total"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed progress message")
            return
        for job_id in ids:
            flight = self._flights.get(job_id)
            if flight is not None and flight.on_progress is not None and not flight.future.done():
                flight.on_progress(StepProgress((job_id,), step, total))

    async def _listen(self) -> None:
        """Pub/sub: ``done`` and ``progress``. Messages missed while disconnected are made up by polling."""
        keys = self._keys
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(keys.done_channel, keys.progress_channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    channel = message["channel"].decode()
                    if channel == keys.done_channel:
                        self._spawn(self._collect(message["data"].decode()))
                    elif channel == keys.progress_channel:
                        self._on_progress(message["data"])
            except (RedisError, OSError) as exc:
                logger.debug("pub/sub connection lost: %s", exc)
                await asyncio.sleep(self.config.poll_seconds)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- watching ---

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            await self._poll_once()

    async def _poll_once(self) -> None:
        try:
            await self._redis.ping()
            self._workers = await self._read_heartbeats()
            was_down = not self._up.is_set()
            self._came_up()
            if was_down:
                self._groups.clear()
            if self._cancels:
                await self._deliver_cancels()
            await self._recheck()
        except RedisError as exc:
            self._went_down(exc)
        finally:
            self._checked = True

    async def transport_stats(self) -> TransportStats:
        """Stream lag and pending counts per model stream, and the live workers (``bot.observability``'s
        ``TransportProbe``). A heartbeat's age comes from its key's remaining time to live."""
        workers = await self._read_heartbeats()
        ttl_ms = self.config.heartbeat_ttl_ms
        now = time.time()
        beats = []
        for w in workers:
            left = await self._redis.pttl(self._keys.worker(w.name))
            age = max(0.0, (ttl_ms - left) / 1000) if left and left > 0 else 0.0
            beats.append(WorkerBeat(w.name, now - age, w.capacity, int(w.busy), w.models))
        streams = []
        for model in sorted({m for w in workers for m in w.models} | {self._model_of(s) for s in self._groups}):
            stream = self._keys.stream(model)
            try:
                groups = await self._redis.xinfo_groups(stream)
            except ResponseError:  # no such stream yet
                continue
            for g in groups:
                name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
                lag = g.get("lag")
                streams.append(StreamStats(stream, name, None if lag is None else int(lag), int(g["pending"])))
        return TransportStats(tuple(streams), tuple(beats))

    def _model_of(self, stream: str) -> str:
        return stream.removeprefix(self._keys.stream(""))

    async def _read_heartbeats(self) -> tuple[WorkerInfo, ...]:
        names = [key async for key in self._redis.scan_iter(match=self._keys.workers_pattern, count=100)]
        infos = []
        for raw in await self._redis.mget(names) if names else []:
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                infos.append(WorkerInfo.from_json(raw))
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring a malformed worker heartbeat")
        return tuple(sorted(infos, key=lambda w: w.name))

    async def _deliver_cancels(self) -> None:
        for job_id in list(self._cancels):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(self._keys.cancel(job_id), b"1", ex=self.config.result_ttl_seconds)
                    pipe.publish(self._keys.cancel_channel, job_id)
                    await pipe.execute()
            except RedisError as exc:
                logger.warning("cancel of %s not delivered yet (%s); retrying", job_id, exc)
                return
            self._cancels.discard(job_id)

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            logger.warning("Redis unreachable: %s; dispatch waits, jobs are kept", exc)
            self._down_since = time.time()
        self._up.clear()

    def _came_up(self) -> None:
        if self._down_since is not None:
            logger.warning("Redis reachable again after %.0f s", time.time() - self._down_since)
        self._down_since = None
        self._up.set()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("redis runner task failed", exc_info=task.exception())


def _by_batch_key(flights: Sequence[_Flight]) -> list[list[_Flight]]:
    groups: dict[BatchKey, list[_Flight]] = {}
    for flight in flights:
        groups.setdefault(flight.request.key, []).append(flight)
    return list(groups.values())


EXACT_MODELS = 12  # up to this many distinct models in flight, slots_suffice checks every set of them


def slots_suffice(batches: Sequence[str], workers: Sequence[WorkerInfo]) -> bool:
    """Whether ``workers`` can hold all these batches (named by model) at once, each on a worker serving its
    model, within their announced capacity.

    Hall's condition (Gale's theorem for supplies and demands): for every set of models, the batches of
    those models fit in the slots of the workers serving any of them. Exact for up to
    :data:`EXACT_MODELS` distinct models; beyond that only each model alone and the total are checked.
    """
    demand = Counter(batches)
    models = sorted(demand)
    sizes = range(1, len(models) + 1) if len(models) <= EXACT_MODELS else (1, len(models))
    for size in sizes:
        for subset in itertools.combinations(models, size):
            chosen = set(subset)
            held = sum(w.capacity for w in workers if chosen.intersection(w.models))
            if sum(demand[m] for m in subset) > held:
                return False
    return True
