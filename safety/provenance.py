"""Signed provenance metadata: every stored image says which output it is, and proves it.

The mark is an HMAC-SHA256, under a key kept in the data directory, over the output id and the
SHA-256 of the image's pixels. It travels as PNG text chunks (``imaginebot:output``,
``imaginebot:signature``). Anyone holding the key can tell our files from others and detect edited
pixels. Metadata is stripped by most sites; the invisible watermark and C2PA credentials that
survive that are added on top of this by the provenance work.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

OUTPUT_KEY = "imaginebot:output"
SIGNATURE_KEY = "imaginebot:signature"
KEY_BYTES = 32


def _digest(key: bytes, image: Image.Image, output_id: str) -> str:
    pixels = hashlib.sha256(image.convert("RGB").tobytes()).digest()
    return hmac.new(key, output_id.encode() + b"\0" + pixels, hashlib.sha256).hexdigest()


def key_file(path: Path) -> bytes:
    """A secret key kept in a file: read it, creating it (random, mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
    return path.read_bytes()


class Marker(Protocol):
    """Anything that marks an image with its output id (the worker's ``Watermarker``)."""

    def mark(self, image: Image.Image, output_id: str) -> Image.Image: ...


@runtime_checkable
class BatchMarker(Marker, Protocol):
    """A marker that also marks many images in one call (the worker's ``BatchWatermarker``)."""

    def mark_many(
        self, images: Sequence[Image.Image], output_ids: Sequence[str]
    ) -> Sequence[Image.Image | Exception]: ...


class MarkChain:
    """Applies marks in order: pixel marks (the invisible watermark) first, then the metadata signature,
    whose HMAC covers the final pixels. Any mark that raises propagates: the worker then blocks the image.
    """

    name = "provenance"

    def __init__(self, *marks: Marker) -> None:
        if not marks:
            raise ValueError("a mark chain needs at least one mark")
        self._marks = marks

    def mark(self, image: Image.Image, output_id: str) -> Image.Image:
        for marker in self._marks:
            image = marker.mark(image, output_id)
        return image

    def mark_many(self, images: Sequence[Image.Image], output_ids: Sequence[str]) -> list[Image.Image | Exception]:
        """Mark a batch (the worker's ``BatchWatermarker``): per slot, the marked image or why it failed.

        Each mark gets the images every earlier mark succeeded on: all at once through its
        ``mark_many`` where it has one (the GPU watermark), else one by one. A failing image keeps
        its exception and goes no further; a ``mark_many`` that raises propagates (the worker then
        blocks every image).

        Raises:
            ValueError: ``images`` and ``output_ids`` differ in length, or a mark returned the wrong
                number of results.
        """
        if len(images) != len(output_ids):
            raise ValueError(f"{len(images)} images but {len(output_ids)} output ids")
        results: list[Image.Image | Exception] = list(images)
        for marker in self._marks:
            live = [i for i, result in enumerate(results) if isinstance(result, Image.Image)]
            batch = [image for image in results if isinstance(image, Image.Image)]
            ids = [output_ids[i] for i in live]
            if not batch:
                break
            marked = marker.mark_many(batch, ids) if isinstance(marker, BatchMarker) else _mark_each(marker, batch, ids)
            if len(marked) != len(batch):
                raise ValueError(f"{type(marker).__name__} returned {len(marked)} results for {len(batch)} images")
            for i, result in zip(live, marked, strict=True):
                results[i] = result
        return results


def _mark_each(
    marker: Marker, images: Sequence[Image.Image], output_ids: Sequence[str]
) -> list[Image.Image | Exception]:
    results: list[Image.Image | Exception] = []
    for image, output_id in zip(images, output_ids, strict=True):
        try:
            results.append(marker.mark(image, output_id))
        except Exception as exc:  # kept in the image's slot: the worker blocks that image alone
            results.append(exc)
    return results


class MetadataSigner:
    """Attaches a signed output id to an image (the ``Watermarker`` protocol of the worker)."""

    name = "signed-metadata"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError(f"signing key must be at least 16 bytes, got {len(key)}")
        self._key = key

    @classmethod
    def from_key_file(cls, path: Path) -> MetadataSigner:
        """Load the key, creating it (mode 0600) on first use."""
        return cls(key_file(path))

    def mark(self, image: Image.Image, output_id: str) -> Image.Image:
        marked = image.copy()
        marked.info[OUTPUT_KEY] = output_id
        marked.info[SIGNATURE_KEY] = _digest(self._key, image, output_id)
        return marked

    def verify(self, image: Image.Image) -> str | None:
        """Return the output id if the image carries a valid signature, else None."""
        output_id = image.info.get(OUTPUT_KEY)
        signature = image.info.get(SIGNATURE_KEY)
        if not isinstance(output_id, str) or not isinstance(signature, str):
            return None
        expected = _digest(self._key, image, output_id)
        return output_id if hmac.compare_digest(expected, signature) else None
