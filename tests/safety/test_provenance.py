from __future__ import annotations

import io
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.outputs import encode_png
from safety.provenance import MetadataSigner


def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_sign_survives_png_round_trip(tmp_path: Path) -> None:
    signer = MetadataSigner.from_key_file(tmp_path / "keys" / "k")
    marked = signer.mark(image(), "job-0")
    reloaded = Image.open(io.BytesIO(encode_png(marked)))
    reloaded.load()
    assert signer.verify(reloaded) == "job-0"
    assert stat.S_IMODE((tmp_path / "keys" / "k").stat().st_mode) == 0o600
    # the same key file gives the same signer
    assert MetadataSigner.from_key_file(tmp_path / "keys" / "k").verify(reloaded) == "job-0"


def test_edited_pixels_other_keys_and_unsigned_images_fail(tmp_path: Path) -> None:
    signer = MetadataSigner(b"k" * 32)
    marked = signer.mark(image(), "job-0")
    edited = marked.copy()
    edited.putpixel((0, 0), (1, 2, 3))
    edited.info = dict(marked.info)
    assert signer.verify(edited) is None
    assert MetadataSigner(b"x" * 32).verify(marked) is None
    assert signer.verify(image()) is None
    relabelled = marked.copy()
    relabelled.info = {**marked.info, "imaginebot:output": "job-9"}
    assert signer.verify(relabelled) is None


def test_short_key_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        MetadataSigner(b"short")
