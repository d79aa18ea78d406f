"""Shared fixtures: the tiny pipeline is saved once per session and loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.diffusers_backend import DiffusersGenerator
from models.tiny import ensure_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_generator(tiny_model_dir: Path) -> DiffusersGenerator:
    return DiffusersGenerator.from_pretrained(str(tiny_model_dir), device="cpu")
