from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bot.config import Settings
from bot.errors import IllegalTransitionError, InvalidRequestError, QueueFullError
from bot.jobs import SOURCE_MISSING, JobRequest, JobState, Requester, upscale_request, variation_request
from bot.outputs import ImageStore
from bot.service import ImagineService, JobUpdate, PromptGate, final_state
from bot.storage import Storage
from models.worker import Worker
from safety.integrity import IntegrityStage
from safety.policy import CheckContext, Policy
from safety.provenance import MetadataSigner
from safety.verdict import Decision, Verdict
from tests.fakes import FakeGenerator


def req(guild: str = "g1", user: str = "u1", *, steps: int = 2, count: int = 2, seed: int = 1) -> JobRequest:
    return JobRequest.create(
        f"prompt from {guild}", model="fake", steps=steps, width=64, height=64, guidance=1.0, count=count,
        seed=seed, guild_id=guild, user_id=user,
    )  # fmt: skip


def exists(path: str) -> bool:
    return os.path.exists(path)


@asynccontextmanager
async def service_for(
    tmp_path: Path,
    generator: FakeGenerator | None = None,
    *,
    start: bool = True,
    policy: Policy | None = None,
    prompt_gate: PromptGate | None = None,
    min_side: int = 0,
    **settings: object,
) -> AsyncIterator[ImagineService]:
    s = replace(Settings(data_dir=tmp_path), **settings)  # type: ignore[arg-type]
    gen = generator or FakeGenerator()
    worker = Worker(lambda m: gen, policy or Policy([IntegrityStage()]), MetadataSigner(b"k" * 32))
    async with await Storage.open(s.db_path) as storage, worker:
        service = ImagineService(
            s, storage, worker, ImageStore(s.images_dir), quantum=req().cost, prompt_gate=prompt_gate,
            min_side=min_side,
        )  # fmt: skip
        try:
            if start:
                await service.start()
            yield service
        finally:
            await service.aclose()


async def test_a_job_goes_through_and_is_stored(tmp_path: Path) -> None:
    async with service_for(tmp_path) as service:
        updates: list[JobUpdate] = []
        service.subscribe(updates.append)
        job = await service.submit(req())
        done = await service.wait(job.id)
        assert done.state is JobState.DONE and done.grid_path and exists(done.grid_path)
        outputs = await service.storage.outputs_for(job.id)
        assert [o.seed for o in outputs] == [1, 2] and all(exists(o.path) for o in outputs)
        assert [v.decision for v in await service.storage.verdicts_for(job.id)] == ["allow", "allow"]
        events = [e.to_state for e in await service.storage.events(job.id)]
        assert events == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]
        steps = [u.step for u in updates if u.step is not None]
        assert steps == [1, 2]
        assert set(service.timings[job.id]) >= {"generate", "safety", "mark", "store"}


async def test_variations_and_upscales_get_their_source_image(tmp_path: Path) -> None:
    generator = FakeGenerator()
    async with service_for(tmp_path, generator) as service:
        source = await service.wait((await service.submit(req(count=2))).id)
        [second] = [o for o in await service.storage.outputs_for(source.id) if o.index == 1]
        by = Requester("u2", None, False)
        for request in (variation_request(source, 1, 0.5, by), upscale_request(source, 1, 2, by, max_side=512)):
            job = await service.wait((await service.submit(request)).id)
            assert job.state is JobState.DONE
            sent = generator.requests[-1]
            assert sent.job_id == job.id and sent.strength == request.strength and sent.init_image is not None
            with Image.open(second.path) as stored:
                expected = stored.convert("RGB").resize(sent.init_image.size, Image.Resampling.LANCZOS)
            assert sent.init_image.tobytes() == expected.tobytes()
        assert generator.requests[-1].init_image.size == (128, 128)  # type: ignore[union-attr]


async def test_a_variation_whose_source_is_gone_fails_with_the_reason(tmp_path: Path) -> None:
    generator = FakeGenerator()
    async with service_for(tmp_path, generator) as service:
        source = await service.wait((await service.submit(req(count=1))).id)
        request = variation_request(source, 0, 0.5, Requester("u2", None, False))
        missing = replace(request, source_index=3)  # an image the source never had
        job = await service.wait((await service.submit(missing)).id)
        assert (job.state, job.error) == (JobState.FAILED, SOURCE_MISSING)
        assert [r.job_id for r in generator.requests] == [source.id]  # nothing was generated for it


async def test_blocked_images_are_not_stored(tmp_path: Path) -> None:
    async with service_for(tmp_path, FakeGenerator(flat=True)) as service:
        job = await service.wait((await service.submit(req())).id)
        assert job.state is JobState.BLOCKED and job.grid_path is None
        assert await service.storage.outputs_for(job.id) == []
        assert [v.category for v in await service.storage.verdicts_for(job.id)] == ["blank", "blank"]


