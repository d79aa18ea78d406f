"""The real face models, loaded once per test module that asks for them."""

from __future__ import annotations

import pytest

from safety.faces import NudeNetFaceDetector
from safety.identity import FaceEmbedder


@pytest.fixture(scope="module")
def detector() -> NudeNetFaceDetector:
    return NudeNetFaceDetector.load()


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return FaceEmbedder.load()
