"""Output files: content-addressed PNGs written atomically, and the grid composite.

Images live under ``<data_dir>/images/<aa>/<sha256>.png``; the database holds paths and hashes.
A file is written to a temporary name in the same directory, fsynced, then renamed, so a crash
never leaves a half-written image under a real name.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFilter, PngImagePlugin

from safety.files import TEMP_PREFIX, write_atomic

# zlib level 1: several times faster than Pillow's default (6) for a few percent more bytes.
PNG_COMPRESS_LEVEL = 1
_TEXT_PREFIX = "imaginebot:"
EMPTY_TILE = (32, 32, 36)  # where a blocked image would have been in the grid


@dataclass(frozen=True)
class StoredImage:
    """A PNG on disk."""

    path: Path
    sha256: str
    width: int
    height: int


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with our provenance text chunks (``imaginebot:*`` entries of ``image.info``)."""
    info = PngImagePlugin.PngInfo()
    for key, value in image.info.items():
        if isinstance(key, str) and key.startswith(_TEXT_PREFIX) and isinstance(value, str):
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
    return buffer.getvalue()


class ImageStore:
    """Writes and finds content-addressed PNG files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, image: Image.Image) -> StoredImage:
        """Encode and store an image; writing the same bytes twice is a no-op. Blocking: run off-loop."""
        return self.write_encoded(encode_png(image), image.width, image.height)

    def write_encoded(self, data: bytes, width: int, height: int) -> StoredImage:
        """Store PNG bytes as they are (e.g. once C2PA-signed); the same bytes twice is a no-op. Blocking."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest[:2] / f"{digest}.png"
        if not path.exists():
            write_atomic(path, data)
        return StoredImage(path, digest, width, height)

    def sweep_temporary(self) -> int:
        """Delete temporary files a crash left mid-write; returns how many. Call before writing starts."""
        if not self.root.exists():
            return 0
        stale = list(self.root.glob(f"*/{TEMP_PREFIX}*"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)


def make_preview(image: Image.Image, *, blocks: int = 12) -> Image.Image:
    """A heavily pixelated and blurred copy for review cards: shows layout and colour, not content."""
    small = image.convert("RGB").resize((blocks, max(1, blocks * image.height // image.width)), Image.Resampling.BOX)
    coarse = small.resize(image.size, Image.Resampling.NEAREST)
    return coarse.filter(ImageFilter.GaussianBlur(radius=max(image.size) / blocks / 2))


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) for ``count`` tiles: 1 → 1x1, 2 → 2x1, 3 and 4 → 2x2."""
    if count < 1:
        raise ValueError(f"a grid needs at least one tile, got {count}")
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def make_grid(tiles: Sequence[Image.Image | None], width: int, height: int) -> Image.Image:
    """Compose tiles left to right, top to bottom; ``None`` (a blocked image) becomes a dark tile."""
    columns, rows = grid_shape(len(tiles))
    grid = Image.new("RGB", (columns * width, rows * height), EMPTY_TILE)
    for i, tile in enumerate(tiles):
        if tile is not None:
            grid.paste(tile.convert("RGB").resize((width, height)), ((i % columns) * width, (i // columns) * height))
    return grid