class FlagAll:
    name = "flagger"

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        return [Verdict(Decision.FLAG, self.name, "held for review", category="sexual") for _ in images]


async def test_flagged_jobs_are_held_with_blurred_previews(tmp_path: Path) -> None:
    async with service_for(tmp_path, policy=Policy([IntegrityStage(), FlagAll()])) as service:
        job = await service.wait((await service.submit(req())).id)
        assert job.state is JobState.FLAGGED
        outputs = await service.storage.outputs_for(job.id)
        assert len(outputs) == 2 and all(o.preview_path and exists(o.preview_path) for o in outputs)
        assert all(o.preview_path != o.path for o in outputs)
        assert [v.category for v in await service.storage.verdicts_for(job.id)] == ["sexual", "sexual"]


async def test_generation_failure_is_recorded(tmp_path: Path) -> None:
    async with service_for(tmp_path, FakeGenerator(fail_with=RuntimeError("boom"))) as service:
        job = await service.wait((await service.submit(req())).id)
        assert job.state is JobState.FAILED and "boom" in (job.error or "")


def test_final_state() -> None:
    assert final_state(["allow", "block"]) is JobState.DONE
    assert final_state(["allow", "flag"]) is JobState.FLAGGED
    assert final_state(["block", "block"]) is JobState.BLOCKED


async def test_caps_are_enforced_before_anything_is_stored(tmp_path: Path) -> None:
    async with service_for(tmp_path, start=False, per_user_cap=2, per_guild_queue_cap=3) as service:
        await service.submit(req(user="a"))
        await service.submit(req(user="a"))
        with pytest.raises(QueueFullError, match="limit is 2"):
            await service.submit(req(user="a"))
        await service.submit(req(user="b"))
        with pytest.raises(QueueFullError, match="server's queue is full"):
            await service.submit(req(user="c"))
        await service.submit(req(user="a"), enforce_caps=False)  # operators are not capped
        assert len(await service.storage.list_jobs(limit=100)) == 4


async def test_fair_order_across_guilds(tmp_path: Path) -> None:
    generator = FakeGenerator()
    async with service_for(tmp_path, generator, start=False, max_batch_images=2) as service:
        flood = [await service.submit(req("A", f"u{i}"), enforce_caps=False) for i in range(10)]
        single = await service.submit(req("B", "ub"))
        assert service.position(single.id) == 2
        assert service.position(flood[-1].id) == 11
        await service.start()
        await service.wait(flood[-1].id)
    order = [ids[0] for ids in generator.calls]
    assert order.index(single.id) <= 1  # delayed by at most one job of the flooding guild


async def test_compatible_jobs_share_a_batch(tmp_path: Path) -> None:
    generator = FakeGenerator()
    async with service_for(tmp_path, generator, start=False, max_batch_images=4) as service:
        jobs = [await service.submit(req(f"g{i}", f"u{i}", count=2)) for i in range(4)]
        await service.start()
        await asyncio.gather(*(service.wait(j.id) for j in jobs))
    assert [len(c) for c in generator.calls] == [2, 2]


async def test_cancel_queued_and_running(tmp_path: Path) -> None:
    generator = FakeGenerator(step_seconds=0.05)
    async with service_for(tmp_path, generator, max_batch_images=2) as service:
        running = await service.submit(req("A", steps=100))
        queued = await service.submit(req("B"))
        await asyncio.to_thread(generator.step_started.wait)
        assert (await service.cancel(queued.id, actor_id="u1")).state is JobState.CANCELLED
        assert service.position(queued.id) is None
        await service.cancel(running.id, actor_id="u1")
        final = await service.wait(running.id)
        assert final.state is JobState.CANCELLED and await service.storage.outputs_for(running.id) == []
        with pytest.raises(IllegalTransitionError, match="already cancelled"):
            await service.cancel(queued.id)
        actions = [a.action for a in await service.storage.audit_entries()]
        assert actions.count("cancel") == 2


async def test_restart_resumes_queued_and_running_jobs(tmp_path: Path) -> None:
    # A crash leaves one job running and one queued in the database.
    async with service_for(tmp_path, start=False) as service:
        a = await service.submit(req("A"))
        b = await service.submit(req("B"))
        await service.storage.transition(a.id, JobState.RUNNING)
    async with service_for(tmp_path) as service:
        assert {j.id for j in service.resumed} == {a.id, b.id}
        finished = [await service.wait(j) for j in (a.id, b.id)]
        assert [j.state for j in finished] == [JobState.DONE, JobState.DONE]
        events = [e.to_state for e in await service.storage.events(a.id)]
        assert events == [JobState.QUEUED, JobState.RUNNING, JobState.QUEUED, JobState.RUNNING, JobState.DONE]


