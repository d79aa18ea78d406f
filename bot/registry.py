"""The provenance registry: finds the stored output an image came from, by exact hash, watermark or looks.

Every stored image has its file's SHA-256, a 64-bit perceptual hash and (when watermarked) the
48-bit watermark payload in the ``outputs`` table (migration 6). Exact hash and payload lookups use
indexes. The nearest perceptual hash is an exact linear scan: SQLite has no popcount, and band
indexes (LSH) only guarantee finding hashes within ``bands - 1`` bits, so a 10-bit radius would need
11 bands of ~6 bits each, with a flood of candidates per band. Numpy counts the bits of a million
hashes in ~5 ms; loading them from SQLite is the cost (~0.36 s per 200k rows measured, ~2 s per million).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bot.records import OutputRecord
from bot.storage import Storage
from safety.fingerprint import MATCH_DISTANCE, distances


@dataclass(frozen=True)
class PerceptualMatch:
    """The stored output whose perceptual hash is nearest, and how many of 64 bits differ."""

    output: OutputRecord
    distance: int


class Registry:
    """Lookups over the stored outputs of one database.

    Args:
        storage: the open database.
        max_distance: the largest Hamming distance (of 64 bits) that counts as the same picture.
    """

    def __init__(self, storage: Storage, *, max_distance: int = MATCH_DISTANCE) -> None:
        if not 0 <= max_distance <= 32:
            raise ValueError(f"max_distance must be in 0..32 bits, got {max_distance}")
        self._storage = storage
        self.max_distance = max_distance

    async def by_sha256(self, sha256: str) -> list[OutputRecord]:
        """The outputs stored as exactly this file."""
        return await self._storage.outputs_by_sha256(sha256)

    async def grid_by_sha256(self, sha256: str) -> str | None:
        """The job whose grid is exactly this file."""
        return await self._storage.job_by_grid_sha256(sha256)

    async def by_payload(self, payload_id: int) -> list[OutputRecord]:
        """The outputs whose watermark carries this payload."""
        return await self._storage.outputs_by_payload(payload_id)

    async def nearest(self, phash: int) -> PerceptualMatch | None:
        """The output with the nearest perceptual hash, if within :attr:`max_distance`; ties: the first stored."""
        rows = await self._storage.perceptual_hashes()
        if not rows:
            return None
        hashes = np.fromiter((h for _, _, h in rows), dtype=np.uint64, count=len(rows))
        found = distances(phash, hashes)
        best = int(np.argmin(found))
        if int(found[best]) > self.max_distance:
            return None
        job_id, index, _ = rows[best]
        output = await self._storage.output(job_id, index)
        return None if output is None else PerceptualMatch(output, int(found[best]))
