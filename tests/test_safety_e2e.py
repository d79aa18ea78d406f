"""The worker runs the full safety policy on every image: nothing is stored without a verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image
from skimage import data

from bot.config import Settings
from bot.jobs import JobRequest, JobState
from bot.outputs import ImageStore
from bot.service import ImagineService
from bot.storage import Storage
from models.types import CancelCheck, GeneratedImages, GenerationRequest, ProgressCallback
from models.worker import Worker
from safety.clip import ClipSpec
from safety.provenance import MetadataSigner
from safety.suite import build_suite


class PhotoGenerator:
    """A generator whose every image is the astronaut photo (a real face)."""

    model_id = "photo"

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> list[GeneratedImages]:
        photo = Image.fromarray(data.astronaut())
        return [GeneratedImages(r.job_id, tuple(photo.resize((r.width, r.height)) for _ in r.seeds)) for r in requests]


def request(prompt: str, guild: str) -> JobRequest:
    return JobRequest.create(prompt, model="photo", steps=1, width=256, height=256, count=2, guidance=0.0,
                             guild_id=guild, user_id="u")  # fmt: skip


async def test_protected_faces_and_named_people_never_reach_the_output(tmp_path: Path) -> None:
    settings = replace(Settings(data_dir=tmp_path), safety_stages=("prompt", "integrity", "faces"))
    suite = build_suite(settings.safety_stages, clip=ClipSpec.parse("ViT-B-32:/none.pt"), gallery_dir=tmp_path / "p")
    assert suite.detector is not None and suite.embedder is not None
    suite.gallery.add("Eileen Collins", [Image.fromarray(data.astronaut())], guild_id="protecting",
                      embedder=suite.embedder, detector=suite.detector)  # fmt: skip
    worker = Worker(lambda m: PhotoGenerator(), suite.policy, MetadataSigner(b"k" * 32))
    async with await Storage.open(settings.db_path) as storage, worker:
        service = ImagineService(settings, storage, worker, ImageStore(settings.images_dir), quantum=100,
                                 prompt_gate=suite.prompt)  # fmt: skip
        await service.start()
        try:
            protected = await service.submit(request("an astronaut portrait", "protecting"))
            named = await service.submit(request("a photo of Taylor Swift", "other"))
            plain = await service.submit(request("an astronaut portrait", "other"))
            results = {j.id: await service.wait(j.id) for j in (protected, named, plain)}
            assert results[protected.id].state is JobState.BLOCKED
            assert results[named.id].state is JobState.FLAGGED  # a real person named + realistic face
            assert results[plain.id].state is JobState.DONE
            for job in (protected, named, plain):
                verdicts = await storage.verdicts_for(job.id)
                assert len(verdicts) == 2  # one stored verdict per image, whatever the decision
                assert all("faces.count" in v.scores and "prompt.sexual" in v.scores for v in verdicts)
            assert await storage.outputs_for(protected.id) == []  # blocked images are never stored
            assert {v.category for v in await storage.verdicts_for(protected.id)} == {"protected_identity"}
            flagged = await storage.outputs_for(named.id)
            assert all(o.preview_path for o in flagged)
        finally:
            await service.aclose()
