"""Was this image made by this bot? Gathers every kind of evidence and resolves it to the job.

Evidence, strongest first:

- ``c2pa``: a valid C2PA manifest signed by our signing certificate (chained to our trust anchor).
- ``signed-metadata``: our HMAC-signed output id in the PNG text chunks, over these very pixels.
- ``sha256``: the file is byte for byte one we stored (an image or a grid).
- ``watermark``: the invisible watermark decodes to a payload the registry knows.
- ``perceptual-hash``: the picture looks like a stored one (Hamming distance within the threshold).

The first three vanish when a site strips metadata or re-encodes; the last two survive that. No
evidence is not proof of anything: a heavily edited copy of our image can lose all of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from bot.errors import JobNotFoundError
from bot.registry import Registry
from bot.storage import Storage
from safety.credentials import ContentCredentials, CredentialReport
from safety.fingerprint import perceptual_hash
from safety.provenance import MetadataSigner


class WatermarkReading(Protocol):
    """What a watermark decoder found (``safety.watermark.WatermarkMatch`` is one)."""

    @property
    def payload_id(self) -> int: ...


class WatermarkDecoder(Protocol):
    """Reads the invisible watermark's payload (``safety.watermark.InvisibleWatermark`` is one)."""

    def decode(self, image: Image.Image) -> WatermarkReading | None: ...


class UnreadableImageError(ValueError):
    """The bytes are not an image Pillow can decode."""


@dataclass(frozen=True)
class Evidence:
    """One reason to think the image is ours, and the output it points to (``job-index`` or ``job-grid``)."""

    kind: str
    detail: str
    output_id: str | None = None


@dataclass(frozen=True)
class JobDetails:
    """The public details of the job an image came from; ``prompt`` only for the guild's moderators."""

    job_id: str
    guild_id: str
    created_at: float
    model: str
    kind: str
    index: int | None
    prompt: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The verdict about one image. ``ours`` is False when no evidence was found (not a proof)."""

    ours: bool
    evidence: tuple[Evidence, ...] = ()
    job: JobDetails | None = None
    credentials: CredentialReport | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def job_id(self) -> str | None:
        return self.job.job_id if self.job is not None else None


@dataclass(frozen=True)
class _Inspection:
    """What the blocking part found, before any registry lookup."""

    sha256: str
    phash: int
    credentials: CredentialReport | None
    metadata_output: str | None
    payload_id: int | None


def split_output_id(output_id: str) -> tuple[str, int | None]:
    """``"<job>-<index>"`` -> (job, index); ``"<job>-grid"`` -> (job, None)."""
    job_id, _, suffix = output_id.rpartition("-")
    if not job_id:
        return output_id, None
    return job_id, int(suffix) if suffix.isdigit() else None


class Verifier:
    """Checks images against our keys and the registry.

    Args:
        storage: the open database (jobs and the registry).
        credentials: reads and validates C2PA manifests; None skips that evidence.
        metadata: checks the signed PNG text chunks; None skips that evidence.
        watermark: decodes the invisible watermark; None skips that evidence.
        registry: lookups by hash and payload (default: over ``storage``).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        credentials: ContentCredentials | None = None,
        metadata: MetadataSigner | None = None,
        watermark: WatermarkDecoder | None = None,
        registry: Registry | None = None,
    ) -> None:
        self._storage = storage
        self._credentials = credentials
        self._metadata = metadata
        self._watermark = watermark
        self._registry = registry or Registry(storage)

    async def verify(self, data: bytes, *, moderator_of: Collection[str] = ()) -> VerifyReport:
        """Gather the evidence about one image file's bytes.

        Args:
            data: the file's bytes.
            moderator_of: guild ids whose moderator is asking: their jobs' prompts are shown.

        Raises:
            UnreadableImageError: the bytes are not an image.
        """
        seen = await asyncio.to_thread(self._inspect, data)  # decoding, hashing and C2PA: off the loop
        evidence: list[Evidence] = []
        notes: list[str] = []
        c2pa = seen.credentials
        if c2pa is not None and c2pa.present:
            if c2pa.ours:
                evidence.append(Evidence("c2pa", "valid Content Credentials signed by this bot", c2pa.output_id))
            elif c2pa.valid:
                notes.append(f"valid Content Credentials by another signer ({c2pa.claim_generator})")
            else:
                notes.append("Content Credentials present but invalid: " + "; ".join(c2pa.errors))
        if seen.metadata_output is not None:
            evidence.append(Evidence("signed-metadata", "signed output id in the PNG metadata", seen.metadata_output))
        for output in await self._registry.by_sha256(seen.sha256):
            evidence.append(Evidence("sha256", "the file is byte for byte a stored image",
                                     f"{output.job_id}-{output.index}"))  # fmt: skip
        grid_job = await self._registry.grid_by_sha256(seen.sha256)
        if grid_job is not None:
            evidence.append(Evidence("sha256", "the file is byte for byte a stored grid", f"{grid_job}-grid"))
        if seen.payload_id is not None:
            found = await self._registry.by_payload(seen.payload_id)
            for output in found:
                evidence.append(Evidence("watermark", f"watermark payload {seen.payload_id:012x}",
                                         f"{output.job_id}-{output.index}"))  # fmt: skip
            if not found:
                notes.append(f"watermark payload {seen.payload_id:012x} is not in the registry")
        near = await self._registry.nearest(seen.phash)
        if near is not None:
            evidence.append(Evidence("perceptual-hash", f"looks like a stored image ({near.distance}/64 bits differ)",
                                     f"{near.output.job_id}-{near.output.index}"))  # fmt: skip
        job = await self._job(evidence, moderator_of)
        return VerifyReport(bool(evidence), tuple(evidence), job, c2pa, tuple(notes))

    def _inspect(self, data: bytes) -> _Inspection:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = opened.copy()  # keeps .info: the signed metadata lives there
        except UnidentifiedImageError:
            raise UnreadableImageError("not an image (no format Pillow reads)") from None
        except (OSError, ValueError) as exc:
            raise UnreadableImageError(f"damaged image: {exc}") from None
        c2pa = self._credentials.read(data) if self._credentials is not None else None
        metadata = self._metadata.verify(image) if self._metadata is not None else None
        reading = self._watermark.decode(image) if self._watermark is not None else None
        return _Inspection(
            sha256=hashlib.sha256(data).hexdigest(),
            phash=perceptual_hash(image),
            credentials=c2pa,
            metadata_output=metadata,
            payload_id=reading.payload_id if reading is not None else None,
        )

    async def _job(self, evidence: list[Evidence], moderator_of: Collection[str]) -> JobDetails | None:
        for item in evidence:  # strongest first
            if item.output_id is None:
                continue
            job_id, index = split_output_id(item.output_id)
            try:
                job = await self._storage.get_job(job_id)
            except JobNotFoundError:  # e.g. a valid manifest of a job deleted since
                continue
            r = job.request
            prompt = r.prompt if r.guild_id in moderator_of else None
            return JobDetails(job.id, r.guild_id, job.created_at, r.model, r.kind.value, index, prompt)
        return None
