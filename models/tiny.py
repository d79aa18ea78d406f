"""A tiny, randomly initialised Stable Diffusion pipeline, built offline from configs.

No model hub is reachable here, so the bundled model is built the way diffusers' own tests build
theirs: real ``UNet2DConditionModel`` / ``AutoencoderKL`` / ``CLIPTextModel`` classes with tiny
configs and fixed seeds, plus the real CLIP tokenizer (:mod:`models.tokenizer`). Its pictures are
noise, but it exercises the same loading and generation code paths as SD 1.5, runs in seconds on a
CPU, and the same seed always yields the same weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

# Imported from their modules, not the package root: mypy resolves root names to diffusers'
# dependency-missing dummies.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from models.tokenizer import clip_text_encoder, load_clip_tokenizer

logger = logging.getLogger(__name__)

_HIDDEN = 32  # text-encoder width == UNet cross-attention width


def _unet() -> UNet2DConditionModel:
    unet: UNet2DConditionModel = UNet2DConditionModel(
        sample_size=32,  # default output 32 * 8 = 256 px; callers always pass a size anyway
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return unet


def _vae() -> AutoencoderKL:
    # Four blocks, so the latent is 1/8 of the image as in every real SD VAE. The full-resolution
    # block is only 8 channels wide: that keeps decoding a 512 px image cheap on a CPU.
    vae: AutoencoderKL = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=256,
    )
    return vae


def _text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return clip_text_encoder(tokenizer, width=_HIDDEN, intermediate=37, layers=5, heads=4)


def _scheduler() -> EulerDiscreteScheduler:
    # SD 1.x noise schedule; "trailing" spacing behaves well at the 1-4 steps tests use.
    scheduler: EulerDiscreteScheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    return scheduler


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build the tiny pipeline in memory; equal seeds give identical weights.

    The global torch RNG is left as it was found.

    Args:
        seed: Seed for the weight initialisation of every component.

    Returns:
        A ``StableDiffusionPipeline`` on the CPU in float32, with no safety checker (the bot judges
        every image with its own safety layer).
    """
    tokenizer = load_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet()
        torch.manual_seed(seed)
        vae = _vae()
        torch.manual_seed(seed)
        text_encoder = _text_encoder(tokenizer)
    # Passed as a dict: diffusers annotates optional components (None) and the scheduler too narrowly.
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": _scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
    }
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]  # untyped in diffusers
    return pipe


def save_tiny_pipeline(directory: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it (safetensors) into ``directory``.

    Args:
        directory: Target directory; created if missing, files in it are overwritten.
        seed: Seed for the weight initialisation.

    Returns:
        ``directory``, loadable with ``AutoPipelineForText2Image.from_pretrained``.
    """
    build_tiny_pipeline(seed).save_pretrained(directory, safe_serialization=True)
    logger.info("saved tiny pipeline (seed %d) to %s", seed, directory)
    return directory


def ensure_tiny_pipeline(directory: Path) -> Path:
    """Return ``directory`` holding the tiny pipeline, building and saving it first if needed.

    The model is written into a sibling temporary directory and renamed into place, so a crash
    never leaves half a model behind, and a concurrent builder that wins the race is respected.

    Args:
        directory: Where the model lives; it counts as present when ``model_index.json`` exists.

    Returns:
        ``directory``.

    Raises:
        ValueError: ``directory`` exists, is not empty, and holds no ``model_index.json``.
    """
    if (directory / "model_index.json").is_file():
        return directory
    if directory.exists() and any(directory.iterdir()):
        raise ValueError(f"{directory} is not empty and holds no model_index.json; refusing to overwrite it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_tiny_pipeline(staging)
        # rename() replaces an empty directory atomically on POSIX and fails on a full one.
        os.replace(staging, directory)
    except OSError:
        if not (directory / "model_index.json").is_file():
            raise
        logger.info("another process saved the tiny pipeline to %s first", directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
