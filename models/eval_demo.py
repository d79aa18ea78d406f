"""Does the demo model follow the prompt? ``python -m models.eval_demo [--model DIR] [--count N]``.

The prompts name held-out (colour, shape, position) combinations (:func:`~models.demo_data.held_out_triples`:
never a single-object training scene) on a solid background. Each image is checked with measures
derived from the dataset generator itself:

* **foreground**: pixels far (RGB distance > 60) from the background, estimated as the median of
  the image's 2-pixel border; the largest connected blob is the object.
* **colour**: the median colour of the blob's interior (eroded once, off the anti-aliased edge),
  snapped to the nearest named colour.
* **position**: the blob's centroid, snapped to the nearest of the nine anchors.
* **shape**: the blob's mask, cropped to its bounding box and resized to 32 x 32, against the same
  crop of every shape drawn by the generator's own renderer; the best IoU wins. No weights, no
  training: a rendered scene scores 100 % (``tests/models/test_demo_eval.py``).

Targets (issue 8): colour >= 90 %, position >= 80 %, shape >= 70 %.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from models.demo_data import (
    COLOURS,
    SHAPES,
    SIDE,
    Scene,
    colour_distance,
    held_out_triples,
    nearest_colour,
    nearest_position,
    shape_mask,
    single_object_scene,
)

logger = logging.getLogger(__name__)

TARGETS = {"colour": 0.9, "position": 0.8, "shape": 0.7}
_FOREGROUND_DISTANCE = 60.0
_CROP = 32


@dataclass(frozen=True)
class Reading:
    """What the checks read off one image (``None``: no foreground found)."""

    colour: str | None
    position: str | None
    shape: str | None


@dataclass(frozen=True)
class Score:
    """How many images got each attribute right."""

    colour: int
    position: int
    shape: int
    total: int

    def rate(self, name: str) -> float:
        return float(getattr(self, name)) / self.total if self.total else 0.0

    def meets_targets(self) -> bool:
        return all(self.rate(name) >= target for name, target in TARGETS.items())

    def table(self) -> str:
        lines = ["| check | correct | rate | target |", "|---|---|---|---|"]
        for name, target in TARGETS.items():
            mark = "ok" if self.rate(name) >= target else "MISSED"
            lines.append(
                f"| {name} | {getattr(self, name)}/{self.total} | {self.rate(name):.0%} | {target:.0%} {mark} |"
            )
        return "\n".join(lines)


def eval_scenes(count: int | None = None, seed: int = 0) -> list[Scene]:
    """One scene per held-out combination (or ``count`` of them), each on a contrasting solid background."""
    rng = random.Random(f"eval-{seed}")
    triples = sorted(held_out_triples())
    rng.shuffle(triples)
    result = []
    for colour, shape, position in triples[:count]:
        backgrounds = [c for c in COLOURS if colour_distance(COLOURS[c], COLOURS[colour]) >= 120]
        size = rng.choice(("small", "large"))
        result.append(single_object_scene(colour, shape, position, rng.choice(backgrounds), size=size))
    return result


@cache
def _templates() -> dict[str, np.ndarray]:
    return {shape: _normalised(shape_mask(shape, 4 * _CROP) > 0.5) for shape in SHAPES}


def _normalised(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its bounding box and resized to _CROP x _CROP (boolean)."""
    rows, cols = np.nonzero(mask)
    crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    image = Image.fromarray(crop.astype(np.uint8) * 255).resize((_CROP, _CROP), Image.Resampling.BILINEAR)
    normalised: np.ndarray = np.asarray(image) > 127
    return normalised


