"""A two-step training run saves, resumes, exports and loads like any diffusers model."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from models import catalog
from models.demo_data import COLOURS, POSITIONS, SHAPES, scenes, single_object_scene
from models.diffusers_backend import DiffusersGenerator
from models.errors import ModelLoadError
from models.train_demo import TrainConfig, Trainer, attribute_labels
from models.types import GenerationRequest

_TINY = TrainConfig(vae_steps=2, vae_batch=2, unet_steps=2, batch=2, pool=4, warmup=1, scale_samples=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    out = tmp_path_factory.mktemp("demo-train")
    trainer = Trainer(_TINY, out)
    trainer.train_vae(every_s=float("inf"))
    trainer.train_unet(every_s=float("inf"))
    return trainer, trainer.export(out / "model")


def test_training_checkpoints_and_resumes(trained: tuple[Trainer, Path]) -> None:
    trainer, _ = trained
    assert (trainer.vae_step, trainer.unet_step) == (2, 2)
    assert trainer.scaling_factor != 0.18215  # measured on the trained VAE
    again = Trainer(_TINY, trainer.out)
    again.load()
    assert (again.vae_step, again.unet_step, again.scaling_factor) == (2, 2, trainer.scaling_factor)
    for name, tensor in trainer.ema_unet.state_dict().items():
        assert torch.equal(tensor, again.ema_unet.state_dict()[name])
    with pytest.raises(ValueError, match="was made with"):
        Trainer(TrainConfig(seed=1, vae_steps=2, unet_steps=2, pool=4), trainer.out).load()


def test_export_loads_through_diffusers_and_draws_at_native_size(trained: tuple[Trainer, Path]) -> None:
    _, model = trained
    assert sum(p.stat().st_size for p in model.rglob("*") if p.is_file()) <= 25_000_000  # the whole directory
    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.vae_scale_factor == 4
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, negative_prompt="blue",
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.size == (64, 64)


def test_generator_draws_natively_and_resizes_for_display(trained: tuple[Trainer, Path]) -> None:
    _, model = trained
    generator = DiffusersGenerator.from_pretrained(str(model), device="cpu", native_side=64)
    request = GenerationRequest("j1", "a red circle", "", (1, 2), 256, 256, 2, 3.0, str(model))
    (result,) = generator.generate([request])
    assert generator.native_side == 64
    assert [image.size for image in result.images] == [(256, 256)] * 2
    again = generator.generate([request])[0].images[0]
    assert again.tobytes() == result.images[0].tobytes()  # seeds reproduce


def test_catalog_knows_the_demo_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = catalog.preset_for("builtin:demo")
    assert preset.native_side == 64 and min(preset.width, preset.height) >= 192
    assert catalog.preset_for(str(catalog.DEMO_DIR)) == preset
    assert catalog.preset_for("builtin:tiny").native_side is None
    monkeypatch.setattr(catalog, "DEMO_DIR", tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="train_demo"):
        catalog.resolve("builtin:demo", tmp_path)


def test_builtin_demo_resolves_to_its_directory(trained: tuple[Trainer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = trained
    monkeypatch.setattr(catalog, "DEMO_DIR", model.resolve())
    assert catalog.resolve("builtin:demo", model.parent) == str(model.resolve())
    assert catalog.preset_for(str(model)).native_side == 64  # what the generator is loaded from


def test_native_side_keeps_the_aspect_and_resizes_image_to_image_too(tiny_model_dir: Path) -> None:
    base = DiffusersGenerator.from_pretrained(str(tiny_model_dir), device="cpu")
    assert base.native_side is None  # the tiny model's preset draws at the requested size
    generator = DiffusersGenerator(base._pipe, str(tiny_model_dir), native_side=64)
    wide = GenerationRequest("w", "a red circle", "", (1,), 256, 192, 1, 1.0, "builtin:tiny")
    (image,) = generator.generate([wide])[0].images
    assert image.size == (256, 192)
    vary = GenerationRequest(
        "v", "a red circle", "", (2,), 256, 192, 2, 1.0, "builtin:tiny", init_image=image, strength=0.5
    )
    assert generator.generate([vary])[0].images[0].size == (256, 192)
    with pytest.raises(ValueError, match="multiple of 8"):
        DiffusersGenerator(base._pipe, "x", native_side=60)


def test_the_exported_tokenizer_is_compact_and_tokenizes_like_the_bundled_one(trained: tuple[Trainer, Path]) -> None:
    from transformers import AutoTokenizer

    from models.tokenizer import load_clip_tokenizer

    _, model = trained
    exported = AutoTokenizer.from_pretrained(model / "tokenizer")
    assert (model / "tokenizer" / "tokenizer.json").stat().st_size < 2_000_000
    captions = ["a yellow star above a green square, night sky", "plain pink background with a small red ring!"]
    assert exported(captions).input_ids == load_clip_tokenizer()(captions).input_ids


def _with_unet(model: Path, directory: Path, unet: UNet2DConditionModel) -> Path:
    """A copy of an exported model with another UNet in it."""
    shutil.copytree(model, directory)
    shutil.rmtree(directory / "unet")
    unet.save_pretrained(directory / "unet")
    return directory


def test_training_can_start_from_an_exported_model(trained: tuple[Trainer, Path], tmp_path: Path) -> None:
    trainer, model = trained
    shifted = copy.deepcopy(trainer.ema_unet)  # unlike a fresh UNet, so that taking it shows
    with torch.no_grad():
        for parameter in shifted.parameters():
            parameter.add_(0.5)
    start = _with_unet(model, tmp_path / "start", shifted)
    config = TrainConfig(vae_steps=2, vae_batch=2, unet_steps=1, batch=2, pool=4, warmup=1, scale_samples=4,
                         init_from=str(start))  # fmt: skip
    follow = Trainer(config, tmp_path / "more")
    assert follow.vae_step == 2 and follow.scaling_factor == trainer.scaling_factor
    for name, tensor in shifted.state_dict().items():
        assert torch.allclose(follow.unet.state_dict()[name], tensor, atol=1e-2, rtol=1e-2), name
    vae_before = {k: v.clone() for k, v in follow.vae.state_dict().items()}
    follow.train_vae(every_s=float("inf"))
    follow.train_unet(every_s=float("inf"))
    assert follow.unet_step == 1 and follow.scaling_factor == trainer.scaling_factor
    assert all(torch.equal(v, follow.vae.state_dict()[k]) for k, v in vae_before.items())  # the VAE is kept
    again = Trainer(config, tmp_path / "more")
    again.load()  # the checkpoint remembers where the run started
    assert again.unet_step == 1
    assert DiffusionPipeline.from_pretrained(follow.export(tmp_path / "next"), local_files_only=True) is not None


def test_a_unet_of_another_architecture_is_not_taken_but_the_rest_is(
    trained: tuple[Trainer, Path], tmp_path: Path
) -> None:
    trainer, model = trained
    narrow = UNet2DConditionModel(**{**trainer.unet.config, "block_out_channels": (32, 64, 64, 64)})
    config = TrainConfig(vae_steps=2, vae_batch=2, unet_steps=1, batch=2, pool=4, warmup=1, scale_samples=4,
                         init_from=str(_with_unet(model, tmp_path / "older", narrow)))  # fmt: skip
    follow = Trainer(config, tmp_path / "more")
    fresh = Trainer(replace(config, init_from=None), tmp_path / "fresh")
    for name, tensor in fresh.unet.state_dict().items():  # the seed's fresh UNet, not the narrow one
        assert torch.equal(follow.unet.state_dict()[name], tensor), name
    for name, tensor in trainer.ema_text.state_dict().items():  # the exported text encoder, back from fp16
        assert torch.allclose(follow.text_encoder.state_dict()[name], tensor, atol=1e-2, rtol=1e-2), name
    assert follow.vae_step == 2 and follow.scaling_factor == trainer.scaling_factor


def test_plain_v_loss_keeps_the_weight_min_snr_takes_away(trained: tuple[Trainer, Path]) -> None:
    trainer, _ = trained
    pool, original = trainer.pool(), trainer.config
    trainer.config = replace(original, attribute_weight=0.0)
    try:
        plain = trainer.unet_loss(pool, torch.Generator().manual_seed(3)).item()
        trainer.config = replace(trainer.config, min_snr=5.0)
        weighted = trainer.unet_loss(pool, torch.Generator().manual_seed(3)).item()
    finally:
        trainer.config = original
    assert 0 < weighted < plain  # min(SNR, 5) / (SNR + 1) < 1 for every timestep


def test_the_attribute_probe_reads_one_object_captions_only() -> None:
    scene = single_object_scene("blue", "star", "top right", "white")
    assert attribute_labels(scene) == [
        list(COLOURS).index("blue"),
        SHAPES.index("star"),
        list(POSITIONS).index("top right"),
    ]
    pair = next(s for s in scenes(0, 50) if len(s.objects) == 2)
    assert attribute_labels(pair) == [-1, -1, -1]


def test_the_attribute_loss_falls_when_the_probe_can_read_the_states(trained: tuple[Trainer, Path]) -> None:
    trainer, _ = trained
    states = torch.zeros(3, 77, 64)
    labels = torch.tensor([[0, 1, 2], [3, 4, 5], [-1, -1, -1]])
    for row, (colour, shape, position) in enumerate(labels[:2].tolist()):  # one-hot attributes in the states
        states[row, :, colour] = states[row, :, 10 + shape] = states[row, :, 16 + position] = 30.0
    probe = copy.deepcopy(trainer.probe)
    trainer.probe = torch.nn.Linear(64, 25)
    with torch.no_grad():
        trainer.probe.weight.copy_(torch.eye(25, 64))
        trainer.probe.bias.zero_()
    try:
        readable = trainer.attribute_loss(states, labels).item()
        unreadable = trainer.attribute_loss(torch.zeros(3, 77, 64), labels).item()
        assert trainer.attribute_loss(states, torch.full((3, 3), -1)).item() == 0  # no labels, no loss
    finally:
        trainer.probe = probe
    assert readable < 1e-3 < unreadable  # three chance-level cross-entropies otherwise


def test_a_pool_cached_before_the_probe_gets_its_labels_without_being_encoded_again(
    trained: tuple[Trainer, Path],
) -> None:
    trainer, _ = trained
    pool, path = trainer.pool(), trainer.out / "pool.pt"
    older = {key: value for key, value in pool.items() if key != "labels"}
    older["mean"] = older["mean"] + 1  # a mark that encoding the pool again would wipe out
    torch.save(older, path)
    try:
        upgraded = trainer.pool()
        saved = torch.load(path, weights_only=False)
    finally:
        torch.save(pool, path)
    assert torch.equal(upgraded["mean"], older["mean"]) and torch.equal(saved["mean"], older["mean"])
    assert torch.equal(upgraded["labels"], pool["labels"]) and torch.equal(saved["labels"], pool["labels"])
