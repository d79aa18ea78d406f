"""Jobs: the request a user made, its state, and the state machine that governs it."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from PIL import Image

from bot.errors import IllegalTransitionError, InvalidRequestError
from models.types import MAX_SEED, GenerationRequest


class JobState(StrEnum):
    """Where a job is in its life. Every change is stored with a timestamp."""

    QUEUED = "queued"  # accepted and persisted; waiting for the scheduler
    RUNNING = "running"  # handed to a worker
    DONE = "done"  # at least one image allowed, none held; ready to post
    FLAGGED = "flagged"  # held for moderators; never posted unreviewed
    BLOCKED = "blocked"  # every image blocked by the safety policy
    FAILED = "failed"  # generation or storage failed; error says why
    CANCELLED = "cancelled"  # cancelled by the requester or a moderator
    APPROVED = "approved"  # a moderator released a flagged job
    REJECTED = "rejected"  # a moderator rejected a flagged job

    @property
    def finished(self) -> bool:
        """True once generation is over (whatever came of it); moderation may still follow."""
        return self not in ACTIVE_STATES


_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    # RUNNING -> QUEUED only when a crash or restart hands the job back to the scheduler.
    JobState.RUNNING: frozenset(
        {
            JobState.DONE,
            JobState.FLAGGED,
            JobState.BLOCKED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.QUEUED,
        }
    ),
    JobState.FLAGGED: frozenset({JobState.APPROVED, JobState.REJECTED}),
    JobState.DONE: frozenset(),
    JobState.BLOCKED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.APPROVED: frozenset(),
    JobState.REJECTED: frozenset(),
}

ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})


def check_transition(job_id: str, current: JobState, target: JobState) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current -> target`` is allowed."""
    if target not in _ALLOWED[current]:
        raise IllegalTransitionError(f"job {job_id}: cannot go from {current} to {target}")


class JobKind(StrEnum):
    """What a job makes: new images from a prompt, or images that start from an earlier one."""

    IMAGINE = "imagine"  # text to image
    VARY = "vary"  # image to image from one output, at a variation strength
    UPSCALE = "upscale"  # one output at twice the size, refined by a light image-to-image pass


# How far a variation may move from its source (image-to-image strength, 0..1).
VARIATION_STRENGTH = {"subtle": 0.4, "strong": 0.75}
UPSCALE_STRENGTH = 0.3  # enough to add detail at the new size, little enough to keep the picture
UPSCALE_FACTOR = 2
# Why a variation or upscale failed before it ran (shown to the user as they are).
SOURCE_MISSING = "the image it starts from is no longer available"
SOURCE_UNREADABLE = "the image it starts from could not be read"
SOURCE_ERRORS = frozenset({SOURCE_MISSING, SOURCE_UNREADABLE})
# Why remote image workers gave a job up (bot.remote.worker); shown to the user as they are.
WORKERS_GAVE_UP = (
    "the image workers gave up on it after {n} tries (a worker crashed or stopped while making it each time)"
)
WORKERS_COULD_NOT_READ = "the image workers could not read it ({reason})"
_SHOWN_PREFIX = "the image workers "


def shown_error(error: str | None) -> bool:
    """Whether a failed job's error is meant for its requester (else it is internal: "try again")."""
    return error is not None and (error in SOURCE_ERRORS or error.startswith(_SHOWN_PREFIX))


def steps_for(steps: int, strength: float) -> int:
    """At least ``steps``, and enough that ``int(steps * strength)`` (what diffusers runs) is >= 1."""
    return max(steps, math.ceil(1 / strength - 1e-9))


@dataclass(frozen=True)
class Requester:
    """Who asks for a job that derives from another (a reroll, variation or upscale), and where."""

    user_id: str
    channel_id: str | None
    age_restricted: bool


# Request limits. The Discord front end exposes the same ranges as typed options.
MAX_PROMPT_CHARS = 1000
MAX_IMAGES = 4
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_STEPS = 150
MAX_GUIDANCE = 30.0


