"""Images as Discord attachments that fit the upload limit of where they are posted.

Discord refuses an upload larger than the context's limit (``413``, code ``40005``): an interaction
says its own (``Interaction.filesize_limit``, from the payload's ``attachment_size_limit``), a
channel post has the guild's (``Guild.filesize_limit``, by boost tier). :func:`fit_image` keeps the
PNG when it fits and otherwise re-encodes a smaller copy; it is blocking, CPU-bound work, so
callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import discord
from PIL import Image

from bot.errors import AttachmentTooLargeError

logger = logging.getLogger(__name__)

# JPEG rather than WebP: for the same size and look it encodes ~20x faster (libjpeg-turbo), and a
# grid carries no provenance chunks to keep. Full size at falling quality first, then smaller.
QUALITIES = (90, 80, 70)
DOWNSCALE_QUALITY = 80  # one of QUALITIES: a smaller picture keeps more detail at a higher quality
MIN_SIDE = 256  # the shorter side of the smallest version worth posting (a 2x2 grid of 128 px tiles)
_HEADROOM = 0.9  # aim below the limit: bytes per pixel grow as an image shrinks
_MAX_DOWNSCALES = 8


def fit_image(path: Path | str, stem: str, limit: int) -> discord.File:
    """An attachment of the image at ``path`` no larger than ``limit`` bytes.

    The PNG itself when it fits (untouched, so its text chunks survive); else a JPEG at quality
    90, 80 or 70; else a JPEG scaled down (Lanczos, aspect kept) until it fits, the shorter side
    no smaller than :data:`MIN_SIDE` (or the original's, if that is already smaller).

    Args:
        path: a PNG (a grid or a single image).
        stem: the attachment's filename without extension.
        limit: the upload limit in bytes.

    Raises:
        ValueError: ``limit`` is not positive.
        AttachmentTooLargeError: even the smallest version is larger than ``limit``.
    """
    if limit <= 0:
        raise ValueError(f"limit must be a positive number of bytes, got {limit}")
    path = Path(path)
    if path.stat().st_size <= limit:
        return discord.File(path, filename=f"{stem}.png")
    with Image.open(path) as opened:
        image = opened.convert("RGB")  # JPEG has no alpha; our grids and outputs are RGB anyway
    full_size: dict[int, int] = {}  # quality -> bytes
    for quality in QUALITIES:
        data = _jpeg(image, quality)
        if len(data) <= limit:
            return _file(data, stem, path, limit, image.size)
        full_size[quality] = len(data)
    data, size = _downscaled(image, limit, full_size)
    return _file(data, stem, path, limit, size)


def _downscaled(image: Image.Image, limit: int, full_size: dict[int, int]) -> tuple[bytes, tuple[int, int]]:
    """The JPEG that fits, each try's scale predicted from the bytes per pixel of the one before."""
    width, height = image.size
    floor = min(MIN_SIDE, width, height) / min(width, height)  # the smallest scale allowed
    scale, last = 1.0, full_size[DOWNSCALE_QUALITY]
    smallest = (min(full_size.values()), image.size)
    for _ in range(_MAX_DOWNSCALES):
        if scale <= floor:
            break
        # Bytes go with pixels, i.e. scale**2; shrink by at least 10% a try so the search ends.
        scale = max(floor, min(scale * math.sqrt(_HEADROOM * limit / last), 0.9 * scale))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        data = _jpeg(image.resize(size, Image.Resampling.LANCZOS), DOWNSCALE_QUALITY)
        if len(data) <= limit:
            return data, size
        last = len(data)
        smallest = min(smallest, (last, size))
    smallest_bytes, (w, h) = smallest
    raise AttachmentTooLargeError(
        f"the image cannot fit in {limit} bytes: its smallest version ({w}x{h} px) is {smallest_bytes} bytes",
        limit=limit,
        smallest=smallest_bytes,
    )


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _file(data: bytes, stem: str, source: Path, limit: int, size: tuple[int, int]) -> discord.File:
    logger.info(
        "%s is over the %d-byte upload limit: sending a %dx%d JPEG of %d bytes", source.name, limit, *size, len(data)
    )
    return discord.File(io.BytesIO(data), filename=f"{stem}.jpg")
