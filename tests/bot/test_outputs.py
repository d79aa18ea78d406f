from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.outputs import ImageStore, grid_shape, make_grid
from safety.files import write_atomic


def tile(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, value, value))


def test_store_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    first = store.write(img)
    second = store.write(img)
    assert first == second
    assert first.path.parent.name == first.sha256[:2]
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256
    assert np.array_equal(np.asarray(Image.open(first.path)), np.asarray(img))
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "a" / "x.png", b"data")
    assert list((tmp_path / "a").iterdir()) == []


@pytest.mark.parametrize(("count", "shape"), [(1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (4, (2, 2))])
def test_grid_shape(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape


def test_grid_places_tiles_and_marks_blocked_ones() -> None:
    grid = make_grid([tile(10), None, tile(200), tile(90)], 8, 8)
    assert grid.size == (16, 16)
    assert grid.getpixel((0, 0)) == (10, 10, 10)
    assert grid.getpixel((8, 0)) == (32, 32, 36)
    assert grid.getpixel((0, 8)) == (200, 200, 200)
    assert grid.getpixel((15, 15)) == (90, 90, 90)
    with pytest.raises(ValueError, match="at least one tile"):
        make_grid([], 8, 8)


def test_sweep_removes_what_a_crash_left_mid_write(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    kept = store.write(tile(5))
    (kept.path.parent / ".tmp-abc.png").write_bytes(b"half")
    assert store.sweep_temporary() == 1
    assert [p.name for p in kept.path.parent.iterdir()] == [kept.path.name]
    assert ImageStore(tmp_path / "missing").sweep_temporary() == 0


def test_preview_hides_detail() -> None:
    from bot.outputs import make_preview

    detailed = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    preview = make_preview(detailed)
    assert preview.size == detailed.size

    # neighbouring pixels of the noise differ a lot; in the preview they barely do
    def roughness(img: Image.Image) -> float:
        a = np.asarray(img, dtype=np.float32)
        return float(np.abs(np.diff(a, axis=1)).mean())

    assert roughness(preview) < roughness(detailed) / 20
