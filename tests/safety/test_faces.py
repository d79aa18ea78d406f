from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from safety.errors import StageUnavailableError
from safety.faces import FaceBox, HogFaceDetector, NudeNetFaceDetector, crop_face


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo("astronaut")


def test_finds_the_astronauts_face(detector: NudeNetFaceDetector, astronaut: Image.Image) -> None:
    [face] = detector.detect(astronaut)
    assert face.left < 225 < face.right and face.top < 130 < face.bottom  # her face is around (225, 130)
    assert 80 <= face.width <= 130 and 80 <= face.height <= 130
    assert face.score > 0.5


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_finds_no_face_where_there_is_none(detector: NudeNetFaceDetector, name: str) -> None:
    assert detector.detect(photo(name)) == []


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda im: im.resize((256, 256), Image.Resampling.LANCZOS), id="downscaled-256"),
        pytest.param(
            lambda im: im.resize((1024, 1024), Image.Resampling.LANCZOS).crop((200, 0, 712, 512)), id="up-crop"
        ),
        pytest.param(lambda im: ImageOps.posterize(im, 3), id="posterized"),
        pytest.param(lambda im: im.rotate(45, resample=Image.Resampling.BICUBIC), id="rotated-45"),
    ],
)
def test_finds_the_face_in_altered_copies(
    detector: NudeNetFaceDetector, astronaut: Image.Image, variant: Callable[[Image.Image], Image.Image]
) -> None:
    assert len(detector.detect(variant(astronaut))) == 1


def test_finds_a_face_turned_away_and_two_faces_side_by_side(
    detector: NudeNetFaceDetector, astronaut: Image.Image
) -> None:
    cameraman = photo("camera")  # three-quarter view, looking down: dlib's HOG misses it
    assert len(detector.detect(cameraman)) == 1
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(cameraman, (512, 0))
    faces = sorted(detector.detect(pair), key=lambda f: f.left)
    assert len(faces) == 2 and faces[0].right <= 512 <= faces[1].left


def test_boxes_stay_inside_the_image(detector: NudeNetFaceDetector, astronaut: Image.Image) -> None:
    corner = astronaut.crop((200, 100, 400, 300))  # the face cut by the left and top edges
    for face in detector.detect(corner):
        assert 0 <= face.left < face.right <= corner.width and 0 <= face.top < face.bottom <= corner.height


@pytest.mark.parametrize(("side", "size"), [(100, 320), (512, 320), (768, 480), (1024, 640), (4096, 640)])
def test_input_size_grows_with_the_image(detector: NudeNetFaceDetector, side: int, size: int) -> None:
    assert detector.input_size(side) == size


def test_detector_names_its_model(detector: NudeNetFaceDetector) -> None:
    assert detector.version.startswith("nudenet-320n:")


def test_missing_or_broken_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StageUnavailableError, match="not found"):
        NudeNetFaceDetector.load(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(StageUnavailableError, match="failed to load"):
        NudeNetFaceDetector.load(broken)


def test_bad_detector_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_score"):
        NudeNetFaceDetector.load(min_score=0.0)
    with pytest.raises(ValueError, match="max_resolution"):
        NudeNetFaceDetector.load(max_resolution=300)
    with pytest.raises(ValueError, match="upsample"):
        HogFaceDetector(upsample=-1)


def test_hog_alternative_finds_the_frontal_face_only(astronaut: Image.Image) -> None:
    hog = HogFaceDetector()
    assert len(hog.detect(astronaut)) == 1
    assert hog.detect(photo("coffee")) == []
    assert hog.version.startswith("dlib-hog:")


def test_face_box_rejects_empty_boxes() -> None:
    with pytest.raises(ValueError, match="empty face box"):
        FaceBox(10, 10, 10, 20, 0.9)


def test_crop_adds_margin_and_clips_to_the_image() -> None:
    image = Image.fromarray(np.zeros((100, 200, 3), np.uint8))
    box = FaceBox(50, 40, 90, 80, 0.9)
    assert crop_face(image, box, margin=0.0).size == (40, 40)
    assert crop_face(image, box).size == (60, 60)  # 25% of 40 on every side
    edge = FaceBox(0, 0, 40, 40, 0.9)
    assert crop_face(image, edge, margin=0.5).size == (60, 60)  # clipped at left and top
    with pytest.raises(ValueError, match="margin"):
        crop_face(image, box, margin=-0.1)
