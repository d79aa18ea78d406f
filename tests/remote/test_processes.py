"""Real `imaginebot worker` processes (the built-in tiny model on the CPU) serving one bot through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.app import METADATA_KEY, WATERMARK_KEY
from bot.jobs import JobRequest, JobState
from bot.remote.wire import GROUP, Keys, RemoteConfig
from bot.service import JobUpdate
from safety.provenance import key_file
from tests.remote.conftest import RedisServer, bot, client, eventually

CLAIM_IDLE = 2
CONFIG = RemoteConfig(claim_idle_seconds=CLAIM_IDLE, max_deliveries=3, result_ttl_seconds=60, heartbeat_seconds=1,
                      poll_seconds=0.1)  # fmt: skip


def start_worker(data_dir: Path, server: RedisServer, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "IMAGINEBOT_DATA_DIR": str(data_dir), "IMAGINEBOT_SAFETY_STAGES": "integrity",
           "IMAGINEBOT_DEVICE": "cpu", "IMAGINEBOT_REDIS_CLAIM_IDLE_SECONDS": str(CLAIM_IDLE),
           "IMAGINEBOT_WORKER_HEARTBEAT_SECONDS": "1", "IMAGINEBOT_LOG_LEVEL": "warning"}  # fmt: skip
    command = [sys.executable, "-m", "bot.cli", "worker", "--redis", server.url, "--name", name,
               "--model", "builtin:tiny", "--max-batch", "4"]  # fmt: skip
    with (data_dir / f"{name}.log").open("wb") as log:  # read it when the test fails
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    for name in (METADATA_KEY, WATERMARK_KEY):  # the bot's keys, which the workers mark with
        key_file(tmp_path / "keys" / name)
    yield tmp_path


@pytest.mark.slow  # ~30-50 s on 2 shared cores (two processes load torch + the tiny model); .ci/run runs it
async def test_a_killed_workers_job_completes_on_the_other_exactly_once(
    data_dir: Path, redis_server: RedisServer
) -> None:
    workers = {name: start_worker(data_dir, redis_server, name) for name in ("wa", "wb")}
    try:
        async with bot(data_dir, redis_server, CONFIG) as service:
            # Both workers load the tiny model (and one saves it) first: ~20 s on 2 shared cores.
            await eventually(lambda: len(service._runner.workers) == 2, within=120)  # type: ignore[attr-defined]
            steps: list[JobUpdate] = []
            service.subscribe(lambda u: steps.append(u) if u.step else None)
            request = JobRequest.create("a lighthouse", model="builtin:tiny", steps=10, width=192, height=192,
                                        guidance=1.0, count=1, seed=3, guild_id="g", user_id="u")  # fmt: skip
            job = await service.submit(request)
            await eventually(lambda: bool(steps), within=60)
            redis = client(redis_server)
            pending = await redis.xpending(Keys().stream("builtin:tiny"), GROUP)
            [owner] = [c["name"].decode() for c in pending["consumers"]]
            workers[owner].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            done = await asyncio.wait_for(service.wait(job.id), 60)
            reclaim = time.monotonic() - killed_at
            assert done.state is JobState.DONE, done.error
            assert len(await service.storage.outputs_for(job.id)) == 1
            assert len(await service.storage.verdicts_for(job.id)) == 1
            events = [e.to_state for e in await service.storage.events(job.id)]
            assert events == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]
            assert CLAIM_IDLE <= reclaim < 20, reclaim
            assert await redis.xlen(Keys().stream("builtin:tiny")) == 0
            await redis.aclose()
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.terminate()

        for process in workers.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
