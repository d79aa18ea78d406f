"""The Redis transport against a real redis-server: a bot (ImagineService + RedisRunner) and RemoteWorkers
in this process (a FakeGenerator on each worker thread), so every rule is exercised in a second or two."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from bot.chat.render import ending_text
from bot.jobs import WORKERS_GAVE_UP, JobState
from bot.observability import Metrics
from bot.remote.runner import RedisRunner
from bot.remote.wire import GROUP, Keys, WorkerInfo, encode_outcome
from bot.service import JobUpdate
from models.types import GenerationRequest
from models.worker import JobOutcome, OutcomeKind
from tests.fakes import FakeGenerator
from tests.remote.conftest import FAST, RedisServer, bot, client, eventually, remote_worker, req

KEYS = Keys()


async def test_a_job_runs_on_a_remote_worker_and_is_recorded_as_in_process(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    generator = FakeGenerator(step_seconds=0.05)
    async with bot(tmp_path, redis_server) as service, remote_worker(redis_server, generator, "w1"):
        updates: list[JobUpdate] = []
        service.subscribe(updates.append)
        job = await service.submit(req(count=2, steps=4))
        done = await asyncio.wait_for(service.wait(job.id), 10)
        assert done.state is JobState.DONE and done.grid_path
        outputs = await service.storage.outputs_for(job.id)
        assert [o.seed for o in outputs] == [1, 2]
        assert [v.decision for v in await service.storage.verdicts_for(job.id)] == ["allow", "allow"]
        events = [e.to_state for e in await service.storage.events(job.id)]
        assert events == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]
        assert [u.step for u in updates if u.step is not None][-1] == 4  # progress came back over pub/sub
        assert set(service.timings[job.id]) >= {"generate", "safety", "mark", "store"}
        redis = client(redis_server)
        assert await redis.xlen(KEYS.stream("fake")) == 0  # acknowledged and deleted: streams stay shallow
        assert await redis.exists(KEYS.result(job.id)) == 0  # taken by the bot
        await redis.aclose()
        assert service.outage is None


async def test_cancel_reaches_a_running_job(tmp_path: Path, redis_server: RedisServer) -> None:
    generator = FakeGenerator(step_seconds=0.05)
    async with bot(tmp_path, redis_server) as service, remote_worker(redis_server, generator, "w1"):
        job = await service.submit(req(steps=150))
        await eventually(generator.step_started.is_set)
        await service.cancel(job.id, actor_id="u1")
        done = await asyncio.wait_for(service.wait(job.id), 10)
        assert done.state is JobState.CANCELLED
        assert await service.storage.outputs_for(job.id) == []


async def test_a_dead_workers_entry_is_reclaimed_by_a_live_one(tmp_path: Path, redis_server: RedisServer) -> None:
    slow = FakeGenerator(step_seconds=0.05)
    async with bot(tmp_path, redis_server) as service:
        dying = remote_worker(redis_server, slow, "dying")
        await dying.__aenter__()
        job = await service.submit(req(steps=40))
        await eventually(slow.step_started.is_set)  # the entry is pending at "dying"
        async with remote_worker(redis_server, FakeGenerator(), "live") as live:
            await dying.__aexit__(None, None, None)  # it stops mid-job: no result, no acknowledgement
            done = await asyncio.wait_for(service.wait(job.id), 10)
            assert done.state is JobState.DONE and live.batches == 1
        assert len(await service.storage.outputs_for(job.id)) == 1


async def test_a_duplicate_result_changes_nothing(tmp_path: Path, redis_server: RedisServer) -> None:
    async with bot(tmp_path, redis_server) as service, remote_worker(redis_server, FakeGenerator(), "w1"):
        job = await service.submit(req(count=2))
        await asyncio.wait_for(service.wait(job.id), 10)
        before = (await service.storage.outputs_for(job.id), await service.storage.events(job.id))
        # A second worker's late copy: a failed result stored and announced for the same job.
        redis = client(redis_server)
        await redis.hset(KEYS.result(job.id), mapping=encode_outcome(JobOutcome(job.id, OutcomeKind.FAILED, error="x")))  # type: ignore[arg-type]
        await redis.publish(KEYS.done_channel, job.id)
        await asyncio.sleep(3 * FAST.poll_seconds)
        after = (await service.storage.outputs_for(job.id), await service.storage.events(job.id))
        assert after == before and (await service.storage.get_job(job.id)).state is JobState.DONE
        await redis.aclose()


async def test_an_entry_delivered_too_often_is_dead_lettered_and_the_job_fails(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis = client(redis_server)
    # A worker that announces itself, takes the entry and dies with it, again and again (each XCLAIM counts).
    ghost = WorkerInfo("ghost", 1, ("fake",), 4, None, False)
    await redis.set(KEYS.worker("ghost"), ghost.to_json(), px=60_000)
    async with bot(tmp_path, redis_server) as service:
        job = await service.submit(req())
        stream = KEYS.stream("fake")
        await eventually(lambda: service.queued == 0)
        entries: list[object] = []
        deadline = time.monotonic() + 20
        while not entries:
            assert time.monotonic() < deadline, (await redis.xinfo_stream(stream), service.queued,
                                                 (await service.storage.get_job(job.id)).state)  # fmt: skip
            entries = await redis.xreadgroup(GROUP, "ghost", {stream: ">"}, count=1, block=100)
        [(_, [(entry_id, _)])] = entries  # type: ignore[misc]
        for _ in range(FAST.max_deliveries - 1):
            await redis.xclaim(stream, GROUP, "ghost", 0, [entry_id])
        await redis.delete(KEYS.worker("ghost"))
        generator = FakeGenerator()
        async with remote_worker(redis_server, generator, "w1"):
            done = await asyncio.wait_for(service.wait(job.id), 10)
        assert done.state is JobState.FAILED and done.error == WORKERS_GAVE_UP.format(n=3)
        assert "gave up on it after 3 tries" in ending_text(done)  # the requester is told why
        assert generator.calls == []  # never run a fourth time
        [(_, dead)] = await redis.xrange(KEYS.dead)
        assert dead[b"ids"] == job.id.encode() and dead[b"stream"] == stream.encode()
        assert await redis.xlen(stream) == 0
    await redis.aclose()


async def test_redis_down_keeps_accepting_and_dispatches_when_it_returns(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with bot(tmp_path, redis_server) as service, remote_worker(redis_server, FakeGenerator(), "w1"):
        await eventually(lambda: service.outage is None)
        redis_server.stop()
        await eventually(lambda: service.outage is not None and "can't be reached" in service.outage)
        job = await service.submit(req())  # accepted and persisted while Redis is down
        await asyncio.sleep(0.5)
        assert (await service.storage.get_job(job.id)).state is JobState.QUEUED
        redis_server.start()
        done = await asyncio.wait_for(service.wait(job.id), 15)
        assert done.state is JobState.DONE and service.outage is None


async def test_redis_restarted_mid_run_loses_no_job(tmp_path: Path, redis_server: RedisServer) -> None:
    generator = FakeGenerator(step_seconds=0.05)
    async with bot(tmp_path, redis_server) as service, remote_worker(redis_server, generator, "w1"):
        jobs = [await service.submit(req(steps=20, seed=i, user=f"u{i}")) for i in range(3)]
        await eventually(generator.step_started.is_set)
        redis_server.stop()  # no persistence: the streams, the group and every key are gone
        await asyncio.sleep(0.3)
        redis_server.start()
        finished = [await asyncio.wait_for(service.wait(j.id), 20) for j in jobs]
        assert [j.state for j in finished] == [JobState.DONE] * 3
        for job in jobs:
            assert len(await service.storage.outputs_for(job.id)) == 1


async def test_results_of_a_restarted_bot_still_land(tmp_path: Path, redis_server: RedisServer) -> None:
    generator = FakeGenerator(step_seconds=0.05)
    async with remote_worker(redis_server, generator, "w1"):
        async with bot(tmp_path, redis_server) as first:
            job = await first.submit(req(steps=20))
            await eventually(generator.step_started.is_set)
        # The bot is gone while the worker finishes; a new one resumes the job and takes its result.
        async with bot(tmp_path, redis_server) as second:
            done = await asyncio.wait_for(second.wait(job.id), 15)
            assert done.state is JobState.DONE
            assert len(await second.storage.outputs_for(job.id)) == 1
    assert generator.calls == [[job.id]]  # run once: the restarted bot did not send it again


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_flood_from_one_server_does_not_starve_another(
    tmp_path: Path, redis_server: RedisServer, workers: int
) -> None:
    started: list[str] = []  # jobs in the order the bot dispatched them (their move to running)
    finished: list[str] = []
    async with bot(tmp_path, redis_server, max_batch_images=2, per_guild_queue_cap=100) as service:
        service.subscribe(lambda u: started.append(u.job_id) if u.state is JobState.RUNNING and u.step is None
                          else finished.append(u.job_id) if u.state is JobState.DONE else None)  # fmt: skip
        generators = [FakeGenerator(step_seconds=0.01) for _ in range(workers)]
        async with _workers(redis_server, generators):
            await eventually(lambda: service.outage is None)
            flood = [await service.submit(req("A", f"a{i}"), enforce_caps=False) for i in range(40)]
            late = [await service.submit(req("B", f"b{i}"), enforce_caps=False) for i in range(2)]
            dispatched = len(started)  # jobs dispatched before B's second job existed, however slow the machine
            for job in [*flood, *late]:
                await asyncio.wait_for(service.wait(job.id), 30)
        dispatches = [call for g in generators for call in g.calls]
    places = sorted(started.index(job.id) - dispatched for job in late)
    # Credit-based dispatch: at most `workers` batches of 2 are in flight when B arrives (nothing waits in
    # Redis); then fair order alternates A and B, so B's two jobs ride in the next batches to be dispatched.
    assert places[-1] < 2 * workers + 2, places
    assert len(started) - dispatched - places[-1] > 20  # most of A's flood was still to come
    assert len(dispatches) >= 20  # A's flood was served meanwhile, 2 per batch
    assert sorted(finished) == sorted(j.id for j in [*flood, *late])


class _Workers:
    def __init__(self, server: RedisServer, generators: list[FakeGenerator]) -> None:
        self._contexts = [remote_worker(server, g, f"w{i}") for i, g in enumerate(generators)]

    async def __aenter__(self) -> None:
        for context in self._contexts:
            await context.__aenter__()

    async def __aexit__(self, *exc_info: object) -> None:
        for context in self._contexts:
            await context.__aexit__(None, None, None)


def _workers(server: RedisServer, generators: list[FakeGenerator]) -> _Workers:
    return _Workers(server, generators)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError: the worker recognises it by name."""


