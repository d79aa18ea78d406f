"""A tiny random open_clip model registered under its own name and saved as a checkpoint file.

``ClipEncoder.load`` then loads it through the real path (model name + local checkpoint), as an
operator's ``IMAGINEBOT_CLIP_MODEL=NAME:/path/to/weights.pt`` would.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY = "imaginebot-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(directory: Path) -> str:
    """Register the tiny architecture with open_clip, as a user's own config file would be."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{TINY}.json"  # open_clip names a config after its file
    config.write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    open_clip.add_model_config(config)
    return TINY


def save_tiny_clip(directory: Path, *, seed: int = 0) -> str:
    """Register the tiny architecture, save random weights; returns the ``MODEL:PATH`` spec."""
    register_tiny_clip(directory)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY, pretrained=None)
    checkpoint = directory / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return f"{TINY}:{checkpoint}"
