"""Which torch device (and precision) work runs on: one answer for generation and the GPU watermark.

Only torch is imported here, so deciding where the watermark runs does not load diffusers.
"""

from __future__ import annotations

import torch


def choose_device_and_dtype(
    device: str | None, dtype: torch.dtype | None, *, sdxl: bool = False
) -> tuple[torch.device, torch.dtype]:
    """Pick where and in which precision a pipeline runs.

    Args:
        device: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``; ``None`` picks CUDA, then MPS, then CPU.
        dtype: Explicit precision; ``None`` picks one that suits the device.
        sdxl: The pipeline is SDXL-family; prefers bfloat16 on CUDA where supported.

    Returns:
        The device and dtype.

    Raises:
        ValueError: ``device`` is not a valid torch device or is not available here.
    """
    try:
        chosen = torch.device(device) if device is not None else _best_device()
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a valid torch device") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    if dtype is not None:
        return chosen, dtype
    if chosen.type == "cuda":
        # SDXL's VAE overflows to NaN (black images) in float16; diffusers then upcasts it to
        # float32 for decoding. bfloat16 has float32's range, so it needs neither fix.
        if sdxl and torch.cuda.is_bf16_supported():
            return chosen, torch.bfloat16
        return chosen, torch.float16
    if chosen.type == "mps":
        return chosen, torch.float16
    return chosen, torch.float32


def _best_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
