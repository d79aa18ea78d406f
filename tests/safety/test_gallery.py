from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from safety.faces import FaceBox, NudeNetFaceDetector
from safety.gallery import INDEX_FILE, MAX_NAME_LENGTH, ProtectedGallery
from safety.identity import EMBEDDING_SIZE, Embedding, FaceEmbedder


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


class OneFaceDetector:
    """Sees exactly one face filling every image."""

    version = "fake-one-face"

    def detect(self, image: Image.Image) -> list[FaceBox]:
        return [FaceBox(0, 0, image.width, image.height, 1.0)]


class ColourEmbedder:
    """Each solid colour is a different person: red channel k maps to unit vector k."""

    version = "fake-colour"

    def embed(self, image: Image.Image, box: FaceBox) -> Embedding:
        vector = np.zeros(EMBEDDING_SIZE, np.float32)
        red = image.convert("RGB").getpixel((0, 0))
        assert isinstance(red, tuple)
        vector[int(red[0]) % EMBEDDING_SIZE] = 1.0
        return vector


def face(k: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (k, 0, 0))


def vector(k: int) -> Embedding:
    return ColourEmbedder().embed(face(k), FaceBox(0, 0, 8, 8, 1.0))


FAKE_EMBEDDER, FAKE_DETECTOR = ColourEmbedder(), OneFaceDetector()


@pytest.fixture
def gallery(tmp_path: Path) -> ProtectedGallery:
    return ProtectedGallery(tmp_path / "protected")


def test_a_real_reference_protects_the_face_in_other_photos(
    gallery: ProtectedGallery, detector: NudeNetFaceDetector, embedder: FaceEmbedder
) -> None:
    astronaut = photo("astronaut")
    person = gallery.add("Eileen Collins", [astronaut], guild_id=None, embedder=embedder, detector=detector)
    assert (person.name, person.guild_id, person.references) == ("Eileen Collins", None, 1)

    mirrored = ImageOps.mirror(astronaut)
    [box] = detector.detect(mirrored)
    match = gallery.match(embedder.embed(mirrored, box), "guild")
    assert match is not None and match.person == person and match.distance < gallery.threshold

    cameraman = photo("camera")
    [box] = detector.detect(cameraman)
    other = embedder.embed(cameraman, box)
    assert gallery.match(other, "guild") is None
    nearest = gallery.nearest(other, "guild")
    assert nearest is not None and nearest.distance > gallery.threshold


def test_references_must_show_exactly_one_face(
    gallery: ProtectedGallery, detector: NudeNetFaceDetector, embedder: FaceEmbedder
) -> None:
    astronaut, cameraman = photo("astronaut"), photo("camera")
    with pytest.raises(ValueError, match="reference image 1 shows 0 faces"):
        gallery.add("X", [astronaut, photo("coffee")], guild_id=None, embedder=embedder, detector=detector)
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(cameraman, (512, 0))
    with pytest.raises(ValueError, match="reference image 0 shows 2 faces"):
        gallery.add("X", [pair], guild_id=None, embedder=embedder, detector=detector)
    assert gallery.list() == [] and not gallery.root.exists()  # nothing written on failure


