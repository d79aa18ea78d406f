"""CLIP embeddings for the zero-shot safety stages (NSFW, realism), loaded offline.

Default model, and why: ``ViT-B-32`` with the ``laion2b_s34b_b79k`` weights. It has ~151M
parameters and sees a 224x224 image as only 49 patches (4.4 GFLOPs), the cheapest open_clip
architecture with strong zero-shot accuracy (66% ImageNet zero-shot, above OpenAI's own B/32);
LAION-2B also saw far more of the web's unsafe imagery than curated sets. ``ViT-L-14``
(``openai``, 428M parameters, 256 patches, ~78 GFLOPs) is stronger but an order of magnitude
slower on a CPU, not a small factor. Measured on the 2-core development CPU, randomly initialised
(the architecture sets the cost, the weights do not), per 512x512 image through the NSFW stage
(preprocessing ~3 ms included), 2 torch threads on an otherwise idle machine: ViT-B-32 0.09 s at
batch 1 and 0.06 s at batch 4; ViT-L-14 1.0 s at either. With 1 thread: 0.17/0.14 s against
1.9/1.8 s. Encoding the stage's phrases once costs 2.2 s (B-32) or 6.5 s (L-14), then comes from
the text cache. Pick another model with ``ClipSpec.parse``; on a GPU either is cheap.

Weights never come from the network: a pretrained tag is resolved to a file already in the local
Hugging Face cache (or open_clip's own ``~/.cache/clip``), and ``pretrained`` may instead be a
checkpoint path. Anything missing or broken raises :class:`StageUnavailableError` naming the model
and weights, and the policy then blocks (fails closed).

Text embeddings are cached on disk per model, weights and phrase list, so the concept phrases of
the zero-shot stages are encoded once per model, not on every start.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from numpy.typing import NDArray
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from PIL import Image

from safety.errors import StageUnavailableError
from safety.files import write_atomic

logger = logging.getLogger(__name__)

Embeddings = NDArray[np.float32]
"""Rows of unit-length embeddings, one per image or phrase."""

Preprocess = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]

_TEXT_BATCH = 256  # phrases per forward pass; bounds memory for long concept lists
_MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature here during training


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to load.

    Attributes:
        model: an open_clip architecture name (``open_clip.list_models()``).
        pretrained: an open_clip pretrained tag for that architecture, or a local checkpoint path.
            A checkpoint path carries no preprocessing or activation settings: for OpenAI weights
            from a file, name the ``-quickgelu`` architecture.
    """

    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError(f"CLIP model name must not be empty: {self.model!r}")
        if not self.pretrained.strip():
            raise ValueError(f"CLIP pretrained tag or path must not be empty: {self.pretrained!r}")

    @classmethod
    def parse(cls, text: str) -> ClipSpec:
        """Read ``"MODEL"`` or ``"MODEL:PRETRAINED"``, e.g. ``"ViT-L-14:openai"``."""
        model, sep, pretrained = text.strip().partition(":")
        if not sep:
            return cls(model=model)
        return cls(model=model, pretrained=pretrained)

    @property
    def version(self) -> str:
        """What verdicts record as the model, e.g. ``"ViT-B-32/laion2b_s34b_b79k"``."""
        return f"{self.model}/{Path(self.pretrained).name}"


@dataclass(frozen=True)
class Concept:
    """One zero-shot class: several phrasings of the same idea, averaged into one embedding."""

    name: str
    phrases: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.phrases:
            raise ValueError(f"concept {self.name!r} needs at least one phrase")


class ImageTextEncoder(Protocol):
    """What the zero-shot stages need from CLIP (structural: tests pass fakes)."""

    @property
    def version(self) -> str: ...

    @property
    def logit_scale(self) -> float: ...

    def encode_images(self, images: Sequence[Image.Image]) -> Embeddings: ...

    def encode_texts(self, texts: Sequence[str]) -> Embeddings: ...


class ClipModel(Protocol):
    """The part of an open_clip model the encoder calls."""

    logit_scale: torch.Tensor

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


