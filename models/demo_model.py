"""The demo model's architecture: Stable Diffusion's classes, sized for 64 px and a 2-core CPU.

* ``AutoencoderKL`` with three blocks: a factor-4 VAE, so a 64 px picture is a 16 x 16 x 4 latent
  (``vae_scale_factor`` = 4; StableDiffusionPipeline reads it from the config).
* ``UNet2DConditionModel`` over that latent, down to 2 x 2, cross-attention at 8 x 8, 4 x 4 and in the
  middle (2 x 2).
* ``CLIPTextModel`` (4 layers, width 64) trained from scratch with the UNet, fed by the real CLIP
  tokenizer of :mod:`models.tokenizer` (its 49408-token embedding is most of the file: fp16 keeps
  the whole model under the issue's 25 MB).
* Trained with a DDPM cosine schedule and v-prediction (sound at the zero-SNR end, where a solid
  background's colour is decided); shipped with ``DPMSolverMultistepScheduler`` over the same betas.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from models.demo_data import SIDE
from models.tokenizer import clip_text_encoder, load_clip_tokenizer

LATENT_SIDE = SIDE // 4
TEXT_WIDTH = 64
INFERENCE_STEPS = 20
GUIDANCE = 4.0
_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
}


def build_vae() -> AutoencoderKL:
    vae: AutoencoderKL = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
        latent_channels=4,
        sample_size=SIDE,
    )
    return vae


def build_unet() -> UNet2DConditionModel:
    unet: UNet2DConditionModel = UNet2DConditionModel(
        sample_size=LATENT_SIDE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96, 128, 128),
        layers_per_block=1,
        # Four levels, 16 -> 8 -> 4 -> 2: at 2 x 2 (the middle block, with cross-attention) each cell is a
        # quadrant, told apart by the zero padding, so the words for places have somewhere to land.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=16,
    )
    return unet


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return clip_text_encoder(tokenizer, width=TEXT_WIDTH, intermediate=TEXT_WIDTH * 4, layers=4, heads=4)


def training_scheduler() -> DDPMScheduler:
    scheduler: DDPMScheduler = DDPMScheduler(**_SCHEDULE)
    return scheduler


def inference_scheduler() -> DPMSolverMultistepScheduler:
    scheduler: DPMSolverMultistepScheduler = DPMSolverMultistepScheduler(
        **_SCHEDULE, timestep_spacing="trailing", steps_offset=1
    )
    return scheduler


def build_pipeline(
    vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer
) -> StableDiffusionPipeline:
    """Assemble a ``StableDiffusionPipeline`` (no safety checker: the bot judges every image itself)."""
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": inference_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
    }
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]  # untyped in diffusers
    return pipe


def build_untrained(seed: int) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel, CLIPTokenizer]:
    """Fresh components, the same weights for the same seed; the global torch RNG is left alone."""
    tokenizer = load_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_vae()
        torch.manual_seed(seed + 1)
        unet = build_unet()
        torch.manual_seed(seed + 2)
        text_encoder = build_text_encoder(tokenizer)
    return vae, unet, text_encoder, tokenizer
