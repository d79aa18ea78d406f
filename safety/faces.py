"""Face detection: where the faces in an image are.

Default detector, and why: NudeNet's 320n ONNX model (its ``FACE_FEMALE``/``FACE_MALE`` classes),
run here directly with onnxruntime. Measured on scikit-image's real photos on the 2-core
development CPU, ms per 512x512 image with preprocessing; the variants are all of the astronaut:

=====================  =====  =====  ======  ======  =====  ======  ======  =====  =========
detector               ms     astro  coffee  at 256  at     poster  rot 45  blur   camera-
                                     chelsea         128    / paint         r=3    man (3/4)
                                     rocket                 / sketch
=====================  =====  =====  ======  ======  =====  ======  ======  =====  =========
NudeNet 320n faces     ~17    1      0 0 0   1       1      1 1 1   1       1      1
dlib HOG               ~21    1      0 0 0   0       0      1 0 0   0       1      0
dlib HOG, upsampled    ~84    1      0 0 0   1       0      1 2 0   0       0      0
dlib CNN (mmod)        ~1630  1      0 0 0   0       0      1 1 1   1       1      1
MediaPipe BlazeFace    -      the 1.2.3 wheel ships no model file (``.tflite``): unusable offline
=====================  =====  =====  ======  ======  =====  ======  ======  =====  =========

(HOG at ``min_score`` 0.3; "2" is a false positive. The CNN costs 7.8 s upsampled. NudeNet's own
package decodes in Python and takes ~57 ms.) No detector found a face in 16 other face-free
scikit-image pictures or in noise; NudeNet's highest face score on them was 0.12 (the cat), its
lowest on a real face 0.53 (the cameraman), hence ``min_score`` 0.25. A face the detector misses
is never compared with the protected gallery, so a miss is the failure that lets a deepfake
through: recall decides, and NudeNet has it at less than one diffusion step's cost.

dlib's HOG detector stays available: its weights carry no copyleft terms, whereas the 320n model's
ONNX metadata says AGPL-3.0 (the Ultralytics trainer) although the nudenet package is MIT. It sees
only upright, frontal faces of at least ~40 px (upsampled).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dlib
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from PIL import Image

from safety.errors import StageUnavailableError

logger = logging.getLogger(__name__)

BASE_RESOLUTION = 320  # the input size NudeNet's 320n model was trained at
NUDENET_FACE_CLASSES = (1, 12)  # FACE_FEMALE, FACE_MALE in the 320n model's 18 classes
_NMS_IOU = 0.45  # overlap above which two face boxes are the same face (NudeNet's own value)


@dataclass(frozen=True)
class FaceBox:
    """A face's bounding box in image pixels (right and bottom exclusive) and the detector's score."""

    left: int
    top: int
    right: int
    bottom: int
    score: float

    def __post_init__(self) -> None:
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError(f"empty face box: {self}")

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


class FaceDetector(Protocol):
    """Finds faces; ``version`` names the model for audit records."""

    @property
    def version(self) -> str: ...

    def detect(self, image: Image.Image) -> list[FaceBox]: ...


def crop_face(image: Image.Image, box: FaceBox, *, margin: float = 0.25) -> Image.Image:
    """Cut a face out with ``margin`` times its size added on every side, clipped to the image."""
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    dx, dy = round(box.width * margin), round(box.height * margin)
    area = (
        max(0, box.left - dx),
        max(0, box.top - dy),
        min(image.width, box.right + dx),
        min(image.height, box.bottom + dy),
    )
    return image.convert("RGB").crop(area)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _nms(boxes: NDArray[np.floating], scores: NDArray[np.floating], iou: float) -> list[int]:
    """Greedy non-maximum suppression; boxes are rows of (x0, y0, x1, y1)."""
    order = list(np.argsort(-scores))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=np.int64)
        keep.append(int(best))
        if not rest.size:
            break
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        overlap = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = [int(i) for i in rest[overlap <= iou]]
    return keep


class NudeNetFaceDetector:
    """Faces from NudeNet's 320n detector (a YOLOv8n), run directly with onnxruntime.

    Args:
        session: an onnxruntime session of the 320n model.
        version: the model's name and file digest, for audit records.
        min_score: face-class confidence below which a box is dropped.
        max_resolution: the largest square input size the image is letterboxed to (a multiple
            of 32); see :meth:`input_size`.
    """

    def __init__(
        self, session: ort.InferenceSession, *, version: str, min_score: float = 0.25, max_resolution: int = 640
    ) -> None:
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must lie in (0, 1), got {min_score}")
        if max_resolution < BASE_RESOLUTION or max_resolution % 32:
            raise ValueError(
                f"max_resolution must be a multiple of 32 and at least {BASE_RESOLUTION}: {max_resolution}"
            )
        self._session = session
        self._input = session.get_inputs()[0].name
        self._version = version
        self.min_score = min_score
        self.max_resolution = max_resolution

    @classmethod
    def load(
        cls, model_path: Path | None = None, *, min_score: float = 0.25, max_resolution: int = 640, threads: int = 0
    ) -> NudeNetFaceDetector:
        """Load the model the ``nudenet`` package ships (or ``model_path``); ``threads=0`` uses every core.

        Raises:
            StageUnavailableError: the model file is missing or does not load.
        """
        path = model_path or _nudenet_model_path()
        if not path.is_file():
            raise StageUnavailableError(f"face detector model not found: {path} (pip install nudenet)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Spinning idle threads compete with the CLIP pass that follows on small CPUs (bench: -35 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for broken files
            raise StageUnavailableError(f"face detector model {path} failed to load: {exc}") from exc
        version = f"nudenet-320n:{_file_digest(path)}"
        logger.info("loaded face detector %s from %s", version, path)
        return cls(session, version=version, min_score=min_score, max_resolution=max_resolution)

    def input_size(self, side: int) -> int:
        """The square input size for an image whose longer side is ``side`` pixels.

        A 512 image is seen at 320, the size the model was trained at; larger images are seen
        proportionally larger (up to ``max_resolution``) so that a face keeps the same size in
        the model's input, e.g. a 60 px face in a 1024 image scores 0.31 at 320 but 0.80 at 640.
        """
        scaled = 32 * math.ceil(side * BASE_RESOLUTION / 512 / 32)
        return min(self.max_resolution, max(BASE_RESOLUTION, scaled))

    @property
    def version(self) -> str:
        return self._version

    def detect(self, image: Image.Image) -> list[FaceBox]:
        rgb = image.convert("RGB")
        blob, scale = self._letterbox(rgb)
        [output] = self._session.run(None, {self._input: blob})
        rows: NDArray[np.float32] = np.asarray(output, dtype=np.float32)[0].T  # anchors x (4 box + 18 classes)
        scores = rows[:, [4 + c for c in NUDENET_FACE_CLASSES]].max(axis=1)
        keep = scores >= self.min_score
        centres, sizes, scores = rows[keep, 0:2], rows[keep, 2:4], scores[keep]
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) * scale
        faces = []
        for i in _nms(boxes, scores, _NMS_IOU):
            x0, y0, x1, y1 = (round(float(v)) for v in boxes[i])
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(rgb.width, x1), min(rgb.height, y1)
            if x1 > x0 and y1 > y0:
                faces.append(FaceBox(x0, y0, x1, y1, round(float(scores[i]), 4)))
        return faces

    def _letterbox(self, rgb: Image.Image) -> tuple[NDArray[np.float32], float]:
        """Pad right and bottom to a square and scale to the input size, as NudeNet does.

        Returns the NCHW input in 0..1 and the factor from input to image pixels.
        """
        side = max(rgb.size)
        size = self.input_size(side)
        square = Image.new("RGB", (side, side))
        square.paste(rgb, (0, 0))
        pixels = np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        return (pixels / 255.0).transpose(2, 0, 1)[None], side / size


def _nudenet_model_path() -> Path:
    spec = importlib.util.find_spec("nudenet")  # locate only: importing nudenet pulls in OpenCV
    if spec is None or not spec.submodule_search_locations:
        raise StageUnavailableError("the nudenet package, which ships the face detector model, is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"


class HogFaceDetector:
    """dlib's HOG + linear SVM frontal face detector: fast, permissively licensed, low recall.

    Args:
        upsample: how many times the image is doubled before detection (finds smaller faces,
            costs ~4x each time).
        min_score: SVM margin below which a box is dropped (dlib's own default is 0, which lets
            through a false face at 0.12 in the astronaut photo and at 0.43 in a painted copy).
    """

    def __init__(self, *, upsample: int = 1, min_score: float = 0.5) -> None:
        if upsample < 0:
            raise ValueError(f"upsample must not be negative, got {upsample}")
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.min_score = min_score

    @property
    def version(self) -> str:
        return f"dlib-hog:{dlib.__version__}@up{self.upsample}"

    def detect(self, image: Image.Image) -> list[FaceBox]:
        rgb = image.convert("RGB")
        pixels = np.ascontiguousarray(np.asarray(rgb))
        rects, scores, _ = self._detector.run(pixels, self.upsample, self.min_score)
        boxes = [
            # dlib's right and bottom are inclusive
            FaceBox(
                max(0, r.left()), max(0, r.top()), min(rgb.width, r.right() + 1), min(rgb.height, r.bottom() + 1), s
            )
            for r, s in zip(rects, scores, strict=True)
        ]
        return sorted(boxes, key=lambda b: -b.score)
