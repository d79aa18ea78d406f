"""Robustness, invisibility, specificity and cost of ``safety.watermark`` against invisible-watermark.

Usage (the baselines need ``pip install --no-deps invisible-watermark``; see pyproject's dev extra)::

    python bench/bench_watermark.py [--quick] [--sizes 512 1024] [--jobs 2] [--riva-images N] [--unmarked N]
                                    [--device cuda|cpu]

Images per size (full mode): 15 scikit-image photos, each as a centre square and as a zoomed
off-centre square (30), 8 images from the repo's tiny random-weight model (noise-like; generated
at 512 and upscaled for 1024, which takes a tiny-model 1024 px pass 40 s each), and 4 smooth
synthetic images (gradients, blobs). ``--quick``: 6 photos, 1 tiny-model image, 1 gradient, 512
only, 1,000 unmarked decodes.

Methods, run through the same attacks in the same run: ours (80-bit payload: 48-bit id +
32-bit keyed tag, convolutional code), and ``invisible-watermark``'s dwtDct and dwtDctSvd (48
bits) and rivaGan (32 bits, its only length; its ONNX models cost about a second per 512 px
image, so it runs on the first ``--riva-images`` images of each size). A baseline decode counts
when every bit is right; ours when the decoded id is the embedded one (the tag check is part of
ours). Attack "half+jpeg70" keeps the image at half size: ours finds the size itself (canonical
size search), the baselines are given the image scaled back to the original size.

Specificity: ``--unmarked`` decodes (10,000 in full mode) of unmarked images: random crops and
resizes of the photos (any size and aspect), noise, gradients and tiny-model images. Every
decode tries at most ``InvisibleWatermark.hypotheses(size)`` (size, shift) hypotheses, each a
2^-32 chance for a random payload to carry a valid tag; the bound printed is their sum.

Threads: every process runs numpy, OpenCV, torch and onnxruntime on one thread; the robustness
pass spreads images over ``--jobs`` processes, the timing pass (median of embed and of decode
of the unattacked image, per 512 px image) runs alone in the main process.

Batched (``safety.watermark_torch.TorchWatermark`` on ``--device``, default cuda if available
else cpu): per-image ms of ``mark_many`` (embed + verify, with the re-marks) for batches of 1, 4
and 8 images at 512 px, next to ``InvisibleWatermark.mark`` (the NumPy path, one thread) in the
same run; on CUDA the timings synchronise the device before and after each call.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy, torch and OpenCV load their thread pools.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safety.watermark import TAG_BITS, InvisibleWatermark, payload_id
from safety.watermark_torch import TorchWatermark
from tests.attacks import ATTACKS

KEY = b"bench-watermark-key-0123456789ab"
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "immunohistochemistry", "retina",
    "hubble_deep_field", "brick", "grass", "gravel", "moon", "page", "text",
)  # fmt: skip
Rgb = np.ndarray


# -- images -------------------------------------------------------------------------------------------


def _photo(name: str) -> Image.Image:
    array = getattr(data, name)()
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-9)).astype(np.uint8)
    return Image.fromarray(array[..., :3] if array.ndim == 3 else array).convert("RGB")


def _square(image: Image.Image, size: int, zoom: float = 1.0, at: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    side = min(image.size) * zoom
    left, top = (image.width - side) * at[0], (image.height - side) * at[1]
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))


def _synthetic(size: int) -> list[Image.Image]:
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(7)
    blobs = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02) for cx, cy in rng.random((6, 2)))
    planes = [
        np.stack([x, y, 1 - x], -1),  # linear colour gradient
        np.stack([np.hypot(x - 0.5, y - 0.5) * 1.4] * 3, -1),  # radial grey gradient
        np.stack([blobs / blobs.max(), 0.5 + 0.3 * np.sin(6 * x), y], -1),
        np.stack([0.2 + 0.6 * y] * 3, -1) + rng.normal(0, 0.01, (size, size, 1)),  # sky with grain
    ]
    return [Image.fromarray((255 * np.clip(p, 0, 1)).astype(np.uint8)) for p in planes]


def _tiny_model_images(count: int, size: int) -> list[Image.Image]:
    from models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(0)
    prompts = ["a cat", "a lighthouse at dusk", "a bowl of fruit", "a city street at night"]
    out = pipe(
        [prompts[i % len(prompts)] for i in range(count)],
        height=size,
        width=size,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(1),
        output_type="pil",
    )
    return list(out.images)


def build_images(sizes: Sequence[int], quick: bool) -> dict[int, list[tuple[str, Image.Image]]]:
    photos = {name: _photo(name) for name in PHOTOS[: 6 if quick else None]}
    tiny = _tiny_model_images(1 if quick else 8, 512)
    images: dict[int, list[tuple[str, Image.Image]]] = {}
    for size in sizes:
        batch = [(name, _square(photo, size)) for name, photo in photos.items()]
        if not quick:
            batch += [(f"{name}-zoom", _square(photo, size, 0.6, (0.3, 0.6))) for name, photo in photos.items()]
        batch += [(f"tiny-{i}", im.resize((size, size), Image.Resampling.LANCZOS)) for i, im in enumerate(tiny)]
        synthetic = _synthetic(size)
        batch += [(f"synthetic-{i}", im) for i, im in enumerate(synthetic[: 1 if quick else None])]
        images[size] = batch
    return images


# -- attacks ------------------------------------------------------------------------------------------


# -- methods ------------------------------------------------------------------------------------------


class Method(Protocol):
    name: str
    bits: int

    def embed(self, image: Image.Image, seed: int) -> Image.Image: ...

    def decodes(self, image: Image.Image, seed: int, original_size: tuple[int, int]) -> bool: ...


class Ours:
    name = "ours"
    bits = 48 + TAG_BITS

    def __init__(self) -> None:
        self.wm = InvisibleWatermark(KEY)

    def embed(self, image: Image.Image, seed: int) -> Image.Image:
        return self.wm.embed(image, f"bench-output-{seed}")

    def decodes(self, image: Image.Image, seed: int, original_size: tuple[int, int]) -> bool:
        match = self.wm.decode(image)  # no oracle: the decoder searches sizes itself
        return match is not None and match.payload_id == payload_id(f"bench-output-{seed}")


class Baseline:
    """invisible-watermark's ``WatermarkEncoder`` / ``WatermarkDecoder`` on BGR arrays."""

    def __init__(self, method: str, bits: int) -> None:
        from imwatermark import WatermarkDecoder, WatermarkEncoder

        self.name, self.bits = method, bits
        self._encoder, self._decoder = WatermarkEncoder, WatermarkDecoder
        if method == "rivaGan":
            _load_riva_single_threaded()

    def _payload(self, seed: int) -> list[int]:
        return [int(b) for b in np.random.default_rng(seed).integers(0, 2, self.bits)]

    def embed(self, image: Image.Image, seed: int) -> Image.Image:
        encoder = self._encoder()
        encoder.set_watermark("bits", self._payload(seed))
        bgr = encoder.encode(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR), self.name)
        return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def decodes(self, image: Image.Image, seed: int, original_size: tuple[int, int]) -> bool:
        if image.width * 2 == original_size[0] and image.height * 2 == original_size[1]:
            image = image.resize(original_size, Image.Resampling.BICUBIC)  # oracle rescale (half+jpeg70)
        try:
            got = self._decoder("bits", self.bits).decode(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR), self.name)
        except Exception:  # a cropped image can break its block arithmetic: a failed decode
            return False
        return [int(b) for b in got] == self._payload(seed)


