"""The CLIP encoder, the NSFW stage and the realism scorer.

Decisions are proved with a fake encoder whose embeddings the test controls (an image "equal to"
a concept gets exactly that concept's ensemble embedding); the real path runs on a tiny random
open_clip model registered from a config in-process, since no pretrained weights reach this machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image

from safety.clip import ClipEncoder, ClipSpec, Concept, Embeddings, concept_embeddings, find_checkpoint
from safety.errors import StageUnavailableError
from safety.nsfw import (
    CATEGORIES,
    DEFAULT_THRESHOLDS,
    GORE,
    MINORS,
    SEXUAL_EXPLICIT,
    SEXUAL_SUGGESTIVE,
    Limits,
    NsfwConcepts,
    NsfwStage,
    relative_scores,
)
from safety.realism import ARTWORK, PHOTO, ClipRealism
from safety.verdict import Decision
from tests.tiny_clip import TINY, register_tiny_clip

STRICTNESS = ("relaxed", "standard", "strict")
DIM = 64


@dataclass(frozen=True)
class Context:
    prompt: str = "a picture"
    guild_id: str | None = "1"
    strictness: str = "standard"
    allow_suggestive: bool = False
    width: int = 64
    height: int = 64


def _unit(vector: NDArray[np.floating]) -> Embeddings:
    unit: Embeddings = np.asarray(vector / np.linalg.norm(vector), dtype=np.float32)
    return unit


class FakeEncoder:
    """An ImageTextEncoder whose embeddings the test sets.

    Each phrase gets a fixed pseudo-random unit vector (from its hash); each image is a solid colour
    whose embedding the test registers with :meth:`image`.
    """

    version = "fake-clip/1"
    logit_scale = 100.0

    def __init__(self) -> None:
        self._by_colour: dict[tuple[int, int, int], Embeddings] = {}
        self.image_batches: list[int] = []

    def image(self, embedding: Embeddings) -> Image.Image:
        colour = (len(self._by_colour) + 1, 0, 0)
        self._by_colour[colour] = _unit(np.asarray(embedding, dtype=np.float64).reshape(-1))
        return Image.new("RGB", (8, 8), colour)

    def encode_images(self, images: Sequence[Image.Image]) -> Embeddings:
        self.image_batches.append(len(images))
        return np.stack([self._by_colour[image.getpixel((0, 0))] for image in images])  # type: ignore[index]

    def encode_texts(self, texts: Sequence[str]) -> Embeddings:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(_unit(np.random.default_rng(seed).standard_normal(DIM)))
        return np.stack(rows)


@pytest.fixture
def fake() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def stage(fake: FakeEncoder) -> NsfwStage:
    return NsfwStage(fake)


def concept_vector(encoder: FakeEncoder, name: str) -> Embeddings:
    concepts = NsfwConcepts()
    (concept,) = [c for c in (*concepts.categories, *concepts.anchors) if c.name == name]
    row: Embeddings = concept_embeddings(encoder, [concept])[0]
    return row


# --- scoring and thresholds, with controlled embeddings -------------------------------------------


@pytest.mark.parametrize(
    ("category", "strictness", "expected"),
    [
        (SEXUAL_EXPLICIT, "relaxed", Decision.BLOCK),
        (SEXUAL_EXPLICIT, "standard", Decision.BLOCK),
        (SEXUAL_EXPLICIT, "strict", Decision.BLOCK),
        (GORE, "relaxed", Decision.BLOCK),
        (GORE, "standard", Decision.BLOCK),
        (GORE, "strict", Decision.BLOCK),
        (SEXUAL_SUGGESTIVE, "relaxed", Decision.FLAG),  # relaxed never blocks on suggestive alone
        (SEXUAL_SUGGESTIVE, "standard", Decision.BLOCK),
        (SEXUAL_SUGGESTIVE, "strict", Decision.BLOCK),
    ],
)
def test_image_equal_to_a_category_is_caught(
    fake: FakeEncoder, stage: NsfwStage, category: str, strictness: str, expected: Decision
) -> None:
    image = fake.image(concept_vector(fake, category))
    (verdict,) = stage.check([image], Context(strictness=strictness))
    assert verdict.decision is expected
    assert verdict.category == category
    assert verdict.scores[f"nsfw.{category}"] > 0.99
    assert verdict.stage == "nsfw"
    assert verdict.model_versions == {"nsfw": "fake-clip/1"}


@pytest.mark.parametrize("anchor", [c.name for c in NsfwConcepts().anchors])
def test_image_equal_to_a_safe_anchor_passes_even_when_strict(fake: FakeEncoder, stage: NsfwStage, anchor: str) -> None:
    image = fake.image(concept_vector(fake, anchor))
    (verdict,) = stage.check([image], Context(strictness="strict"))
    assert verdict.decision is Decision.ALLOW
    assert verdict.category is None
    assert set(verdict.scores) == {f"nsfw.{c}" for c in CATEGORIES}  # every score kept, not only the decisive one
    assert all(score < 0.01 for score in verdict.scores.values())


@pytest.mark.parametrize("strictness", STRICTNESS)
@pytest.mark.parametrize("allow_suggestive", [False, True])
@pytest.mark.parametrize("sexual", [SEXUAL_EXPLICIT, SEXUAL_SUGGESTIVE])
def test_minors_with_sexual_content_is_always_blocked_as_minors(
    fake: FakeEncoder, stage: NsfwStage, strictness: str, allow_suggestive: bool, sexual: str
) -> None:
    image = fake.image(concept_vector(fake, MINORS) + concept_vector(fake, sexual))
    (verdict,) = stage.check([image], Context(strictness=strictness, allow_suggestive=allow_suggestive))
    assert verdict.decision is Decision.BLOCK
    assert verdict.category == MINORS
    assert verdict.reason == "The image appears to show a young person in a sexual way."


@pytest.mark.parametrize("strictness", STRICTNESS)
def test_a_picture_of_a_child_alone_passes(fake: FakeEncoder, stage: NsfwStage, strictness: str) -> None:
    (verdict,) = stage.check([fake.image(concept_vector(fake, MINORS))], Context(strictness=strictness))
    assert verdict.decision is Decision.ALLOW
    assert verdict.scores["nsfw.minors"] > 0.99


def test_minors_rule_uses_far_lower_sexual_limits_than_any_level(stage: NsfwStage) -> None:
    # Explicit 0.35 is below every level's flag limit, yet with a child in the picture it blocks.
    scores = {"nsfw.sexual_explicit": 0.35, "nsfw.sexual_suggestive": 0.0, "nsfw.gore": 0.0, "nsfw.minors": 0.6}
    assert stage.decide({**scores, "nsfw.minors": 0.0}, Context(strictness="relaxed")).decision is Decision.ALLOW
    verdict = stage.decide(scores, Context(strictness="relaxed", allow_suggestive=True))
    assert (verdict.decision, verdict.category) == (Decision.BLOCK, MINORS)


def test_allow_suggestive_relaxes_suggestive_only(fake: FakeEncoder, stage: NsfwStage) -> None:
    suggestive = fake.image(concept_vector(fake, SEXUAL_SUGGESTIVE))
    explicit = fake.image(concept_vector(fake, SEXUAL_EXPLICIT))
    gore = fake.image(concept_vector(fake, GORE))
    adult_channel = Context(strictness="standard", allow_suggestive=True)
    verdicts = stage.check([suggestive, explicit, gore], adult_channel)
    assert [v.decision for v in verdicts] == [Decision.ALLOW, Decision.BLOCK, Decision.BLOCK]
    assert [v.category for v in verdicts] == [None, SEXUAL_EXPLICIT, GORE]
    # A strict server still has moderators look at very suggestive images in age-restricted channels.
    (strict,) = stage.check([suggestive], Context(strictness="strict", allow_suggestive=True))
    assert (strict.decision, strict.category) == (Decision.FLAG, SEXUAL_SUGGESTIVE)


def test_reasons_are_plain_words(fake: FakeEncoder, stage: NsfwStage) -> None:
    explicit, gore = fake.image(concept_vector(fake, SEXUAL_EXPLICIT)), fake.image(concept_vector(fake, GORE))
    verdicts = stage.check([explicit, gore], Context())
    assert [v.reason for v in verdicts] == [
        "The image looks sexually explicit.",
        "The image looks gory or graphically violent.",
    ]
    flagged = stage.decide(
        {"nsfw.sexual_explicit": 0.0, "nsfw.sexual_suggestive": 0.8, "nsfw.gore": 0.0, "nsfw.minors": 0.0},
        Context(),
    )
    assert flagged.decision is Decision.FLAG
    assert flagged.reason == "The image may be sexually suggestive, so a moderator will look at it first."


def test_limits_are_inclusive_and_the_worst_outcome_wins(stage: NsfwStage) -> None:
    level = DEFAULT_THRESHOLDS.standard
    base = {"nsfw.sexual_explicit": 0.0, "nsfw.sexual_suggestive": 0.0, "nsfw.gore": 0.0, "nsfw.minors": 0.0}
    assert level.gore.flag is not None
    at_flag = stage.decide({**base, "nsfw.gore": level.gore.flag}, Context())
    assert (at_flag.decision, at_flag.category) == (Decision.FLAG, GORE)
    # Explicit flagged and gore blocked: block wins over the earlier-listed category's flag.
    assert level.sexual_explicit.flag is not None and level.gore.block is not None
    mixed = {**base, "nsfw.sexual_explicit": level.sexual_explicit.flag, "nsfw.gore": level.gore.block}
    assert (stage.decide(mixed, Context()).decision, stage.decide(mixed, Context()).category) == (Decision.BLOCK, GORE)


def test_bad_input_is_refused_with_the_bad_value(stage: NsfwStage) -> None:
    scores = {f"nsfw.{c}": 0.0 for c in CATEGORIES}
    with pytest.raises(ValueError, match="'lenient'"):
        stage.decide(scores, Context(strictness="lenient"))
    with pytest.raises(ValueError, match=r"nsfw\.gore"):
        stage.decide({k: v for k, v in scores.items() if k != "nsfw.gore"}, Context())
    with pytest.raises(ValueError, match="above block"):
        Limits(flag=0.9, block=0.5)
    with pytest.raises(ValueError, match=r"1\.5"):
        Limits(flag=1.5)


_score = st.floats(min_value=0.0, max_value=1.0)
_scores = st.fixed_dictionaries({f"nsfw.{c}": _score for c in CATEGORIES})


@settings(max_examples=200, deadline=None)
@given(scores=_scores, category=st.sampled_from(CATEGORIES), bump=_score, strictness=st.sampled_from(STRICTNESS))
def test_a_higher_score_is_never_judged_more_leniently(
    scores: dict[str, float], category: str, bump: float, strictness: str
) -> None:
    stage = NsfwStage(FakeEncoder())
    context = Context(strictness=strictness)
    higher = {**scores, f"nsfw.{category}": max(scores[f"nsfw.{category}"], bump)}
    assert stage.decide(higher, context).decision.severity >= stage.decide(scores, context).decision.severity


@settings(max_examples=200, deadline=None)
@given(scores=_scores, strictness=st.sampled_from(STRICTNESS))
def test_an_age_restricted_channel_only_ever_relaxes_suggestive(scores: dict[str, float], strictness: str) -> None:
    stage = NsfwStage(FakeEncoder())
    ordinary = stage.decide(scores, Context(strictness=strictness))
    adult = stage.decide(scores, Context(strictness=strictness, allow_suggestive=True))
    assert adult.decision.severity <= ordinary.decision.severity
    if adult.decision is not ordinary.decision:
        assert ordinary.category == SEXUAL_SUGGESTIVE


def test_score_is_relative_to_the_best_anchor_not_to_how_many_there_are() -> None:
    category = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    anchors = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    image = _unit(np.array([0.8, 0.6, 0.0]))[None, :]
    (score,) = relative_scores(image, category, anchors, 100.0)[0]
    assert score == pytest.approx(1.0 / (1.0 + np.exp(-100.0 * (0.8 - 0.6))))
    # An anchor the image resembles less than the best one changes nothing.
    more = np.vstack([anchors, np.array([[0.0, 0.0, 1.0]], dtype=np.float32)])
    assert relative_scores(image, category, more, 100.0)[0, 0] == pytest.approx(score)
    # Equally close to category and best anchor: a coin toss.
    tie = _unit(np.array([1.0, 1.0, 0.0]))[None, :]
    assert relative_scores(tie, category, anchors, 100.0)[0, 0] == pytest.approx(0.5)


def test_concepts_are_checked() -> None:
    with pytest.raises(ValueError, match="needs at least one phrase"):
        Concept("empty", ())
    with pytest.raises(ValueError, match="must be"):
        NsfwConcepts(categories=NsfwConcepts().categories[:2])


def test_stage_scores_a_whole_batch_in_one_encoder_call(fake: FakeEncoder, stage: NsfwStage) -> None:
    images = [fake.image(concept_vector(fake, name)) for name in ("food", GORE, "animal", SEXUAL_EXPLICIT)]
    verdicts = stage.check(images, Context())
    assert fake.image_batches == [4]
    assert [v.decision for v in verdicts] == [Decision.ALLOW, Decision.BLOCK, Decision.ALLOW, Decision.BLOCK]
    assert stage.check([], Context()) == []
    assert fake.image_batches == [4]  # nothing to embed, no call


# --- the real encoder, on a tiny random open_clip model -------------------------------------------


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Registers the tiny architecture with open_clip, as a user's own config file would be."""
    return register_tiny_clip(tmp_path_factory.mktemp("clip-config"))


