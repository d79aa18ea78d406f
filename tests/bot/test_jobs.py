from __future__ import annotations

import pytest

from bot.errors import IllegalTransitionError, InvalidRequestError
from bot.jobs import ACTIVE_STATES, Job, JobRequest, JobState, check_transition


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
