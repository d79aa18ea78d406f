"""fit_image: real PNGs of noise (which compresses worst) against real upload limits."""

from __future__ import annotations

import io
from pathlib import Path

import discord
import numpy as np
import pytest
from PIL import Image

from bot.chat.attachments import MIN_SIDE, fit_image
from bot.errors import AttachmentTooLargeError


def noise_png(path: Path, width: int, height: int, *, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    return path


def read(file: discord.File) -> bytes:
    """The bytes the attachment would upload (and close it)."""
    data = file.fp.read()
    file.close()
    return data


def test_a_png_that_fits_is_sent_unchanged(tmp_path: Path) -> None:
    path = noise_png(tmp_path / "grid.png", 64, 32)
    file = fit_image(path, "job1", limit=path.stat().st_size)
    assert file.filename == "job1.png"
    assert read(file) == path.read_bytes()


def test_a_png_over_the_limit_becomes_a_full_size_jpeg_first(tmp_path: Path) -> None:
    path = noise_png(tmp_path / "grid.png", 512, 256)
    limit = path.stat().st_size // 2  # noise at JPEG quality 90 is well under half its PNG
    file = fit_image(path, "job2", limit=limit)
    data = read(file)
    assert file.filename == "job2.jpg" and len(data) <= limit
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (512, 256)


@pytest.mark.parametrize(("width", "height"), [(1024, 512), (512, 1024), (768, 768)])
def test_a_far_too_large_png_is_scaled_down_under_the_limit_keeping_its_aspect(
    tmp_path: Path, width: int, height: int
) -> None:
    path = noise_png(tmp_path / "grid.png", width, height)
    limit = 60_000  # about a tenth of the smallest full-size JPEG of this much noise
    file = fit_image(path, "job3", limit=limit)
    data = read(file)
    assert len(data) <= limit
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "JPEG"
        assert MIN_SIDE <= min(image.size) < min(width, height)
        assert image.width / image.height == pytest.approx(width / height, rel=0.01)
    # The search predicts the size: it does not waste the budget by shrinking far below the limit.
    assert len(data) > limit / 3


def test_a_limit_nothing_sensible_fits_raises_naming_it(tmp_path: Path) -> None:
    path = noise_png(tmp_path / "grid.png", 1024, 512)
    with pytest.raises(AttachmentTooLargeError, match="cannot fit in 2000 bytes") as caught:
        fit_image(path, "job4", limit=2_000)
    assert caught.value.limit == 2_000 and caught.value.smallest > 2_000


def test_a_small_image_is_never_scaled_below_its_own_size(tmp_path: Path) -> None:
    path = noise_png(tmp_path / "one.png", 128, 128)  # already smaller than MIN_SIDE
    with pytest.raises(AttachmentTooLargeError, match=r"\(128x128 px\)"):
        fit_image(path, "job5", limit=1_000)


def test_the_limit_must_be_positive(tmp_path: Path) -> None:
    path = noise_png(tmp_path / "grid.png", 8, 8)
    with pytest.raises(ValueError, match="got 0"):
        fit_image(path, "job6", limit=0)
