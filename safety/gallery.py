"""The protected-people gallery: faces that must never be generated, kept as embeddings in files.

``safety`` is a library without a database, so the gallery is a directory::

    <root>/index.json       {"format": 1, "people": [{id, name, guild_id, created_at, references, file}]}
    <root>/<id>-<tag>.npy   float32 rows of shape (references, 128): one person's reference embeddings

Only embeddings are kept, never the reference photos, and :meth:`ProtectedGallery.remove`
deletes a person's file. Scopes: a person added with ``guild_id=None`` is in the global gallery
that every guild's checks use; a guild's people are used for that guild only.

Writes are atomic: each file is written to a temporary name and moved into place with
``os.replace``, and ``index.json`` is the one commit point. An embeddings file gets a fresh name
and is written before the index that names it; files no index names are swept after each write.
A crash therefore leaves the old gallery or the new one, never a mix. One process writes (the
bot); readers in it (the worker thread) reload when ``index.json`` changes.
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from safety.faces import FaceDetector
from safety.files import TEMP_PREFIX, write_atomic
from safety.identity import EMBEDDING_SIZE, SAME_PERSON_DISTANCE, Embedder, Embedding, face_distances

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
INDEX_FORMAT = 1
MAX_NAME_LENGTH = 100


@dataclass(frozen=True)
class ProtectedPerson:
    """Someone whose face must not be generated.

    Attributes:
        id: stable identifier (hex).
        name: display name, unique per scope (case-insensitive).
        guild_id: the guild this person is protected in, or None for every guild.
        created_at: when the person was first added (UTC).
        references: how many reference embeddings the gallery holds.
    """

    id: str
    name: str
    guild_id: str | None
    created_at: datetime
    references: int


@dataclass(frozen=True)
class Match:
    """The nearest protected person to a face, and how near (Euclidean embedding distance)."""

    person: ProtectedPerson
    distance: float


@dataclass(frozen=True)
class _Snapshot:
    key: tuple[int, int, int] | None
    people: tuple[ProtectedPerson, ...]
    files: dict[str, str]
    embeddings: dict[str, Embedding]


_EMPTY = _Snapshot(None, (), {}, {})


def normalise_name(name: str) -> str:
    """Collapse whitespace; reject empty names and names over :data:`MAX_NAME_LENGTH` characters."""
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ValueError(f"a protected person's name must not be empty: {name!r}")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ValueError(f"a protected person's name must be at most {MAX_NAME_LENGTH} characters, got {len(cleaned)}")
    return cleaned


def _check_guild(guild_id: str | None) -> None:
    if guild_id is not None and not guild_id.strip():
        raise ValueError(f"guild_id must be None (global) or a non-empty id, got {guild_id!r}")


def _in_scope(person: ProtectedPerson, guild_id: str | None) -> bool:
    return person.guild_id is None or person.guild_id == guild_id


class ProtectedGallery:
    """The protected people of every guild, file-backed under ``root``.

    Args:
        root: the gallery directory (created on the first write).
        threshold: embedding distance below which a face matches a protected person.
    """

    def __init__(self, root: Path, *, threshold: float = SAME_PERSON_DISTANCE) -> None:
        if threshold <= 0:
            raise ValueError(f"match threshold must be positive, got {threshold}")
        self.root = root
        self.threshold = threshold
        self._lock = threading.Lock()
        self._snapshot = _EMPTY

    def add(
        self,
        name: str,
        images: Sequence[Image.Image],
        *,
        guild_id: str | None,
        embedder: Embedder,
        detector: FaceDetector,
    ) -> ProtectedPerson:
        """Protect ``name`` in a scope, from reference photos each showing exactly one face.

        Adding a name that already exists in the same scope adds references to that person.

        Raises:
            ValueError: a bad name or guild id, no images, or an image without exactly one face.
        """
        name = normalise_name(name)
        _check_guild(guild_id)
        if not images:
            raise ValueError("at least one reference image is needed")
        rows = np.stack([self._reference(i, image, embedder, detector) for i, image in enumerate(images)])
        with self._lock:
            snap = self._read()
            existing = next(
                (p for p in snap.people if p.guild_id == guild_id and p.name.casefold() == name.casefold()), None
            )
            if existing is None:
                person = ProtectedPerson(uuid.uuid4().hex, name, guild_id, datetime.now(UTC), len(rows))
                people = [*snap.people, person]
            else:
                rows = np.concatenate([snap.embeddings[existing.id], rows])
                person = replace(existing, references=len(rows))
                people = [person if p.id == existing.id else p for p in snap.people]
            files = dict(snap.files)
            files[person.id] = f"{person.id}-{uuid.uuid4().hex[:8]}.npy"
            self._write_embeddings(files[person.id], rows)
            self._commit(people, files)
        logger.info("protected person %s: %d references (guild %s)", person.id, person.references, guild_id)
        return person

    def list(self, guild_id: str | None = None, *, include_global: bool = True) -> builtins.list[ProtectedPerson]:
        """The people of one scope: the global gallery for None, else that guild's (and the global) people."""
        _check_guild(guild_id)
        people = self._current().people
        if guild_id is None:
            chosen = [p for p in people if p.guild_id is None]
        else:
            chosen = [p for p in people if p.guild_id == guild_id or (include_global and p.guild_id is None)]
        return sorted(chosen, key=lambda p: (p.name.casefold(), p.guild_id or ""))

    def names(self, guild_id: str | None) -> tuple[str, ...]:
        """Names protected in ``guild_id``'s checks: the global gallery plus that guild's."""
        return tuple(p.name for p in self.list(guild_id))

    def remove(self, name: str, *, guild_id: str | None) -> bool:
        """Forget a person of exactly this scope and delete their embeddings; False if absent."""
        name = normalise_name(name)
        _check_guild(guild_id)
        with self._lock:
            snap = self._read()
            gone = [p for p in snap.people if p.guild_id == guild_id and p.name.casefold() == name.casefold()]
            if not gone:
                return False
            people = [p for p in snap.people if p not in gone]
            self._commit(people, {p.id: snap.files[p.id] for p in people})
        logger.info("removed protected person %s (guild %s)", gone[0].id, guild_id)
        return True

    def nearest(self, embedding: Embedding, guild_id: str | None) -> Match | None:
        """The closest person in ``guild_id``'s checks (global and that guild), at any distance."""
        snap = self._current()
        best: Match | None = None
        for person in snap.people:
            if not _in_scope(person, guild_id):
                continue
            distance = float(face_distances(snap.embeddings[person.id], embedding).min())
            if best is None or distance < best.distance:
                best = Match(person, distance)
        return best

    def match(self, embedding: Embedding, guild_id: str | None) -> Match | None:
        """The closest person if nearer than ``threshold``: the face is that protected person."""
        best = self.nearest(embedding, guild_id)
        return best if best is not None and best.distance < self.threshold else None

    # -- files -------------------------------------------------------------------------------

    @staticmethod
    def _reference(index: int, image: Image.Image, embedder: Embedder, detector: FaceDetector) -> Embedding:
        boxes = detector.detect(image)
        if len(boxes) != 1:
            raise ValueError(f"reference image {index} shows {len(boxes)} faces; each must show exactly one face")
        return embedder.embed(image, boxes[0])

    def _key(self) -> tuple[int, int, int] | None:
        try:
            stat = (self.root / INDEX_FILE).stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _current(self) -> _Snapshot:
        snap = self._snapshot
        if snap.key != self._key() or snap.key is None:
            with self._lock:
                snap = self._read()
        return snap

    def _read(self) -> _Snapshot:
        """Load the index and every embeddings file (reusing this instance's copy if unchanged)."""
        key = self._key()
        if key is None:
            self._snapshot = _EMPTY
        elif key != self._snapshot.key:
            raw = json.loads((self.root / INDEX_FILE).read_text(encoding="utf-8"))
            entries: builtins.list[dict[str, Any]] = raw["people"]
            people = tuple(self._person(e) for e in entries)
            files = {e["id"]: e["file"] for e in entries}
            embeddings = {pid: self._load_embeddings(name) for pid, name in files.items()}
            self._snapshot = _Snapshot(key, people, files, embeddings)
        return self._snapshot

    @staticmethod
    def _person(entry: dict[str, Any]) -> ProtectedPerson:
        created = datetime.fromisoformat(entry["created_at"])
        return ProtectedPerson(entry["id"], entry["name"], entry["guild_id"], created, int(entry["references"]))

    def _load_embeddings(self, name: str) -> Embedding:
        rows = np.load(self.root / name, allow_pickle=False)
        if rows.ndim != 2 or rows.shape[1] != EMBEDDING_SIZE:
            raise ValueError(f"gallery file {name} holds an array of shape {rows.shape}, not (n, {EMBEDDING_SIZE})")
        return np.asarray(rows, np.float32)

    def _write_embeddings(self, name: str, rows: Embedding) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(rows, np.float32), allow_pickle=False)
        write_atomic(self.root / name, buffer.getvalue())

    def _commit(self, people: Sequence[ProtectedPerson], files: dict[str, str]) -> None:
        entries = [
            {
                "id": p.id,
                "name": p.name,
                "guild_id": p.guild_id,
                "created_at": p.created_at.isoformat(),
                "references": p.references,
                "file": files[p.id],
            }
            for p in people
        ]
        document = {"format": INDEX_FORMAT, "people": entries}
        write_atomic(self.root / INDEX_FILE, json.dumps(document, indent=2, ensure_ascii=False).encode())
        self._read()
        self._sweep(set(files.values()))

    def _sweep(self, keep: set[str]) -> None:
        """Delete embeddings files no index names and temporary files a crash left behind."""
        for path in self.root.iterdir():
            stale_npy = path.suffix == ".npy" and path.name not in keep
            if stale_npy or path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)
