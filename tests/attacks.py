"""The edits a posted image meets (re-encoding, resizing, cropping, tone changes): one definition for
the watermark's tests and its benchmark (``bench/bench_watermark.py``)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

from PIL import Image, ImageEnhance

Attack = Callable[[Image.Image], Image.Image]


def reencode(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def half(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)


def resize_back(image: Image.Image) -> Image.Image:
    """Down to half and back up: what a thumbnail that is enlarged again looks like."""
    return half(image).resize(image.size, Image.Resampling.BICUBIC)


def centre_crop(image: Image.Image, area: float = 0.8) -> Image.Image:
    """The centre part keeping ``area`` of the pixels (each side scaled by its square root)."""
    side = math.sqrt(area)
    width, height = round(image.width * side), round(image.height * side)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


ATTACKS: dict[str, Attack] = {
    "none": lambda im: im,
    "jpeg50": lambda im: reencode(im, "JPEG", 50),
    "webp80": lambda im: reencode(im, "WEBP", 80),
    "resize50": resize_back,
    "crop80": centre_crop,
    "bright+20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "bright-20": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "contrast+20": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
    "contrast-20": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
    "resize50+jpeg70": lambda im: reencode(resize_back(im), "JPEG", 70),
    "half+jpeg70": lambda im: reencode(half(im), "JPEG", 70),  # stays at half size: the decoder finds the size
}
