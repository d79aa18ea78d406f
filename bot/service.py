"""The service core: accepts jobs, persists them, schedules them fairly, runs them, records results.

The path of a request: :meth:`ImagineService.submit` validates caps, stores the job as ``queued``
(nothing accepted is ever lost), and hands it to the fair scheduler. One dispatcher task pops
batches of compatible jobs in fair order, as many at once as the runner has capacity for
(:mod:`bot.runner`: the in-process worker thread, or remote workers through Redis), marks them
``running``, awaits the runner (generate → safety → mark), writes the images, stores outputs and
verdicts, and moves each job to its final state. On start, jobs a crash left ``queued`` or ``running`` are resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from PIL import Image

from bot import __version__
from bot.config import Settings
from bot.errors import (
    BannedError,
    CooldownError,
    IllegalTransitionError,
    InvalidRequestError,
    JobNotFoundError,
    PromptBlockedError,
    QueueFullError,
)
from bot.guild_config import GuildConfig, GuildConfigStore
from bot.jobs import ACTIVE_STATES, SOURCE_MISSING, SOURCE_UNREADABLE, Job, JobRequest, JobState
from bot.outputs import ImageStore, StoredImage, encode_png, make_grid, make_preview
from bot.records import OutputRecord, VerdictRecord
from bot.runner import Runner
from bot.scheduler import FairScheduler, QueuedJob
from bot.storage import Storage
from bot.throughput import ThroughputMeter
from models.types import GenerationRequest, StepProgress, Verdict
from models.worker import JobOutcome, OutcomeKind
from safety.credentials import CredentialFields
from safety.fingerprint import perceptual_hash
from safety.policy import CheckContext
from safety.prompt_filter import PromptCategory

logger = logging.getLogger(__name__)

# How often a dispatcher with queued jobs and no free capacity looks again (remote capacity comes back
# with a worker's heartbeat, which sends no event of ours).
CAPACITY_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class JobUpdate:
    """Something happened to a job: a state change, or a denoising step (``step``/``total``)."""

    job_id: str
    state: JobState
    step: int | None = None
    total: int | None = None


Listener = Callable[[JobUpdate], None]


class CredentialSigner(Protocol):
    """Embeds a signed C2PA manifest in PNG bytes (``safety.credentials.ContentCredentials`` is one)."""

    def sign(self, png: bytes, fields: CredentialFields) -> bytes: ...


@dataclass(frozen=True)
class QueuePlace:
    """One queued job as /queue shows it: its place in the dispatch order and when it should finish."""

    job_id: str
    user_id: str
    position: int
    eta: float | None


class RulesSink(Protocol):
    """Takes each server's own prompt terms for the prompt filter (``safety.suite.GuildRules`` is one)."""

    def set(
        self, guild_id: str | None, *, additions: Mapping[PromptCategory, tuple[str, ...]], exceptions: Sequence[str]
    ) -> None: ...


class PromptGate(Protocol):
    """Judges a prompt before anything is queued (``safety.suite.PromptStage`` is one)."""

    def check_prompt(self, context: CheckContext) -> Verdict: ...


@dataclass(frozen=True)
class PromptContext:
    """What the prompt gate may know about a request (satisfies ``safety.policy.CheckContext``)."""

    prompt: str
    guild_id: str | None
    strictness: str
    allow_suggestive: bool
    width: int
    height: int


class SourceImageError(Exception):
    """A variation's or upscale's source image is missing or unreadable (the job fails with this)."""


def load_source(path: str, size: tuple[int, int]) -> Image.Image:
    """Read a stored output as RGB at ``size`` (an upscale's source doubles with a clean filter)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)


def _with_channel_policy(request: JobRequest, config: GuildConfig) -> JobRequest:
    """The request as its channel's NSFW policy allows: a ``strict`` channel takes suggestive content away."""
    channel = int(request.channel_id) if request.channel_id and request.channel_id.isdigit() else None
    allowed = config.allows_suggestive(channel, request.age_restricted)
    return request if allowed == request.age_restricted else replace(request, age_restricted=allowed)