def _blob(pixels: np.ndarray) -> np.ndarray | None:
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3)])
    border = np.concatenate([border, pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    mask = np.linalg.norm(pixels - background, axis=2) > _FOREGROUND_DISTANCE
    # The largest blob is the object; specks of noise elsewhere do not move its centroid.
    blob = _largest_component(mask)
    return blob if blob.sum() >= 6 else None


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (a flood fill: the images are 64 x 64)."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        region, stack = [], [(int(start[0]), int(start[1]))]
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        best = max(best, region, key=len)
    component = np.zeros_like(mask)
    if best:
        rows, cols = zip(*best, strict=True)
        component[list(rows), list(cols)] = True
    return component


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are all in the mask."""
    padded = np.pad(mask, 1)
    eroded: np.ndarray = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return eroded


def read(image: Image.Image) -> Reading:
    """Read colour, position and shape off one single-object image."""
    pixels = np.asarray(image.convert("RGB"), dtype=float)
    blob = _blob(pixels)
    if blob is None:
        return Reading(None, None, None)
    interior = _eroded(blob)
    core = interior if interior.sum() >= 6 else blob
    colour = nearest_colour(np.median(pixels[core], axis=0))
    rows, cols = np.nonzero(blob)
    height, width = blob.shape
    position = nearest_position((cols.mean() + 0.5) / width, (rows.mean() + 0.5) / height)
    observed = _normalised(blob)
    shape = max(SHAPES, key=lambda s: _iou(observed, _templates()[s]))
    return Reading(colour, position, shape)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def score(pairs: Sequence[tuple[Scene, Image.Image]]) -> Score:
    """Score images against the single-object scenes they were asked for."""
    counts = {"colour": 0, "position": 0, "shape": 0}
    for scene, image in pairs:
        (want,), got = scene.objects, read(image)
        counts["colour"] += got.colour == want.colour
        counts["position"] += got.position == want.position
        counts["shape"] += got.shape == want.shape
    return Score(total=len(pairs), **counts)


def generate_with(model: str, *, steps: int, guidance: float, seed: int) -> Callable[[list[Scene]], list[Image.Image]]:
    """A function drawing each scene's caption with the model, through :class:`DiffusersGenerator`."""
    from models.diffusers_backend import DiffusersGenerator  # torch + diffusers: only when generating
    from models.types import GenerationRequest

    generator = DiffusersGenerator.from_pretrained(model, device="cpu", native_side=SIDE)

    def generate(batch: list[Scene]) -> list[Image.Image]:
        requests = [
            GenerationRequest(f"eval-{i}", s.caption, "", (seed + i,), SIDE, SIDE, steps, guidance, model)
            for i, s in enumerate(batch)
        ]
        return [image for result in generator.generate(requests) for image in result.images]

    return generate


def grid_seconds(model: str, steps: int, guidance: float, repeats: int = 3) -> float:
    """Best wall time of a 2x2 grid at 256 px (drawn at the native side, resized) through the generator."""
    from models.diffusers_backend import DiffusersGenerator
    from models.types import GenerationRequest

    generator = DiffusersGenerator.from_pretrained(model, device="cpu", native_side=SIDE)
    request = GenerationRequest("grid", "a yellow star above a green square, night sky", "", (1, 2, 3, 4), 256, 256,
                                steps, guidance, model)  # fmt: skip
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        generator.generate([request])
        best = min(best, time.perf_counter() - started)
    return best


def evaluate(draw: Callable[[list[Scene]], list[Image.Image]], targets: list[Scene], batch: int = 8) -> Score:
    pairs: list[tuple[Scene, Image.Image]] = []
    for start in range(0, len(targets), batch):
        chunk = targets[start : start + batch]
        pairs.extend(zip(chunk, draw(chunk), strict=True))
    return score(pairs)


PLACES = ("top left", "bottom right", "left", "right", "top", "bottom")


def placements(draw: Callable[[list[Scene]], list[Image.Image]], seeds: int = 8) -> dict[str, list[str | None]]:
    """Where "a large red circle <place> on a white background" lands, for each place and seed.

    The same caption is drawn ``seeds`` times in one batch (seeds ``--seed`` .. ``--seed + seeds - 1``),
    so a row that repeats another row word for word means the words for the place have no effect.
    """
    readings: dict[str, list[str | None]] = {}
    for place in PLACES:
        scenes = [single_object_scene("red", "circle", place, "white")] * seeds
        readings[place] = [read(image).position for image in draw(scenes)]
    return readings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.eval_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/demo", help="diffusers directory (default %(default)s)")
    parser.add_argument("--count", type=int, default=None, help="prompts (default: every held-out combination)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the images (and a contact sheet) here")
    parser.add_argument("--examples", type=Path, help="only draw the README's example prompts into this PNG")
    parser.add_argument("--places", action="store_true", help="only show where one circle lands for six places")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    if args.examples is not None:
        examples_sheet(args.model, args.steps, args.guidance, args.seed).save(args.examples)
        return 0
    draw = generate_with(args.model, steps=args.steps, guidance=args.guidance, seed=args.seed)
    if args.places:
        found = placements(draw)
        for place, readings in found.items():
            print(f"{place:>13}: " + ", ".join(str(r) for r in readings))
        right = sum(r == place for place, readings in found.items() for r in readings)
        print(f"{right} of {sum(len(r) for r in found.values())} where the caption says")
        return 0
    targets = eval_scenes(args.count)
    started = time.monotonic()
    images: list[Image.Image] = []

    def drawn(batch: list[Scene]) -> list[Image.Image]:
        result = draw(batch)
        images.extend(result)
        return result

    result = evaluate(drawn, targets)
    elapsed = time.monotonic() - started
    print(
        f"{args.model}: {result.total} held-out prompts, {args.steps} steps, guidance {args.guidance}, {elapsed:.0f} s"
    )
    print(result.table())
    print(f"2x2 grid at 256 px (best of 3): {grid_seconds(args.model, args.steps, args.guidance):.2f} s")
    if args.save is not None:
        _save(args.save, targets, images)
    return 0 if result.meets_targets() else 1


EXAMPLES = (
    "a yellow star above a green square, night sky",
    "a red heart in the centre on a blue background",
    "blue background with a small white circle at the top left",
    "a purple triangle on the right, grassy field",
    "an orange ring below a pink square on a black background",
    "a blue circle, a yellow star and a red triangle on a plain white background",
)


def examples_sheet(model: str, steps: int, guidance: float, seed: int, side: int = 192) -> Image.Image:
    """The README's example prompts, drawn through :class:`DiffusersGenerator` at the preset's size, each
    shown at ``side`` px over its prompt."""
    from PIL import ImageDraw

    from models.diffusers_backend import DiffusersGenerator
    from models.types import GenerationRequest

    generator = DiffusersGenerator.from_pretrained(model, device="cpu", native_side=SIDE)
    requests = [GenerationRequest(f"ex{i}", prompt, "", (seed + i,), 256, 256, steps, guidance, model)
                for i, prompt in enumerate(EXAMPLES)]  # fmt: skip
    images = [image for result in generator.generate(requests) for image in result.images]
    columns, caption = 3, 34
    sheet = Image.new("RGB", (columns * side, -(-len(images) // columns) * (side + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (prompt, image) in enumerate(zip(EXAMPLES, images, strict=True)):
        x, y = (index % columns) * side, (index // columns) * (side + caption)
        sheet.paste(image.resize((side, side), Image.Resampling.LANCZOS), (x, y))
        words, lines = prompt.split(), [""]
        for word in words:  # wrap to the tile's width
            candidate = f"{lines[-1]} {word}".strip()
            if draw.textlength(candidate) > side - 8 and lines[-1]:
                lines.append(word)
            else:
                lines[-1] = candidate
        draw.multiline_text((x + 4, y + side + 2), "\n".join(lines[:2]), fill="black", spacing=2)
    return sheet


def _save(directory: Path, targets: list[Scene], images: list[Image.Image]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    sheet = Image.new("RGB", (8 * 64, -(-len(images) // 8) * 64))
    for index, (scene, image) in enumerate(zip(targets, images, strict=True)):
        got = read(image)
        image.save(directory / f"{index:03d}.png")
        sheet.paste(image, ((index % 8) * 64, (index // 8) * 64))
        logger.info("%03d %s -> %s %s %s", index, scene.caption, got.colour, got.position, got.shape)
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST).save(directory / "sheet.png")


if __name__ == "__main__":
    raise SystemExit(main())