def _load_riva_single_threaded() -> None:
    import onnxruntime as ort
    from imwatermark.rivaGan import RivaWatermark

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    directory = Path(sys.modules["imwatermark.rivaGan"].__file__ or ".").parent
    RivaWatermark.encoder = ort.InferenceSession(str(directory / "rivagan_encoder.onnx"), options)
    RivaWatermark.decoder = ort.InferenceSession(str(directory / "rivagan_decoder.onnx"), options)


def make_method(name: str) -> Method:
    if name == "ours":
        return Ours()
    return Baseline(name, 32 if name == "rivaGan" else 48)


# -- measurement --------------------------------------------------------------------------------------


@dataclass
class Result:
    psnr: list[float] = field(default_factory=list)
    passed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTACKS, 0))
    failures: dict[str, list[str]] = field(default_factory=lambda: {a: [] for a in ATTACKS})
    count: int = 0


def _single_thread() -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


_METHODS: dict[str, Method] = {}


def _method(name: str) -> Method:
    if name not in _METHODS:
        _METHODS[name] = make_method(name)
    return _METHODS[name]


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * math.log10(255**2 / max(mse, 1e-12))


def run_one(method_name: str, seed: int, name: str, image: Image.Image) -> tuple[float, dict[str, bool]]:
    method = _method(method_name)
    marked = method.embed(image, seed)
    outcome = {attack: method.decodes(fn(marked), seed, image.size) for attack, fn in ATTACKS.items()}
    return psnr(image, marked), outcome


