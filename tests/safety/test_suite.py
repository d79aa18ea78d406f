from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from safety.clip import ClipSpec
from safety.prompt_filter import PromptCategory
from safety.suite import GuildRules, build_suite
from safety.verdict import UNAVAILABLE_REASON, Decision
from tests.tiny_clip import save_tiny_clip


@dataclass(frozen=True)
class Context:
    prompt: str = "a portrait"
    guild_id: str | None = "g1"
    strictness: str = "standard"
    allow_suggestive: bool = False
    width: int = 256
    height: int = 256


def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((256, 256))


def noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))


MISSING_CLIP = ClipSpec.parse("ViT-B-32:/nonexistent/weights.pt")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipSpec:
    return ClipSpec.parse(save_tiny_clip(tmp_path_factory.mktemp("clip")))


def test_missing_clip_weights_block_every_image(tmp_path: Path) -> None:
    suite = build_suite(["prompt", "integrity", "nsfw"], clip=MISSING_CLIP, gallery_dir=tmp_path)
    assert [(s.name, s.active) for s in suite.statuses] == [("prompt", True), ("integrity", True), ("nsfw", False)]
    verdicts = suite.policy.check([noise(), noise()], Context())
    assert all(v.decision is Decision.BLOCK and v.reason == UNAVAILABLE_REASON for v in verdicts)
    assert verdicts[0].stage == "nsfw"


def test_all_stages_load_with_a_clip_model(tmp_path: Path, tiny_clip: ClipSpec) -> None:
    suite = build_suite(
        ["prompt", "integrity", "nsfw", "faces"], clip=tiny_clip, gallery_dir=tmp_path / "g", cache_dir=tmp_path / "c"
    )
    assert all(s.active for s in suite.statuses), suite.statuses
    assert suite.nsfw is not None and suite.prompt is not None and suite.detector is not None
    [verdict] = suite.policy.check([noise()], Context())
    # every stage's scores are kept in the combined verdict
    assert {k.split(".")[0] for k in verdict.scores} >= {"prompt", "integrity", "nsfw", "faces"}
    assert set(verdict.model_versions) >= {"prompt", "integrity", "nsfw"}


def test_faces_without_clip_treat_every_face_as_realistic(tmp_path: Path) -> None:
    suite = build_suite(["prompt", "faces"], clip=MISSING_CLIP, gallery_dir=tmp_path, face_detector="hog")
    assert all(s.active for s in suite.statuses)
    [verdict] = suite.policy.check([astronaut()], Context(prompt="a photo of Taylor Swift"))
    assert verdict.decision is Decision.FLAG and verdict.category == "real_person"


def test_a_protected_face_is_blocked_only_where_it_is_protected(tmp_path: Path) -> None:
    suite = build_suite(["integrity", "faces"], clip=MISSING_CLIP, gallery_dir=tmp_path)
    assert suite.detector is not None and suite.embedder is not None
    suite.gallery.add("Eileen Collins", [astronaut()], guild_id="g1", embedder=suite.embedder, detector=suite.detector)
    [here] = suite.policy.check([astronaut()], Context(guild_id="g1"))
    [elsewhere] = suite.policy.check([astronaut()], Context(guild_id="g2"))
    assert here.decision is Decision.BLOCK and here.category == "protected_identity"
    assert elsewhere.decision is Decision.ALLOW
    assert "Eileen" not in here.reason


def test_prompt_stage_uses_guild_rules_and_gallery_names(tmp_path: Path) -> None:
    suite = build_suite(["prompt"], clip=MISSING_CLIP, gallery_dir=tmp_path)
    assert suite.prompt is not None
    suite.rules.set("g1", additions={PromptCategory.HATE: ("frobnicator",)}, exceptions=())
    assert suite.prompt.check_prompt(Context(prompt="a frobnicator", guild_id="g1")).decision is Decision.BLOCK
    assert suite.prompt.check_prompt(Context(prompt="a frobnicator", guild_id="g2")).decision is Decision.ALLOW
    [a, b] = suite.policy.check([noise(), noise()], Context(prompt="a frobnicator", guild_id="g1"))
    assert a.decision is b.decision is Decision.BLOCK and a.stage == "prompt"


def test_guild_rules_validate() -> None:
    rules = GuildRules(None)
    with pytest.raises(ValueError, match="protected_names"):
        rules.set("g", additions={PromptCategory.PROTECTED_PERSON: ("x",)}, exceptions=())
    assert rules.for_guild("g").protected_names == ()


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use one or more of"):
        build_suite(["nsfw", "vibes"], clip=MISSING_CLIP, gallery_dir=tmp_path)
    with pytest.raises(ValueError, match="use one or more of"):
        build_suite([], clip=MISSING_CLIP, gallery_dir=tmp_path)
    with pytest.raises(ValueError, match="face detector 'eyes'"):
        build_suite(["faces"], clip=MISSING_CLIP, gallery_dir=tmp_path, face_detector="eyes")