def final_state(decisions: Sequence[str]) -> JobState:
    """A job with any flagged image is held whole; otherwise done if anything is allowed."""
    if "flag" in decisions:
        return JobState.FLAGGED
    if "allow" in decisions:
        return JobState.DONE
    return JobState.BLOCKED


_COOLDOWN_STATES = frozenset(JobState) - {JobState.BLOCKED}


def to_queued(job: Job) -> QueuedJob:
    r = job.request
    key = (r.model, r.width, r.height, r.steps, r.guidance, r.strength)
    return QueuedJob(job.id, r.guild_id, r.user_id, r.cost, r.count, key, job.created_at)


def _model_of_key(key: Hashable) -> str:
    """The model of a :func:`to_queued` batch key (its first element)."""
    if not isinstance(key, tuple) or not key:
        raise TypeError(f"not a batch key of to_queued: {key!r}")
    return str(key[0])


class ImagineService:
    """Owns the scheduler and the dispatcher; the storage and runner are given to it.

    Args:
        settings: the process settings.
        storage: an open :class:`Storage`.
        runner: runs batches: a started in-process :class:`~models.worker.Worker`, or a
            :class:`~bot.remote.RedisRunner` that sends them to worker processes (see :mod:`bot.runner`).
        store: where output images are written.
        quantum: scheduler cost per turn (see :mod:`bot.scheduler`).
        prompt_gate: judges prompts before they are queued; None when the prompt stage is off.
        credentials: signs every stored image (and grid) with a C2PA manifest; None stores them unsigned.
        payload_of: the invisible watermark's payload for an output id, recorded in the registry;
            None when no watermark is applied.
        min_side: the smallest image side the marks can be applied to; smaller requests are refused
            up front rather than generated and then blocked for want of a watermark.
        rules: where each server's blocklist goes (the prompt filter's per-guild rules); pushed
            whenever a server's config is loaded, so a change reaches the filter within the cache time.
        pseudonym: a member id's keyed pseudonym, under which bans outlive /privacy delete.
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        runner: Runner,
        store: ImageStore,
        *,
        quantum: int,
        prompt_gate: PromptGate | None = None,
        credentials: CredentialSigner | None = None,
        payload_of: Callable[[str], int] | None = None,
        min_side: int = 0,
        rules: RulesSink | None = None,
        pseudonym: Callable[[str], str] | None = None,
    ) -> None:
        self._rules = rules
        self._pushed_rules: dict[str, Mapping[str, tuple[str, ...]]] = {}
        self._pseudonym = pseudonym
        self._prompt_gate = prompt_gate
        self._credentials = credentials
        self._payload_of = payload_of
        self._min_side = min_side
        self.settings = settings
        self.storage = storage
        self.guild_configs = GuildConfigStore(storage, settings)  # one store: its cache sees every change
        self._runner = runner
        self._store = store
        self._scheduler = FairScheduler(
            quantum=quantum, per_user_cap=settings.per_user_cap, per_guild_cap=settings.per_guild_queue_cap
        )
        self._meter = ThroughputMeter()
        self._wakeup = asyncio.Event()
        self._submit_lock = asyncio.Lock()
        self._dispatcher: asyncio.Task[None] | None = None
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self._listeners: list[Listener] = []
        self._running: set[str] = set()
        self.resumed: list[Job] = []  # what start() found unfinished
        # Seconds per stage (load, generate, safety, mark, store) of each job run by this process.
        self.timings: dict[str, dict[str, float]] = {}

    # --- lifecycle ---

    async def start(self) -> list[Job]:
        """Resume what a crash left behind, then start dispatching. Returns the resumed jobs."""
        resumed = self.resumed = await self.resume()
        self._meter.seed(await self.storage.recent_runs())
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="imaginebot-dispatcher")
        self._dispatcher.add_done_callback(_log_task_death)
        return resumed

    async def aclose(self) -> None:
        """Stop dispatching. A batch in flight is abandoned here and resumed on the next start."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None

    async def resume(self) -> list[Job]:
        """Put every ``queued`` or ``running`` job from storage back into the scheduler, oldest first."""
        resumed = []
        for job in await self.storage.jobs_in_states(ACTIVE_STATES):
            if job.id in self._running or job.id in self._scheduler:
                continue
            if job.state is JobState.RUNNING:
                job = await self.storage.transition(job.id, JobState.QUEUED, detail="requeued after restart")
            self._scheduler.restore(to_queued(job))
            resumed.append(job)
        if resumed:
            logger.info("resumed %d jobs", len(resumed))
            self._wakeup.set()
        return resumed

    async def adopt_queued(self) -> list[Job]:
        """Schedule ``queued`` jobs another process wrote to the database (the dashboard queues the rerun
        of an accepted appeal this way); jobs this process knows are left alone. Returns those adopted."""
        adopted = []
        async with self._submit_lock:  # a job being submitted here is inserted and scheduled as one step
            for job in await self.storage.jobs_in_states({JobState.QUEUED}):
                if job.id in self._running or self._scheduler.knows(job.id):
                    continue
                self._scheduler.restore(to_queued(job))
                adopted.append(job)
        if adopted:
            logger.info("adopted %d jobs queued by another process", len(adopted))
            for job in adopted:
                self._emit(JobUpdate(job.id, job.state))
            self._wakeup.set()
        return adopted

    # --- requests ---

    async def submit(self, request: JobRequest, *, enforce_caps: bool = True, prechecked: bool = False) -> Job:
        """Accept a request: check caps, persist it as ``queued``, schedule it.

        Args:
            request: a validated request.
            enforce_caps: False for operators (the CLI), who are not rate-limited.
            prechecked: :meth:`precheck` has just passed this very request, so its prompt is not
                judged twice (the caps still are: they may have been reached since).

        The server's /settings apply: its caps and cooldown, and its channel's NSFW policy (which may
        only take away what an age-restricted channel allows).

        Raises:
            QueueFullError: a per-user or per-guild cap is reached (a user-facing message).
            CooldownError: the user's last job in this server is more recent than its cooldown allows.
            PromptBlockedError: the prompt filter blocked the prompt (the message says why, in plain words).
        """
        self._check_size(request)
        config = await self.guild_config(request.guild_id)
        request = _with_channel_policy(request, config)
        if enforce_caps:
            await self.check_not_banned(request.guild_id, request.user_id)
        if not prechecked:
            await self._check_prompt(request, config)
        async with self._submit_lock:  # check + insert + schedule as one step: caps cannot be raced
            if enforce_caps:
                await self._check_caps(request, config)
            job = Job.new(request)
            await self.storage.insert_job(job)
            self._scheduler.restore(to_queued(job))
        self._emit(JobUpdate(job.id, job.state))
        self._wakeup.set()
        return job

    async def precheck(self, request: JobRequest, *, enforce_caps: bool = True) -> None:
        """Run the prompt filter and the caps without queueing anything (front ends answer privately).

        Raises:
            PromptBlockedError: the prompt is blocked (its ``job_id`` is the blocked request, kept for an appeal).
            BannedError: the member is banned from the bot in this server.
            QueueFullError: a cap is reached.
            CooldownError: the server's cooldown has not passed since the user's last job there.
        """
        self._check_size(request)
        config = await self.guild_config(request.guild_id)
        if enforce_caps:
            await self.check_not_banned(request.guild_id, request.user_id)
        await self._check_prompt(_with_channel_policy(request, config), config)
        if enforce_caps:
            await self._check_caps(request, config)

    async def check_not_banned(self, guild_id: str, user_id: str) -> None:
        """Raise :class:`BannedError` if the member is banned from the bot in this server."""
        ids = (user_id,) if self._pseudonym is None else (user_id, self._pseudonym(user_id))
        ban = await self.storage.active_ban(guild_id, ids)
        if ban is not None:
            raise BannedError(ban)

    def _check_size(self, request: JobRequest) -> None:
        if min(request.width, request.height) < self._min_side:
            raise InvalidRequestError(f"size: {request.width}x{request.height} is too small to carry the provenance "
                                      f"watermark; both sides must be at least {self._min_side}")  # fmt: skip

    def guild_queue(self, guild_id: str, *, limit: int = 10) -> list[QueuePlace]:
        """The first ``limit`` queued jobs of one server, with their place in the whole dispatch order."""
        places: list[QueuePlace] = []
        ahead = 0
        for position, queued in enumerate(self._scheduler.snapshot(), 1):
            ahead += queued.cost
            if queued.guild_id == guild_id:
                places.append(QueuePlace(queued.job_id, queued.user_id, position, self._meter.eta_seconds(ahead)))
                if len(places) >= limit:
                    break
        return places

    def queued_for_guild(self, guild_id: str) -> int:
        return self._scheduler.queued_for_guild(guild_id)

    async def _check_prompt(self, request: JobRequest, config: GuildConfig) -> None:
        if self._prompt_gate is None:
            return
        context = PromptContext(request.prompt, request.guild_id, config.strictness, request.age_restricted,
                                request.width, request.height)  # fmt: skip
        verdict = self._prompt_gate.check_prompt(context)  # microseconds: fine on the loop
        if verdict.decision == "block":
            job = await self._record_blocked(request, verdict)
            await self.storage.audit(
                "prompt_blocked", guild_id=request.guild_id, actor_id=request.user_id, target=job.id,
                detail={"category": verdict.category, "scores": dict(verdict.scores)},
            )  # fmt: skip
            raise PromptBlockedError(verdict.reason, verdict.category, job.id)

    async def _record_blocked(self, request: JobRequest, verdict: Verdict) -> Job:
        """Keep a refused request as a ``blocked`` job with its verdicts: moderators see it, and its
        requester may appeal it. Nothing runs and nothing is queued."""
        job = replace(Job.new(request), state=JobState.BLOCKED)
        job = replace(job, finished_at=job.created_at)
        await self.storage.insert_job(job)
        records = [VerdictRecord.from_verdict(job.id, i, verdict) for i in range(request.count)]
        await self.storage.save_outputs(job.id, [], records, None)
        return job

    async def _check_caps(self, request: JobRequest, config: GuildConfig) -> None:
        """The operator's per-user cap (all servers), then this server's caps and cooldown."""
        s = self.settings
        active = self._scheduler.active_for_user(request.user_id)
        if active >= s.per_user_cap:
            raise QueueFullError(
                f"You already have {active} jobs queued or running (the limit is {s.per_user_cap}). "
                "Wait for one to finish or cancel one."
            )
        if active >= config.per_user_cap:  # only then can this server's (tighter) cap be reached
            mine = await self.storage.list_jobs(limit=config.per_user_cap, guild_id=request.guild_id,
                                                user_id=request.user_id, states=ACTIVE_STATES)  # fmt: skip
            if len(mine) >= config.per_user_cap:
                raise QueueFullError(
                    f"You already have {len(mine)} jobs queued or running in this server (its limit is "
                    f"{config.per_user_cap}). Wait for one to finish or cancel one."
                )
        if self._scheduler.queued_for_guild(request.guild_id) >= config.queue_cap:
            raise QueueFullError(f"This server's queue is full ({config.queue_cap} jobs). Try again in a few minutes.")
        if config.cooldown_seconds:
            # A blocked request does not start the cooldown: rephrasing at once is what we want.
            last = await self.storage.list_jobs(limit=1, guild_id=request.guild_id, user_id=request.user_id,
                                                states=_COOLDOWN_STATES)  # fmt: skip
            wait = math.ceil(last[0].created_at + config.cooldown_seconds - time.time()) if last else 0
            if wait > 0:
                raise CooldownError(
                    f"This server has a {config.cooldown_seconds} s cooldown between requests: "
                    f"wait {wait} more second{'s' if wait != 1 else ''}.",
                    retry_after=wait,
                )

    async def preload(self, model: str) -> None:
        """Load a model on the worker now, so a bad model fails before any job is accepted."""
        await self._runner.preload(model)

    async def cancel(self, job_id: str, *, actor_id: str | None = None) -> Job:
        """Cancel a queued job now, or ask the worker to stop a running one.

        Raises:
            JobNotFoundError: no such job.
            IllegalTransitionError: the job is already finished.
        """
        job = await self.storage.get_job(job_id)
        if job.state is JobState.RUNNING or job_id in self._running:
            self._runner.cancel(job_id)  # the dispatcher records the cancellation when the batch returns
        elif job.state is JobState.QUEUED:
            self._scheduler.remove(job_id)
            job = await self.storage.transition(job_id, JobState.CANCELLED, detail=f"cancelled by {actor_id}")
            self._finished(job)
        else:
            raise IllegalTransitionError(f"job {job_id} is already {job.state}")
        await self.storage.audit("cancel", guild_id=job.request.guild_id, actor_id=actor_id, target=job_id)
        return job

    async def wait(self, job_id: str) -> Job:
        """Return the job once it has finished (done, flagged, blocked, failed or cancelled)."""
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        job = await self.storage.get_job(job_id)
        if job.state.finished:
            self._resolve(job)
        return await future

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every update (on the event loop); returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def position(self, job_id: str) -> int | None:
        """1-based place in the dispatch order, or None if the job is not queued."""
        return self._scheduler.position(job_id)

    def eta(self, job_id: str) -> float | None:
        """Seconds until the job should be finished, from measured throughput; None before any data."""
        ahead = self._scheduler.cost_ahead(job_id)
        return None if ahead is None else self._meter.eta_seconds(ahead)

    @property
    def queued(self) -> int:
        return len(self._scheduler)

    @property
    def runner(self) -> Runner:
        """What batches are dispatched to: the in-process worker or the Redis transport."""
        return self._runner

    @property
    def outage(self) -> str | None:
        """Why jobs cannot start now (remote workers unreachable), in words for users; None when all is well.

        Jobs are still accepted and kept meanwhile; they start when the runner is back."""
        return self._runner.outage

    # --- dispatch ---

    async def _dispatch_forever(self) -> None:
        """Start batches in fair order while the runner has a credit for their model (credit-based)."""
        in_flight: dict[asyncio.Task[None], str] = {}  # batch -> its model
        try:
            while True:
                await self._wait_for_work(starved=bool(self._scheduler))
                while batch := self._scheduler.pop_batch(
                    self.settings.max_batch_images, ready=self._ready_for(list(in_flight.values()))
                ):
                    task = asyncio.create_task(self._dispatch(batch), name="imaginebot-batch")
                    in_flight[task] = _model_of_key(batch[0].key)
                    task.add_done_callback(lambda done: in_flight.pop(done, None))
                    task.add_done_callback(lambda _: self._wakeup.set())  # a credit is free again
        finally:  # shutdown: abandon what is in flight; the jobs are resumed from storage on the next start
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    def _ready_for(self, in_flight: Sequence[str]) -> Callable[[Hashable], bool]:
        """The scheduler's ``ready`` test for one pop: asks the runner once per model, not once per guild."""
        answers: dict[str, bool] = {}

        def ready(key: Hashable) -> bool:
            try:
                model = _model_of_key(key)
                if model not in answers:
                    answers[model] = self._runner.can_start(model, in_flight)
                return answers[model]
            except Exception:  # a broken runner must not stop dispatching for good
                logger.exception("runner can_start failed")
                return False

        return ready

    async def _wait_for_work(self, *, starved: bool) -> None:
        """Wait for a submit or a finished batch; poll while jobs wait for capacity that may come back
        (a remote worker's heartbeat, Redis returning) without an event of ours."""
        if not starved:
            await self._wakeup.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), CAPACITY_POLL_SECONDS)
        self._wakeup.clear()

    async def _dispatch(self, batch: Sequence[QueuedJob]) -> None:
        try:
            await self._run_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep dispatching; the jobs stay recoverable in storage
            logger.exception("batch %s crashed", [q.job_id for q in batch])
        finally:
            for queued in batch:
                self._scheduler.finish(queued.job_id)

    async def _run_batch(self, batch: Sequence[QueuedJob]) -> None:
        jobs = []
        for queued in batch:
            try:
                job = await self.storage.transition(queued.job_id, JobState.RUNNING)
            except (IllegalTransitionError, JobNotFoundError):  # cancelled, or deleted (/privacy), since the pop
                continue
            self._running.add(job.id)
            self._emit(JobUpdate(job.id, job.state))
            jobs.append(job)
        if not jobs:
            return
        started = time.monotonic()
        requests = []
        for job in list(jobs):
            try:
                requests.append(await self._generation_request(job))
            except SourceImageError as exc:
                jobs.remove(job)
                self._running.discard(job.id)
                self._finished(await self.storage.transition(job.id, JobState.FAILED, error=str(exc)))
        if not jobs:
            return
        try:
            outcomes = await self._runner.run(requests, on_progress=self._on_progress)
        except Exception as exc:
            logger.exception("worker failed a batch")
            outcomes = [JobOutcome(job.id, OutcomeKind.FAILED, error=f"{type(exc).__name__}: {exc}") for job in jobs]
        for job, outcome in zip(jobs, outcomes, strict=True):
            try:
                await self._record(job, outcome)
            finally:
                self._running.discard(job.id)
        self._meter.record(sum(job.request.cost for job in jobs), time.monotonic() - started)

    async def guild_config(self, guild_id: str) -> GuildConfig:
        """A server's /settings over the operator's defaults and limits (its blocklist goes to the filter)."""
        config = await self.guild_configs.load(guild_id)
        if self._rules is not None and self._pushed_rules.get(guild_id) != config.blocklist:
            self._rules.set(guild_id, additions=config.prompt_additions, exceptions=())
            self._pushed_rules[guild_id] = config.blocklist
        return config

    async def _strictness(self, guild_id: str) -> str:
        return (await self.guild_config(guild_id)).strictness

    async def _generation_request(self, job: Job) -> GenerationRequest:
        """What the worker needs for ``job``, with the source image of a variation or upscale loaded.

        Raises:
            SourceImageError: the image the job starts from is gone or unreadable.
        """
        r = job.request
        init_image = None
        if r.source_job_id is not None and r.source_index is not None:
            outputs = {o.index: o for o in await self.storage.outputs_for(r.source_job_id)}
            source = outputs.get(r.source_index)
            if source is None:
                raise SourceImageError(SOURCE_MISSING)
            try:
                init_image = await asyncio.to_thread(load_source, source.path, (r.width, r.height))
            except OSError as exc:
                logger.warning("job %s: cannot read its source image %s: %s", job.id, source.path, exc)
                raise SourceImageError(SOURCE_UNREADABLE) from exc
        return job.generation_request(strictness=await self._strictness(r.guild_id), init_image=init_image)

    def _on_progress(self, progress: StepProgress) -> None:
        for job_id in progress.job_ids:
            self._emit(JobUpdate(job_id, JobState.RUNNING, progress.step, progress.total))

    async def _record(self, job: Job, outcome: JobOutcome) -> None:
        try:
            await self._record_outcome(job, outcome)
        except JobNotFoundError:  # its requester deleted their data (/privacy delete) while it ran
            logger.info("job %s was deleted while it ran; its result is dropped", job.id)

    async def _record_outcome(self, job: Job, outcome: JobOutcome) -> None:
        self.timings[job.id] = dict(outcome.timings)
        if outcome.kind is OutcomeKind.CANCELLED:
            final = await self.storage.transition(job.id, JobState.CANCELLED, detail="cancelled while running")
        elif outcome.kind is OutcomeKind.FAILED:
            final = await self.storage.transition(job.id, JobState.FAILED, error=outcome.error)
        else:
            try:
                final = await self._store_outputs(job, outcome)
            except Exception as exc:
                logger.exception("storing outputs of %s failed", job.id)
                final = await self.storage.transition(job.id, JobState.FAILED, error=f"could not store images: {exc}")
        self._finished(final)

    async def _store_outputs(self, job: Job, outcome: JobOutcome) -> Job:
        r = job.request
        started = time.perf_counter()
        images = [o.image for o in outcome.images]
        # The prompt goes into the Content Credentials only where the server opted in to personal data.
        prompt = r.prompt if (await self.guild_config(r.guild_id)).credentials_personal else None

        def write(image: Image.Image, output_id: str) -> StoredImage:
            data = encode_png(image)
            if self._credentials is not None:
                data = self._credentials.sign(data, CredentialFields(output_id, r.model, __version__, prompt))
            return self._store.write_encoded(data, image.width, image.height)

        def write_all() -> tuple[list[OutputRecord], tuple[str, str] | None]:
            records = []
            for o in outcome.images:
                if o.image is None:
                    continue
                # The registry: the final file's sha256, a perceptual hash and the watermark payload.
                stored = write(o.image, o.output_id)
                phash = perceptual_hash(o.image)
                payload = self._payload_of(o.output_id) if self._payload_of is not None else None
                # Moderators' cards show a blurred preview first; the full image only on request.
                held = o.verdict.decision == "flag" or r.appeal_of is not None
                preview = self._store.write(make_preview(o.image)) if held else None
                records.append(
                    OutputRecord(job.id, o.index, str(stored.path), stored.sha256, stored.width, stored.height,
                                 o.seed, str(preview.path) if preview else None, phash, payload,
                                 self._credentials is not None)
                )  # fmt: skip
            if not records:
                return records, None
            # The grid is signed too (C2PA, exact-hash lookups); it has no watermark or perceptual hash.
            grid = write(make_grid(images, r.width, r.height), f"{job.id}-grid")
            return records, (str(grid.path), grid.sha256)

        # PNG encoding and hashing are CPU-heavy: never on the event loop.
        outputs, grid = await asyncio.to_thread(write_all)
        verdicts = [VerdictRecord.from_verdict(job.id, o.index, o.verdict) for o in outcome.images]
        await self.storage.save_outputs(job.id, outputs, verdicts, grid)
        self.timings[job.id]["store"] = time.perf_counter() - started
        state = final_state([o.verdict.decision for o in outcome.images])
        if r.appeal_of is not None and state is JobState.DONE:
            state = JobState.FLAGGED  # a rerun on appeal is always seen by a moderator before it is posted
        return await self.storage.transition(job.id, state)

    # --- notifications ---

    def notify(self, job: Job) -> None:
        """Tell listeners and waiters about a change made outside the dispatcher (a moderator's decision)."""
        self._finished(job)

    def _finished(self, job: Job) -> None:
        self._emit(JobUpdate(job.id, job.state))
        self._resolve(job)

    def _resolve(self, job: Job) -> None:
        for future in self._waiters.pop(job.id, []):
            if not future.done():
                future.set_result(job)

    def _emit(self, update: JobUpdate) -> None:
        for listener in list(self._listeners):
            try:
                listener(update)
            except Exception:  # a broken listener must not stop the service
                logger.exception("job listener failed")


def _log_task_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("dispatcher stopped", exc_info=task.exception())
