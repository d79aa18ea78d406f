"""The SDXL path of DiffusersGenerator, on a tiny SDXL pipeline built like diffusers' own tests build one.

SDXL has no safety checker (passing one would be ignored with a warning) but has its own watermark
switch; the generator must pass only the arguments the pipeline class accepts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from models.diffusers_backend import DiffusersGenerator, _safety_off_kwargs
from models.tokenizer import load_clip_tokenizer
from models.types import GenerationRequest


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _save_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def _save_tiny_sdxl(directory: Path) -> Path:
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop ids + pooled text
        cross_attention_dim=64,  # both text encoders' hidden states, concatenated
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=8,
        latent_channels=4,
    )
    tokenizer = load_clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=load_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(timestep_spacing="trailing"),
        add_watermarker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def test_only_accepted_safety_arguments_are_passed() -> None:
    assert _safety_off_kwargs("StableDiffusionPipeline") == {"safety_checker": None, "requires_safety_checker": False}
    assert _safety_off_kwargs("StableDiffusionXLPipeline") == {"add_watermarker": False}
    assert _safety_off_kwargs("SomeCustomPipeline") == {}


def test_tiny_sdxl_loads_and_generates(tiny_sdxl_dir: Path) -> None:
    generator = DiffusersGenerator.from_pretrained(str(tiny_sdxl_dir), device="cpu")
    request = GenerationRequest("a", "a cat", "blurry", (1, 2), 64, 64, 2, 5.0, generator.model_id)
    [result] = generator.generate([request])
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    [alone] = generator.generate([GenerationRequest("b", "a cat", "blurry", (2,), 64, 64, 2, 5.0, generator.model_id)])
    diff = np.asarray(alone.images[0], dtype=np.int16) - np.asarray(result.images[1], dtype=np.int16)
    assert int(np.abs(diff).max()) <= 1  # same seed, same image, whatever the batch
