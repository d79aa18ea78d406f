"""The bundled tiny pipeline builds deterministically, saves, and loads like a real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoPipelineForText2Image

from models.tiny import build_tiny_pipeline, ensure_tiny_pipeline


def test_loads_through_auto_pipeline(tiny_model_dir: Path) -> None:
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_dir, local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == 8
    assert list(tiny_model_dir.rglob("*.safetensors"))
    assert not list(tiny_model_dir.rglob("*.bin"))


def test_ensure_is_idempotent(tiny_model_dir: Path) -> None:
    index = tiny_model_dir / "model_index.json"
    before = index.stat().st_mtime_ns
    assert ensure_tiny_pipeline(tiny_model_dir) == tiny_model_dir
    assert index.stat().st_mtime_ns == before
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == ["tiny"]  # no staging dir left behind


def test_ensure_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"model_index\.json"):
        ensure_tiny_pipeline(tmp_path)


def test_weights_depend_on_the_seed_only() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, again, other = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    assert torch.equal(torch.rand(1), expected_next)  # the global RNG is left alone
    for name, tensor in first.unet.state_dict().items():
        assert torch.equal(tensor, again.unet.state_dict()[name])
    weight = "conv_in.weight"
    assert not torch.equal(first.unet.state_dict()[weight], other.unet.state_dict()[weight])