async def test_eta_uses_measured_throughput(tmp_path: Path) -> None:
    generator = FakeGenerator(step_seconds=0.01)
    async with service_for(tmp_path, generator, start=False, max_batch_images=2) as service:
        first = await service.submit(req("A"))
        assert service.eta(first.id) is None  # nothing measured yet
        await service.start()
        await service.wait(first.id)
        await service.aclose()
        later = [await service.submit(req("A", f"u{i}")) for i in range(3)]
        etas = [service.eta(j.id) for j in later]
        assert all(e is not None and e > 0 for e in etas)
        assert etas[0] < etas[1] < etas[2]  # type: ignore[operator]


async def test_a_broken_listener_does_not_stop_the_service(tmp_path: Path) -> None:
    def broken(update: JobUpdate) -> None:
        raise RuntimeError("listener bug")

    async with service_for(tmp_path) as service:
        service.subscribe(broken)
        job = await service.wait((await service.submit(req())).id)
        assert job.state is JobState.DONE


async def test_a_blocked_prompt_is_refused_and_kept_as_a_blocked_job_for_appeal(tmp_path: Path) -> None:
    from bot.errors import PromptBlockedError
    from safety.prompt_filter import PromptFilter
    from safety.suite import GuildRules, PromptStage

    gate = PromptStage(PromptFilter.default(), GuildRules(None))
    async with service_for(tmp_path, prompt_gate=gate) as service:
        bad = JobRequest.create("a n.u.d.e woman", model="fake", steps=2, width=64, height=64, guidance=1.0,
                                guild_id="g1", user_id="u1")  # fmt: skip
        with pytest.raises(PromptBlockedError, match="sexual content") as refused:
            await service.submit(bad)
        assert refused.value.category == "sexual"
        # Nothing is queued; the refusal is kept as a blocked job with its verdicts, so it may be appealed.
        [kept] = await service.storage.list_jobs()
        assert kept.id == refused.value.job_id and kept.state is JobState.BLOCKED and service.queued == 0
        assert [v.category for v in await service.storage.verdicts_for(kept.id)] == ["sexual"]
        assert await service.storage.outputs_for(kept.id) == []
        [entry] = await service.storage.audit_entries()
        assert entry.action == "prompt_blocked" and entry.actor_id == "u1" and entry.detail["category"] == "sexual"
        assert entry.target == kept.id
        good = await service.submit(req())
        assert (await service.wait(good.id)).state is JobState.DONE


async def test_sizes_too_small_for_the_watermark_are_refused_up_front(tmp_path: Path) -> None:
    async with service_for(tmp_path, min_side=128) as service:  # open_service passes safety.watermark.MIN_SIDE
        with pytest.raises(InvalidRequestError, match=r"size: 64x64 is too small .* at least 128"):
            await service.precheck(req())
        with pytest.raises(InvalidRequestError, match="size: 64x64"):
            await service.submit(req(), enforce_caps=False)
        assert await service.storage.list_jobs() == []


async def test_a_prechecked_request_is_judged_once(tmp_path: Path) -> None:
    from safety.prompt_filter import PromptFilter
    from safety.suite import GuildRules, PromptStage

    class Counting(PromptStage):
        calls = 0

        def check_prompt(self, context: CheckContext) -> Verdict:
            Counting.calls += 1
            return super().check_prompt(context)

    async with service_for(tmp_path, prompt_gate=Counting(PromptFilter.default(), GuildRules(None))) as service:
        await service.precheck(req())
        await service.submit(req(), prechecked=True)
        assert Counting.calls == 1
        await service.submit(req(user="u2"))
        assert Counting.calls == 2


async def test_age_restricted_channels_relax_suggestive_prompts_only(tmp_path: Path) -> None:
    from safety.prompt_filter import PromptFilter
    from safety.suite import GuildRules, PromptStage

    gate = PromptStage(PromptFilter.default(), GuildRules(None))
    policy = Policy([IntegrityStage(), gate])
    async with service_for(tmp_path, policy=policy, prompt_gate=gate) as service:

        def pinup(age_restricted: bool) -> JobRequest:
            return JobRequest.create(
                "a sexy pinup poster", model="fake", steps=2, width=64, height=64, guidance=1.0, guild_id="g",
                user_id=f"u{age_restricted}", age_restricted=age_restricted,
            )  # fmt: skip

        normal = await service.wait((await service.submit(pinup(False))).id)
        relaxed = await service.wait((await service.submit(pinup(True))).id)
        assert normal.state is JobState.FLAGGED and relaxed.state is JobState.DONE
        assert (await service.storage.get_job(relaxed.id)).request.age_restricted is True
