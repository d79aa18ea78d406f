"""Fixture data for the dashboard: two servers' jobs, images, reviews, votes and audit entries, written
through the real code paths (Storage.insert_job, transition, save_outputs, vote) into a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from bot.config import Settings
from bot.dashboard import create_app
from bot.dashboard.auth import Auth
from bot.jobs import Job, JobRequest, JobState
from bot.outputs import ImageStore, make_preview
from bot.records import OutputRecord, VerdictRecord
from bot.storage import Storage
from safety.faces import FaceBox
from safety.gallery import ProtectedGallery

GUILD, OTHER = "111", "222"
MOD, OTHER_MOD = "900", "901"


@dataclass(frozen=True)
class Seeded:
    """Ids of what :func:`seed` wrote, per server."""

    flagged: str  # GUILD: a held job with a pending review (one flagged image, one allowed)
    done: str  # GUILD: a posted job with votes
    queued: str  # GUILD: waiting for the scheduler
    other_flagged: str  # OTHER: a held job with a pending review
    other_done: str  # OTHER: a posted job with votes


class FakeDetector:
    """One face in the middle of any image (the gallery's FaceDetector interface)."""

    version = "fake-1"

    def detect(self, image: Image.Image) -> list[FaceBox]:
        return [FaceBox(image.width // 4, image.height // 4, 3 * image.width // 4, 3 * image.height // 4, 0.99)]


class FakeEmbedder:
    """A 128-d embedding from the image's mean colour (the gallery's Embedder interface)."""

    version = "fake-1"

    def embed(self, image: Image.Image, box: FaceBox) -> np.ndarray:  # type: ignore[type-arg]
        mean = np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) / 255
        return np.resize(mean, 128).astype(np.float32)


def _picture(colour: tuple[int, int, int], *, seed: int) -> Image.Image:
    """A 64x64 image with detail (a flat one would blur into itself)."""
    noise = np.random.default_rng(seed).integers(0, 80, (64, 64, 3))
    pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def request(prompt: str, guild: str, user: str) -> JobRequest:
    return JobRequest.create(prompt, model="builtin:tiny", steps=4, width=64, height=64, count=2, guidance=5.0,
                             guild_id=guild, user_id=user, seed=7)  # fmt: skip


async def _job(storage: Storage, images: ImageStore, prompt: str, guild: str, user: str, end: JobState,
               colour: tuple[int, int, int]) -> str:  # fmt: skip
    job = Job.new(request(prompt, guild, user))
    await storage.insert_job(job)
    if end is JobState.QUEUED:
        return job.id
    await storage.transition(job.id, JobState.RUNNING)
    outputs, verdicts = [], []
    for index in range(2):
        picture = _picture(colour, seed=index)
        stored = images.write(picture)
        held = end is JobState.FLAGGED and index == 0
        preview = images.write(make_preview(picture)) if held else None
        outputs.append(OutputRecord(job.id, index, str(stored.path), stored.sha256, 64, 64, 7 + index,
                                    preview_path=str(preview.path) if preview else None))  # fmt: skip
        verdicts.append(VerdictRecord(job.id, index, "nsfw", "flag" if held else "allow",
                                      "sexual_suggestive" if held else None, "test", {"nsfw.sexual": 0.5}))  # fmt: skip
    await storage.save_outputs(job.id, outputs, verdicts, None)
    await storage.transition(job.id, end)  # flagged: opens the review, as in the service
    return job.id


async def _seed(settings: Settings) -> Seeded:
    images = ImageStore(settings.images_dir)
    async with await Storage.open(settings.db_path) as storage:
        seeded = Seeded(
            flagged=await _job(storage, images, "a lighthouse at dusk", GUILD, "500", JobState.FLAGGED, (200, 80, 60)),
            done=await _job(storage, images, "a red fox in snow", GUILD, "501", JobState.DONE, (30, 120, 200)),
            queued=await _job(storage, images, "a teapot", GUILD, "502", JobState.QUEUED, (0, 0, 0)),
            other_flagged=await _job(
                storage, images, "secret other prompt", OTHER, "600", JobState.FLAGGED, (90, 160, 40)
            ),
            other_done=await _job(storage, images, "other server cat", OTHER, "601", JobState.DONE, (160, 40, 160)),
        )
        for voter in ("701", "702", "703"):
            await storage.vote(seeded.done, voter, 1, guild_id=GUILD)
            await storage.vote(seeded.other_done, voter, 0, guild_id=OTHER)
        await storage.audit("setting_changed", guild_id=GUILD, actor_id=MOD, detail={"key": "cooldown_seconds"})
        await storage.audit("setting_changed", guild_id=OTHER, actor_id="other-admin-7", detail={"key": "secretkey"})
    gallery = ProtectedGallery(settings.protected_dir)
    for name, guild in (("Guild Person", GUILD), ("Other Secret Person", OTHER), ("Global Person", None)):
        gallery.add(name, [Image.new("RGB", (64, 64), (len(name) * 9, 90, 40))], guild_id=guild,
                    embedder=FakeEmbedder(), detector=FakeDetector())  # fmt: skip
    return seeded


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_mapping({"data_dir": str(tmp_path / "data")})


@pytest.fixture
def seeded(settings: Settings) -> Seeded:
    return asyncio.run(_seed(settings))


class Clock:
    """A movable clock for the signer."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(settings: Settings, clock: Clock) -> Auth:
    from safety.provenance import key_file

    return Auth(key_file(settings.keys_dir / "dashboard.key"), clock=clock)


@pytest.fixture
def client(settings: Settings, seeded: Seeded, auth: Auth) -> Iterator[TestClient]:
    with TestClient(create_app(settings, auth=auth), base_url="http://testserver") as c:
        yield c


def sign_in(client: TestClient, auth: Auth, user: str = MOD, guild: str = GUILD) -> str:
    """Log in through the real login form; returns the session's CSRF token."""
    token = auth.login_token(user, guild)
    page = client.get("/login", params={"token": token})
    assert page.status_code == 200, page.text
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    done = client.post("/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303, done.text
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    page = client.get("/reviews")
    assert page.status_code == 200, page.text
    return page.text.split('name="csrf" value="')[1].split('"')[0]
