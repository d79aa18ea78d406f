from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

from safety.errors import StageUnavailableError
from safety.faces import NudeNetFaceDetector
from safety.identity import (
    EMBEDDING_SIZE,
    RECOGNITION_MODEL_FILE,
    SAME_PERSON_DISTANCE,
    SHAPE_PREDICTOR_FILE,
    Embedding,
    FaceEmbedder,
    default_models_dir,
    face_distance,
    face_distances,
)


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


@pytest.fixture(scope="module")
def embed_only_face(detector: NudeNetFaceDetector, embedder: FaceEmbedder) -> Callable[[Image.Image], Embedding]:
    def embed(image: Image.Image) -> Embedding:
        [face] = detector.detect(image)
        return embedder.embed(image, face)

    return embed


@pytest.fixture(scope="module")
def reference(embed_only_face: Callable[[Image.Image], Embedding]) -> Embedding:
    return embed_only_face(photo("astronaut"))


SAME_FACE: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop": lambda im: im.crop((60, 20, 480, 400)),
    "mirror": ImageOps.mirror,
    "brighter-20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "darker-20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "jpeg-q50": lambda im: jpeg(im, 50),
    "resize-256": lambda im: im.resize((256, 256), Image.Resampling.LANCZOS),
    "resize-1024": lambda im: im.resize((1024, 1024), Image.Resampling.LANCZOS),
}


@pytest.mark.parametrize("transform", SAME_FACE.values(), ids=SAME_FACE.keys())
def test_the_same_face_matches_after_everyday_edits(
    embed_only_face: Callable[[Image.Image], Embedding],
    reference: Embedding,
    transform: Callable[[Image.Image], Image.Image],
) -> None:
    distance = face_distance(reference, embed_only_face(transform(photo("astronaut"))))
    assert distance < SAME_PERSON_DISTANCE  # measured 0.06..0.19


def test_a_different_person_does_not_match(
    embed_only_face: Callable[[Image.Image], Embedding], reference: Embedding
) -> None:
    # skimage's only other human face: the cameraman, a man in three-quarter view (measured 0.85).
    assert face_distance(reference, embed_only_face(photo("camera"))) > SAME_PERSON_DISTANCE


def test_embeddings_are_deterministic_float32_vectors(
    detector: NudeNetFaceDetector, embedder: FaceEmbedder, reference: Embedding
) -> None:
    astronaut = photo("astronaut")
    [face] = detector.detect(astronaut)
    again = embedder.embed(astronaut, face)
    assert again.shape == (EMBEDDING_SIZE,) and again.dtype == np.float32
    np.testing.assert_array_equal(again, reference)
    assert embedder.version.startswith("dlib-resnet-v1+sp5:")


def test_distances_to_many_references() -> None:
    references = np.eye(3, EMBEDDING_SIZE, dtype=np.float32)
    distances = face_distances(references, references[1])
    np.testing.assert_allclose(distances, [np.sqrt(2), 0.0, np.sqrt(2)], rtol=1e-6)
    assert face_distance(references[0], references[0]) == 0.0


def test_missing_weights_make_the_embedder_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StageUnavailableError, match=SHAPE_PREDICTOR_FILE):
        FaceEmbedder.load(tmp_path)
    shutil.copy(default_models_dir() / SHAPE_PREDICTOR_FILE, tmp_path)
    with pytest.raises(StageUnavailableError, match=RECOGNITION_MODEL_FILE):
        FaceEmbedder.load(tmp_path)


def test_corrupt_weights_make_the_embedder_unavailable(tmp_path: Path) -> None:
    shutil.copy(default_models_dir() / SHAPE_PREDICTOR_FILE, tmp_path)
    (tmp_path / RECOGNITION_MODEL_FILE).write_bytes(b"truncated")
    with pytest.raises(StageUnavailableError, match="failed to load"):
        FaceEmbedder.load(tmp_path)


def test_negative_jitter_is_refused() -> None:
    with pytest.raises(ValueError, match="num_jitters"):
        FaceEmbedder.load(num_jitters=-1)
