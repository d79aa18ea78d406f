from __future__ import annotations

import pytest

from bot.errors import IllegalTransitionError, InvalidRequestError
from bot.jobs import (
    ACTIVE_STATES,
    UPSCALE_STRENGTH,
    Job,
    JobKind,
    JobRequest,
    JobState,
    Requester,
    can_upscale,
    check_transition,
    steps_for,
    upscale_request,
    variation_request,
)


def request(**overrides: object) -> JobRequest:
    options: dict[str, object] = dict(model="m", steps=4, width=64, height=64, guidance=1.0, count=4, seed=7)
    options.update(overrides)
    return JobRequest.create("a lighthouse", **options)  # type: ignore[arg-type]


LEGAL = [
    (JobState.QUEUED, JobState.RUNNING),
    (JobState.QUEUED, JobState.CANCELLED),
    (JobState.QUEUED, JobState.FAILED),
    (JobState.RUNNING, JobState.DONE),
    (JobState.RUNNING, JobState.FLAGGED),
    (JobState.RUNNING, JobState.BLOCKED),
    (JobState.RUNNING, JobState.FAILED),
    (JobState.RUNNING, JobState.CANCELLED),
    (JobState.RUNNING, JobState.QUEUED),
    (JobState.FLAGGED, JobState.APPROVED),
    (JobState.FLAGGED, JobState.REJECTED),
]


@pytest.mark.parametrize(("current", "target"), LEGAL)
def test_legal_transitions(current: JobState, target: JobState) -> None:
    check_transition("j", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobState.QUEUED, JobState.DONE),
        (JobState.DONE, JobState.RUNNING),
        (JobState.CANCELLED, JobState.QUEUED),
        (JobState.BLOCKED, JobState.APPROVED),
        (JobState.DONE, JobState.FLAGGED),
        (JobState.APPROVED, JobState.REJECTED),
        (JobState.QUEUED, JobState.QUEUED),
    ],
)
def test_illegal_transitions_raise(current: JobState, target: JobState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{current} to {target}"):
        check_transition("j", current, target)


def test_every_pair_is_either_legal_or_raises() -> None:
    for current in JobState:
        for target in JobState:
            if (current, target) in LEGAL:
                check_transition("j", current, target)
            else:
                with pytest.raises(IllegalTransitionError):
                    check_transition("j", current, target)


def test_moved_to_records_timestamps() -> None:
    job = Job.new(request())
    running = job.moved_to(JobState.RUNNING, at=100.0)
    assert running.started_at == 100.0 and running.finished_at is None
    done = running.moved_to(JobState.DONE, at=105.0)
    assert done.finished_at == 105.0 and done.updated_at == 105.0 and done.started_at == 100.0
    assert job.state is JobState.QUEUED  # immutable


def test_active_states() -> None:
    assert {s for s in JobState if not s.finished} == ACTIVE_STATES


def test_seeds_and_cost() -> None:
    r = request(seed=10, count=3, steps=5, width=128, height=64)
    assert r.seeds == (10, 11, 12)
    assert r.cost == 5 * 2 * 1 * 3


def test_image_to_image_costs_the_steps_it_runs() -> None:
    r = request(seed=1, count=2, steps=10, width=64, height=64, kind=JobKind.VARY, source_job_id="p",
                source_index=1, strength=0.45)  # fmt: skip
    assert r.effective_steps == 4
    assert r.cost == 4 * 2
    assert steps_for(1, 0.4) == 3 and steps_for(4, 0.3) == 4 and steps_for(4, 0.25) == 4 and steps_for(1, 1.0) == 1


def test_reroll_keeps_everything_but_the_seed_and_the_asker() -> None:
    r = request(seed=5, kind=JobKind.UPSCALE, source_job_id="p", source_index=2, strength=0.3, steps=4)
    again = r.rerolled(Requester("u2", "c2", True), parent_job_id="j1")
    assert (again.kind, again.source_job_id, again.source_index, again.strength) == (JobKind.UPSCALE, "p", 2, 0.3)
    assert (again.user_id, again.channel_id, again.age_restricted, again.parent_job_id) == ("u2", "c2", True, "j1")
    assert again.prompt == r.prompt and again.steps == r.steps


def test_random_seed_is_fixed_at_creation() -> None:
    r = request(seed=None)
    assert 0 <= r.seed < 2**32
    assert r.seeds[0] == r.seed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps: 0"),
        ({"steps": 151}, "steps: 151"),
        ({"width": 100}, "size: width 100"),
        ({"height": 4096}, "size: height 4096"),
        ({"count": 5}, "count: 5"),
        ({"count": 0}, "count: 0"),
        ({"guidance": -1.0}, "guidance: -1.0"),
        ({"seed": -3}, "seed: -3"),
        ({"seed": 2**32 - 2, "count": 4}, "seed: 4294967294"),
        ({"model": ""}, "model:"),
        ({"strength": 0.5}, "source: a text-to-image job"),
        ({"kind": JobKind.VARY, "strength": 0.5}, "source: vary needs"),
        ({"kind": JobKind.UPSCALE, "source_job_id": "p", "source_index": 4, "strength": 0.5}, "source: upscale needs"),
        ({"kind": JobKind.VARY, "source_job_id": "p", "source_index": 0, "strength": 1.5}, "strength: 1.5"),
        (
            {"kind": JobKind.VARY, "source_job_id": "p", "source_index": 0, "strength": 0.1, "steps": 4},
            "steps: 4 steps at strength 0.1 run none; use 10",
        ),
    ],
)
def test_invalid_options_name_the_option(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        request(**overrides)


def test_empty_and_long_prompts() -> None:
    with pytest.raises(InvalidRequestError, match="prompt: must not be empty"):
        JobRequest.create("   ", model="m", steps=1, width=64, height=64, guidance=0)
    with pytest.raises(InvalidRequestError, match="prompt: 1001 characters"):
        JobRequest.create("x" * 1001, model="m", steps=1, width=64, height=64, guidance=0)


def test_variation_and_upscale_requests_derive_from_their_source() -> None:
    source = Job.new(request(seed=7, count=2, steps=1, width=256, height=128, guild_id="g"))
    by = Requester("bob", "c", False)
    vary = variation_request(source, 1, 0.4, by)
    assert (vary.kind, vary.source_job_id, vary.source_index, vary.parent_job_id) == (JobKind.VARY, source.id, 1,
                                                                                        source.id)  # fmt: skip
    assert (vary.steps, vary.effective_steps, vary.count, vary.user_id, vary.guild_id) == (3, 1, 2, "bob", "g")
    up = upscale_request(source, 0, 8, by, max_side=512)
    assert (up.width, up.height, up.count, up.seed, up.strength) == (512, 256, 1, 8, UPSCALE_STRENGTH)
    assert up.effective_steps >= 1
    with pytest.raises(InvalidRequestError, match="at most 256 pixels"):
        upscale_request(source, 0, 8, by, max_side=256)
    assert can_upscale(source.request, 512) and not can_upscale(up, 512) and can_upscale(up, 10_000)
    assert not can_upscale(request(width=1088, height=64), 10_000)  # 2176 would pass the request limit of 2048