@pytest.mark.parametrize("name", ["", "   ", "x" * (MAX_NAME_LENGTH + 1)])
def test_bad_names_are_refused(gallery: ProtectedGallery, name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        gallery.add(name, [face(1)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)


def test_other_bad_inputs_are_refused(gallery: ProtectedGallery, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one reference image"):
        gallery.add("A", [], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    with pytest.raises(ValueError, match="guild_id"):
        gallery.add("A", [face(1)], guild_id=" ", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    with pytest.raises(ValueError, match="threshold"):
        ProtectedGallery(tmp_path, threshold=0.0)


def test_readding_a_name_in_the_same_scope_adds_references(gallery: ProtectedGallery) -> None:
    first = gallery.add("  Ada   Lovelace ", [face(1)], guild_id="g1", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    assert first.name == "Ada Lovelace"
    again = gallery.add(
        "ada lovelace", [face(2), face(3)], guild_id="g1", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR
    )
    assert (again.id, again.name, again.references, again.created_at) == (first.id, first.name, 3, first.created_at)
    elsewhere = gallery.add("Ada Lovelace", [face(4)], guild_id="g2", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    assert elsewhere.id != first.id
    assert [p.references for p in gallery.list("g1", include_global=False)] == [3]
    for k in (1, 2, 3):
        match = gallery.match(vector(k), "g1")
        assert match is not None and match.person.id == first.id and match.distance == 0.0


def test_scopes_global_people_everywhere_guild_people_at_home(gallery: ProtectedGallery) -> None:
    everyone = gallery.add("Global", [face(1)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    local = gallery.add("Local", [face(2)], guild_id="g1", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    for guild in ("g1", "g2", None):
        found = gallery.match(vector(1), guild)
        assert found is not None and found.person == everyone
    found = gallery.match(vector(2), "g1")
    assert found is not None and found.person == local
    assert gallery.match(vector(2), "g2") is None and gallery.match(vector(2), None) is None

    assert gallery.list() == [everyone]
    assert gallery.list("g1") == [everyone, local]
    assert gallery.list("g1", include_global=False) == [local]
    assert gallery.list("g2") == [everyone]
    assert gallery.names("g1") == ("Global", "Local") and gallery.names("g2") == ("Global",)


def test_nearest_reports_distance_beyond_the_threshold(gallery: ProtectedGallery) -> None:
    assert gallery.nearest(vector(1), "g") is None
    gallery.add("A", [face(1)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    nearest = gallery.nearest(vector(2), "g")
    assert nearest is not None and nearest.distance == pytest.approx(np.sqrt(2))
    assert gallery.match(vector(2), "g") is None


def test_remove_forgets_the_person_and_deletes_their_embeddings(gallery: ProtectedGallery) -> None:
    gallery.add("A", [face(1)], guild_id="g1", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    gallery.add("A", [face(2)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    assert len(list(gallery.root.glob("*.npy"))) == 2
    assert gallery.remove("a", guild_id="g1") is True
    assert gallery.remove("A", guild_id="g1") is False
    assert gallery.remove("Nobody", guild_id=None) is False
    assert [p.guild_id for p in gallery.list("g1")] == [None]  # the global A stays
    assert gallery.match(vector(1), "g1") is None
    assert len(list(gallery.root.glob("*.npy"))) == 1


def test_the_gallery_persists_across_reopen(gallery: ProtectedGallery) -> None:
    added = gallery.add("A", [face(1), face(5)], guild_id="g1", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    reopened = ProtectedGallery(gallery.root)
    assert reopened.list("g1") == [added]
    found = reopened.match(vector(5), "g1")
    assert found is not None and found.person == added


def test_readers_see_another_instances_writes(gallery: ProtectedGallery) -> None:
    reader = ProtectedGallery(gallery.root)
    assert reader.list() == []
    gallery.add("A", [face(1)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    assert [p.name for p in reader.list()] == ["A"]
    gallery.remove("A", guild_id=None)
    assert reader.list() == [] and reader.match(vector(1), None) is None


def test_the_directory_holds_an_index_and_one_file_per_person(gallery: ProtectedGallery) -> None:
    a = gallery.add("A", [face(1)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    gallery.add(
        "A", [face(2)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR
    )  # rewrites A's file under a new name
    b = gallery.add("B", [face(3)], guild_id="g", embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    files = sorted(p.name for p in gallery.root.iterdir())
    assert len(files) == 3 and INDEX_FILE in files  # no temporary or superseded files left
    index = json.loads((gallery.root / INDEX_FILE).read_text())
    assert index["format"] == 1
    entries = {e["id"]: e for e in index["people"]}
    assert set(entries) == {a.id, b.id}
    assert entries[a.id]["references"] == 2 and entries[a.id]["guild_id"] is None
    assert set(entries[b.id]) == {"id", "name", "guild_id", "created_at", "references", "file"}
    assert np.load(gallery.root / entries[a.id]["file"]).shape == (2, EMBEDDING_SIZE)


def test_a_crash_while_committing_leaves_the_old_gallery(
    gallery: ProtectedGallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = gallery.add("A", [face(1)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    real_replace = os.replace

    def crash_on_index(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == INDEX_FILE:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr("safety.files.os.replace", crash_on_index)
    with pytest.raises(OSError, match="disk full"):
        gallery.add("A", [face(2)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    with pytest.raises(OSError, match="disk full"):
        gallery.add("B", [face(3)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR)
    monkeypatch.undo()

    reopened = ProtectedGallery(gallery.root)
    assert reopened.list() == [first]
    assert reopened.match(vector(2), None) is None and reopened.match(vector(3), None) is None
    assert not [p for p in gallery.root.iterdir() if p.name.startswith(".tmp-")]
    reopened.add(
        "C", [face(4)], guild_id=None, embedder=FAKE_EMBEDDER, detector=FAKE_DETECTOR
    )  # the next write sweeps the orphans
    assert len(list(gallery.root.glob("*.npy"))) == 2
