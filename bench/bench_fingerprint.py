"""Perceptual-hash threshold: distances of true copies vs different photos (scikit-image's).

Run: ``.venv/bin/python bench/bench_fingerprint.py``. Prints, per transform, the largest distance of
a copy to its original, and the smallest distance between different photos (and across transforms).
"""

from __future__ import annotations

import io
import itertools

from PIL import Image
from skimage import data

from safety.fingerprint import MATCH_DISTANCE, hamming, perceptual_hash

NAMES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "horse", "moon", "page",
         "text", "brick", "grass", "gravel", "immunohistochemistry", "retina", "hubble_deep_field",
         "motorcycle_left", "colorwheel", "logo", "clock")  # fmt: skip


def photos() -> dict[str, Image.Image]:
    result = {}
    for name in NAMES:
        try:
            array = getattr(data, name)()
        except Exception:  # some need pooch downloads: skip those offline
            continue
        if isinstance(array, tuple):
            array = array[0]
        result[name] = Image.fromarray(array).convert("RGB")
    return result


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def crop(image: Image.Image, fraction: float) -> Image.Image:
    dx, dy = int(image.width * fraction), int(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


TRANSFORMS = {
    "jpeg50": lambda im: jpeg(im, 50),
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "quarter+jpeg70": lambda im: jpeg(im.resize((im.width // 4, im.height // 4)), 70),
    "crop1%": lambda im: crop(im, 0.01),
    "crop2%": lambda im: crop(im, 0.02),
    "crop5% (not expected to match)": lambda im: crop(im, 0.05),
}


def main() -> None:
    images = photos()
    hashes = {name: perceptual_hash(im) for name, im in images.items()}
    print(f"{len(images)} photos; threshold {MATCH_DISTANCE}")
    for label, transform in TRANSFORMS.items():
        worst = max(hamming(hashes[n], perceptual_hash(transform(im))) for n, im in images.items())
        print(f"copy {label:>30}: largest distance {worst}")
    pairs = [hamming(hashes[a], hashes[b]) for a, b in itertools.combinations(hashes, 2)]
    print(
        f"different photos: smallest distance {min(pairs)}, false matches {sum(d <= MATCH_DISTANCE for d in pairs)}"
        f" of {len(pairs)} pairs"
    )


if __name__ == "__main__":
    main()