def concept_embeddings(encoder: ImageTextEncoder, concepts: Sequence[Concept]) -> Embeddings:
    """The zero-shot classifier: mean of each concept's phrase embeddings, renormalised.

    Encodes every phrase of every concept in one call (so one text-cache entry per concept list).

    Returns:
        One unit row per concept, in order.
    """
    phrases = [phrase for concept in concepts for phrase in concept.phrases]
    embedded = encoder.encode_texts(phrases)
    rows: list[Embeddings] = []
    start = 0
    for concept in concepts:
        stop = start + len(concept.phrases)
        rows.append(_normalise(embedded[start:stop].mean(axis=0, keepdims=True)))
        start = stop
    return np.concatenate(rows, axis=0)


def find_checkpoint(spec: ClipSpec, *, weights_dir: Path | None = None) -> Path:
    """Find the weights file for ``spec`` on this machine, without touching the network.

    Args:
        spec: the model and its pretrained tag or checkpoint path.
        weights_dir: the Hugging Face hub cache to look in; ``None`` means the default one
            (``HF_HUB_CACHE`` / ``HF_HOME``). It is also searched for open_clip's URL downloads.

    Raises:
        StageUnavailableError: the tag is unknown for the model, or its weights are not cached.
    """
    path = Path(spec.pretrained).expanduser()
    if path.is_file():
        return path
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(spec.model)
        raise StageUnavailableError(
            f"CLIP {spec.model}: {spec.pretrained!r} is neither a checkpoint file nor a known pretrained tag "
            f"(known tags: {', '.join(known) or 'none, unknown model'})"
        )
    for candidate in _cached_files(cfg, weights_dir):
        if candidate.is_file():
            return candidate
    raise StageUnavailableError(
        f"CLIP {spec.model} weights {spec.pretrained!r} are not in the local cache "
        f"({weights_dir or 'default Hugging Face cache'}); fetch them where the hub is reachable "
        "or give a checkpoint path"
    )


def _cached_files(cfg: dict[str, object], weights_dir: Path | None) -> Iterator[Path]:
    hub = str(cfg.get("hf_hub") or "")
    if hub:
        # open_clip's convention: "org/repo/" means the default file names, "org/repo/file" one file.
        repo_id, filename = posixpath.split(hub)
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=weights_dir)
            if isinstance(found, str):
                yield Path(found)
    url = str(cfg.get("url") or "")
    if url:
        yield (weights_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url)


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _normalise(rows: NDArray[np.floating]) -> Embeddings:
    values = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    normalised: Embeddings = values / np.maximum(norms, np.float32(1e-12))
    return normalised


