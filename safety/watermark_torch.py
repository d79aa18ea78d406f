"""The invisible watermark on a torch device: a batch of images marked and checked in one go.

Same algorithm, key, carrier map, payload and strengths as :class:`safety.watermark.InvisibleWatermark`
(read its module docstring first); this module only changes where the arithmetic runs. Images of
one size are stacked into one tensor and every step is batched: luminance, the texture weight, the
cell field (an index gather from the key's carrier map), OpenCV's filters with ``BORDER_REFLECT``
(symmetric padding, ``fedcba|abcdef``) as shifted-slice sums and ``avg_pool2d``, the 50 %
downscale (``INTER_AREA``) and cubic upscale (``INTER_CUBIC``, ``a = -0.75``, replicated border)
as the same taps OpenCV uses, the per-coded-bit soft values, the informed amplitudes (bisection
run for the whole batch at once) and the check of the result. Only the Viterbi decode runs in
NumPy on the CPU (86 steps over 64 states, vectorised across the batch).

Soft values are summed per coded bit with a gather into a padded ``(bits, cells)`` table and a
``sum`` instead of ``scatter_add``/``index_add``, whose CUDA atomics add in a varying order; no
convolution or matrix product touches the image either (cuDNN and cuBLAS may use TF32). So the
result is deterministic on every device, and on device ``cpu`` it matches the NumPy/OpenCV
watermark to float rounding (tests/safety/test_watermark_torch.py measures how close).

The check is the whole-image hypothesis of the decoder, batched; an image it rejects is checked
again by the CPU decoder's full search (as :meth:`InvisibleWatermark.mark` does) before being
marked again, stronger, with the other images that failed. :meth:`TorchWatermark.decode` and
:meth:`TorchWatermark.verify` are the CPU decoder's: a posted image may be rescaled or shifted,
and searching those hypotheses is the verifier's job.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

from safety.watermark import (
    _BLUR,
    _CELL,
    _CODED_BITS,
    _CROP_AREA,
    _FLOOR,
    _GENERATORS,
    _GRID,
    _INPUT,
    _K,
    _MIN_AMPLITUDE,
    _PREV0,
    _PREV1,
    _SIGNS,
    _STATES,
    _TARGET_PSNR,
    DEFAULT_CANONICAL_SIZES,
    INFO_BITS,
    MIN_SIDE,
    PAYLOAD_ID_BITS,
    TAG_BITS,
    InvisibleWatermark,
    WatermarkError,
    WatermarkMatch,
    _encode,
    _to_bits,
    payload_id,
)

Tensor = torch.Tensor
_LUMA = (0.299, 0.587, 0.114)
# cv2.GaussianBlur's kernel for sigma 0.7 on float32 images: ksize = round(8 * sigma + 1) | 1 = 7.
_GAUSS = tuple(float(v) for v in cv2.getGaussianKernel(round(8 * _BLUR + 1) | 1, _BLUR, ktype=cv2.CV_32F).ravel())
_CUBIC_A = -0.75  # OpenCV's INTER_CUBIC


@dataclass(frozen=True)
class _Cells:
    """Where the 3x3 cells of a (height, width) luma view are, and what the key gives them."""

    y0: int
    x0: int
    ny: int
    nx: int
    chips: Tensor  # (ny * nx,) float32: the chip of each cell
    gather: Tensor  # (_CODED_BITS, L) int64: the cells of each coded bit, padded with ny * nx (a zero)


@dataclass(frozen=True)
class _Resampler:
    """Separable taps: ``out[i] = sum_j weights[i, j] * x[index[i, j]]`` along one axis."""

    index: Tensor  # (n_out, taps) int64
    weights: Tensor  # (n_out, taps) float32


class TorchWatermark:
    """:class:`~safety.watermark.InvisibleWatermark` batched on a torch device (``BatchWatermarker``).

    Args:
        key: Secret of at least 16 bytes; the carrier map and the tag derive from it.
        device: Torch device the marking runs on (``"cuda"``, ``"cuda:1"``, ``"cpu"``). Nothing is
            put on it until the first :meth:`mark_many`.
        canonical_sizes: Output sizes the decoder also tries (see ``InvisibleWatermark``).
        psnr: Embedding strength before the 40 and 38 dB fallbacks (see ``InvisibleWatermark``).

    Raises:
        ValueError: a key shorter than 16 bytes, a non-positive canonical size or a bad device.
    """

    name = "invisible-watermark"

    def __init__(
        self,
        key: bytes,
        *,
        device: str | torch.device = "cpu",
        canonical_sizes: Sequence[tuple[int, int]] = DEFAULT_CANONICAL_SIZES,
        psnr: float = _TARGET_PSNR,
    ) -> None:
        # The CPU watermark is the reference: its carrier map, strengths and tag are shared (never
        # re-derived) so that the two cannot drift apart, and it decodes.
        self._cpu = InvisibleWatermark(key, canonical_sizes=canonical_sizes, psnr=psnr)
        try:
            self._device = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device {device!r} is not a valid torch device") from exc
        self._tables: tuple[Tensor, Tensor] | None = None
        self._cells: dict[tuple[int, int], _Cells] = {}
        self._pixels: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._resamplers: dict[tuple[str, int, int], _Resampler] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    # -- public API --

    def mark(self, image: Image.Image, output_id: str) -> Image.Image:
        """Embed and check one image (the ``Watermarker`` protocol).

        Raises:
            WatermarkError: the image is too small or the mark does not survive even at 38 dB.
        """
        [result] = self.mark_many([image], [output_id])
        if isinstance(result, WatermarkError):
            raise result
        return result

    def mark_many(self, images: Sequence[Image.Image], output_ids: Sequence[str]) -> list[Image.Image | WatermarkError]:
        """Embed and check a batch: one RGB image, or the reason it cannot carry the mark, per slot.

        Images of one size are marked together. Each result is known to decode; an image the mark
        does not survive at 42 dB is marked again at 40, then 38 dB, and a :class:`WatermarkError`
        takes its slot if even that fails or the image is smaller than :data:`MIN_SIDE` (the worker
        then blocks it: an unmarked image is never returned).

        Raises:
            ValueError: ``images`` and ``output_ids`` differ in length.
        """
        if len(images) != len(output_ids):
            raise ValueError(f"{len(images)} images but {len(output_ids)} output ids")
        results: list[Image.Image | WatermarkError] = [
            _too_small(im, oid) for im, oid in zip(images, output_ids, strict=True)
        ]
        groups: dict[tuple[int, int], list[int]] = {}
        for slot, image in enumerate(images):
            if min(image.size) >= MIN_SIDE:
                groups.setdefault(image.size, []).append(slot)
        for slots in groups.values():
            marked = self._mark_group([images[s] for s in slots], [output_ids[s] for s in slots])
            for slot, result in zip(slots, marked, strict=True):
                results[slot] = result
        return results

    def decode(self, image: Image.Image) -> WatermarkMatch | None:
        """The payload carried by ``image`` (the CPU decoder's full search of sizes and shifts)."""
        return self._cpu.decode(image)

    def verify(self, image: Image.Image, output_id: str) -> bool:
        """Whether ``image`` carries the watermark of ``output_id`` under this key."""
        return self._cpu.verify(image, output_id)

    # -- one size --

    def _mark_group(
        self, images: Sequence[Image.Image], output_ids: Sequence[str]
    ) -> list[Image.Image | WatermarkError]:
        dev = self._device
        rgb = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).to(dev, torch.float32)
        signs = torch.from_numpy(np.stack([self._codeword(oid) for oid in output_ids])).to(dev)
        luma = _luma(rgb)
        detail = luma - _box(luma, 5)
        activity = torch.sqrt(torch.clamp(_box(detail * detail, 9), min=0))
        # Texture hides the mark; the floor keeps flat areas (sky, gradients) marked too.
        floor = (_FLOOR * activity.mean(dim=(1, 2)).double()).float()[:, None, None]
        weight = activity + floor + 1.0
        host = [self._soft_bits(view) for view in self._views(luma)]  # what the image alone reads as
        results: list[Image.Image | WatermarkError | None] = [None] * len(images)
        pending = torch.arange(len(images), device=dev)
        for rms in self._cpu._strengths:
            delta = self._informed_field(
                luma[pending], weight[pending], signs[pending], [h[pending] for h in host], rms
            )
            marked = (torch.clamp(rgb[pending] + delta[..., None], 0, 255) + 0.5).to(torch.uint8)
            pixels = marked.cpu().numpy()
            ok = self._check(marked, [output_ids[int(i)] for i in pending])
            failed = []
            for row, slot in enumerate(pending.tolist()):
                candidate = Image.fromarray(pixels[row], "RGB")
                # The batched check reads the whole image only; the CPU decoder's full search has the
                # last word, so an image is accepted exactly when InvisibleWatermark.mark accepts it.
                if ok[row] or self._cpu.verify(candidate, output_ids[slot]):
                    results[slot] = candidate
                else:
                    failed.append(row)
            if not failed:
                break
            pending = pending[torch.tensor(failed, device=dev)]
        return [
            r if r is not None else WatermarkError(f"output {oid}: the watermark does not survive in this image")
            for r, oid in zip(results, output_ids, strict=True)
        ]

    def _informed_field(self, luma: Tensor, weight: Tensor, signs: Tensor, host: list[Tensor], rms: float) -> Tensor:
        """The mark at ``rms``: each coded bit's amplitude equalises the decoder's margins (see the CPU one)."""
        height, width = luma.shape[1:]
        index, chips = self._pixel_tables(height, width)

        def field(amplitudes: Tensor) -> Tensor:
            cells = chips * (signs * amplitudes)[:, index]
            delta = _gaussian(cells) * weight
            norm = torch.sqrt(torch.mean(delta * delta, dim=(1, 2), dtype=torch.float64)).clamp(min=1e-6)
            return delta * (rms / norm).float()[:, None, None]

        delta = field(torch.ones_like(signs))
        marked = [self._soft_bits(view) for view in self._views(luma + delta)]
        pairs = [(h * signs, m * signs) for h, m in zip(host, marked, strict=True)]
        return field(_amplitudes(pairs))

    def _check(self, marked: Tensor, output_ids: Sequence[str]) -> list[bool]:
        """The decoder's whole-image hypothesis for every image of the batch: does the tag verify?"""
        soft = self._soft_bits(_luma(marked.to(torch.float32))).cpu().numpy()
        bits = _viterbi_many(soft)
        verdicts = []
        for row, output_id in zip(bits, output_ids, strict=True):
            ident = int("".join(map(str, row[:PAYLOAD_ID_BITS])), 2)
            tag = int("".join(map(str, row[PAYLOAD_ID_BITS:])), 2)
            expected = self._cpu._tag(ident).to_bytes(4, "big")
            verdicts.append(hmac.compare_digest(tag.to_bytes(4, "big"), expected) and ident == payload_id(output_id))
        return verdicts

    def _codeword(self, output_id: str) -> npt.NDArray[np.float32]:
        ident = payload_id(output_id)
        bits = _to_bits(ident, PAYLOAD_ID_BITS) + _to_bits(self._cpu._tag(ident), TAG_BITS)
        return (2.0 * _encode(bits) - 1.0).astype(np.float32)

    # -- the three views of the informed embedding --

    def _views(self, luma: Tensor) -> list[Tensor]:
        """The image whole, centre-cropped (``_CROP_AREA``, even margins) and downscaled 50 % and back."""
        height, width = luma.shape[1:]
        side = math.sqrt(_CROP_AREA)
        top, left = (height - round(height * side)) // 2, (width - round(width * side)) // 2
        crop = luma[:, top : height - top, left : width - left]
        half = self._resample(self._resample(luma, "area", width // 2, -1), "area", height // 2, -2)
        back = self._resample(self._resample(half, "cubic", width, -1), "cubic", height, -2)
        return [luma, crop, back]

    def _resample(self, x: Tensor, kind: str, n_out: int, dim: int) -> Tensor:
        n_in = x.shape[dim]
        if kind == "area" and n_in == 2 * n_out:  # OpenCV's fast path: the mean of each pair
            axis = dim % x.dim()
            return x.reshape(*x.shape[:axis], n_out, 2, *x.shape[axis + 1 :]).mean(dim=axis + 1)
        key = (kind, n_in, n_out)
        if key not in self._resamplers:
            index, weights = (_area_taps if kind == "area" else _cubic_taps)(n_in, n_out)
            self._resamplers[key] = _Resampler(
                torch.from_numpy(index).to(self._device), torch.from_numpy(weights).to(self._device)
            )
        taps = self._resamplers[key]
        shape = [1] * x.dim()
        shape[dim] = n_out
        out = x.index_select(dim, taps.index[:, 0]) * taps.weights[:, 0].reshape(shape)
        for j in range(1, taps.index.shape[1]):
            out = out + x.index_select(dim, taps.index[:, j]) * taps.weights[:, j].reshape(shape)
        return out

    # -- carrier tables --

    def _carrier(self) -> tuple[Tensor, Tensor]:
        if self._tables is None:
            self._tables = (
                torch.from_numpy(self._cpu._map.astype(np.int64)).to(self._device),
                torch.from_numpy(self._cpu._chips).to(self._device),
            )
        return self._tables

    def _pixel_tables(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Coded-bit index and chip of every pixel's cell, for a (height, width) image (no shift)."""
        if (height, width) not in self._pixels:
            carrier_map, carrier_chips = self._carrier()
            rows, cols = _grid_index(height, self._device), _grid_index(width, self._device)
            self._pixels[height, width] = (carrier_map[rows][:, cols], carrier_chips[rows][:, cols])
        return self._pixels[height, width]

    def _cell_tables(self, height: int, width: int) -> _Cells:
        if (height, width) not in self._cells:
            x0, y0 = (width // 2) % _CELL, (height // 2) % _CELL
            nx, ny = (width - x0) // _CELL, (height - y0) // _CELL
            carrier_map, carrier_chips = self._carrier()
            rows = _grid_index(height, self._device)[y0 : y0 + ny * _CELL : _CELL]
            cols = _grid_index(width, self._device)[x0 : x0 + nx * _CELL : _CELL]
            bit = carrier_map[rows][:, cols].reshape(-1).cpu().numpy()
            order = np.argsort(bit, kind="stable")
            counts = np.bincount(bit, minlength=_CODED_BITS)
            starts = np.cumsum(counts) - counts
            gather = np.full((_CODED_BITS, int(counts.max())), ny * nx, dtype=np.int64)
            gather[bit[order], np.arange(len(order)) - starts[bit[order]]] = order
            chips = carrier_chips[rows][:, cols].reshape(-1)
            self._cells[height, width] = _Cells(y0, x0, ny, nx, chips, torch.from_numpy(gather).to(self._device))
        return self._cells[height, width]

    def _soft_bits(self, luma: Tensor) -> Tensor:
        """The decoder's soft value of every coded bit (grid shift 0), for a (batch, height, width) luma."""
        height, width = luma.shape[1:]
        c = self._cell_tables(height, width)
        if c.nx < 8 or c.ny < 8:  # never for an image of MIN_SIDE pixels, whole, cropped or rescaled
            raise WatermarkError(f"a {width}x{height} view has too few cells for the watermark")
        block = luma[:, c.y0 : c.y0 + c.ny * _CELL, c.x0 : c.x0 + c.nx * _CELL]
        cells = F.avg_pool2d(block[:, None], _CELL)[:, 0]
        # Prediction residual: each cell minus the mean of its eight neighbours.
        residual = cells - (9 * _box(cells, 3) - cells) / 8
        spread = torch.sqrt(torch.clamp(_box(residual * residual, 5), min=0)) + 1e-3
        weights = (residual / spread).reshape(len(luma), -1) * c.chips
        weights = torch.cat([weights, weights.new_zeros(len(luma), 1)], dim=1)
        return weights[:, c.gather].sum(dim=-1, dtype=torch.float64).float()


def _too_small(image: Image.Image, output_id: str) -> WatermarkError:
    return WatermarkError(
        f"output {output_id}: {image.width}x{image.height} is too small to carry the watermark "
        f"(at least {MIN_SIDE} pixels a side)"
    )


# -- image helpers (OpenCV's arithmetic on tensors) ------------------------------------------------


def _luma(rgb: Tensor) -> Tensor:
    return rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]


def _grid_index(length: int, device: torch.device) -> Tensor:
    """Map row/column of each pixel (shift 0): the cell boundary sits at the centre (as the CPU one)."""
    return (
        _GRID // 2 + torch.div(torch.arange(length, device=device) - length // 2, _CELL, rounding_mode="floor")
    ) % _GRID


def _symmetric(n: int, pad: int, device: torch.device) -> Tensor:
    """Source index of each position of a length-``n`` axis padded by ``pad``: BORDER_REFLECT, fedcba|abcdef."""
    i = torch.arange(-pad, n + pad, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _pad(x: Tensor, pad: int) -> Tensor:
    height, width = x.shape[-2:]
    if pad > min(height, width):
        raise ValueError(f"cannot reflect-pad a {width}x{height} plane by {pad}")
    return x.index_select(-1, _symmetric(width, pad, x.device)).index_select(-2, _symmetric(height, pad, x.device))


def _box(x: Tensor, size: int) -> Tensor:
    """cv2.blur(x, (size, size), borderType=BORDER_REFLECT) for a (batch, height, width) tensor."""
    return _separable(x, [1.0] * size, 1.0 / size)


def _gaussian(x: Tensor) -> Tensor:
    """cv2.GaussianBlur(x, (0, 0), _BLUR, borderType=BORDER_REFLECT)."""
    return _separable(x, _GAUSS)


def _separable(x: Tensor, taps: Sequence[float], scale: float = 1.0) -> Tensor:
    """Rows, then columns, filtered with ``taps`` (centred) and scaled: shifted-slice sums, as OpenCV does."""
    half = len(taps) // 2
    padded = _pad(x, half)
    height, width = x.shape[-2:]
    rows = padded[..., :width] * taps[0]
    for j in range(1, len(taps)):
        rows = rows + padded[..., j : j + width] * taps[j]
    if scale != 1.0:
        rows = rows * scale
    out = rows[..., :height, :] * taps[0]
    for j in range(1, len(taps)):
        out = out + rows[..., j : j + height, :] * taps[j]
    return out * scale if scale != 1.0 else out


def _area_taps(n_in: int, n_out: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """cv2.resize INTER_AREA weights for a downscale (OpenCV's computeResizeAreaTab)."""
    scale = 1 / (n_out / n_in)  # as OpenCV computes it
    rows: list[list[tuple[int, float]]] = []
    for dx in range(n_out):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, n_in - fsx1)
        sx1, sx2 = math.ceil(fsx1), math.floor(fsx2)
        sx2 = min(sx2, n_in - 1)
        sx1 = min(sx1, sx2)
        taps = []
        if sx1 - fsx1 > 1e-3:
            taps.append((sx1 - 1, (sx1 - fsx1) / cell))
        taps += [(sx, 1.0 / cell) for sx in range(sx1, sx2)]
        if fsx2 - sx2 > 1e-3:
            taps.append((sx2, min(min(fsx2 - sx2, 1.0), cell) / cell))
        rows.append(taps)
    return _dense_taps(rows)


def _cubic_taps(n_in: int, n_out: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """cv2.resize INTER_CUBIC weights (a = -0.75, source indices clamped at the borders)."""
    scale = 1 / (n_out / n_in)  # as OpenCV computes it
    rows = []
    for dx in range(n_out):
        fx = np.float32((dx + 0.5) * scale - 0.5)
        sx = math.floor(fx)
        x = np.float32(fx - sx)
        a = np.float32(_CUBIC_A)
        c0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
        c1 = ((a + 2) * x - (a + 3)) * x * x + 1
        c2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
        c3 = 1 - c0 - c1 - c2
        rows.append([(min(max(sx - 1 + k, 0), n_in - 1), float(c)) for k, c in enumerate((c0, c1, c2, c3))])
    return _dense_taps(rows)


def _dense_taps(rows: list[list[tuple[int, float]]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    width = max(len(r) for r in rows)
    index = np.zeros((len(rows), width), dtype=np.int64)
    weights = np.zeros((len(rows), width), dtype=np.float32)
    for i, taps in enumerate(rows):
        for j, (sx, w) in enumerate(taps):
            index[i, j], weights[i, j] = sx, w
    return index, weights


def _amplitudes(views: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """``safety.watermark._amplitudes`` for a batch: one bisection per row, all rows at once."""
    host = sum((h for h, _ in views[1:]), views[0][0])
    gain = sum((m - h for h, m in views[1:]), views[0][1] - views[0][0])
    floor = (1e-3 * gain.abs().mean(dim=1, dtype=torch.float64) + 1e-9).float()
    gain = torch.maximum(gain, floor[:, None])

    def solve(margin: Tensor) -> Tensor:
        return torch.clamp((margin.float()[:, None] - host) / gain, min=_MIN_AMPLITUDE)

    low = (host + gain * _MIN_AMPLITUDE).amin(dim=1).double()
    high = (host + gain * 10).amax(dim=1).double()
    for _ in range(40):  # bisection on the common margin: the mean square amplitude grows with it
        margin = (low + high) / 2
        amplitudes = solve(margin)
        over = torch.mean(amplitudes * amplitudes, dim=1) > 1.0
        high = torch.where(over, margin, high)
        low = torch.where(over, low, margin)
    return solve(low)


def _viterbi_many(soft: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """``safety.watermark._viterbi`` for a (batch, coded bits) array: the information bits of each row."""
    batch = len(soft)
    steps = soft.reshape(batch, -1, len(_GENERATORS))
    metric = np.full((batch, _STATES), -np.inf, dtype=np.float64)
    metric[:, 0] = 0.0
    choices = np.empty((steps.shape[1], batch, _STATES), dtype=np.bool_)
    for t in range(steps.shape[1]):
        branch = np.einsum("sic,bc->bsi", _SIGNS, steps[:, t])  # (batch, states, input bit)
        from0 = metric[:, _PREV0] + branch[:, _PREV0, _INPUT]
        from1 = metric[:, _PREV1] + branch[:, _PREV1, _INPUT]
        choices[t] = from1 > from0
        metric = np.maximum(from0, from1)
    state = np.zeros(batch, dtype=np.int64)
    rows = np.arange(batch)
    bits = np.empty((batch, steps.shape[1]), dtype=np.int64)
    for t in range(steps.shape[1] - 1, -1, -1):
        bits[:, t] = state >> (_K - 2)
        state = np.where(choices[t, rows, state], _PREV1[state], _PREV0[state])
    return bits[:, :INFO_BITS]
