"""The invisible watermark: round trips, each benchmark attack at reduced scale, the keyed check.

The fast tests use three 512 px images (two photos and a smooth gradient, the hard cases for
texture and for flatness); the slow one runs every attack over more photos at 512 and 1024.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from skimage import data

from bot.chat.render import ASPECTS, size_for
from models.types import Watermarker
from safety.watermark import (
    DEFAULT_CANONICAL_SIZES,
    PAYLOAD_ID_BITS,
    InvisibleWatermark,
    WatermarkError,
    WatermarkMatch,
    payload_id,
)
from tests.attacks import ATTACKS as ALL_ATTACKS
from tests.attacks import half

KEY = b"test-watermark-key-0123456789abc"


def _square(array: np.ndarray, size: int) -> Image.Image:
    image = Image.fromarray(array).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))


def _gradient(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    return Image.fromarray((255 * np.stack([x, y, 1 - x], -1)).astype(np.uint8))


def _images(size: int) -> list[Image.Image]:
    return [_square(data.astronaut(), size), _square(data.coffee(), size), _gradient(size)]


ATTACKS = {name: attack for name, attack in ALL_ATTACKS.items() if name != "none"}


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def watermark() -> InvisibleWatermark:
    return InvisibleWatermark(KEY)


@pytest.fixture(scope="module")
def marked(watermark: InvisibleWatermark) -> list[tuple[str, Image.Image, Image.Image]]:
    return [(f"output-{i}", image, watermark.embed(image, f"output-{i}")) for i, image in enumerate(_images(512))]


def test_payload_id_is_stable_and_48_bits() -> None:
    assert PAYLOAD_ID_BITS >= 48
    assert payload_id("abc") == payload_id("abc") == 0xBA7816BF8F01  # first 48 bits of sha256("abc")
    assert payload_id("abc") != payload_id("abd")
    assert all(0 <= payload_id(str(i)) < 2**48 for i in range(100))


def test_round_trip_is_invisible(
    watermark: InvisibleWatermark, marked: list[tuple[str, Image.Image, Image.Image]]
) -> None:
    for output_id, image, stamped in marked:
        assert stamped.mode == "RGB" and stamped.size == image.size
        assert _psnr(image, stamped) >= 38.0
        match = watermark.decode(stamped)
        assert match is not None
        assert match.payload_id == payload_id(output_id)
        assert match.ber < 0.1 and match.size == image.size and match.offset == (0, 0)
        assert watermark.verify(stamped, output_id)
        assert not watermark.verify(stamped, "some-other-output")


def test_mark_is_embed_and_satisfies_the_protocol(watermark: InvisibleWatermark) -> None:
    protocol: Watermarker = watermark
    image = _gradient(256)
    assert np.array_equal(np.asarray(protocol.mark(image, "x")), np.asarray(watermark.embed(image, "x")))


def test_embed_is_deterministic_and_accepts_other_modes(watermark: InvisibleWatermark) -> None:
    image = _square(data.chelsea(), 256).convert("RGBA")
    first, second = watermark.embed(image, "out"), watermark.embed(image, "out")
    assert first.mode == "RGB" and np.array_equal(np.asarray(first), np.asarray(second))
    assert watermark.verify(first, "out")


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_payload_survives(
    attack: str, watermark: InvisibleWatermark, marked: list[tuple[str, Image.Image, Image.Image]]
) -> None:
    for output_id, _, stamped in marked:
        match = watermark.decode(ATTACKS[attack](stamped))
        assert match is not None, f"{attack} erased the mark of {output_id}"
        assert match.payload_id == payload_id(output_id)


def test_half_size_is_decoded_at_its_canonical_size(
    watermark: InvisibleWatermark, marked: list[tuple[str, Image.Image, Image.Image]]
) -> None:
    match = watermark.decode(half(marked[0][2]))
    assert isinstance(match, WatermarkMatch) and match.size == (512, 512)


def test_other_keys_do_not_verify(marked: list[tuple[str, Image.Image, Image.Image]]) -> None:
    foreign = InvisibleWatermark(b"another-key-of-at-least-16-bytes")
    for _, _, stamped in marked:
        assert foreign.decode(stamped) is None


def test_unmarked_images_decode_to_none(watermark: InvisibleWatermark) -> None:
    rng = np.random.default_rng(0)
    unmarked = [*_images(512), *_images(256), _square(data.rocket(), 384)]
    unmarked.append(Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)))
    unmarked.append(Image.new("RGB", (512, 512), (128, 128, 128)))
    assert [watermark.decode(image) for image in unmarked] == [None] * len(unmarked)


def test_false_match_bound_counts_the_hypotheses(watermark: InvisibleWatermark) -> None:
    assert watermark.hypotheses((512, 512)) >= 9
    assert watermark.false_match_bound((512, 512)) == watermark.hypotheses((512, 512)) * 2.0**-32
    assert watermark.false_match_bound((512, 512)) < 1e-8


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        InvisibleWatermark(b"short")
    with pytest.raises(ValueError, match="positive"):
        InvisibleWatermark(KEY, canonical_sizes=[(0, 512)])


def test_default_sizes_are_the_bots_output_sizes() -> None:
    expected = {size_for(aspect, base) for aspect in ASPECTS for base in (256, 512, 1024)}
    assert expected <= set(DEFAULT_CANONICAL_SIZES)
    assert {(768, 768), (1024, 1024)} <= set(DEFAULT_CANONICAL_SIZES)


def test_tiny_images_are_marked_but_too_small_to_decode(watermark: InvisibleWatermark) -> None:
    image = _gradient(16)
    assert watermark.embed(image, "x").size == (16, 16)
    assert watermark.decode(watermark.embed(image, "x")) is None


@pytest.mark.slow
@pytest.mark.parametrize("size", [512, 1024])
def test_every_attack_over_more_photos(size: int, watermark: InvisibleWatermark) -> None:
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera(), data.cat()]
    images = [_square(p, size) for p in photos] + [_gradient(size)]
    for i, image in enumerate(images):
        stamped = watermark.embed(image, f"slow-{i}")
        assert _psnr(image, stamped) >= 38.0
        for attack, fn in ATTACKS.items():
            assert watermark.verify(fn(stamped), f"slow-{i}"), f"{attack} on image {i} at {size}"


def test_mark_checks_its_work_and_fails_closed(watermark: InvisibleWatermark) -> None:
    # Every pixel pinned at 0 or 255 in a one-pixel checkerboard: clipping erases any mark, so mark()
    # refuses (the worker then blocks the image) instead of returning an image that is not marked.
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    with pytest.raises(WatermarkError, match="does not survive"):
        watermark.mark(Image.fromarray(np.stack([checker] * 3, axis=-1)), "checker-0")
    with pytest.raises(WatermarkError):
        watermark.mark(Image.new("RGB", (16, 16), (128, 128, 128)), "too-small-0")  # no room for 258 coded bits
    photo = _images(256)[0]
    stamped = watermark.mark(photo, "photo-0")
    assert watermark.verify(stamped, "photo-0") and _psnr(photo, stamped) >= 38.0
