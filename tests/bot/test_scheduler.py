"""Tests for the per-guild fair scheduler and the throughput meter."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import QueueFullError, UserFacingError
from bot.scheduler import FairScheduler, QueuedJob
from bot.throughput import ThroughputMeter

Q = 10  # quantum used by most tests
_ids = itertools.count()


def job(
    guild: str,
    *,
    user: str | None = None,
    cost: int = Q,
    images: int = 1,
    key: Hashable = "k",
    job_id: str | None = None,
) -> QueuedJob:
    jid = job_id if job_id is not None else f"{guild}{next(_ids)}"
    return QueuedJob(
        job_id=jid,
        guild_id=guild,
        user_id=user if user is not None else f"user-{jid}",
        cost=cost,
        images=images,
        key=key,
        enqueued_at=0.0,
    )


def scheduler(*, quantum: int = Q, per_user_cap: int = 1000, per_guild_cap: int = 1000) -> FairScheduler:
    return FairScheduler(quantum=quantum, per_user_cap=per_user_cap, per_guild_cap=per_guild_cap)


def drain(s: FairScheduler) -> list[QueuedJob]:
    """Pop everything one job at a time (every job in these tests has at most 4 images)."""
    out: list[QueuedJob] = []
    while batch := s.pop_batch(1):
        assert len(batch) == 1
        out.extend(batch)
    return out


class ReferenceDrr:
    """Textbook deficit round-robin, one visit step at a time, with no shortcuts."""

    def __init__(self, quantum: int) -> None:
        self.quantum = quantum
        self.ring: list[str] = []
        self.deficit: dict[str, int] = {}
        self.queues: dict[str, list[QueuedJob]] = {}
        self.visiting = False

    def push(self, j: QueuedJob) -> None:
        if j.guild_id not in self.queues:
            self.queues[j.guild_id] = []
            self.ring.append(j.guild_id)
            self.deficit[j.guild_id] = 0
        self.queues[j.guild_id].append(j)

    def _end_visit_if_over(self, guild: str) -> None:
        queue = self.queues[guild]
        if not queue:
            self.ring.remove(guild)
            del self.queues[guild], self.deficit[guild]
            self.visiting = False
        elif queue[0].cost > self.deficit[guild]:
            self.ring.append(self.ring.pop(0))
            self.visiting = False

    def pop(self) -> QueuedJob | None:
        while self.ring:
            guild = self.ring[0]
            if not self.visiting:
                self.deficit[guild] += self.quantum
                self.visiting = True
            head = self.queues[guild][0]
            if head.cost <= self.deficit[guild]:
                self.deficit[guild] -= head.cost
                self.queues[guild].pop(0)
                self._end_visit_if_over(guild)
                return head
            self.ring.append(self.ring.pop(0))
            self.visiting = False
        return None

    def remove(self, j: QueuedJob) -> None:
        guild = j.guild_id
        at_front = self.ring[0] == guild
        self.queues[guild].remove(j)
        if not self.queues[guild]:
            self.ring.remove(guild)
            del self.queues[guild], self.deficit[guild]
            if at_front:
                self.visiting = False
        elif at_front and self.visiting:
            self._end_visit_if_over(guild)


# --- fairness -------------------------------------------------------------------------------


@pytest.mark.parametrize("popped_before", [0, 1, 7])
def test_newcomer_guild_waits_for_at_most_one_job(popped_before: int) -> None:
    s = scheduler()
    for _ in range(50):
        s.push(job("A"))
    for _ in range(popped_before):
        s.pop_batch(1)
    newcomer = job("B")
    s.push(newcomer)
    position = s.position(newcomer.job_id)
    assert position is not None and position <= 2
    next_two = s.pop_batch(1) + s.pop_batch(1)
    assert newcomer in next_two


def test_newcomer_waits_only_for_current_visits_of_each_active_guild() -> None:
    # Jobs of cost Q/5: every visit dispatches five of them (one quantum's worth).
    s = scheduler()
    for guild in "ABC":
        for _ in range(20):
            s.push(job(guild, cost=Q // 5))
    s.pop_batch(1)  # A is now mid-visit, with four jobs' worth of deficit left
    newcomer = job("D", cost=Q)
    s.push(newcomer)
    assert s.position(newcomer.job_id) == 4 + 5 + 5 + 1
    popped = drain(s)
    waited = popped.index(newcomer)
    assert Counter(j.guild_id for j in popped[:waited]) == {"A": 4, "B": 5, "C": 5}


def test_round_robin_interleaves_three_guilds() -> None:
    s = scheduler()
    for guild in "ABC":
        for n in range(3):
            s.push(job(guild, job_id=f"{guild}{n}"))
    assert [j.job_id for j in drain(s)] == ["A0", "B0", "C0", "A1", "B1", "C1", "A2", "B2", "C2"]


def test_costly_job_waits_for_its_guild_to_save_up() -> None:
    s = scheduler()
    costly = job("A", cost=3 * Q)
    s.push(costly)
    for _ in range(5):
        s.push(job("B"))
    order = [j.guild_id for j in drain(s)]
    assert order[:3] == ["B", "B", "A"]


def test_cost_weighting_gives_costly_guild_a_quarter_of_the_jobs() -> None:
    s = scheduler()
    for _ in range(1000):
        s.push(job("heavy", cost=4 * Q))
        s.push(job("light", cost=Q))
    counts = Counter(s.pop_batch(1)[0].guild_id for _ in range(500))
    assert counts["light"] / counts["heavy"] == pytest.approx(4.0, rel=0.05)


def test_rounds_nobody_can_afford_are_skipped_exactly() -> None:
    s = scheduler(quantum=1)
    a, b = job("A", cost=500), job("B", cost=300)
    s.push(a)
    s.push(b)
    assert s.snapshot() == [b, a]
    assert drain(s) == [b, a]


# --- caps and errors ------------------------------------------------------------------------


def test_user_cap_counts_queued_and_running_and_finish_frees_a_slot() -> None:
    s = scheduler(per_user_cap=3)
    jobs = [job(g, user="u") for g in "ABC"]
    for j in jobs:
        s.push(j)
    with pytest.raises(QueueFullError) as caught:
        s.push(job("D", user="u"))
    assert str(caught.value) == (
        "You already have 3 jobs queued or running (the limit is 3). Wait for one to finish or cancel one."
    )
    running = s.pop_batch(1)[0]
    assert s.active_for_user("u") == 3
    with pytest.raises(QueueFullError):
        s.push(job("D", user="u"))
    s.finish(running.job_id)
    assert s.active_for_user("u") == 2
    s.push(job("D", user="u"))
    assert s.active_for_user("u") == 3


def test_remove_frees_a_user_slot() -> None:
    s = scheduler(per_user_cap=1)
    j = job("A", user="u")
    s.push(j)
    assert s.remove(j.job_id)
    s.push(job("A", user="u"))


def test_guild_cap_counts_queued_jobs() -> None:
    s = scheduler(per_guild_cap=2)
    s.push(job("A"))
    s.push(job("A"))
    with pytest.raises(QueueFullError) as caught:
        s.push(job("A"))
    assert isinstance(caught.value, UserFacingError)
    assert str(caught.value) == (
        "This server's queue is full (2 jobs waiting, the limit is 2). Try again when some have finished."
    )
    s.push(job("B"))  # other guilds are unaffected
    s.pop_batch(1)  # A's first job starts running: one queued slot frees up
    s.push(job("A"))
    assert s.queued_for_guild("A") == 2


def test_restore_ignores_caps() -> None:
    s = scheduler(per_user_cap=1, per_guild_cap=1)
    s.push(job("A", user="u"))
    s.restore(job("A", user="u"))
    s.restore(job("A", user="v"))
    assert len(s) == 3
    assert s.queued_for_guild("A") == 3
    assert s.active_for_user("u") == 2


def test_duplicate_job_id_is_rejected_while_queued_or_running() -> None:
    s = scheduler()
    s.push(job("A", job_id="x"))
    with pytest.raises(ValueError, match="'x'"):
        s.push(job("B", job_id="x"))
    s.pop_batch(1)
    with pytest.raises(ValueError, match="'x'"):
        s.restore(job("B", job_id="x"))
    s.finish("x")
    s.push(job("B", job_id="x"))


def test_finish_of_unknown_or_queued_job_is_a_no_op() -> None:
    s = scheduler()
    j = job("A", user="u")
    s.push(j)
    s.finish("nope")
    s.finish(j.job_id)
    assert s.active_for_user("u") == 1
    assert len(s) == 1


@pytest.mark.parametrize("name", ["quantum", "per_user_cap", "per_guild_cap"])
def test_settings_below_one_are_rejected_by_name(name: str) -> None:
    kwargs = {"quantum": 1, "per_user_cap": 1, "per_guild_cap": 1, name: 0}
    with pytest.raises(ValueError, match=f"{name}: 0"):
        FairScheduler(**kwargs)


def test_queued_job_values_are_validated() -> None:
    with pytest.raises(ValueError, match="cost: 0"):
        job("A", cost=0)
    with pytest.raises(ValueError, match="images: 5"):
        job("A", images=5)
    with pytest.raises(ValueError, match="max_images: 0"):
        scheduler().pop_batch(0)


# --- batching -------------------------------------------------------------------------------


def test_pop_batch_takes_compatible_jobs_in_fair_order_up_to_max_images() -> None:
    s = scheduler()
    a0, b0, a1, b1 = job("A", images=1), job("B", images=2), job("A", images=1), job("B", images=1)
    for j in (a0, b0, a1, b1):
        s.push(j)
    assert s.pop_batch(4) == [a0, b0, a1]  # 4 images; b1 would make 5
    assert s.pop_batch(4) == [b1]
    assert s.pop_batch(4) == []


def test_pop_batch_stops_at_the_first_incompatible_job() -> None:
    s = scheduler()
    a0, b0, a1 = job("A", key="x"), job("B", key="y"), job("A", key="x")
    for j in (a0, b0, a1):
        s.push(j)
    assert s.pop_batch(4) == [a0]  # a1 matches but must not jump ahead of b0
    assert s.pop_batch(4) == [b0]
    assert s.pop_batch(4) == [a1]


def test_pop_batch_continues_a_visit_within_one_guild() -> None:
    s = scheduler()
    jobs = [job("A", cost=Q // 5) for _ in range(7)]
    for j in jobs:
        s.push(j)
    assert s.pop_batch(4) == jobs[:4]
    assert s.pop_batch(4) == jobs[4:]  # the rest of this visit, then the next visit


def test_pop_batch_returns_an_oversized_first_job_alone() -> None:
    s = scheduler()
    big, small = job("A", images=4), job("A", images=1)
    s.push(big)
    s.push(small)
    assert s.pop_batch(2) == [big]
    assert s.pop_batch(2) == [small]


# --- cancellation and order prediction ------------------------------------------------------


def test_remove_queued_job() -> None:
    s = scheduler()
    a0, a1, b0 = job("A"), job("A"), job("B")
    for j in (a0, a1, b0):
        s.push(j)
    assert s.position(b0.job_id) == 2
    assert a0.job_id in s
    assert s.remove(a0.job_id)
    assert a0.job_id not in s
    assert not s.remove(a0.job_id)
    assert s.position(a0.job_id) is None
    assert len(s) == 2
    assert s.snapshot() == [a1, b0]
    running = s.pop_batch(1)[0]
    assert not s.remove(running.job_id)


def test_remove_last_job_of_a_guild_takes_it_out_of_the_ring() -> None:
    s = scheduler()
    a, b, c = job("A"), job("B"), job("C")
    for j in (a, b, c):
        s.push(j)
    assert s.remove(b.job_id)
    assert s.queued_for_guild("B") == 0
    assert drain(s) == [a, c]


def test_removing_the_head_mid_visit_ends_the_visit_if_the_next_job_is_unaffordable() -> None:
    s = scheduler()
    a0, a1, a2, b0 = job("A", cost=2), job("A", cost=2), job("A", cost=9), job("B", cost=1)
    for j in (a0, a1, a2, b0):
        s.push(j)
    assert s.pop_batch(1) == [a0]  # A is mid-visit with 8 left: enough for a1, not for a2
    assert s.remove(a1.job_id)
    assert s.snapshot() == [b0, a2]
    assert drain(s) == [b0, a2]


def test_position_and_cost_ahead_of_unknown_or_running_job_are_none() -> None:
    s = scheduler()
    j = job("A")
    s.push(j)
    s.pop_batch(1)
    assert s.position(j.job_id) is None
    assert s.cost_ahead(j.job_id) is None
    assert s.position("nope") is None


@settings(max_examples=200, deadline=None)
@given(
    quantum=st.integers(1, 30),
    specs=st.lists(st.tuples(st.sampled_from("abcde"), st.integers(1, 80), st.sampled_from("xy")), max_size=60),
)
def test_prediction_matches_pop_order(quantum: int, specs: list[tuple[str, int, str]]) -> None:
    s = scheduler(quantum=quantum)
    jobs = [job(guild, cost=cost, key=key, images=4) for guild, cost, key in specs]
    for j in jobs:
        s.push(j)
    # Query in a shuffled-ish order so the lazy replay is exercised both forwards and from cache.
    positions = {j.job_id: s.position(j.job_id) for j in reversed(jobs)}
    costs = {j.job_id: s.cost_ahead(j.job_id) for j in jobs}
    snapshot = s.snapshot()
    popped = [s.pop_batch(4) for _ in jobs]
    assert all(len(batch) == 1 for batch in popped)
    order = [batch[0] for batch in popped]
    assert s.pop_batch(4) == []
    assert snapshot == order
    assert positions == {j.job_id: i + 1 for i, j in enumerate(order)}
    assert costs == {j.job_id: sum(o.cost for o in order[: i + 1]) for i, j in enumerate(order)}


_push = st.tuples(
    st.just("push"), st.sampled_from("abcd"), st.integers(1, 40), st.integers(1, 4), st.sampled_from("xy")
)
# Pushes outnumber pops and removes so that several guilds compete for most of the run.
_op = st.one_of(
    _push,
    _push,
    _push,
    st.tuples(st.just("pop"), st.integers(1, 8)),
    st.tuples(st.just("remove"), st.integers(0, 1000)),
)


def _check_batch(batch: list[QueuedJob], max_images: int, s: FairScheduler) -> None:
    assert all(j.key == batch[0].key for j in batch)
    images = sum(j.images for j in batch)
    assert len(batch) == 1 or images <= max_images
    following = s.snapshot()[:1]
    assert not following or following[0].key != batch[0].key or images + following[0].images > max_images


@settings(max_examples=300, deadline=None)
@given(quantum=st.integers(1, 25), ops=st.lists(_op, min_size=10, max_size=150))
def test_matches_textbook_drr_under_pushes_pops_and_removes(quantum: int, ops: list[tuple[Any, ...]]) -> None:
    s, ref = scheduler(quantum=quantum), ReferenceDrr(quantum)
    queued: list[QueuedJob] = []
    for op in ops:
        if op[0] == "push":
            _, guild, cost, images, key = op
            j = job(guild, cost=cost, images=images, key=key)
            s.push(j)
            ref.push(j)
            queued.append(j)
        elif op[0] == "pop":
            max_images = op[1]
            predicted = s.snapshot()
            batch = s.pop_batch(max_images)
            assert batch == [ref.pop() for _ in batch]
            assert batch == predicted[: len(batch)]
            if batch:
                _check_batch(batch, max_images, s)
            for j in batch:
                queued.remove(j)
        elif queued:
            victim = queued.pop(op[1] % len(queued))
            assert s.remove(victim.job_id)
            ref.remove(victim)
    assert len(s) == len(queued)
    snapshot = s.snapshot()
    assert [s.position(j.job_id) for j in snapshot] == list(range(1, len(snapshot) + 1))
    rest = drain(s)
    assert rest == snapshot
    assert rest == [ref.pop() for _ in rest]
    assert ref.pop() is None


# --- throughput -----------------------------------------------------------------------------


def test_throughput_meter_has_no_estimate_before_a_measurement() -> None:
    meter = ThroughputMeter()
    assert meter.rate is None
    assert meter.eta_seconds(100) is None


def test_throughput_meter_estimates_eta() -> None:
    meter = ThroughputMeter(alpha=0.5)
    meter.record(100, 2.0)
    assert meter.rate == pytest.approx(50.0)
    assert meter.eta_seconds(500) == pytest.approx(10.0)
    meter.record(300, 2.0)  # averages: cost 200, seconds 2.0
    assert meter.rate == pytest.approx(100.0)
    assert meter.eta_seconds(0) == 0.0


def test_throughput_meter_weighs_batches_by_time() -> None:
    meter = ThroughputMeter(alpha=0.5)
    meter.seed([(1000, 10.0), (10, 0.01)])  # a tiny fast batch must not dominate
    assert meter.samples == 2
    assert meter.rate == pytest.approx(505 / 5.005)


def test_throughput_meter_follows_a_change_in_speed() -> None:
    meter = ThroughputMeter(alpha=0.3)
    meter.seed((100, 1.0) for _ in range(20))
    for _ in range(30):
        meter.record(100, 4.0)
    assert meter.rate == pytest.approx(25.0, rel=0.01)


def test_throughput_meter_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="alpha: 0"):
        ThroughputMeter(alpha=0.0)
    meter = ThroughputMeter()
    with pytest.raises(ValueError, match="cost: 0"):
        meter.record(0, 1.0)
    with pytest.raises(ValueError, match=r"seconds: 0\.0"):
        meter.record(10, 0.0)
    with pytest.raises(ValueError, match="seconds: nan"):
        meter.record(10, float("nan"))
    with pytest.raises(ValueError, match="cost_ahead: -1"):
        meter.eta_seconds(-1)


# --- jobs that cannot start yet (remote workers: no free worker serves the model) ---


def test_a_guild_whose_head_is_not_ready_is_passed_over_and_keeps_its_place() -> None:
    s = scheduler()
    a1, a2 = job("A", key="gpu-model"), job("A", key="gpu-model")
    b1, b2 = job("B", key="cpu-model"), job("B", key="cpu-model")
    c1 = job("C", key="cpu-model")
    for j in (a1, b1, c1, a2, b2):
        s.push(j)
    only_cpu = {"cpu-model"}.__contains__
    assert s.pop_batch(1, ready=only_cpu) == [b1]
    assert s.pop_batch(1, ready=only_cpu) == [c1]
    assert s.pop_batch(1, ready=only_cpu) == [b2]
    assert s.pop_batch(1, ready=only_cpu) == []  # only A's jobs are left, and they cannot start
    assert len(s) == 2
    assert s.pop_batch(1) == [a1]
    assert s.pop_batch(1) == [a2]


def test_nothing_ready_pops_nothing_and_changes_no_order() -> None:
    s = scheduler()
    jobs = [job(g, key=g) for g in "ABCAB"]
    for j in jobs:
        s.push(j)
    expected = s.snapshot()
    assert s.pop_batch(4, ready=lambda key: False) == []
    assert s.snapshot() == expected
    assert drain(s) == expected


def test_a_passed_over_guild_goes_next_when_ready_but_does_not_burst() -> None:
    """While A waits (its model busy), B and C dispatch 20 jobs; then A gets one turn, not twenty."""
    s = scheduler()
    for _ in range(5):
        s.push(job("A", key="x"))
    for _ in range(10):
        s.push(job("B", key="y"))
        s.push(job("C", key="y"))
    not_x = {"y"}.__contains__
    popped = [s.pop_batch(1, ready=not_x)[0].guild_id for _ in range(20)]
    assert set(popped) == {"B", "C"}
    assert s.pop_batch(1, ready=not_x) == []
    for _ in range(5):
        s.push(job("B", key="y"))
    order = [j.guild_id for j in drain(s)]
    assert order[0] == "A"
    assert order[:4] == ["A", "B", "A", "B"]  # waiting earned A its turn, not a burst of saved deficit


def test_a_batch_only_takes_ready_jobs_with_the_first_ones_key() -> None:
    s = scheduler()
    a, b, c = job("A", key="x"), job("B", key="y"), job("C", key="x")
    for j in (a, b, c):
        s.push(j)
    assert s.pop_batch(4, ready=lambda key: key == "x") == [a, c]
    assert s.pop_batch(4) == [b]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ABC"), st.sampled_from("xy"), st.integers(1, 3 * Q)), max_size=30),
       st.lists(st.booleans(), min_size=1, max_size=40))  # fmt: skip
def test_readiness_never_loses_or_duplicates_a_job(spec: list[tuple[str, str, int]], ready_x: list[bool]) -> None:
    s = scheduler()
    pushed = [job(g, key=k, cost=c) for g, k, c in spec]
    for j in pushed:
        s.push(j)
    popped: list[QueuedJob] = []
    for flag in ready_x:
        for j in s.pop_batch(2, ready=lambda key, flag=flag: flag or key != "x"):  # type: ignore[misc]
            assert flag or j.key != "x"
            popped.append(j)
    popped.extend(drain(s))
    assert sorted(j.job_id for j in popped) == sorted(j.job_id for j in pushed)
    for guild in "ABC":  # each guild's own order is kept
        assert [j for j in popped if j.guild_id == guild] == [j for j in pushed if j.guild_id == guild]
