"""Dispatch overhead per job through Redis vs in-process, and reclaim time after a worker dies.

Same run, same tiny model (``builtin:tiny``, loaded once and shared), same safety (integrity) and marks
(metadata signature): the only difference is the transport. One job per batch (``max_batch_images=1``)
so every job is one dispatch. The Redis worker runs in this process (a ``RemoteWorker`` task over a
real ``redis-server`` on a loopback port), so the figure is the transport's own cost: XADD, the
worker's XREADGROUP, PNG encode/decode of the images, the result hash, pub/sub, XACK/XDEL.

Reclaim: a worker takes a job and stops mid-job without acknowledging (as a killed one does); the
time from its death to the job's completion on another worker, with ``--claim-idle`` seconds.

    .venv/bin/python bench/bench_redis_dispatch.py [--jobs 24] [--steps 2] [--claim-idle 2]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import load_generator
from bot.config import Settings
from bot.jobs import JobRequest, JobState
from bot.outputs import ImageStore
from bot.remote import RedisRunner, RemoteConfig, RemoteWorker
from bot.runner import Runner
from bot.service import ImagineService
from bot.storage import Storage
from models.types import GeneratedImages, GenerationRequest, Generator
from models.worker import Worker
from safety.integrity import IntegrityStage
from safety.policy import Policy
from safety.provenance import MetadataSigner
from tests.remote.conftest import RedisServer, client, eventually


def request(i: int, steps: int) -> JobRequest:
    return JobRequest.create(f"bench {i}", model="builtin:tiny", steps=steps, width=64, height=64, guidance=1.0,
                             count=1, seed=i, guild_id=f"g{i % 4}", user_id=f"u{i}")  # fmt: skip


class TimedGenerator:
    """Wraps the generator to sum its own time, so the CPU-noisy generation can be taken out of the figures."""

    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self.seconds = 0.0

    @property
    def model_id(self) -> str:
        return self._generator.model_id

    def generate(self, requests: Sequence[GenerationRequest], **kwargs: Any) -> list[GeneratedImages]:
        started = time.perf_counter()
        try:
            return self._generator.generate(requests, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def worker_for(generator: Generator) -> Worker:
    return Worker(lambda _: generator, Policy([IntegrityStage()]), MetadataSigner(b"k" * 32))


async def run_jobs(data_dir: Path, runner: Runner, jobs: int, steps: int) -> float:
    settings = replace(Settings(data_dir=data_dir), max_batch_images=1, per_guild_queue_cap=1000)
    async with await Storage.open(settings.db_path) as storage:
        service = ImagineService(settings, storage, runner, ImageStore(settings.images_dir), quantum=1)
        await service.start()
        try:
            started = time.perf_counter()
            submitted = [await service.submit(request(i, steps), enforce_caps=False) for i in range(jobs)]
            finished = [await service.wait(j.id) for j in submitted]
            elapsed = time.perf_counter() - started
        finally:
            await service.aclose()
    assert all(j.state is JobState.DONE for j in finished), [j.state for j in finished]
    return elapsed


async def overhead(root: Path, server: RedisServer, model: Generator, jobs: int, steps: int) -> None:
    generator = TimedGenerator(model)
    config = RemoteConfig(claim_idle_seconds=30, heartbeat_seconds=0.2, poll_seconds=0.1)
    async with worker_for(generator) as local:
        await run_jobs(root / "warmup", local, 2, steps)
        generator.seconds = 0.0
        in_process = await run_jobs(root / "local", local, jobs, steps)
        generating_local = generator.seconds
    stop = asyncio.Event()
    async with worker_for(generator) as thread:
        remote = RemoteWorker(client(server), thread, config, name="bench", models=["builtin:tiny"], max_batch_images=1)
        serving = asyncio.create_task(remote.serve(stop))
        async with RedisRunner(client(server), config) as runner:
            await eventually(lambda: runner.capacity() > 0)
            generator.seconds = 0.0
            through_redis = await run_jobs(root / "redis", runner, jobs, steps)
            generating_redis = generator.seconds
        stop.set()
        await serving
    # Per job, outside the pipeline call: scheduling, safety, marks, storing, and (Redis) the transport.
    local = (in_process - generating_local) / jobs * 1000
    remote = (through_redis - generating_redis) / jobs * 1000
    print(f"jobs: {jobs} x 1 image 64x64, {steps} steps, one job per dispatch")
    print(f"in-process: {in_process:6.2f} s wall, {generating_local:6.2f} s generating -> {local:7.1f} ms/job besides")
    print(
        f"redis:      {through_redis:6.2f} s wall, {generating_redis:6.2f} s generating -> {remote:7.1f} ms/job besides"
    )
    print(
        f"dispatch overhead of Redis: {remote - local:+7.1f} ms/job (ratio {remote / local:.2f}x of the per-job "
        f"cost besides generation; wall ratio {through_redis / in_process:.2f}x)"
    )


async def reclaim(root: Path, server: RedisServer, generator: Generator, steps: int, claim_idle: float) -> None:
    config = RemoteConfig(claim_idle_seconds=claim_idle, heartbeat_seconds=0.2, poll_seconds=0.1)
    settings = replace(Settings(data_dir=root / "reclaim"), max_batch_images=1)
    stops = {name: asyncio.Event() for name in ("dying", "live")}
    async with worker_for(generator) as w1, worker_for(generator) as w2, RedisRunner(client(server), config) as runner:
        dying = RemoteWorker(client(server), w1, config, name="dying", models=["builtin:tiny"], max_batch_images=1)
        dying_task = asyncio.create_task(dying.serve(stops["dying"]))
        await eventually(lambda: runner.capacity() > 0)
        async with await Storage.open(settings.db_path) as storage:
            service = ImagineService(settings, storage, runner, ImageStore(settings.images_dir), quantum=1)
            await service.start()
            job = await service.submit(request(0, 150), enforce_caps=False)  # the most steps: seconds, not milliseconds
            await eventually(lambda: service.queued == 0)  # dispatched to "dying"
            await asyncio.sleep(0.3)  # well into the job
            live = RemoteWorker(client(server), w2, config, name="live", models=["builtin:tiny"], max_batch_images=1)
            live_task = asyncio.create_task(live.serve(stops["live"]))
            if dying.batches:  # a fast machine: the job ended before the "death", so nothing would be reclaimed
                sys.exit("the reclaim job finished before its worker died: run with more --steps")
            dying_task.cancel()  # dies: no result, no XACK, its entry stays pending
            died = time.perf_counter()
            done = await service.wait(job.id)
            took = time.perf_counter() - died
            await service.aclose()
        stops["live"].set()
        await live_task
    print(f"reclaim: worker died mid-job -> job {done.state} on another worker after {took:.2f} s "
          f"(claim idle {claim_idle:.1f} s + at most 1 s XREADGROUP block + re-running the job)")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--claim-idle", type=float, default=2.0)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "redis").mkdir()
        server = RedisServer(root / "redis")
        server.start()
        try:
            generator = await asyncio.to_thread(load_generator, Settings(data_dir=root), "builtin:tiny")
            await overhead(root, server, generator, args.jobs, args.steps)
            await reclaim(root, server, generator, args.steps, args.claim_idle)
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
