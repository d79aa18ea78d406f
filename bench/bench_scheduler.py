"""Benchmark the fair scheduler against a plain FIFO ``collections.deque``, in the same run.

Usage::

    python bench/bench_scheduler.py [--jobs 10000] [--guilds 100] [--queries 200] [--repeat 3]

Pushes ``--jobs`` jobs spread over ``--guilds`` guilds (random users, realistic costs, a few batch
keys; seeded), pops them all with ``pop_batch(4)``, and times ``position()`` for a sample of
queued jobs, both right after a change (the replay runs up to the job) and again from the cache.
The baseline does the same pushes and pops on a deque; its "position" is ``deque.index``.
Each figure is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.scheduler import FairScheduler, QueuedJob

STEPS = (20, 30, 50)
SIDES = (512, 768, 1024)  # square images; cost counts 64x64 blocks
KEYS = ("sd15-512", "sd15-768", "sdxl-1024")


@dataclass
class Timings:
    """Best-of-N microseconds per operation."""

    push: float = float("inf")
    pop: float = float("inf")
    position_cold: float = float("inf")
    position_warm: float = float("inf")
    snapshot: float = float("inf")
    batches: int = 0


def make_jobs(count: int, guilds: int, seed: int) -> list[QueuedJob]:
    rng = random.Random(seed)
    # Skewed load, as on a real bot: guild i gets a share proportional to 1 / (i + 1) (Zipf).
    guild_of = rng.choices(range(guilds), weights=[1 / (i + 1) for i in range(guilds)], k=count)
    jobs = []
    for n in range(count):
        side_index = rng.randrange(len(SIDES))
        side = SIDES[side_index]
        images = rng.randint(1, 4)
        steps = rng.choice(STEPS)
        jobs.append(
            QueuedJob(
                job_id=f"job{n}",
                guild_id=f"g{guild_of[n]}",
                user_id=f"u{rng.randrange(count // 5 + 1)}",
                cost=steps * (side // 64) ** 2 * images,
                images=images,
                key=KEYS[side_index],
                enqueued_at=float(n),
            )
        )
    return jobs


def per_op(start: int, end: int, count: int) -> float:
    return (end - start) / 1000 / max(count, 1)


def bench_scheduler(jobs: list[QueuedJob], sample: list[QueuedJob], quantum: int) -> Timings:
    out = Timings()
    s = FairScheduler(quantum=quantum, per_user_cap=len(jobs) + 1, per_guild_cap=len(jobs) + 1)
    t0 = time.perf_counter_ns()
    for j in jobs:
        s.push(j)
    out.push = per_op(t0, time.perf_counter_ns(), len(jobs))

    filler = QueuedJob("filler", "filler-guild", "filler-user", 1, 1, "filler", 0.0)
    cold = 0
    for j in sample:
        # A push and a remove leave the state exactly as it was but drop the cached replay.
        s.push(filler)
        s.remove(filler.job_id)
        t0 = time.perf_counter_ns()
        s.position(j.job_id)
        cold += time.perf_counter_ns() - t0
    out.position_cold = cold / 1000 / len(sample)
    for j in sample:  # replay far enough for every sampled job, then time cache hits only
        s.position(j.job_id)
    t0 = time.perf_counter_ns()
    for j in sample:
        s.position(j.job_id)
    out.position_warm = per_op(t0, time.perf_counter_ns(), len(sample))
    s.push(filler)
    s.remove(filler.job_id)
    t0 = time.perf_counter_ns()
    s.snapshot()
    out.snapshot = per_op(t0, time.perf_counter_ns(), len(jobs))

    popped = 0
    t0 = time.perf_counter_ns()
    while batch := s.pop_batch(4):
        popped += len(batch)
        out.batches += 1
    out.pop = per_op(t0, time.perf_counter_ns(), popped)
    if popped != len(jobs):
        raise RuntimeError(f"popped {popped} of {len(jobs)} jobs")
    return out


def bench_deque(jobs: list[QueuedJob], sample: list[QueuedJob]) -> Timings:
    out = Timings()
    q: deque[QueuedJob] = deque()
    t0 = time.perf_counter_ns()
    for j in jobs:
        q.append(j)
    out.push = per_op(t0, time.perf_counter_ns(), len(jobs))
    t0 = time.perf_counter_ns()
    for j in sample:
        q.index(j)
    out.position_cold = out.position_warm = per_op(t0, time.perf_counter_ns(), len(sample))
    t0 = time.perf_counter_ns()
    list(q)
    out.snapshot = per_op(t0, time.perf_counter_ns(), len(jobs))
    t0 = time.perf_counter_ns()
    while q:
        q.popleft()
    out.pop = per_op(t0, time.perf_counter_ns(), len(jobs))
    out.batches = len(jobs)
    return out


def best_of(repeat: int, run: Callable[[], Timings]) -> Timings:
    best = Timings()
    for _ in range(repeat):
        t = run()
        best.push, best.pop = min(best.push, t.push), min(best.pop, t.pop)
        best.position_cold = min(best.position_cold, t.position_cold)
        best.position_warm = min(best.position_warm, t.position_warm)
        best.snapshot = min(best.snapshot, t.snapshot)
        best.batches = t.batches
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--guilds", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200, help="position() queries to time")
    parser.add_argument("--quantum", type=int, default=None, help="default: the median job cost")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    jobs = make_jobs(args.jobs, args.guilds, args.seed)
    quantum = args.quantum or sorted(j.cost for j in jobs)[len(jobs) // 2]
    sample = random.Random(args.seed + 1).sample(jobs, min(args.queries, len(jobs)))
    fair = best_of(args.repeat, lambda: bench_scheduler(jobs, sample, quantum))
    fifo = best_of(args.repeat, lambda: bench_deque(jobs, sample))

    active = len({j.guild_id for j in jobs})
    print(
        f"{args.jobs} jobs, {active} active guilds of {args.guilds}, quantum {quantum}, "
        f"{len(sample)} position() queries, best of {args.repeat}; Python {sys.version.split()[0]}"
    )
    print(f"FairScheduler dispatched {fair.batches} batches (mean {args.jobs / fair.batches:.2f} jobs per batch)")
    print()
    print(f"{'operation':<38}{'FairScheduler µs':>18}{'deque µs':>12}{'ratio':>10}")
    rows = (
        ("push (per job)", fair.push, fifo.push),
        ("pop_batch(4) (per job)", fair.pop, fifo.pop),
        ("position() after a change", fair.position_cold, fifo.position_cold),
        ("position() cached", fair.position_warm, fifo.position_warm),
        ("snapshot() after a change (per job)", fair.snapshot, fifo.snapshot),
    )
    for name, ours, base in rows:
        print(f"{name:<38}{ours:>18.3f}{base:>12.3f}{ours / base:>9.3g}x")
    print()
    print("deque baseline: append / popleft / deque.index (a FIFO's position is its index) / list(deque)")


if __name__ == "__main__":
    main()
