"""The /metrics, /healthz and /readyz endpoints, scraped over real HTTP after real jobs ran through a real
service (tests/bot/test_service.py's fakes: FakeGenerator, a real Worker, SQLite and the scheduler)."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bot.config import Settings
from bot.errors import ConfigError
from bot.jobs import JobState
from bot.observability import (
    StreamStats,
    TransportStats,
    WorkerBeat,
    start_observability,
    start_worker_observability,
)
from bot.service import ImagineService
from safety.integrity import IntegrityStage
from safety.policy import CheckContext, Policy
from safety.verdict import Decision, Verdict
from tests.bot.test_service import req, service_for
from tests.fakes import FakeGenerator

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_port(service: ImagineService) -> Settings:
    return replace(service.settings, metrics_port=free_port(), metrics_host="127.0.0.1")


async def scrape(port: int) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def test_queue_depth_batches_waits_and_outcomes_are_scraped(tmp_path: Path) -> None:
    async with (
        service_for(tmp_path, start=False) as service,
        start_observability(with_port(service), service) as obs,
    ):
        assert obs is not None and obs.jobs is not None
        jobs = [await service.submit(req("g1")), await service.submit(req("g2")), await service.submit(req("g1"))]
        before = await scrape(obs.port)
        # Read from storage at scrape time: the dispatcher has not started, everything is queued.
        assert value(before, "imaginebot_queue_depth", guild="g1") == 2
        assert value(before, "imaginebot_queue_depth", guild="g2") == 1
        assert (value(before, "imaginebot_queue_oldest_seconds", guild="g1") or -1) >= 0
        assert value(before, "imaginebot_jobs_running") == 0

        await service.start()
        for job in jobs:
            assert (await service.wait(job.id)).state is JobState.DONE
        await obs.jobs.settle()
        after = await scrape(obs.port)

    assert value(after, "imaginebot_queue_depth", guild="g1") is None  # an empty queue has no series
    assert value(after, "imaginebot_jobs_finished_total", state="done") == 3
    # Every stage allowed each of the 6 images: one combined "policy" verdict per image.
    assert value(after, "imaginebot_verdicts_total", stage="policy", category="none", decision="allow") == 6
    assert value(after, "imaginebot_job_wait_seconds_count") == 3
    assert value(after, "imaginebot_job_run_seconds_count") == 3
    # max_batch_images=4 and 2 images per job: the fair order g1, g2 is one batch, the second g1 job another.
    assert value(after, "imaginebot_batch_jobs_count") == 2
    assert value(after, "imaginebot_batch_jobs_sum") == 3
    assert value(after, "imaginebot_batch_images_sum") == 6
    assert (value(after, "process_resident_memory_bytes") or 0) > 0


class FlagAll:
    name = "flagger"

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        return [Verdict(Decision.FLAG, self.name, "held for review", category="sexual") for _ in images]


@pytest.mark.parametrize(
    ("generator", "policy", "state", "verdict"),
    [
        (FakeGenerator(flat=True), None, "blocked", {"stage": "integrity", "category": "blank", "decision": "block"}),
        (None, Policy([IntegrityStage(), FlagAll()]), "flagged",
         {"stage": "flagger", "category": "sexual", "decision": "flag"}),
        (FakeGenerator(fail_with=RuntimeError("boom")), None, "failed", None),
    ],
)  # fmt: skip
async def test_outcomes_and_verdict_categories_are_counted(
    tmp_path: Path,
    generator: FakeGenerator | None,
    policy: Policy | None,
    state: str,
    verdict: dict[str, str] | None,
) -> None:
    async with (
        service_for(tmp_path, generator, policy=policy) as service,
        start_observability(with_port(service), service) as obs,
    ):
        assert obs is not None and obs.jobs is not None
        job = await service.wait((await service.submit(req())).id)
        assert job.state == state
        await obs.jobs.settle()
        samples = await scrape(obs.port)
    assert value(samples, "imaginebot_jobs_finished_total", state=state) == 1
    assert value(samples, "imaginebot_job_run_seconds_count") == 1
    if verdict is not None:
        assert value(samples, "imaginebot_verdicts_total", **verdict) == 2


async def test_health_and_readiness(tmp_path: Path) -> None:
    ready = False

    def is_ready() -> bool:
        return ready

    async with (
        service_for(tmp_path) as service,
        start_observability(with_port(service), service, ready=is_ready) as obs,
    ):
        assert obs is not None
        assert await get(obs.port, "/healthz") == (200, "ok\n")
        assert (await get(obs.port, "/readyz"))[0] == 503  # e.g. the bot is not connected to Discord yet
        ready = True
        assert (await get(obs.port, "/readyz"))[0] == 200
        assert (await get(obs.port, "/nothing"))[0] == 404
        port = obs.port
    with pytest.raises(aiohttp.ClientConnectionError):  # closed with the context
        await get(port, "/healthz")


async def test_readiness_fails_when_the_check_raises(tmp_path: Path) -> None:
    async def broken() -> bool:
        raise RuntimeError("redis down")

    settings = Settings(data_dir=tmp_path, metrics_port=free_port())
    async with start_worker_observability(settings, ready=broken) as obs:
        assert obs is not None
        assert await get(obs.port, "/readyz") == (503, "not ready\n")
        assert (await get(obs.port, "/healthz"))[0] == 200


async def test_off_when_the_port_is_unset(tmp_path: Path) -> None:
    assert Settings.load(env={}).metrics_port == 0
    assert Settings.load(env={"IMAGINEBOT_METRICS_PORT": ""}).metrics_port == 0
    assert Settings.load(env={"IMAGINEBOT_METRICS_PORT": "9464"}).metrics_port == 9464
    with pytest.raises(ConfigError, match=r"IMAGINEBOT_METRICS_PORT \(metrics_port\): 70000 is outside 0..65535"):
        Settings.load(env={"IMAGINEBOT_METRICS_PORT": "70000"})
    async with service_for(tmp_path) as service, start_observability(service.settings, service) as obs:
        assert obs is None
        job = await service.wait((await service.submit(req())).id)  # the service works the same
        assert job.state is JobState.DONE
    async with start_worker_observability(Settings(data_dir=tmp_path)) as worker_obs:
        assert worker_obs is None


class FakeProbe:
    """A transport reporting fixed streams and workers, or failing like a Redis that went away."""

    def __init__(self, stats: TransportStats | None) -> None:
        self.stats = stats

    async def transport_stats(self) -> TransportStats:
        if self.stats is None:
            raise ConnectionError("Connection refused")
        return self.stats


async def test_worker_endpoint_reports_batches_streams_and_heartbeats(tmp_path: Path) -> None:
    stats = TransportStats(
        streams=(StreamStats("imaginebot:jobs:fake", "workers", lag=5, pending=2),),
        workers=(WorkerBeat("gpu-1", seen_at=time.time() - 3, capacity=4, busy=1, models=("fake",)),),
    )
    probe = FakeProbe(stats)
    settings = Settings(data_dir=tmp_path, metrics_port=free_port())
    async with start_worker_observability(settings, ready=lambda: True, probes=[probe]) as obs:
        assert obs is not None
        obs.metrics.observe_batch(3, 8)
        obs.metrics.observe_verdict("nsfw", "sexual", "block")
        samples = await scrape(obs.port)
        assert value(samples, "imaginebot_batch_jobs_sum") == 3 and value(samples, "imaginebot_batch_images_sum") == 8
        assert value(samples, "imaginebot_verdicts_total", stage="nsfw", category="sexual", decision="block") == 1
        assert value(samples, "imaginebot_redis_up") == 1
        assert value(samples, "imaginebot_stream_lag", stream="imaginebot:jobs:fake", group="workers") == 5
        assert value(samples, "imaginebot_stream_pending", stream="imaginebot:jobs:fake", group="workers") == 2
        assert value(samples, "imaginebot_workers") == 1
        assert value(samples, "imaginebot_worker_capacity", worker="gpu-1") == 4
        assert value(samples, "imaginebot_worker_busy", worker="gpu-1") == 1
        assert 3 <= (value(samples, "imaginebot_worker_heartbeat_age_seconds", worker="gpu-1") or 0) < 60

        probe.stats = None  # Redis goes away: up is 0 and no stale stream or worker series remain
        samples = await scrape(obs.port)
        assert value(samples, "imaginebot_redis_up") == 0
        assert value(samples, "imaginebot_stream_lag", stream="imaginebot:jobs:fake", group="workers") is None
        assert value(samples, "imaginebot_workers") == 0


async def test_bot_endpoint_watches_a_transport_registered_later(tmp_path: Path) -> None:
    async with service_for(tmp_path) as service, start_observability(with_port(service), service) as obs:
        assert obs is not None
        assert value(await scrape(obs.port), "imaginebot_redis_up") is None  # embedded: no transport
        obs.watch(FakeProbe(TransportStats()))
        assert value(await scrape(obs.port), "imaginebot_redis_up") == 1
