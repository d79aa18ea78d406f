from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from PIL import Image

from models.types import GenerationRequest, StepProgress, Verdict
from models.worker import OutcomeKind, Worker
from safety.integrity import IntegrityStage
from safety.policy import CheckContext, Policy
from safety.provenance import MetadataSigner
from tests.fakes import FakeGenerator


def request(job_id: str, *, seeds: tuple[int, ...] = (1, 2), steps: int = 3) -> GenerationRequest:
    return GenerationRequest(job_id, "a cat", "", seeds, 32, 32, steps, 1.0, "fake")


class RaisingPolicy:
    def check(self, images: Sequence[Image.Image], request: CheckContext) -> list[Verdict]:
        raise RuntimeError("classifier crashed")


class RaisingMarker:
    def mark(self, image: Image.Image, output_id: str) -> Image.Image:
        raise OSError("key unreadable")


SIGNER = MetadataSigner(b"k" * 32)


async def run(worker: Worker, *requests: GenerationRequest) -> list:  # type: ignore[type-arg]
    async with worker:
        return await worker.run(list(requests))


async def test_generate_judge_mark() -> None:
    worker = Worker(lambda m: FakeGenerator(m), Policy([IntegrityStage()]), SIGNER)
    [outcome] = await run(worker, request("a"))
    assert outcome.kind is OutcomeKind.COMPLETED
    assert [o.verdict.decision for o in outcome.images] == ["allow", "allow"]
    assert [o.seed for o in outcome.images] == [1, 2]
    assert all(o.image is not None and SIGNER.verify(o.image) == f"a-{o.index}" for o in outcome.images)
    assert set(outcome.timings) >= {"load", "generate", "safety", "mark"}


async def test_a_raising_policy_blocks_every_image() -> None:
    worker = Worker(lambda m: FakeGenerator(m), RaisingPolicy(), SIGNER)
    [outcome] = await run(worker, request("a"))
    assert outcome.kind is OutcomeKind.COMPLETED
    assert all(o.image is None and o.verdict.decision == "block" for o in outcome.images)
    assert outcome.images[0].verdict.reason == "safety check unavailable"


async def test_a_failing_watermark_blocks_the_image() -> None:
    worker = Worker(lambda m: FakeGenerator(m), Policy([IntegrityStage()]), RaisingMarker())
    [outcome] = await run(worker, request("a"))
    assert all(o.image is None and o.verdict.stage == "provenance" for o in outcome.images)


async def test_blocked_images_never_leave_the_worker() -> None:
    worker = Worker(lambda m: FakeGenerator(m, flat=True), Policy([IntegrityStage()]), SIGNER)
    [outcome] = await run(worker, request("a"))
    assert all(o.image is None and o.verdict.category == "blank" for o in outcome.images)


async def test_generation_and_load_errors_fail_the_batch() -> None:
    worker = Worker(lambda m: FakeGenerator(m, fail_with=RuntimeError("CUDA OOM")), Policy([IntegrityStage()]), SIGNER)
    outcomes = await run(worker, request("a"), request("b"))
    assert [o.kind for o in outcomes] == [OutcomeKind.FAILED, OutcomeKind.FAILED]
    assert "CUDA OOM" in (outcomes[0].error or "")

    def cannot_load(model: str) -> FakeGenerator:
        raise FileNotFoundError(model)

    [outcome] = await run(Worker(cannot_load, Policy([IntegrityStage()]), SIGNER), request("c"))
    assert outcome.kind is OutcomeKind.FAILED


async def test_the_loop_is_not_blocked_and_progress_arrives_on_the_loop() -> None:
    generator = FakeGenerator(step_seconds=0.05)
    worker = Worker(lambda m: generator, Policy([IntegrityStage()]), SIGNER)
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []

    def on_progress(p: StepProgress) -> None:
        assert threading.get_ident() == loop_thread
        seen.append((p.step, p.total))

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with worker:
        task = asyncio.create_task(ticker())
        await worker.run([request("a", steps=4)], on_progress)
        task.cancel()
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert ticks >= 10  # the loop kept running while the worker thread slept through 0.2 s of steps


async def test_cancel_running_and_partial_cancel() -> None:
    generator = FakeGenerator(step_seconds=0.05)
    worker = Worker(lambda m: generator, Policy([IntegrityStage()]), SIGNER)
    async with worker:
        run_task = asyncio.create_task(worker.run([request("a", steps=50), request("b", steps=50)]))
        await asyncio.to_thread(generator.step_started.wait)
        worker.cancel("a")
        worker.cancel("b")
        outcomes = await run_task
        assert [o.kind for o in outcomes] == [OutcomeKind.CANCELLED, OutcomeKind.CANCELLED]
        assert all(not o.images for o in outcomes)

        generator.step_started.clear()
        run_task = asyncio.create_task(worker.run([request("c", steps=40), request("d", steps=40)]))
        await asyncio.to_thread(generator.step_started.wait)
        worker.cancel("c")
        c, d = await run_task
        assert c.kind is OutcomeKind.CANCELLED and d.kind is OutcomeKind.COMPLETED
        # cancellation marks are cleared after the batch: the id can be reused safely
        assert not worker.is_cancelled("c")


async def test_one_model_is_loaded_once() -> None:
    loads: list[str] = []

    def load(model: str) -> FakeGenerator:
        loads.append(model)
        return FakeGenerator(model)

    async with Worker(load, Policy([IntegrityStage()]), SIGNER) as worker:
        await worker.preload("fake")
        await worker.run([request("a")])
        await worker.run([request("b")])
    assert loads == ["fake"]


async def test_closed_worker_refuses_work() -> None:
    from models.errors import WorkerClosedError

    worker = Worker(lambda m: FakeGenerator(m), Policy([IntegrityStage()]), SIGNER)
    with pytest.raises(WorkerClosedError):
        await worker.run([request("a")])
