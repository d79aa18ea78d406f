"""DiffusersGenerator against the tiny real pipeline: seeds, batching, progress, cancellation, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from PIL import Image

from models.diffusers_backend import DiffusersGenerator, choose_device_and_dtype
from models.errors import GenerationError, ModelLoadError
from models.types import GeneratedImages, GenerationRequest, StepProgress


def request(
    generator: DiffusersGenerator,
    job_id: str,
    seeds: tuple[int, ...],
    *,
    steps: int = 2,
    guidance: float = 1.0,
    size: int = 64,
    prompt: str = "a photo of a cat",
) -> GenerationRequest:
    return GenerationRequest(
        job_id=job_id,
        prompt=prompt,
        negative_prompt="blurry",
        seeds=seeds,
        width=size,
        height=size,
        steps=steps,
        guidance=guidance,
        model=generator.model_id,
    )


def pixels(image: Image.Image) -> NDArray[np.int16]:
    return np.asarray(image, dtype=np.int16)


def assert_close(a: Image.Image, b: Image.Image) -> None:
    # Batched matmuls may round differently from single ones; one level of 255 is the budget.
    assert int(np.abs(pixels(a) - pixels(b)).max()) <= 1


class Recorder:
    """Collects progress and cancels chosen jobs once a given step has been reported."""

    def __init__(self, cancel: set[str] | None = None, after_step: int = 1) -> None:
        self.steps: list[StepProgress] = []
        self.cancel = cancel or set()
        self.after_step = after_step

    def on_progress(self, progress: StepProgress) -> None:
        self.steps.append(progress)

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancel and len(self.steps) >= self.after_step


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_same_seed_gives_same_image_at_batch_1_and_4(tiny_generator: DiffusersGenerator, guidance: float) -> None:
    [alone] = tiny_generator.generate([request(tiny_generator, "alone", (7,), guidance=guidance)])
    [batched] = tiny_generator.generate([request(tiny_generator, "batch", (1, 2, 7, 3), guidance=guidance)])
    assert_close(alone.images[0], batched.images[2])
    # And across requests: the image depends on its own seed, not on its neighbours.
    mixed = tiny_generator.generate(
        [request(tiny_generator, "x", (1, 2), guidance=guidance), request(tiny_generator, "y", (7,), guidance=guidance)]
    )
    assert_close(alone.images[0], mixed[1].images[0])


def test_different_seeds_give_different_images(tiny_generator: DiffusersGenerator) -> None:
    [result] = tiny_generator.generate([request(tiny_generator, "a", (1, 2))])
    assert float(np.abs(pixels(result.images[0]) - pixels(result.images[1])).mean()) > 2.0


def test_repeated_runs_are_identical(tiny_generator: DiffusersGenerator) -> None:
    batch = [request(tiny_generator, "a", (5, 6)), request(tiny_generator, "b", (9,))]
    first, second = tiny_generator.generate(batch), tiny_generator.generate(batch)
    for one, two in zip(first, second, strict=True):
        assert [pixels(i).tolist() for i in one.images] == [pixels(i).tolist() for i in two.images]


def test_results_are_aligned_with_requests(tiny_generator: DiffusersGenerator) -> None:
    results = tiny_generator.generate(
        [request(tiny_generator, "a", (1, 2, 3), size=64), request(tiny_generator, "b", (4,), size=64)]
    )
    assert [(r.job_id, len(r.images), r.cancelled) for r in results] == [("a", 3, False), ("b", 1, False)]
    assert all(image.size == (64, 64) and image.mode == "RGB" for r in results for image in r.images)


def test_non_square_size(tiny_generator: DiffusersGenerator) -> None:
    req = GenerationRequest("wide", "a cat", "", (1,), 96, 64, 2, 1.0, tiny_generator.model_id)
    [result] = tiny_generator.generate([req])
    assert result.images[0].size == (96, 64)


def test_progress_is_reported_every_step(tiny_generator: DiffusersGenerator) -> None:
    recorder = Recorder()
    tiny_generator.generate(
        [request(tiny_generator, "a", (1,), steps=3), request(tiny_generator, "b", (2,), steps=3)],
        on_progress=recorder.on_progress,
    )
    assert recorder.steps == [StepProgress(("a", "b"), step, 3) for step in (1, 2, 3)]


def test_cancelling_every_job_stops_the_pipeline_early(tiny_generator: DiffusersGenerator) -> None:
    recorder = Recorder(cancel={"a", "b"}, after_step=1)
    results = tiny_generator.generate(
        [request(tiny_generator, "a", (1, 2), steps=5), request(tiny_generator, "b", (3,), steps=5)],
        on_progress=recorder.on_progress,
        is_cancelled=recorder.is_cancelled,
    )
    assert results == [GeneratedImages("a", (), cancelled=True), GeneratedImages("b", (), cancelled=True)]
    assert [p.step for p in recorder.steps] == [1]  # steps 2..5 never ran


def test_cancelling_one_job_keeps_the_others_running(tiny_generator: DiffusersGenerator) -> None:
    recorder = Recorder(cancel={"b"}, after_step=1)
    results = tiny_generator.generate(
        [request(tiny_generator, "a", (1,), steps=3), request(tiny_generator, "b", (2,), steps=3)],
        on_progress=recorder.on_progress,
        is_cancelled=recorder.is_cancelled,
    )
    assert len(recorder.steps) == 3
    assert results[0].job_id == "a"
    assert not results[0].cancelled
    assert len(results[0].images) == 1
    assert results[1] == GeneratedImages("b", (), cancelled=True)
    [alone] = tiny_generator.generate([request(tiny_generator, "a", (1,), steps=3)])
    assert_close(results[0].images[0], alone.images[0])


def test_cancelled_during_the_last_step_is_still_cancelled(tiny_generator: DiffusersGenerator) -> None:
    steps: list[StepProgress] = []
    checked_after_last_step = False

    def is_cancelled(job_id: str) -> bool:
        # False when polled at the end of the last step, True on the next poll (after the run).
        nonlocal checked_after_last_step
        if checked_after_last_step:
            return True
        checked_after_last_step = len(steps) == 2
        return False

    [result] = tiny_generator.generate(
        [request(tiny_generator, "a", (1,), steps=2)], on_progress=steps.append, is_cancelled=is_cancelled
    )
    assert len(steps) == 2
    assert result == GeneratedImages("a", (), cancelled=True)


def test_cancelled_before_start_runs_nothing(tiny_generator: DiffusersGenerator) -> None:
    recorder = Recorder(cancel={"a"}, after_step=0)
    [result] = tiny_generator.generate(
        [request(tiny_generator, "a", (1,))], on_progress=recorder.on_progress, is_cancelled=recorder.is_cancelled
    )
    assert result == GeneratedImages("a", (), cancelled=True)
    assert recorder.steps == []


def test_mixed_batch_keys_are_rejected(tiny_generator: DiffusersGenerator) -> None:
    with pytest.raises(ValueError, match="batch key"):
        tiny_generator.generate([request(tiny_generator, "a", (1,)), request(tiny_generator, "b", (1,), steps=3)])


def test_empty_batch_gives_empty_result(tiny_generator: DiffusersGenerator) -> None:
    assert tiny_generator.generate([]) == []


def test_pipeline_failure_becomes_generation_error(tiny_generator: DiffusersGenerator) -> None:
    def explode(progress: StepProgress) -> None:
        raise RuntimeError("boom")

    with pytest.raises(GenerationError, match="boom") as caught:
        tiny_generator.generate([request(tiny_generator, "a", (1,))], on_progress=explode)
    assert isinstance(caught.value.__cause__, RuntimeError)
    [result] = tiny_generator.generate([request(tiny_generator, "a", (1,))])  # still usable afterwards
    assert len(result.images) == 1


@pytest.mark.parametrize("missing", [True, False], ids=["no-such-dir", "dir-without-model-index"])
def test_bad_model_path_is_a_load_error(tmp_path: Path, missing: bool) -> None:
    path = str(tmp_path / "missing" if missing else tmp_path)
    with pytest.raises(ModelLoadError, match=re.escape(path)):
        DiffusersGenerator.from_pretrained(path, device="cpu")


def test_broken_weights_are_a_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_model_dir / "model_index.json").read_text())
    with pytest.raises(ModelLoadError, match="broken"):
        DiffusersGenerator.from_pretrained(str(broken), device="cpu")


def test_loaded_pipeline_runs_on_cpu_without_diffusers_safety_checker(
    tiny_generator: DiffusersGenerator, tiny_model_dir: Path
) -> None:
    assert tiny_generator.model_id == str(tiny_model_dir)
    assert tiny_generator.device == torch.device("cpu")
    assert tiny_generator._pipe.safety_checker is None  # the bot's own safety layer judges every image
    assert tiny_generator._pipe.config.requires_safety_checker is False


def test_choose_device_and_dtype_on_cpu() -> None:
    assert choose_device_and_dtype("cpu", None) == (torch.device("cpu"), torch.float32)
    assert choose_device_and_dtype("cpu", torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="nonsense"):
        choose_device_and_dtype("nonsense", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_choose_device_rejects_unavailable_cuda() -> None:
    with pytest.raises(ValueError, match="cuda"):
        choose_device_and_dtype("cuda", None)


def variation(
    generator: DiffusersGenerator, job_id: str, source: Image.Image, seeds: tuple[int, ...], strength: float
) -> GenerationRequest:
    return GenerationRequest(
        job_id=job_id,
        prompt="a photo of a cat",
        negative_prompt="blurry",
        seeds=seeds,
        width=source.width,
        height=source.height,
        steps=4,
        guidance=1.0,
        model=generator.model_id,
        init_image=source,
        strength=strength,
    )


def test_image_to_image_follows_its_source_more_at_lower_strength(tiny_generator: DiffusersGenerator) -> None:
    # The tiny model's weights are random, so "looks like the source" cannot be checked; what any
    # image-to-image pipeline must show is that the source matters, and matters less as strength grows.
    a, b = tiny_generator.generate([request(tiny_generator, "src", (5, 6), size=64)])[0].images

    def vary(source: Image.Image, strength: float) -> Image.Image:
        return tiny_generator.generate([variation(tiny_generator, "v", source, (9,), strength)])[0].images[0]

    def distance(x: Image.Image, y: Image.Image) -> float:
        return float(np.abs(pixels(x) - pixels(y)).mean())

    subtle_gap, strong_gap = distance(vary(a, 0.25), vary(b, 0.25)), distance(vary(a, 1.0), vary(b, 1.0))
    assert subtle_gap > 2 * strong_gap > 0
    assert distance(vary(a, 0.5), vary(a, 0.5)) == 0  # and it reproduces


def test_image_to_image_reports_only_the_steps_it_runs(tiny_generator: DiffusersGenerator) -> None:
    (source,) = tiny_generator.generate([request(tiny_generator, "src", (5,), size=64)])[0].images
    recorder = Recorder()
    tiny_generator.generate([variation(tiny_generator, "v", source, (1, 2), 0.5)], on_progress=recorder.on_progress)
    assert [(p.step, p.total) for p in recorder.steps] == [(1, 2), (2, 2)]


def test_upscale_doubles_the_size(tiny_generator: DiffusersGenerator) -> None:
    (source,) = tiny_generator.generate([request(tiny_generator, "src", (5,), size=64)])[0].images
    big = source.resize((128, 128), Image.Resampling.LANCZOS)
    (result,) = tiny_generator.generate([variation(tiny_generator, "up", big, (5,), 0.3)])[0].images
    assert result.size == (128, 128)


def test_image_to_image_requests_are_validated() -> None:
    source = Image.new("RGB", (64, 64))
    base = {"job_id": "j", "prompt": "p", "negative_prompt": "", "seeds": (1,), "steps": 4, "guidance": 1.0,
            "model": "m"}  # fmt: skip
    with pytest.raises(ValueError, match="go together"):
        GenerationRequest(**base, width=64, height=64, init_image=source)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected"):
        GenerationRequest(**base, width=128, height=64, init_image=source, strength=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no denoising step"):
        GenerationRequest(**base, width=64, height=64, init_image=source, strength=0.2)  # type: ignore[arg-type]
    assert GenerationRequest(**base, width=64, height=64, init_image=source, strength=0.5).key.strength == 0.5  # type: ignore[arg-type]