class CountingClip:
    """A real open_clip model that counts how often each tower runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self.text_calls = 0
        self.image_batches: list[int] = []

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._model.logit_scale  # type: ignore[return-value]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        self.image_batches.append(image.shape[0])
        return self._model.encode_image(image)  # type: ignore[no-any-return, operator]

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        self.text_calls += 1
        return self._model.encode_text(text)  # type: ignore[no-any-return, operator]

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self._model.parameters()


@pytest.fixture
def tiny(tiny_config: str) -> tuple[torch.nn.Module, object, object]:
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_config, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(tiny_config)


def _encoder(tiny: tuple[torch.nn.Module, object, object], **kwargs: object) -> tuple[ClipEncoder, CountingClip]:
    model, preprocess, tokenizer = tiny
    counting = CountingClip(model)
    name = kwargs.pop("name", "tiny-clip")
    return ClipEncoder.from_model(counting, preprocess, tokenizer, name=name, **kwargs), counting  # type: ignore[arg-type]


def test_text_embeddings_are_cached_on_disk_per_model_and_phrases(
    tiny: tuple[torch.nn.Module, object, object], tmp_path: Path
) -> None:
    phrases = ["a photo of a landscape", "a drawing", "a photo of food"]
    first, counting = _encoder(tiny, cache_dir=tmp_path)
    embedded = first.encode_texts(phrases)
    assert counting.text_calls == 1
    assert embedded.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-5)
    assert first.encode_texts(phrases).tolist() == embedded.tolist()
    assert counting.text_calls == 1

    again, counting_again = _encoder(tiny, cache_dir=tmp_path)  # a restart: same model, same cache folder
    np.testing.assert_array_equal(again.encode_texts(phrases), embedded)
    assert counting_again.text_calls == 0
    again.encode_texts([*phrases, "a photo of an animal"])
    assert counting_again.text_calls == 1

    other, counting_other = _encoder(tiny, cache_dir=tmp_path, name="other-clip")
    other.encode_texts(phrases)
    assert counting_other.text_calls == 1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3
    assert all(name.endswith(".npy") for name in files)  # the atomic write left no temporary file


def test_a_corrupt_cache_file_is_recomputed(tiny: tuple[torch.nn.Module, object, object], tmp_path: Path) -> None:
    encoder, _ = _encoder(tiny, cache_dir=tmp_path)
    good = encoder.encode_texts(["a drawing"])
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"not a numpy file")
    fresh, counting = _encoder(tiny, cache_dir=tmp_path)
    np.testing.assert_allclose(fresh.encode_texts(["a drawing"]), good, rtol=1e-6)
    assert counting.text_calls == 1


def test_tiny_clip_end_to_end(tiny: tuple[torch.nn.Module, object, object], tmp_path: Path) -> None:
    encoder, counting = _encoder(tiny, cache_dir=tmp_path)
    stage = NsfwStage(encoder)
    assert counting.text_calls == 2  # categories and anchors, each phrase list once
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(3)]
    images.append(Image.new("RGBA", (20, 30), (255, 0, 0, 128)))  # any mode and size
    verdicts = stage.check(images, Context(strictness="strict"))
    assert counting.image_batches == [4]
    assert len(verdicts) == 4
    for verdict in verdicts:
        assert set(verdict.scores) == {f"nsfw.{c}" for c in CATEGORIES}
        assert all(0.0 <= s <= 1.0 for s in verdict.scores.values())
        assert verdict.model_versions == {"nsfw": "tiny-clip"}
    assert stage.score(images) == [dict(v.scores) for v in verdicts]

    restarted, counting_restarted = _encoder(tiny, cache_dir=tmp_path)
    NsfwStage(restarted)
    assert counting_restarted.text_calls == 0  # a second start encodes no phrase at all
    realism = ClipRealism(encoder)
    probabilities = realism.photo_probability(images)
    assert len(probabilities) == 4
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert counting.image_batches == [4, 4, 4]  # check, score, realism


def test_realism_tells_photos_from_artwork(fake: FakeEncoder) -> None:
    realism = ClipRealism(fake)
    photo = fake.image(concept_embeddings(fake, [PHOTO])[0])
    anime = fake.image(concept_embeddings(fake, [ARTWORK[-1]])[0])
    high, low = realism.photo_probability([photo, anime])
    assert high > 0.99
    assert low < 0.01
    assert realism.photo_probability([]) == []
    assert fake.image_batches == [2]


# --- loading: offline, failing closed -------------------------------------------------------------


def test_spec_parse_and_version(tmp_path: Path) -> None:
    assert ClipSpec.parse("ViT-L-14:openai") == ClipSpec("ViT-L-14", "openai")
    assert ClipSpec.parse("ViT-B-32") == ClipSpec()
    assert ClipSpec().version == "ViT-B-32/laion2b_s34b_b79k"
    assert ClipSpec.parse(f"ViT-B-32:{tmp_path}/clip.safetensors").version == "ViT-B-32/clip.safetensors"
    with pytest.raises(ValueError, match="must not be empty"):
        ClipSpec.parse("ViT-B-32:")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (ClipSpec("ViT-B-32", "no-such-tag"), ["ViT-B-32", "no-such-tag", "laion2b_s34b_b79k"]),
        (ClipSpec("ViT-B-32", "/nonexistent/clip.pt"), ["ViT-B-32", "/nonexistent/clip.pt"]),
        (ClipSpec("No-Such-Net", "openai"), ["No-Such-Net", "openai"]),
        (ClipSpec(), ["ViT-B-32", "laion2b_s34b_b79k", "not in the local cache"]),
    ],
)
def test_missing_weights_are_unavailable_not_downloaded(spec: ClipSpec, words: list[str], tmp_path: Path) -> None:
    with pytest.raises(StageUnavailableError) as caught:
        ClipEncoder.load(spec, device="cpu", weights_dir=tmp_path / "empty-hub-cache")
    for word in words:
        assert word in str(caught.value)


def test_a_tag_resolves_to_the_local_hugging_face_cache(tmp_path: Path) -> None:
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    weights = repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd", encoding="utf-8")
    assert find_checkpoint(ClipSpec(), weights_dir=tmp_path) == weights


def test_load_from_a_local_checkpoint(tiny: tuple[torch.nn.Module, object, object], tmp_path: Path) -> None:
    model, preprocess, tokenizer = tiny
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    loaded = ClipEncoder.load(ClipSpec(TINY, str(checkpoint)), device="cpu", cache_dir=tmp_path / "texts")
    assert loaded.version == f"{TINY}/tiny.pt"
    assert loaded.device == torch.device("cpu")
    reference = ClipEncoder.from_model(model, preprocess, tokenizer, name="reference")  # type: ignore[arg-type]
    image = Image.new("RGB", (40, 40), (10, 200, 30))
    np.testing.assert_allclose(loaded.encode_images([image]), reference.encode_images([image]), atol=1e-5)
    np.testing.assert_allclose(loaded.encode_texts(["a dog"]), reference.encode_texts(["a dog"]), atol=1e-5)


def test_a_corrupt_checkpoint_is_unavailable(tiny_config: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "broken.pt"
    checkpoint.write_bytes(b"this is not a checkpoint")
    with pytest.raises(StageUnavailableError, match=f"{tiny_config}.*broken.pt.*failed to load"):
        ClipEncoder.load(ClipSpec(tiny_config, str(checkpoint)), device="cpu")
