"""The watermark batched on a torch device: the same pixels as the NumPy one, batches, failures.

Runs on device ``cpu`` (the equivalence with the NumPy/OpenCV path is measured there); the ``gpu``
test repeats it on CUDA. Sizes are reduced as in test_watermark.py: three 512 px images (two photos
and a gradient) plus smaller ones of other sizes in the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from bot.app import load_watermark
from bot.config import Settings
from models.types import BatchWatermarker, GenerationRequest, Watermarker
from models.worker import OutcomeKind, Worker
from safety.integrity import IntegrityStage
from safety.policy import Policy
from safety.provenance import MarkChain, MetadataSigner
from safety.watermark import _BLUR, InvisibleWatermark, WatermarkError, _viterbi, payload_id
from safety.watermark_torch import TorchWatermark, _box, _gaussian, _viterbi_many
from tests.attacks import ATTACKS
from tests.fakes import FakeGenerator
from tests.safety.test_watermark import KEY, _gradient, _psnr, _square


def _batch() -> list[Image.Image]:
    """Mixed sizes: three 512 squares, a 256 square, a 384x320 and an odd 301x257 image."""
    return [
        _square(data.astronaut(), 512),
        _square(data.coffee(), 512),
        _gradient(512),
        _square(data.chelsea(), 256),
        _square(data.rocket(), 384).resize((384, 320)),
        _square(data.cat(), 301).resize((301, 257)),
    ]


def _salted(fraction: float) -> Image.Image:
    """A photo with ``fraction`` of its pixels pinned at 0 or 255: the mark needs more than 42 dB."""
    rng = np.random.default_rng(0)
    pixels = np.asarray(_square(data.astronaut(), 256)).copy()
    mask = rng.random(pixels.shape[:2]) < fraction
    pixels[mask] = np.where(rng.random(int(mask.sum())) < 0.5, 0, 255).astype(np.uint8)[:, None]
    return Image.fromarray(pixels)


def _checker() -> Image.Image:
    # Every pixel at 0 or 255 in a one-pixel checkerboard: clipping erases any mark.
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([checker] * 3, axis=-1))


@pytest.fixture(scope="module")
def cpu_watermark() -> InvisibleWatermark:
    return InvisibleWatermark(KEY)


@pytest.fixture(scope="module")
def watermark() -> TorchWatermark:
    return TorchWatermark(KEY, device="cpu")


@pytest.fixture(scope="module")
def batch() -> list[Image.Image]:
    return _batch()


@pytest.fixture(scope="module")
def marked(watermark: TorchWatermark, batch: list[Image.Image]) -> list[Image.Image]:
    results = watermark.mark_many(batch, [f"output-{i}" for i in range(len(batch))])
    assert all(isinstance(r, Image.Image) for r in results)
    return [r for r in results if isinstance(r, Image.Image)]


def _differences(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))


def test_same_pixels_as_the_numpy_watermark(
    cpu_watermark: InvisibleWatermark, batch: list[Image.Image], marked: list[Image.Image]
) -> None:
    # Measured: at most 1 grey level apart, on about 1 pixel in 100,000 (float rounding); the rest equal.
    for i, (image, stamped) in enumerate(zip(batch, marked, strict=True)):
        reference = cpu_watermark.mark(image, f"output-{i}")
        diff = _differences(stamped, reference)
        assert stamped.mode == "RGB" and stamped.size == image.size
        assert diff.max() <= 1, f"image {i}"
        assert float(np.mean(diff > 0)) <= 1e-4, f"image {i}"


def test_the_numpy_decoder_reads_every_image_of_the_batch(
    cpu_watermark: InvisibleWatermark, batch: list[Image.Image], marked: list[Image.Image]
) -> None:
    for i, (image, stamped) in enumerate(zip(batch, marked, strict=True)):
        assert _psnr(image, stamped) >= 41.0  # 42 dB before rounding and clipping
        match = cpu_watermark.decode(stamped)
        assert match is not None and match.payload_id == payload_id(f"output-{i}")
        assert match.offset == (0, 0) and match.size == image.size and match.ber < 0.1


@pytest.mark.parametrize("attack", sorted(set(ATTACKS) - {"none"}))
def test_payload_survives(attack: str, cpu_watermark: InvisibleWatermark, marked: list[Image.Image]) -> None:
    for i, stamped in enumerate(marked[:3]):  # the three 512 px images, as in test_watermark.py
        assert cpu_watermark.verify(ATTACKS[attack](stamped), f"output-{i}"), f"{attack} erased the mark of {i}"


def test_failures_take_their_slot_and_the_others_are_marked(
    watermark: TorchWatermark, cpu_watermark: InvisibleWatermark
) -> None:
    photo = _square(data.astronaut(), 256)
    salted = _salted(0.05)  # does not decode at 42 or 40 dB: marked at 38 dB
    images = [_checker(), Image.new("RGB", (16, 16), (128, 128, 128)), photo, salted, Image.new("RGB", (192, 400))]
    ids = ["checker", "tiny", "photo", "salted", "black"]
    results = watermark.mark_many(images, ids)
    assert isinstance(results[0], WatermarkError) and "does not survive" in str(results[0])
    assert isinstance(results[1], WatermarkError) and "too small" in str(results[1])
    for slot in (2, 3, 4):
        stamped = results[slot]
        assert isinstance(stamped, Image.Image) and cpu_watermark.verify(stamped, ids[slot])
        assert _differences(stamped, cpu_watermark.mark(images[slot], ids[slot])).max() <= 1
    assert isinstance(results[3], Image.Image) and 37.0 < _psnr(salted, results[3]) < 39.5
    with pytest.raises(WatermarkError, match="does not survive"):
        watermark.mark(_checker(), "checker")
    with pytest.raises(ValueError, match="output ids"):
        watermark.mark_many([photo], [])


def test_single_mark_is_deterministic_and_satisfies_the_protocols(watermark: TorchWatermark) -> None:
    image = _square(data.chelsea(), 256).convert("RGBA")
    first, second = watermark.mark(image, "out"), watermark.mark(image, "out")
    assert first.mode == "RGB" and np.array_equal(np.asarray(first), np.asarray(second))
    protocol: Watermarker = watermark
    assert isinstance(protocol, BatchWatermarker) and not isinstance(InvisibleWatermark(KEY), BatchWatermarker)
    assert watermark.verify(first, "out") and watermark.decode(first) is not None


def test_filters_and_resampling_match_opencv(watermark: TorchWatermark) -> None:
    rng = np.random.default_rng(0)
    for height, width in [(64, 64), (57, 83)]:
        plane = rng.normal(128, 40, (height, width)).astype(np.float32)
        tensor = torch.from_numpy(plane)[None]
        for size in (3, 5, 9):
            reference = cv2.blur(plane, (size, size), borderType=cv2.BORDER_REFLECT)
            np.testing.assert_allclose(_box(tensor, size)[0].numpy(), reference, atol=1e-4)
        blurred = cv2.GaussianBlur(plane, (0, 0), _BLUR, borderType=cv2.BORDER_REFLECT)
        np.testing.assert_allclose(_gaussian(tensor)[0].numpy(), blurred, atol=1e-4)
        half = cv2.resize(plane, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        ours = watermark._resample(watermark._resample(tensor, "area", width // 2, -1), "area", height // 2, -2)
        np.testing.assert_allclose(ours[0].numpy(), half, atol=1e-4)
        back = cv2.resize(half, (width, height), interpolation=cv2.INTER_CUBIC)
        ours = watermark._resample(watermark._resample(ours, "cubic", width, -1), "cubic", height, -2)
        # Exact 2x (even sizes) matches to float rounding; other ratios to about 1e-3 grey levels.
        np.testing.assert_allclose(ours[0].numpy(), back, atol=1e-4 if height % 2 == 0 else 2e-3)


def test_batched_viterbi_is_the_viterbi() -> None:
    soft = np.random.default_rng(0).normal(0, 1, (5, 258)).astype(np.float32)
    assert [list(row) for row in _viterbi_many(soft)] == [_viterbi(row) for row in soft]


def test_mark_chain_marks_a_batch_then_signs_each(watermark: TorchWatermark) -> None:
    signer = MetadataSigner(b"m" * 32)
    images = [_square(data.astronaut(), 256), _checker(), _gradient(256)]
    results = MarkChain(watermark, signer).mark_many(images, ["a", "b", "c"])
    assert isinstance(results[1], WatermarkError)
    for slot, oid in ((0, "a"), (2, "c")):
        stamped = results[slot]
        assert isinstance(stamped, Image.Image)
        assert signer.verify(stamped) == oid and watermark.verify(stamped, oid)


class SlotFailingMarker:
    """A BatchWatermarker whose second image fails (or whose whole call raises)."""

    def __init__(self, *, raises: bool = False) -> None:
        self.raises = raises
        self.calls: list[list[str]] = []

    def mark(self, image: Image.Image, output_id: str) -> Image.Image:
        raise AssertionError("the worker must use mark_many")

    def mark_many(self, images: Sequence[Image.Image], output_ids: Sequence[str]) -> list[Image.Image | Exception]:
        self.calls.append(list(output_ids))
        if self.raises:
            raise RuntimeError("GPU lost")
        return [WatermarkError("no") if i == 1 else image.copy() for i, image in enumerate(images)]


async def test_the_worker_blocks_only_the_slot_that_failed() -> None:
    marker = SlotFailingMarker()
    worker = Worker(lambda m: FakeGenerator(m), Policy([IntegrityStage()]), marker)
    request = GenerationRequest("a", "a cat", "", (1, 2, 3), 32, 32, 2, 1.0, "fake")
    async with worker:
        [outcome] = await worker.run([request])
    assert outcome.kind is OutcomeKind.COMPLETED and marker.calls == [["a-0", "a-1", "a-2"]]
    assert [o.image is not None for o in outcome.images] == [True, False, True]
    assert outcome.images[1].verdict.stage == "provenance" and outcome.images[1].verdict.decision == "block"

    raising = Worker(lambda m: FakeGenerator(m), Policy([IntegrityStage()]), SlotFailingMarker(raises=True))
    async with raising:
        [outcome] = await raising.run([request])
    assert all(o.image is None and o.verdict.stage == "provenance" for o in outcome.images)


def test_load_watermark_is_the_numpy_one_without_cuda(tmp_path: Path) -> None:
    for device in ("auto", "cpu", "cuda"):  # "cuda" without CUDA: generation reports it; marking stays on the CPU
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        watermark = load_watermark(Settings(data_dir=tmp_path, device=device))
        assert type(watermark) is InvisibleWatermark


@pytest.mark.gpu
def test_cuda_marks_the_same_pixels(batch: list[Image.Image], marked: list[Image.Image], tmp_path: Path) -> None:
    assert isinstance(load_watermark(Settings(data_dir=tmp_path, device="auto")), TorchWatermark)
    results = TorchWatermark(KEY, device="cuda").mark_many(batch, [f"output-{i}" for i in range(len(batch))])
    for on_gpu, on_cpu in zip(results, marked, strict=True):
        assert isinstance(on_gpu, Image.Image)
        diff = _differences(on_gpu, on_cpu)
        assert diff.max() <= 1 and float(np.mean(diff > 0)) <= 1e-4
