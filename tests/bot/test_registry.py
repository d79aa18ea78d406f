"""The provenance registry (exact hash, watermark payload, nearest perceptual hash) and the Verifier."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from bot.config import Settings
from bot.jobs import Job, JobRequest, JobState
from bot.outputs import ImageStore, encode_png
from bot.records import OutputRecord
from bot.registry import Registry
from bot.service import ImagineService
from bot.storage import Storage
from bot.verify import UnreadableImageError, Verifier
from models.worker import Worker
from safety.credentials import ContentCredentials, CredentialFields
from safety.fingerprint import MATCH_DISTANCE, perceptual_hash
from safety.integrity import IntegrityStage
from safety.policy import Policy
from safety.provenance import MetadataSigner
from tests.fakes import FakeGenerator
from tests.safety.test_credentials import with_pixels_of

HIGH_BIT_HASH = 0xF0F0_0000_FFFF_1234  # above 2**63: stored as a negative SQLite integer


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with await Storage.open(tmp_path / "db.sqlite3") as opened:
        yield opened


async def add_job(storage: Storage, outputs: list[OutputRecord], *, guild: str = "g1") -> Job:
    request = JobRequest.create("a secret prompt", model="builtin:tiny", seed=1, steps=4, width=64, height=64,
                                guidance=1.0, count=len(outputs), guild_id=guild, user_id="u1")  # fmt: skip
    job = Job.new(request)
    await storage.insert_job(job)
    records = [OutputRecord(job.id, o.index, o.path, o.sha256, 64, 64, 1, None, o.phash, o.payload_id, o.c2pa)
               for o in outputs]  # fmt: skip
    await storage.save_outputs(job.id, records, [], (f"{job.id}-grid.png", "f" * 64))
    return job


def output(index: int, sha: str, phash: int | None, payload: int | None = None) -> OutputRecord:
    return OutputRecord("", index, f"{sha}.png", sha, 64, 64, 1, None, phash, payload, True)


async def test_lookups_by_sha256_payload_and_grid(storage: Storage) -> None:
    job = await add_job(storage, [output(0, "a" * 64, HIGH_BIT_HASH, 0xABCDEF012345), output(1, "b" * 64, 7)])
    registry = Registry(storage)
    [found] = await registry.by_sha256("b" * 64)
    assert (found.job_id, found.index, found.phash, found.c2pa) == (job.id, 1, 7, True)
    [marked] = await registry.by_payload(0xABCDEF012345)
    assert (marked.index, marked.phash) == (0, HIGH_BIT_HASH)  # the signed round trip keeps all 64 bits
    assert await registry.by_sha256("c" * 64) == []
    assert await registry.by_payload(1) == []
    assert await registry.grid_by_sha256("f" * 64) == job.id


async def test_nearest_perceptual_hash_within_threshold(storage: Storage) -> None:
    job = await add_job(storage, [output(0, "a" * 64, HIGH_BIT_HASH), output(1, "b" * 64, 0)])
    registry = Registry(storage)
    near = HIGH_BIT_HASH ^ 0b1011  # 3 bits flipped
    match = await registry.nearest(near)
    assert match is not None and (match.output.job_id, match.output.index, match.distance) == (job.id, 0, 3)
    edge = HIGH_BIT_HASH ^ ((1 << MATCH_DISTANCE) - 1)
    assert (await registry.nearest(edge)) is not None
    far = HIGH_BIT_HASH ^ ((1 << (MATCH_DISTANCE + 1)) - 1)  # one bit too many from the nearest
    assert await registry.nearest(far) is None
    assert await Registry(storage, max_distance=2).nearest(near) is None
    with pytest.raises(ValueError, match="max_distance"):
        Registry(storage, max_distance=40)


async def test_empty_registry_finds_nothing(storage: Storage) -> None:
    assert await Registry(storage).nearest(123) is None


@dataclass(frozen=True)
class Match:
    payload_id: int


class StandInWatermark:
    """Stands in for safety.watermark.InvisibleWatermark: 'decodes' a payload from a red top-left corner."""

    def decode(self, image: Image.Image) -> Match | None:
        r, g, b = (int(c) for c in image.convert("RGB").crop((0, 0, 8, 8)).resize((1, 1)).getpixel((0, 0)))  # type: ignore[union-attr]
        return Match(0x1234) if r > 200 and g < 80 and b < 80 else None


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB").resize((128, 128))


def jpeg(image: Image.Image, quality: int = 60) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


async def test_verifier_gathers_evidence_and_resolves_the_job(storage: Storage, tmp_path: Path) -> None:
    credentials = ContentCredentials.open(tmp_path / "keys")
    metadata = MetadataSigner(b"k" * 32)
    image = photo("astronaut")
    image.paste((255, 0, 0), (0, 0, 8, 8))  # the stand-in's "watermark"
    job = await add_job(storage, [output(0, "0" * 64, perceptual_hash(image), 0x1234)])
    oid = f"{job.id}-0"
    signed = credentials.sign(encode_png(metadata.mark(image, oid)), CredentialFields(oid, "builtin:tiny", "0.1.0"))
    verifier = Verifier(storage, credentials=credentials, metadata=metadata, watermark=StandInWatermark())

    report = await verifier.verify(signed)
    assert report.ours and report.job_id == job.id
    kinds = [e.kind for e in report.evidence]
    assert kinds == ["c2pa", "signed-metadata", "watermark", "perceptual-hash"]
    assert report.job is not None and report.job.prompt is None  # not a moderator of g1
    assert (report.job.guild_id, report.job.model, report.job.index) == ("g1", "builtin:tiny", 0)
    as_moderator = await verifier.verify(signed, moderator_of={"g1"})
    assert as_moderator.job is not None and as_moderator.job.prompt == "a secret prompt"

    stripped = await verifier.verify(jpeg(image))  # re-encoded, no metadata: watermark + looks remain
    assert stripped.ours and stripped.job_id == job.id
    assert [e.kind for e in stripped.evidence] == ["watermark", "perceptual-hash"]

    foreign = await verifier.verify(jpeg(photo("coffee")))
    assert not foreign.ours and foreign.job_id is None and foreign.evidence == ()

    with pytest.raises(UnreadableImageError):
        await verifier.verify(b"not an image")


async def test_verifier_reports_a_tampered_manifest(storage: Storage, tmp_path: Path) -> None:
    credentials = ContentCredentials.open(tmp_path / "keys")
    signed = credentials.sign(encode_png(photo("rocket")), CredentialFields("x-0", "m", "0.1.0"))
    tampered = with_pixels_of(signed, encode_png(photo("coffee")))
    report = await Verifier(storage, credentials=credentials).verify(tampered)
    assert report.credentials is not None and report.credentials.present and not report.credentials.valid
    assert not report.ours
    assert any("invalid" in note for note in report.notes)


async def test_the_service_signs_and_registers_what_it_stores(tmp_path: Path) -> None:
    credentials = ContentCredentials.open(tmp_path / "keys")
    settings = Settings(data_dir=tmp_path)
    worker = Worker(lambda m: FakeGenerator(), Policy([IntegrityStage()]), MetadataSigner(b"k" * 32))
    async with await Storage.open(settings.db_path) as storage, worker:
        service = ImagineService(settings, storage, worker, ImageStore(settings.images_dir), quantum=10**6,
                                 credentials=credentials, payload_of=lambda oid: len(oid))  # fmt: skip
        await service.start()
        try:
            await service.guild_configs.set_credentials_personal("opted-in", True, actor_id="admin")
            jobs = {}
            for guild in ("plain", "opted-in"):
                request = JobRequest.create(f"prompt of {guild}", model="fake", steps=1, width=64, height=64,
                                            guidance=1.0, count=2, seed=3, guild_id=guild, user_id="u1")  # fmt: skip
                jobs[guild] = await service.wait((await service.submit(request)).id)
        finally:
            await service.aclose()
        for guild, job in jobs.items():
            assert job.state is JobState.DONE
            grid = await storage.grid_for(job.id)
            assert grid is not None
            prompt = f"prompt of {guild}" if guild == "opted-in" else None
            check_stored(credentials, job.id, await storage.outputs_for(job.id), grid[0], prompt)


def check_stored(
    credentials: ContentCredentials, job_id: str, outputs: list[OutputRecord], grid: str, prompt: str | None
) -> None:
    assert len(outputs) == 2
    for o in outputs:
        stored = Path(o.path).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == o.sha256  # the hash of the final, signed file
        report = credentials.read(stored)
        assert report.ours and report.output_id == f"{job_id}-{o.index}"
        assert report.prompt == prompt  # only where the guild opted in
        with Image.open(o.path) as image:
            assert o.phash == perceptual_hash(image)
        assert o.payload_id == len(f"{job_id}-{o.index}") and o.c2pa
    assert credentials.read(Path(grid)).output_id == f"{job_id}-grid"
