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
from pathlib import Path
from typing import Protocol

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