def _file_identity(path: Path) -> str:
    """Names a checkpoint file's contents cheaply: a replaced file gets new cached text embeddings."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


class ClipEncoder:
    """A CLIP model that embeds images and phrases; blocking, meant for the worker thread.

    Build it with :meth:`load` (real weights) or :meth:`from_model` (an in-memory model, e.g. a
    tiny one in tests).
    """

    def __init__(
        self,
        model: ClipModel,
        preprocess: Preprocess,
        tokenizer: Tokenizer,
        *,
        version: str,
        weights_id: str,
        cache_dir: Path | None,
    ) -> None:
        self._model = model
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._version = version
        self._weights_id = weights_id
        self._cache_dir = cache_dir
        self._texts: dict[str, Embeddings] = {}
        parameter = next(iter(model.parameters()))
        self._device = parameter.device
        self._dtype = parameter.dtype

    @classmethod
    def load(
        cls,
        spec: ClipSpec | None = None,
        *,
        device: str | torch.device | None = None,
        cache_dir: Path | None = None,
        weights_dir: Path | None = None,
    ) -> ClipEncoder:
        """Load a pretrained CLIP from local files only.

        Args:
            spec: model and weights; the default is ``ClipSpec()`` (see the module docstring).
            device: where to run; CUDA when available, else CPU. CUDA runs in fp16.
            cache_dir: where text embeddings are cached; ``None`` keeps them in memory only.
            weights_dir: the Hugging Face hub cache to find tagged weights in (default: the usual one).

        Raises:
            StageUnavailableError: the weights are missing or the model fails to build or load.
        """
        spec = spec or ClipSpec()
        checkpoint = find_checkpoint(spec, weights_dir=weights_dir)
        tag = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
        target = _pick_device(device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model,
                pretrained=str(checkpoint),
                precision="fp16" if target.type == "cuda" else "fp32",
                device=target,
                # A file path loses the tag's settings, so pass them on explicitly.
                force_quick_gelu=bool(tag.get("quick_gelu", False)),
                image_mean=tag.get("mean"),
                image_std=tag.get("std"),
                image_interpolation=tag.get("interpolation"),
                image_resize_mode=tag.get("resize_mode"),
            )
            tokenizer = open_clip.get_tokenizer(spec.model)
        except Exception as exc:  # open_clip raises RuntimeError, OSError, KeyError... all mean "unusable"
            raise StageUnavailableError(
                f"CLIP {spec.model} with weights {spec.pretrained!r} failed to load: {exc}"
            ) from exc
        model.eval()
        weights_id = spec.pretrained if tag else _file_identity(checkpoint)
        logger.info("loaded CLIP %s from %s on %s", spec.version, checkpoint, target)
        return cls(model, preprocess, tokenizer, version=spec.version, weights_id=weights_id, cache_dir=cache_dir)

    @classmethod
    def from_model(
        cls,
        model: ClipModel,
        preprocess: Preprocess,
        tokenizer: Tokenizer,
        *,
        name: str,
        cache_dir: Path | None = None,
    ) -> ClipEncoder:
        """Wrap a model already in memory; ``name`` stands for model and weights in caches and verdicts."""
        if not name.strip():
            raise ValueError(f"a CLIP encoder needs a name: {name!r}")
        return cls(model, preprocess, tokenizer, version=name, weights_id=name, cache_dir=cache_dir)

    @property
    def version(self) -> str:
        """Model and weights, recorded in every verdict, e.g. ``"ViT-B-32/laion2b_s34b_b79k"``."""
        return self._version

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def logit_scale(self) -> float:
        """CLIP's learned softmax temperature (100 for the released models)."""
        return min(float(self._model.logit_scale.detach().float().exp()), _MAX_LOGIT_SCALE)

    def encode_images(self, images: Sequence[Image.Image]) -> Embeddings:
        """Embed all ``images`` in one forward pass; one unit row per image."""
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        batch = torch.stack([self._preprocess(image.convert("RGB")) for image in images])
        with torch.inference_mode():
            features = self._model.encode_image(batch.to(device=self._device, dtype=self._dtype))
        return _normalise(features.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> Embeddings:
        """Embed phrases; one unit row per phrase. Cached per model, weights and phrase list."""
        phrases = list(texts)
        key = hashlib.sha256(json.dumps([self._weights_id, phrases]).encode("utf-8")).hexdigest()
        cached = self._texts.get(key)
        if cached is None:
            cached = self._read_cache(key, len(phrases))
        if cached is None:
            cached = self._encode_texts(phrases)
            self._write_cache(key, cached)
        self._texts[key] = cached
        return cached.copy()

    def _encode_texts(self, phrases: list[str]) -> Embeddings:
        chunks: list[Embeddings] = []
        with torch.inference_mode():
            for start in range(0, len(phrases), _TEXT_BATCH):
                tokens = self._tokenizer(phrases[start : start + _TEXT_BATCH]).to(self._device)
                chunks.append(_normalise(self._model.encode_text(tokens).float().cpu().numpy()))
        logger.info("encoded %d phrases with CLIP %s", len(phrases), self._version)
        return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0), dtype=np.float32)

    def _cache_path(self, key: str) -> Path | None:
        if self._cache_dir is None:
            return None
        return self._cache_dir / f"{_slug(self._version)}-{key[:32]}.npy"

    def _read_cache(self, key: str, rows: int) -> Embeddings | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            loaded: Embeddings = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable text-embedding cache %s: %s", path, exc)
            return None
        if loaded.ndim != 2 or loaded.shape[0] != rows:
            logger.warning("ignoring text-embedding cache %s of shape %s", path, loaded.shape)
            return None
        return loaded

    def _write_cache(self, key: str, embeddings: Embeddings) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        try:
            buffer = io.BytesIO()
            np.save(buffer, embeddings, allow_pickle=False)
            write_atomic(path, buffer.getvalue())
        except OSError as exc:  # the cache only saves time; a read-only disk must not stop the stage
            logger.warning("could not write text-embedding cache %s: %s", path, exc)