class SmallMemoryGenerator(FakeGenerator):
    def generate(self, requests, **kwargs):  # type: ignore[no-untyped-def]
        if len(requests) > 1:
            self.calls.append([r.job_id for r in requests])
            raise OutOfMemoryError("CUDA out of memory")
        return super().generate(requests, **kwargs)


async def test_out_of_memory_retries_with_smaller_batches(tmp_path: Path, redis_server: RedisServer) -> None:
    generator = SmallMemoryGenerator()
    async with bot(tmp_path, redis_server) as service:
        jobs = [await service.submit(req(user=f"u{i}", seed=i)) for i in range(2)]  # one batch of two
        async with remote_worker(redis_server, generator, "w1"):
            finished = [await asyncio.wait_for(service.wait(j.id), 10) for j in jobs]
    assert [j.state for j in finished] == [JobState.DONE, JobState.DONE]
    assert generator.calls == [[jobs[0].id, jobs[1].id], [jobs[0].id], [jobs[1].id]]


async def test_progress_messages_reach_only_the_jobs_in_flight(tmp_path: Path, redis_server: RedisServer) -> None:
    async with bot(tmp_path, redis_server) as service:
        updates: list[JobUpdate] = []
        service.subscribe(updates.append)
        redis = client(redis_server)
        await redis.publish(KEYS.progress_channel, json.dumps({"job_ids": ["nobody"], "step": 1, "total": 2}))
        await redis.publish(KEYS.progress_channel, b"not json")
        await asyncio.sleep(0.2)
        assert updates == []
        await redis.aclose()


