"""MarkChain: the invisible watermark first, then the metadata signature over the final pixels."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from skimage import data

from bot.outputs import encode_png
from safety.provenance import MarkChain, MetadataSigner
from safety.watermark import InvisibleWatermark, payload_id


class Broken:
    def mark(self, image: Image.Image, output_id: str) -> Image.Image:
        raise RuntimeError("no mark today")


def test_both_marks_survive_in_the_stored_file() -> None:
    watermark, signer = InvisibleWatermark(b"w" * 32), MetadataSigner(b"m" * 32)
    marked = MarkChain(watermark, signer).mark(Image.fromarray(data.astronaut()).resize((512, 512)), "job-3")
    stored = Image.open(io.BytesIO(encode_png(marked)))
    stored.load()
    assert signer.verify(stored) == "job-3"  # the signature covers the watermarked pixels
    match = watermark.decode(stored)
    assert match is not None and match.payload_id == payload_id("job-3")


def test_a_failing_mark_raises_so_the_worker_blocks_the_image() -> None:
    with pytest.raises(RuntimeError, match="no mark today"):
        MarkChain(Broken(), MetadataSigner(b"m" * 32)).mark(Image.new("RGB", (8, 8)), "job-0")
    with pytest.raises(ValueError, match="at least one mark"):
        MarkChain()
