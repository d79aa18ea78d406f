"""Who a face is: 128-d face embeddings from dlib's ResNet, compared by Euclidean distance.

The face is aligned with dlib's 5-point shape predictor, cut to a 150x150 chip and embedded by
``dlib_face_recognition_resnet_model_v1`` (99.38% on LFW); both weight files ship in the
``face_recognition_models`` package. Two embeddings closer than :data:`SAME_PERSON_DISTANCE`
(dlib's own threshold, 0.6) are the same person.

Measured on scikit-image's astronaut (Eileen Collins), faces found by the NudeNet detector,
distance to the untouched photo: crop 0.06, mirror 0.18, brightness +20% 0.10 and -20% 0.07,
JPEG q50 0.09, resized to 256 0.19 and to 1024 0.08, posterized to 3 bits 0.18, greyscale 0.18,
rotated 15 degrees 0.08. Different people: the cameraman of ``skimage.data.camera()`` 0.85,
matplotlib's Grace Hopper photo 0.68. Tiny faces blur together: among the 25x25 px faces of
``skimage.data.lfw_subset()`` (upscaled), one is 0.59 from the astronaut, so a match on a face
under ~40 px is weak evidence (it still blocks: the gallery errs towards protecting).
One embedding costs ~75 ms on the 2-core development CPU; every jitter adds about as much again
(``num_jitters=10`` ~0.8 s) for a small gain, so checks run without it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Protocol

import dlib
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from safety.errors import StageUnavailableError
from safety.faces import FaceBox

logger = logging.getLogger(__name__)

EMBEDDING_SIZE = 128
SAME_PERSON_DISTANCE = 0.6  # dlib's threshold for "same person" on its 128-d embeddings
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

Embedding = NDArray[np.float32]
"""One face: a vector of :data:`EMBEDDING_SIZE` floats (rows of them for several faces)."""


class Embedder(Protocol):
    """Turns a detected face into an embedding; ``version`` names the model for audit records."""

    @property
    def version(self) -> str: ...

    def embed(self, image: Image.Image, box: FaceBox) -> Embedding: ...


def default_models_dir() -> Path:
    """Where ``face_recognition_models`` keeps its ``.dat`` files (located, never imported).

    Raises:
        StageUnavailableError: the package is not installed.
    """
    # Importing the package needs pkg_resources, which current setuptools no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise StageUnavailableError("the face_recognition_models package, which ships the face weights, is missing")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def face_distance(a: Embedding, b: Embedding) -> float:
    """Euclidean distance between two embeddings; below :data:`SAME_PERSON_DISTANCE` is a match."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def face_distances(references: Embedding, embedding: Embedding) -> NDArray[np.float32]:
    """Distance from ``embedding`` to each row of ``references`` (shape ``(n, 128)``)."""
    rows = np.asarray(references, np.float32).reshape(-1, EMBEDDING_SIZE)
    distances: NDArray[np.float32] = np.linalg.norm(rows - np.asarray(embedding, np.float32), axis=1).astype(np.float32)
    return distances


class FaceEmbedder:
    """dlib's face recognition ResNet behind the 5-point aligner.

    Args:
        shape_predictor: a loaded ``dlib.shape_predictor`` (5 landmarks).
        recognizer: a loaded ``dlib.face_recognition_model_v1``.
        version: names the weights, for audit records.
        num_jitters: random re-crops averaged per embedding (each costs one more forward pass).
    """

    def __init__(self, shape_predictor: Any, recognizer: Any, *, version: str, num_jitters: int = 0) -> None:
        if num_jitters < 0:
            raise ValueError(f"num_jitters must not be negative, got {num_jitters}")
        self._predictor = shape_predictor
        self._recognizer = recognizer
        self._version = version
        self.num_jitters = num_jitters

    @classmethod
    def load(cls, models_dir: Path | None = None, *, num_jitters: int = 0) -> FaceEmbedder:
        """Load both weight files from ``models_dir`` (default: the ``face_recognition_models`` package).

        Raises:
            StageUnavailableError: a weight file is missing or does not load.
        """
        directory = models_dir or default_models_dir()
        predictor_path, recognizer_path = directory / SHAPE_PREDICTOR_FILE, directory / RECOGNITION_MODEL_FILE
        for path in (predictor_path, recognizer_path):
            if not path.is_file():
                raise StageUnavailableError(f"face embedding weights not found: {path}")
        try:
            predictor = dlib.shape_predictor(str(predictor_path))
            recognizer = dlib.face_recognition_model_v1(str(recognizer_path))
        except RuntimeError as exc:  # dlib's error for a truncated or foreign file
            raise StageUnavailableError(f"face embedding weights in {directory} failed to load: {exc}") from exc
        digest = hashlib.sha256(recognizer_path.read_bytes() + predictor_path.read_bytes()).hexdigest()[:12]
        version = f"dlib-resnet-v1+sp5:{digest}"
        logger.info("loaded face embedder %s from %s", version, directory)
        return cls(predictor, recognizer, version=version, num_jitters=num_jitters)

    @property
    def version(self) -> str:
        return self._version

    def embed(self, image: Image.Image, box: FaceBox) -> Embedding:
        """The embedding of the face in ``box``, shape ``(128,)``."""
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)  # dlib's corners are inclusive
        landmarks = self._predictor(pixels, rect)
        descriptor = self._recognizer.compute_face_descriptor(pixels, landmarks, self.num_jitters)
        return np.asarray(descriptor, dtype=np.float32).reshape(EMBEDDING_SIZE)