def _unused(request: GenerationRequest) -> None:  # keeps the import for type checkers of the fakes
    del request


async def test_transport_stats_report_streams_and_workers(tmp_path: Path, redis_server: RedisServer) -> None:
    async with bot(tmp_path, redis_server) as service, remote_worker(redis_server, FakeGenerator(), "w1"):
        job = await service.submit(req())
        await asyncio.wait_for(service.wait(job.id), 10)
        runner = service.runner
        assert isinstance(runner, RedisRunner)
        stats = await runner.transport_stats()
        [beat] = stats.workers
        assert beat.worker_id == "w1" and beat.capacity == 1 and beat.models == ("fake",)
        assert 0 <= time.time() - beat.seen_at < 30
        [stream] = stats.streams
        assert (stream.stream, stream.group, stream.lag, stream.pending) == (KEYS.stream("fake"), GROUP, 0, 0)


async def test_a_job_waits_in_the_bot_not_in_a_stream_until_a_worker_serves_its_model(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Credits are per model: a worker of another model does not make a job dispatchable, nor does it
    hold up other servers' jobs for the model it does serve."""
    redis = client(redis_server)
    async with bot(tmp_path, redis_server) as service, remote_worker(redis_server, FakeGenerator(), "w-fake"):
        await eventually(lambda: service.outage is None)
        waiting = await service.submit(req("A", "a", model="other"))
        served = [await service.submit(req("B", f"b{i}")) for i in range(3)]
        for job in served:
            assert (await asyncio.wait_for(service.wait(job.id), 10)).state is JobState.DONE
        assert (await service.storage.get_job(waiting.id)).state is JobState.QUEUED
        assert await redis.exists(KEYS.stream("other")) == 0  # never sent to wait where nobody reads
        async with remote_worker(redis_server, FakeGenerator(), "w-other", models=("other",)):
            assert (await asyncio.wait_for(service.wait(waiting.id), 10)).state is JobState.DONE
    await redis.aclose()


async def test_a_worker_counts_its_batches_run_times_and_verdicts(tmp_path: Path, redis_server: RedisServer) -> None:
    metrics = Metrics()
    async with (
        bot(tmp_path, redis_server, max_batch_images=4) as service,
        remote_worker(redis_server, FakeGenerator(), "w1", metrics=metrics, max_batch=2),
    ):
        await eventually(lambda: service.outage is None)
        job = await service.submit(req(count=3))
        assert (await asyncio.wait_for(service.wait(job.id), 10)).state is JobState.DONE
    text = metrics.render().decode()
    assert "imaginebot_batch_jobs_count 1.0" in text  # one pipeline call: a 3-image job is its own chunk
    assert "imaginebot_batch_images_sum 3.0" in text
    assert "imaginebot_job_run_seconds_count 1.0" in text
    assert 'imaginebot_verdicts_total{category="none",decision="allow",stage="policy"} 3.0' in text
