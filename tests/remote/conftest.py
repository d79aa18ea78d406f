"""A real ``redis-server`` per test, on a free loopback port, and helpers to build a bot and workers on it.

Without the binary the tests skip, unless ``IMAGINEBOT_REQUIRE_REDIS=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.config import Settings
from bot.jobs import JobRequest
from bot.observability import Metrics
from bot.outputs import ImageStore
from bot.remote import RedisRunner, RemoteConfig, RemoteWorker
from bot.service import ImagineService
from bot.storage import Storage
from models.worker import Worker
from safety.integrity import IntegrityStage
from safety.policy import Policy
from safety.provenance import MetadataSigner
from tests.fakes import FakeGenerator

# Fast timings for tests: a dead worker's entry is reclaimed after 1 s.
FAST = RemoteConfig(claim_idle_seconds=1.0, max_deliveries=3, result_ttl_seconds=60, heartbeat_seconds=0.2,
                    poll_seconds=0.1)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process; ``stop``/``start`` again on the same port simulate an outage."""

    def __init__(self, directory: Path, *, persist: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("IMAGINEBOT_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is missing and IMAGINEBOT_REQUIRE_REDIS=1 (apt-get install redis-server)")
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server); set IMAGINEBOT_REQUIRE_REDIS=1 to fail"
        )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    _require_redis()
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(server: RedisServer) -> Redis:
    return Redis.from_url(server.url, decode_responses=False, socket_connect_timeout=1, socket_timeout=5)


def req(
    guild: str = "g1", user: str = "u1", *, steps: int = 2, count: int = 1, seed: int = 1, model: str = "fake"
) -> JobRequest:
    return JobRequest.create(
        f"prompt from {guild}", model=model, steps=steps, width=64, height=64, guidance=1.0, count=count,
        seed=seed, guild_id=guild, user_id=user,
    )  # fmt: skip


def fake_worker(generator: FakeGenerator) -> Worker:
    return Worker(lambda m: generator, Policy([IntegrityStage()]), MetadataSigner(b"k" * 32))


@asynccontextmanager
async def remote_worker(
    server: RedisServer,
    generator: FakeGenerator,
    name: str,
    config: RemoteConfig = FAST,
    *,
    max_batch: int = 4,
    models: tuple[str, ...] = ("fake",),
    metrics: Metrics | None = None,
) -> AsyncIterator[RemoteWorker]:
    """A RemoteWorker in this process (FakeGenerator on its thread), serving ``models`` until the block ends."""
    redis = client(server)
    stop = asyncio.Event()
    async with fake_worker(generator) as worker:
        remote = RemoteWorker(
            redis, worker, config, name=name, models=models, max_batch_images=max_batch, metrics=metrics
        )
        task = asyncio.create_task(remote.serve(stop))
        try:
            yield remote
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await redis.aclose()


@asynccontextmanager
async def bot(
    tmp_path: Path, server: RedisServer, config: RemoteConfig = FAST, **settings: object
) -> AsyncIterator[ImagineService]:
    """An ImagineService dispatching through Redis, on ``tmp_path``'s database (reopen it to 'restart' the bot)."""
    s = replace(Settings(data_dir=tmp_path), **settings)  # type: ignore[arg-type]
    runner = RedisRunner(client(server), config)
    async with await Storage.open(s.db_path) as storage, runner:
        service = ImagineService(s, storage, runner, ImageStore(s.images_dir), quantum=req().cost)
        await service.start()
        try:
            yield service
        finally:
            await service.aclose()


async def eventually(predicate: Callable[[], object], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
