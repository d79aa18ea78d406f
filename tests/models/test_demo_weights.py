"""The committed demo model (``models/demo``), loaded through the bot's own model-loading path.

A handful of held-out prompts are drawn at the preset's size and read back with the evaluation's
checks (``models.eval_demo.read``). The full evaluation (every held-out prompt) is
``python -m models.eval_demo``; here a tolerance below its targets keeps the test fast and stable.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image

from bot.app import load_generator
from bot.config import Settings
from models.catalog import DEMO_DIR, preset_for
from models.demo_data import SIDE, single_object_scene
from models.diffusers_backend import DiffusersGenerator
from models.eval_demo import eval_scenes, read
from models.types import GenerationRequest

WEIGHTS_BUDGET = 25_000_000  # issue 8: the model directory is at most 25 MB


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DiffusersGenerator:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), device="cpu")
    generator = load_generator(settings, "builtin:demo")
    assert isinstance(generator, DiffusersGenerator)
    return generator


def draw(generator: DiffusersGenerator, prompts: list[str], *, seed: int = 0, negative: str = "") -> list[Image.Image]:
    preset = preset_for("builtin:demo")
    size, steps, guidance = (preset.width, preset.height), preset.steps, preset.guidance
    requests = [
        GenerationRequest(f"t{i}", prompt, negative, (seed + i,), *size, steps, guidance, "builtin:demo")
        for i, prompt in enumerate(prompts)
    ]
    return [image for result in generator.generate(requests) for image in result.images]


def small(image: Image.Image) -> Image.Image:
    """Back to the native side, where the checks were designed (the preset shows 256 px)."""
    return image.resize((SIDE, SIDE), Image.Resampling.BOX)


def test_the_committed_model_is_a_small_standard_diffusers_directory() -> None:
    files = [f for f in DEMO_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= WEIGHTS_BUDGET
    assert {f.name for f in files} >= {"model_index.json", "diffusion_pytorch_model.safetensors", "model.safetensors"}
    pipe = AutoPipelineForText2Image.from_pretrained(DEMO_DIR, local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(DiffusionPipeline.from_pretrained(DEMO_DIR, local_files_only=True)) is type(pipe)


def test_held_out_prompts_follow_the_prompt(demo: DiffusersGenerator) -> None:
    scenes = eval_scenes(16, seed=3)
    readings = [read(small(image)) for image in draw(demo, [s.caption for s in scenes])]
    wanted = [s.objects[0] for s in scenes]
    colours = sum(r.colour == w.colour for r, w in zip(readings, wanted, strict=True))
    positions = sum(r.position == w.position for r, w in zip(readings, wanted, strict=True))
    shapes = sum(r.shape == w.shape for r, w in zip(readings, wanted, strict=True))
    summary = [(s.caption, r) for s, r in zip(scenes, readings, strict=True)]
    print(f"colour {colours}/16, position {positions}/16, shape {shapes}/16")
    # Targets over the evaluation: colour 90 %, position 80 %, shape 70 % (measured 100 / 100 / 72 %,
    # docs/DEMO_MODEL.md). Here, on 16 prompts, a tolerance below them keeps the test stable.
    assert colours >= 13 and positions >= 12 and shapes >= 9, summary  # measured: 15, 16 and 11 of 16


def test_seeds_reproduce_and_differ(demo: DiffusersGenerator) -> None:
    prompt = ["a red circle at the top left on a white background"]
    first, again, other = draw(demo, prompt, seed=5), draw(demo, prompt, seed=5), draw(demo, prompt, seed=6)
    assert first[0].tobytes() == again[0].tobytes()
    assert first[0].tobytes() != other[0].tobytes()


def test_a_negative_prompt_changes_the_picture(demo: DiffusersGenerator) -> None:
    prompt = ["a blue square in the centre on a yellow background"]
    plain, steered = draw(demo, prompt, seed=2), draw(demo, prompt, seed=2, negative="blue")
    assert plain[0].tobytes() != steered[0].tobytes()
    assert read(small(plain[0])).colour == "blue"


def test_the_preset_draws_at_the_native_side_and_shows_a_larger_picture(demo: DiffusersGenerator) -> None:
    assert demo.native_side == SIDE
    scene = single_object_scene("yellow", "star", "centre", "black")
    [image] = draw(demo, [scene.caption])
    assert image.size == (preset_for("builtin:demo").width, preset_for("builtin:demo").height)
    assert Path(demo.model_id).resolve() == DEMO_DIR