def robustness(
    images: list[tuple[str, Image.Image]], methods: Sequence[str], riva_images: int, jobs: int
) -> dict[str, Result]:
    results = {m: Result() for m in methods}
    with ProcessPoolExecutor(jobs, initializer=_single_thread) as pool:
        futures = [
            (m, name, pool.submit(run_one, m, seed, name, image))
            for m in methods
            for seed, (name, image) in enumerate(images[: riva_images if m == "rivaGan" else None])
        ]
        for m, name, future in futures:
            value, outcome = future.result()
            result = results[m]
            result.psnr.append(value)
            result.count += 1
            for attack, ok in outcome.items():
                result.passed[attack] += ok
                if not ok:
                    result.failures[attack].append(name)
    return results


def timing(images: list[tuple[str, Image.Image]], methods: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Median ms of embed and of decode (unattacked) per image, one thread, after a warm-up."""
    _single_thread()
    times = {}
    for m in methods:
        method = _method(m)
        method.embed(images[0][1], 0)
        embeds, decodes = [], []
        for seed, (_, image) in enumerate(images[:3] if m == "rivaGan" else images[:8]):
            start = time.perf_counter()
            marked = method.embed(image, seed)
            embeds.append(time.perf_counter() - start)
            start = time.perf_counter()
            method.decodes(marked, seed, image.size)
            decodes.append(time.perf_counter() - start)
        times[m] = (1e3 * statistics.median(embeds), 1e3 * statistics.median(decodes))
    return times


def batched_timing(images: list[tuple[str, Image.Image]], device: str, repeats: int) -> None:
    """Per-image ms of embed + verify: TorchWatermark.mark_many in batches vs InvisibleWatermark.mark."""
    _single_thread()
    pool = [image for _, image in images]
    numpy_wm, torch_wm = InvisibleWatermark(KEY), TorchWatermark(KEY, device=device)

    def sync() -> None:
        if torch_wm.device.type == "cuda":
            torch.cuda.synchronize(torch_wm.device)

    numpy_wm.mark(pool[0], "warm-up")
    per_image = []
    for i in range(max(8, repeats)):
        start = time.perf_counter()
        numpy_wm.mark(pool[i % len(pool)], f"bench-{i}")
        per_image.append(time.perf_counter() - start)
    baseline = 1e3 * statistics.median(per_image)
    print(f"\n## batched embed + verify, 512x512, TorchWatermark on {torch_wm.device} (median of {repeats})")
    print(f"{'batch':>6s}{'numpy ms/img':>14s}{'torch ms/img':>14s}{'speed-up':>10s}")
    for size in (1, 4, 8):
        batch = [pool[i % len(pool)] for i in range(size)]
        ids = [f"bench-{i}" for i in range(size)]
        torch_wm.mark_many(batch, ids)  # warm-up: tables on the device, kernels compiled
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            results = torch_wm.mark_many(batch, ids)
            sync()
            times.append(time.perf_counter() - start)
        failed = sum(not isinstance(r, Image.Image) for r in results)
        ms = 1e3 * statistics.median(times) / size
        note = f"  ({failed} not markable)" if failed else ""
        print(f"{size:>6d}{baseline:>14.1f}{ms:>14.1f}{baseline / ms:>9.2f}x{note}")


def _unmarked_sample(seed: int, photos: list[Image.Image], tiny: list[Image.Image]) -> Image.Image:
    rng = np.random.default_rng(seed)
    kind = seed % 5
    width, height = (int(v) for v in rng.integers(128, 769, 2))
    if kind in (0, 1):  # a random crop of a photo, resized to a random size
        photo = photos[seed % len(photos)]
        w, h = (int(rng.integers(64, s + 1)) for s in photo.size)
        left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        return photo.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if kind == 2:  # a photo resized to a canonical-looking square (the rescale hypotheses run)
        side = int(rng.choice([256, 384, 512, 640]))
        return _square(photos[seed % len(photos)], side, float(rng.uniform(0.3, 1)), tuple(rng.random(2)))
    if kind == 3:  # noise or a gradient
        if seed % 2:
            return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        y, x = np.mgrid[0:height, 0:width]
        plane = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) % 256
        return Image.fromarray(np.stack([plane] * 3, -1).astype(np.uint8))
    image = tiny[seed % len(tiny)]  # a tiny-model image, cropped
    left, top = int(rng.integers(0, 128)), int(rng.integers(0, 128))
    return image.crop((left, top, left + 384, top + 384))


def _specificity_chunk(seeds: range, photos: list[Image.Image], tiny: list[Image.Image]) -> tuple[int, int, float]:
    wm = InvisibleWatermark(KEY)
    matches, hypotheses = 0, 0
    for seed in seeds:
        image = _unmarked_sample(seed, photos, tiny)
        matches += wm.decode(image) is not None
        hypotheses += wm.hypotheses(image.size)
    return matches, len(seeds), hypotheses * 2.0**-TAG_BITS


def specificity(count: int, jobs: int, tiny: list[Image.Image]) -> tuple[int, int, float]:
    photos = [_photo(name) for name in PHOTOS]
    chunks = [range(start, min(start + 250, count)) for start in range(0, count, 250)]
    with ProcessPoolExecutor(jobs, initializer=_single_thread) as pool:
        parts = list(pool.map(_specificity_chunk, chunks, [photos] * len(chunks), [tiny] * len(chunks)))
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


# -- report -------------------------------------------------------------------------------------------


def report(size: int, count: int, results: dict[str, Result], times: dict[str, tuple[float, float]] | None) -> None:
    methods = list(results)
    print(f"\n## {size}x{size}: {count} images (rivaGan: {results.get('rivaGan', Result()).count})")
    header = f"{'':18s}" + "".join(f"{m:>14s}" for m in methods)
    print(header)
    print(f"{'payload bits':18s}" + "".join(f"{_method_bits(m):>14d}" for m in methods))
    print(
        f"{'PSNR mean/min dB':18s}"
        + "".join(f"{statistics.mean(r.psnr):>8.1f}/{min(r.psnr):<5.1f}" for r in results.values())
    )
    if times:
        print(f"{'embed ms (1 thr)':18s}" + "".join(f"{times[m][0]:>14.1f}" for m in methods))
        print(f"{'decode ms (1 thr)':18s}" + "".join(f"{times[m][1]:>14.1f}" for m in methods))
    for attack in ATTACKS:
        print(f"{attack:18s}" + "".join(f"{100 * r.passed[attack] / r.count:>13.1f}%" for r in results.values()))
    for attack in ATTACKS:
        if results["ours"].failures[attack] if "ours" in results else False:
            print(f"  ours failed {attack}: {', '.join(results['ours'].failures[attack])}")


def _method_bits(name: str) -> int:
    return {"ours": 48 + TAG_BITS, "rivaGan": 32}.get(name, 48)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few images, 512 only, 1,000 unmarked decodes")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=["ours", "dwtDct", "dwtDctSvd", "rivaGan"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--riva-images", type=int, default=None, help="rivaGan images per size (slow)")
    parser.add_argument("--unmarked", type=int, default=None, help="unmarked decodes for specificity")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device of the batched pass"
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or ([512] if args.quick else [512, 1024])
    riva_images = args.riva_images if args.riva_images is not None else (2 if args.quick else 8)
    unmarked = args.unmarked if args.unmarked is not None else (1_000 if args.quick else 10_000)
    if importlib.util.find_spec("imwatermark") is None and set(args.methods) - {"ours"}:
        print("invisible-watermark is not installed (pip install --no-deps invisible-watermark): ours only")
        args.methods = ["ours"]
    _single_thread()
    start = time.perf_counter()
    images = build_images(sizes, args.quick)
    print(f"threads per process: 1 (numpy/OpenCV/torch/onnxruntime); robustness jobs: {args.jobs}")
    for size in sizes:
        results = robustness(images[size], args.methods, riva_images, args.jobs)
        times = timing(images[size], args.methods) if size == 512 else None
        report(size, len(images[size]), results, times)
    if 512 in images:
        batched_timing(images[512], args.device, repeats=3 if args.quick else 10)
    tiny = [im for name, im in images[sizes[0]] if name.startswith("tiny")]
    matches, decodes, bound = specificity(unmarked, args.jobs, tiny)
    print(f"\nspecificity (ours): {matches} false matches in {decodes} unmarked decodes")
    print(f"  bound: expected false matches <= sum of hypotheses x 2^-{TAG_BITS} = {bound:.2e} for this run")
    print(f"  ({InvisibleWatermark(KEY).false_match_bound((512, 512)):.1e} per 512x512 image)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
