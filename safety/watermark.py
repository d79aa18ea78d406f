"""A keyed invisible watermark that survives re-encoding, resizing, cropping and tone changes.

Payload: ``payload_id(output_id)`` (48 bits, what the output registry stores) followed by a
32-bit tag, ``HMAC-SHA256(key, id)`` truncated, so that an image only counts as ours when the
tag recomputed from the decoded id matches. The 80 bits are protected by a rate-1/3,
constraint-length-7 convolutional code (258 coded bits with the tail) decoded by soft-decision
Viterbi.

Carrier: the image is cut into 3x3-pixel cells on a grid anchored at the image centre (so a
centre crop keeps the grid). A key-derived map assigns every cell a coded bit and a ±1 chip, in
tiles that hold each coded bit equally often. The mark is the cell field ``chip * amplitude *
(±1 per coded bit)``, slightly blurred, weighted by local texture (stronger in busy areas, with
a floor so flat areas carry it too), scaled to a fixed PSNR (42 dB) and added to luminance only
(the same offset on R, G and B). Amplitudes are informed by the image: each coded bit gets the
energy that brings the decoder's reading of it, on the image as it is, centre-cropped and
downscaled, to a common margin.

Detection is blind: cell means of luminance, minus the mean of their eight neighbours (a
prediction filter that removes most of the image itself), divided by the local residual
spread, are summed per coded bit with their chips. Dividing by the spread makes the soft
values invariant to brightness and contrast changes. The decoder tries the image as it is, the
image rescaled to each canonical output size of the same aspect ratio (what undoes a
downscale), then the grid shifted by one pixel (a centre crop with odd margins); the first
hypothesis whose tag verifies wins. A random image passes one hypothesis with probability
2^-32, so the false-match bound is ``hypotheses * 2^-32`` per decoded image (see
:meth:`InvisibleWatermark.false_match_bound`).

Everything is NumPy/OpenCV on the CPU (about 20 ms to embed and 4 ms to decode a 512 px image on
one core) and deterministic: the same key, image and id give the same pixels.
:mod:`safety.watermark_torch` runs the same embedding and check batched on a torch device (what a
worker with a GPU uses); on the CPU its pixels match these to float rounding.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

PAYLOAD_ID_BITS = 48
TAG_BITS = 32
INFO_BITS = PAYLOAD_ID_BITS + TAG_BITS

_CELL = 3  # pixels per cell side: small enough to avoid most image texture, large enough to survive a 50 % downscale
_GRID = 1032  # cells per side of the key-derived map; larger images reuse it periodically
_TILE = (24, 43)  # 1032 cells per tile = 4 copies of each coded bit
_K = 7  # convolutional code constraint length
_GENERATORS = (0o133, 0o171, 0o165)  # rate 1/3, free distance 15
_CODED_BITS = (INFO_BITS + _K - 1) * len(_GENERATORS)
_TARGET_PSNR = 42.0  # dB against the unmarked image, before rounding and clipping
MIN_SIDE = 192  # pixels: a smaller side has too few cells for the 258 coded bits to decode reliably
_STRONGEST_PSNR = 38.0  # mark() may go this far for an image the mark does not survive at _TARGET_PSNR
_BLUR = 0.7  # sigma (pixels) of the blur that moves the cell pattern's energy to frequencies that survive
_FLOOR = 4.0  # embedding weight in flat areas, relative to the mean texture
_CROP_AREA = 0.8  # the informed embedding also keeps the margin of this centre crop
_MIN_AMPLITUDE = 0.25  # relative to a uniform mark: every bit keeps some energy of its own
_SHIFTS = ((0, 0), (1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1), (1, -1), (-1, 1))

Float = npt.NDArray[np.float32]

_ASPECTS = {"1:1": (1, 1), "3:2": (3, 2), "2:3": (2, 3), "16:9": (16, 9), "9:16": (9, 16)}


def _size_for(aspect: tuple[int, int], base: int) -> tuple[int, int]:
    # Duplicates bot.chat.render.size_for (safety/ must not import bot/).
    a, b = aspect
    return max(64, round(base * math.sqrt(a / b) / 64) * 64), max(64, round(base * math.sqrt(b / a) / 64) * 64)


DEFAULT_CANONICAL_SIZES: tuple[tuple[int, int], ...] = tuple(
    dict.fromkeys(
        [(s, s) for s in (256, 512, 768, 1024)]
        + [_size_for(aspect, base) for base in (256, 512, 1024) for aspect in _ASPECTS.values()]
    )
)


class WatermarkError(RuntimeError):
    """An image cannot carry the watermark (it would not decode); it must not be posted unmarked."""


def _rms(psnr: float) -> float:
    return 255.0 * 10 ** (-psnr / 20)


def payload_id(output_id: str) -> int:
    """The 48-bit registry id of an output: the first 48 bits of SHA-256 of its id string."""
    return int.from_bytes(hashlib.sha256(output_id.encode()).digest()[: PAYLOAD_ID_BITS // 8], "big")


@dataclass(frozen=True)
class WatermarkMatch:
    """A payload that decoded and whose keyed tag verified.

    Attributes:
        payload_id: The 48-bit registry id carried by the image.
        ber: Fraction of the 258 coded bits whose hard decision disagreed with the decoded
            codeword (0 for a clean image; above ~0.3 the decode is near its limit).
        size: The size (width, height) the image was decoded at: its own, or the canonical size
            it was rescaled to.
        offset: Grid shift (dx, dy) in pixels that decoded.
    """

    payload_id: int
    ber: float
    size: tuple[int, int]
    offset: tuple[int, int]


# -- the convolutional code ------------------------------------------------------------------------

_STATES = 1 << (_K - 1)


def _parity(x: int) -> int:
    return bin(x).count("1") & 1


# Register = (input bit << (K-1)) | state; next state = register >> 1.
_OUTPUTS = np.array(
    [[_parity(((b << (_K - 1)) | s) & g) for g in _GENERATORS] for s in range(_STATES) for b in (0, 1)],
    dtype=np.float32,
).reshape(_STATES, 2, len(_GENERATORS))
_SIGNS = 2.0 * _OUTPUTS - 1.0
_NEXT = np.arange(_STATES)
_PREV0 = (_NEXT << 1) & (_STATES - 1)
_PREV1 = _PREV0 | 1
_INPUT = _NEXT >> (_K - 2)


def _encode(bits: Sequence[int]) -> npt.NDArray[np.int8]:
    state, out = 0, list[int]()
    for b in [*bits, *([0] * (_K - 1))]:
        out.extend(int(o) for o in _OUTPUTS[state, b])
        state = ((b << (_K - 1)) | state) >> 1
    return np.array(out, dtype=np.int8)


def _viterbi(soft: Float) -> list[int]:
    """Maximum-correlation path; ``soft`` > 0 favours a coded 1. The tail ends in state 0."""
    steps = soft.reshape(-1, len(_GENERATORS))
    metric = np.full(_STATES, -np.inf, dtype=np.float64)
    metric[0] = 0.0
    choices = np.empty((len(steps), _STATES), dtype=np.bool_)
    for t, y in enumerate(steps):
        branch = _SIGNS @ y  # (states, 2): metric of leaving each state with input 0/1
        from0 = metric[_PREV0] + branch[_PREV0, _INPUT]
        from1 = metric[_PREV1] + branch[_PREV1, _INPUT]
        choices[t] = from1 > from0
        metric = np.maximum(from0, from1)
    state, bits = 0, []
    for t in range(len(steps) - 1, -1, -1):
        bits.append(int(state >> (_K - 2)))
        state = int(_PREV1[state] if choices[t, state] else _PREV0[state])
    return bits[::-1][:INFO_BITS]


def _to_bits(value: int, width: int) -> list[int]:
    return [(value >> (width - 1 - i)) & 1 for i in range(width)]


# -- image helpers ---------------------------------------------------------------------------------


def _luma(rgb: Float) -> Float:
    return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def _box(x: Float, size: int) -> Float:
    return cv2.blur(x, (size, size), borderType=cv2.BORDER_REFLECT).astype(np.float32)


def _grid_index(length: int, shift: int) -> npt.NDArray[np.intp]:
    """Map row/column index of each pixel; the cell boundary sits at the (shifted) centre."""
    centre = length // 2 + shift
    return (_GRID // 2 + (np.arange(length) - centre) // _CELL) % _GRID


class InvisibleWatermark:
    """Embeds and decodes the keyed payload (the ``Watermarker`` protocol of the worker).

    Args:
        key: Secret of at least 16 bytes; the carrier map and the tag derive from it.
        canonical_sizes: Output sizes (width, height) the bot produces; a decoded image that
            is not at one of them is also tried rescaled to each one of the same aspect ratio.
        psnr: Embedding strength as the PSNR (dB) of the mark before rounding and clipping.

    Raises:
        ValueError: a key shorter than 16 bytes or a non-positive canonical size.
    """

    name = "invisible-watermark"

    def __init__(
        self,
        key: bytes,
        *,
        canonical_sizes: Sequence[tuple[int, int]] = DEFAULT_CANONICAL_SIZES,
        psnr: float = _TARGET_PSNR,
    ) -> None:
        if len(key) < 16:
            raise ValueError(f"watermark key must be at least 16 bytes, got {len(key)}")
        if any(w <= 0 or h <= 0 for w, h in canonical_sizes):
            raise ValueError(f"canonical sizes must be positive, got {list(canonical_sizes)}")
        self._key = key
        self._canonical = tuple(canonical_sizes)
        self._rms = _rms(psnr)
        # mark() falls back to stronger marks, never below _STRONGEST_PSNR (the 38 dB floor).
        self._strengths = [self._rms] + [_rms(p) for p in (40.0, _STRONGEST_PSNR) if p < psnr]
        self._map, self._chips = _carrier_map(key)

    # -- public API --

    def mark(self, image: Image.Image, output_id: str) -> Image.Image:
        """Embed and check (the ``Watermarker`` protocol): the result is known to decode.

        An image the mark does not survive at the configured strength (mostly pixels pinned at 0
        or 255, where clipping erases it) is marked again at up to :data:`_STRONGEST_PSNR` dB.

        Raises:
            WatermarkError: the image is smaller than :data:`MIN_SIDE` or the mark does not decode
                even at the strongest level; the worker blocks the image (fail closed).
        """
        if min(image.size) < MIN_SIDE:
            raise WatermarkError(f"output {output_id}: {image.width}x{image.height} is too small to carry the "
                                 f"watermark (at least {MIN_SIDE} pixels a side)")  # fmt: skip
        for rms in self._strengths:
            marked = self._embed(image, output_id, rms)
            if self.verify(marked, output_id):
                return marked
        raise WatermarkError(f"output {output_id}: the watermark does not survive in this image")

    def embed(self, image: Image.Image, output_id: str) -> Image.Image:
        """Return an RGB copy of ``image`` (same size) carrying ``payload_id(output_id)`` and its tag."""
        return self._embed(image, output_id, self._rms)

    def _embed(self, image: Image.Image, output_id: str, rms: float) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        height, width = rgb.shape[:2]
        ident = payload_id(output_id)
        signs = 2.0 * _encode(_to_bits(ident, PAYLOAD_ID_BITS) + _to_bits(self._tag(ident), TAG_BITS)) - 1.0
        rows, cols = _grid_index(height, 0), _grid_index(width, 0)
        index, chips = self._map[np.ix_(rows, cols)], self._chips[np.ix_(rows, cols)]
        luma = _luma(rgb)
        detail = luma - _box(luma, 5)
        activity = np.sqrt(np.maximum(_box(detail * detail, 9), 0))
        # Texture hides the mark; the floor keeps flat areas (sky, gradients) marked too.
        weight = activity + _FLOOR * float(activity.mean()) + 1.0

        def field(amplitudes: Float) -> Float:
            cells = chips * (signs * amplitudes).astype(np.float32)[index]
            delta = cv2.GaussianBlur(cells, (0, 0), _BLUR, borderType=cv2.BORDER_REFLECT) * weight
            return (delta * (rms / max(float(np.sqrt(np.mean(delta * delta))), 1e-6))).astype(np.float32)

        # Informed embedding: read what the decoder sees from the host alone and from the host
        # plus a uniform mark (whole, centre-cropped, downscaled), then give each coded bit the
        # amplitude that brings all bits to one margin, so that bits the image itself works
        # against are not lost; the total energy (PSNR) stays the same.
        delta = field(np.ones(_CODED_BITS, dtype=np.float32))
        views = (_whole, _centre_crop, _downscaled)
        readings = [self._soft_bits(view(luma), (0, 0)) for view in views]
        marked_readings = [self._soft_bits(view(luma + delta), (0, 0)) for view in views]
        pairs = [
            (h * signs, m * signs)
            for h, m in zip(readings, marked_readings, strict=True)
            if h is not None and m is not None
        ]
        if pairs:
            delta = field(_amplitudes(pairs))
        marked = np.clip(rgb + delta[..., None], 0, 255) + 0.5
        return Image.fromarray(marked.astype(np.uint8), "RGB")

    def decode(self, image: Image.Image) -> WatermarkMatch | None:
        """The payload carried by ``image``, or None unless one decodes and its keyed tag verifies."""
        for size, shift, luma in self._hypotheses(image):
            soft = self._soft_bits(luma, shift)
            if soft is None:
                continue
            bits = _viterbi(soft)
            ident = int("".join(map(str, bits[:PAYLOAD_ID_BITS])), 2)
            tag = int("".join(map(str, bits[PAYLOAD_ID_BITS:])), 2)
            if hmac.compare_digest(tag.to_bytes(4, "big"), self._tag(ident).to_bytes(4, "big")):
                codeword = _encode(bits)
                ber = float(np.mean((soft > 0) != (codeword == 1)))
                return WatermarkMatch(payload_id=ident, ber=ber, size=size, offset=shift)
        return None

    def verify(self, image: Image.Image, output_id: str) -> bool:
        """Whether ``image`` carries the watermark of ``output_id`` under this key."""
        match = self.decode(image)
        return match is not None and match.payload_id == payload_id(output_id)

    def hypotheses(self, size: tuple[int, int]) -> int:
        """How many (size, shift) hypotheses :meth:`decode` tries at most on an image of ``size``."""
        return len(_SHIFTS) + len(self._rescales(size))

    def false_match_bound(self, size: tuple[int, int]) -> float:
        """Upper bound on the probability that an unmarked image of ``size`` decodes as ours."""
        return self.hypotheses(size) * 2.0**-TAG_BITS

    # -- internals --

    def _tag(self, ident: int) -> int:
        mac = hmac.new(self._key, b"imaginebot/watermark/tag/v1" + ident.to_bytes(6, "big"), hashlib.sha256)
        return int.from_bytes(mac.digest()[: TAG_BITS // 8], "big")

    def _rescales(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        width, height = size
        same_aspect = [
            (w, h) for w, h in self._canonical if (w, h) != size and abs(math.log((w / h) / (width / height))) < 0.03
        ]
        return sorted(same_aspect, key=lambda s: abs(math.log(s[0] / width)))

    def _hypotheses(self, image: Image.Image) -> Iterator[tuple[tuple[int, int], tuple[int, int], Float]]:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        luma = _luma(rgb)
        yield image.size, (0, 0), luma
        for size in self._rescales(image.size):
            interpolation = cv2.INTER_CUBIC if size[0] > image.size[0] else cv2.INTER_AREA
            yield size, (0, 0), cv2.resize(luma, size, interpolation=interpolation).astype(np.float32)
        # A centre crop whose margins were rounded differently puts the grid one pixel off.
        for shift in _SHIFTS[1:]:
            yield image.size, shift, luma

    def _soft_bits(self, luma: Float, shift: tuple[int, int]) -> Float | None:
        height, width = luma.shape
        x0 = (width // 2 + shift[0]) % _CELL
        y0 = (height // 2 + shift[1]) % _CELL
        nx, ny = (width - x0) // _CELL, (height - y0) // _CELL
        if nx < 8 or ny < 8:
            return None
        block = luma[y0 : y0 + ny * _CELL, x0 : x0 + nx * _CELL]
        cells = block.reshape(ny, _CELL, nx, _CELL).mean(axis=(1, 3), dtype=np.float32)
        # Prediction residual: each cell minus the mean of its eight neighbours.
        residual = (cells - (9 * _box(cells, 3) - cells) / 8).astype(np.float32)
        spread = np.sqrt(np.maximum(_box(residual * residual, 5), 0)) + 1e-3
        normalised = residual / spread
        rows = _grid_index(height, shift[1])[y0 : y0 + ny * _CELL : _CELL]
        cols = _grid_index(width, shift[0])[x0 : x0 + nx * _CELL : _CELL]
        index = self._map[np.ix_(rows, cols)]
        weights = normalised * self._chips[np.ix_(rows, cols)]
        soft = np.bincount(index.ravel(), weights=weights.ravel(), minlength=_CODED_BITS)
        return soft.astype(np.float32)


def _whole(luma: Float) -> Float:
    return luma


def _centre_crop(luma: Float) -> Float:
    """The centre crop keeping ``_CROP_AREA`` of the image, with even margins (grid-aligned centre)."""
    height, width = luma.shape
    side = math.sqrt(_CROP_AREA)
    top, left = (height - round(height * side)) // 2, (width - round(width * side)) // 2
    return luma[top : height - top, left : width - left]


def _downscaled(luma: Float) -> Float:
    """What is left after a 50 % downscale, back at full size."""
    height, width = luma.shape
    half = cv2.resize(luma, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(half, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)


def _amplitudes(views: Sequence[tuple[Float, Float]]) -> Float:
    """Per-coded-bit amplitudes (mean square 1) that equalise the decoder's margins.

    Each view is the decoder's soft values, signed so that positive is correct, for the unmarked
    image and for it plus a uniform mark of amplitude 1. Summing over views aims at the margin the
    decoder sees on average over the likely edits.
    """
    host = np.sum([h for h, _ in views], axis=0)
    gain = np.sum([m - h for h, m in views], axis=0)
    gain = np.maximum(gain, 1e-3 * float(np.abs(gain).mean()) + 1e-9)

    def solve(margin: float) -> Float:
        amplitudes: Float = np.maximum(_MIN_AMPLITUDE, (margin - host) / gain).astype(np.float32)
        return amplitudes

    low, high = float((host + gain * _MIN_AMPLITUDE).min()), float((host + gain * 10).max())
    for _ in range(40):  # bisection on the common margin: the mean square amplitude grows with it
        margin = (low + high) / 2
        amplitudes = solve(margin)
        if float(np.mean(amplitudes * amplitudes)) > 1.0:
            high = margin
        else:
            low = margin
    return solve(low)


def _carrier_map(key: bytes) -> tuple[npt.NDArray[np.intp], Float]:
    """Key-derived coded-bit index and ±1 chip of every cell of the ``_GRID`` square."""
    seed = hmac.new(key, b"imaginebot/watermark/carriers/v1", hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))
    tile_h, tile_w = _TILE
    per_tile = tile_h * tile_w
    tiles_y, tiles_x = -(-_GRID // tile_h), -(-_GRID // tile_w)
    base = np.tile(np.arange(_CODED_BITS, dtype=np.intp), per_tile // _CODED_BITS)
    perms = rng.permuted(np.tile(base, (tiles_y * tiles_x, 1)), axis=1)
    index = perms.reshape(tiles_y, tiles_x, tile_h, tile_w).transpose(0, 2, 1, 3).reshape(tiles_y * tile_h, -1)
    chips = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(_GRID, _GRID))
    return np.ascontiguousarray(index[:_GRID, :_GRID]), chips
