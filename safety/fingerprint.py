"""Perceptual hash: 64 bits that stay nearly the same when an image is re-encoded, resized or cropped a little.

DCT pHash (as in pHash.org and the ``imagehash`` package): greyscale, 32x32 (box-filtered, so the
downscale averages rather than aliases), a 2-D DCT-II, the 8x8 lowest frequencies, one bit per
coefficient: above their median or not. Two images' distance is the Hamming distance of their hashes.

:data:`MATCH_DISTANCE` was measured with ``bench/bench_fingerprint.py`` on scikit-image's 19 photos:
copies re-encoded as JPEG quality 50, resized to a half or a quarter (+ JPEG 70) stay within 6
bits, 1 % cropped off each side within 10 (2 %: most within 10, the worst 20); different photos
are 20+ bits apart (171 pairs, no false match at 10). A DCT hash does not survive real crops (5 %
off each side: up to 24 bits): finding those is the invisible watermark's job.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

HASH_BITS = 64
MATCH_DISTANCE = 10  # at most this many of 64 bits differ: the same picture
_SIZE = 32
_LOW = 8


def _dct_matrix(n: int) -> NDArray[np.float64]:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    result: NDArray[np.float64] = matrix
    return result


_DCT = _dct_matrix(_SIZE)


def perceptual_hash(image: Image.Image) -> int:
    """The image's 64-bit DCT pHash, as an unsigned int (bit 63 = the DC coefficient)."""
    grey = image.convert("L").resize((_SIZE, _SIZE), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:_LOW, :_LOW].ravel()
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """How many bits differ between two hashes."""
    return (a ^ b).bit_count()


def distances(query: int, hashes: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Hamming distances from ``query`` to every hash of an array, vectorised (a million in a few ms)."""
    xor = np.bitwise_xor(hashes, np.uint64(query))
    return np.bitwise_count(xor).astype(np.int64)


def to_signed(value: int) -> int:
    """An unsigned 64-bit hash as SQLite's signed INTEGER (two's complement), and :func:`to_unsigned` back."""
    if not 0 <= value < 1 << HASH_BITS:
        raise ValueError(f"perceptual hash {value!r} is not an unsigned 64-bit integer")
    return value - (1 << HASH_BITS) if value >= 1 << (HASH_BITS - 1) else value


def to_unsigned(value: int) -> int:
    return value & ((1 << HASH_BITS) - 1)