def new_job_id() -> str:
    """A short, URL-safe, sortable-enough id (time prefix + randomness)."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class JobRequest:
    """What a user asked for, validated. Build it with :meth:`create`."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    width: int
    height: int
    count: int
    guidance: float
    model: str
    guild_id: str
    user_id: str
    channel_id: str | None = None
    parent_job_id: str | None = None  # the job this one came from (reroll, variation, upscale)
    age_restricted: bool = False  # from an age-restricted channel: suggestive (never explicit) may pass
    kind: JobKind = JobKind.IMAGINE
    source_job_id: str | None = None  # VARY / UPSCALE: the image they start from...
    source_index: int | None = None  # ...is this output of that job
    strength: float | None = None  # VARY / UPSCALE: image-to-image strength
    appeal_of: str | None = None  # the rerun of this blocked job, whose appeal a moderator accepted

    @classmethod
    def create(
        cls,
        prompt: str,
        *,
        model: str,
        negative_prompt: str = "",
        seed: int | None = None,
        steps: int,
        width: int,
        height: int,
        count: int = 1,
        guidance: float,
        guild_id: str = "local",
        user_id: str = "local",
        channel_id: str | None = None,
        parent_job_id: str | None = None,
        age_restricted: bool = False,
        kind: JobKind = JobKind.IMAGINE,
        source_job_id: str | None = None,
        source_index: int | None = None,
        strength: float | None = None,
        appeal_of: str | None = None,
    ) -> JobRequest:
        """Validate every option; raise :class:`InvalidRequestError` naming the bad one."""
        prompt = prompt.strip()
        if not prompt:
            raise InvalidRequestError("prompt: must not be empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequestError(f"prompt: {len(prompt)} characters, at most {MAX_PROMPT_CHARS}")
        if len(negative_prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequestError(f"negative: {len(negative_prompt)} characters, at most {MAX_PROMPT_CHARS}")
        if seed is None:
            seed = random_seed()
        if not 0 <= seed <= MAX_SEED - (count - 1 if 1 <= count <= MAX_IMAGES else 0):
            raise InvalidRequestError(f"seed: {seed} is outside 0..{MAX_SEED - MAX_IMAGES + 1}")
        if not 1 <= steps <= MAX_STEPS:
            raise InvalidRequestError(f"steps: {steps} is outside 1..{MAX_STEPS}")
        for name, side in (("width", width), ("height", height)):
            if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
                raise InvalidRequestError(f"size: {name} {side} must be a multiple of 8 in {MIN_SIDE}..{MAX_SIDE}")
        if not 1 <= count <= MAX_IMAGES:
            raise InvalidRequestError(f"count: {count} is outside 1..{MAX_IMAGES}")
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InvalidRequestError(f"guidance: {guidance} is outside 0..{MAX_GUIDANCE}")
        if not model:
            raise InvalidRequestError("model: must not be empty")
        _check_source(JobKind(kind), source_job_id, source_index, strength, steps)
        return cls(
            prompt=prompt,
            negative_prompt=negative_prompt.strip(),
            seed=seed,
            steps=steps,
            width=width,
            height=height,
            count=count,
            guidance=float(guidance),
            model=model,
            guild_id=guild_id,
            user_id=user_id,
            channel_id=channel_id,
            parent_job_id=parent_job_id,
            age_restricted=age_restricted,
            kind=JobKind(kind),
            source_job_id=source_job_id,
            source_index=source_index,
            strength=strength,
            appeal_of=appeal_of,
        )

    def rerolled(self, by: Requester, *, parent_job_id: str) -> JobRequest:
        """The same request with a new random seed, asked for by ``by``."""
        return JobRequest.create(**(asdict(self) | asdict(by) | {"seed": None, "parent_job_id": parent_job_id,
                                                                       "appeal_of": None}))  # fmt: skip

    @property
    def effective_steps(self) -> int:
        """Denoising steps the pipeline runs: image-to-image runs ``int(steps * strength)``."""
        return self.steps if self.strength is None else int(self.steps * self.strength)

    @property
    def seeds(self) -> tuple[int, ...]:
        """Image ``i`` uses ``seed + i``: rerunning one image needs only its own seed."""
        return tuple(self.seed + i for i in range(self.count))

    @property
    def cost(self) -> int:
        """Scheduling cost: steps run x pixels x images (in units of 64x64 pixels)."""
        return self.effective_steps * (self.width // 64) * (self.height // 64) * self.count


@dataclass(frozen=True)
class Job:
    """A persisted request with its state. Immutable: transitions return a new value."""

    id: str
    request: JobRequest
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    grid_path: str | None = None

    @classmethod
    def new(cls, request: JobRequest) -> Job:
        now = time.time()
        return cls(id=new_job_id(), request=request, created_at=now, updated_at=now)

    def moved_to(self, target: JobState, *, at: float, error: str | None = None) -> Job:
        """Return this job in ``target`` state, or raise if the change is illegal."""
        check_transition(self.id, self.state, target)
        started = at if target is JobState.RUNNING else self.started_at
        finished = at if target.finished else self.finished_at
        return replace(self, state=target, updated_at=at, started_at=started, finished_at=finished, error=error)

    def generation_request(
        self, *, strictness: str = "standard", init_image: Image.Image | None = None
    ) -> GenerationRequest:
        """What the worker needs; ``init_image`` is the source image of a variation or upscale."""
        r = self.request
        return GenerationRequest(
            job_id=self.id,
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            seeds=r.seeds,
            width=r.width,
            height=r.height,
            steps=r.steps,
            guidance=r.guidance,
            model=r.model,
            guild_id=r.guild_id,
            strictness=strictness,
            allow_suggestive=r.age_restricted,
            init_image=init_image,
            strength=r.strength,
            appealed=r.appeal_of is not None,
        )


def _check_source(kind: JobKind, job_id: str | None, index: int | None, strength: float | None, steps: int) -> None:
    if kind is JobKind.IMAGINE:
        if job_id is not None or index is not None or strength is not None:
            raise InvalidRequestError("source: a text-to-image job starts from no image")
        return
    if job_id is None or index is None or not 0 <= index < MAX_IMAGES:
        raise InvalidRequestError(f"source: {kind} needs the job and image (0..{MAX_IMAGES - 1}) it starts from")
    if strength is None or not 0.0 < strength <= 1.0:
        raise InvalidRequestError(f"strength: {strength} is outside (0, 1]")
    if int(steps * strength) < 1:
        raise InvalidRequestError(
            f"steps: {steps} steps at strength {strength} run none; use {steps_for(steps, strength)}"
        )


def variation_request(source: Job, index: int, strength: float, by: Requester) -> JobRequest:
    """Variations of image ``index`` of ``source``: as many images as it had, from a new seed.

    Raises:
        InvalidRequestError: ``index`` or ``strength`` is out of range.
    """
    r = source.request
    return JobRequest.create(
        r.prompt, model=r.model, negative_prompt=r.negative_prompt, steps=steps_for(r.steps, strength),
        width=r.width, height=r.height, count=r.count, guidance=r.guidance, guild_id=r.guild_id,
        parent_job_id=source.id, kind=JobKind.VARY, source_job_id=source.id, source_index=index, strength=strength,
        **asdict(by),
    )  # fmt: skip


def upscale_request(source: Job, index: int, seed: int, by: Requester, *, max_side: int) -> JobRequest:
    """Image ``index`` of ``source`` at twice its size, refined with that image's own seed.

    Raises:
        InvalidRequestError: twice the size would pass ``max_side`` (what the model handles).
    """
    r = source.request
    if not can_upscale(r, max_side):
        raise InvalidRequestError(f"This image is already {r.width}x{r.height}; this model upscales to at most "
                                  f"{min(max_side, MAX_SIDE)} pixels a side.")  # fmt: skip
    return JobRequest.create(
        r.prompt, model=r.model, negative_prompt=r.negative_prompt, seed=seed,
        steps=steps_for(r.steps, UPSCALE_STRENGTH), width=r.width * UPSCALE_FACTOR, height=r.height * UPSCALE_FACTOR,
        count=1, guidance=r.guidance, guild_id=r.guild_id, parent_job_id=source.id, kind=JobKind.UPSCALE,
        source_job_id=source.id, source_index=index, strength=UPSCALE_STRENGTH, **asdict(by),
    )  # fmt: skip


def can_upscale(request: JobRequest, max_side: int) -> bool:
    return max(request.width, request.height) * UPSCALE_FACTOR <= min(max_side, MAX_SIDE)
