"""dlib face detection, 5/68-point landmarks and 128-d embeddings, plus the face-selection policy.

Conventions used by etl/face.py, etl/align.py and etl/augment.py:
- Images are uint8 RGB ``(H, W, 3)``; ``(H, W)`` greyscale is accepted and expanded to three channels.
- Point coordinates are ``(x, y)`` in pixels with pixel *centres* at integer coordinates (the convention
  of dlib's landmarks and of ``cv2.warpAffine``): the image spans ``[-0.5, W - 0.5]``.
- A :class:`Box` is half-open: ``right``/``bottom`` are exclusive, so ``width == right - left``.

dlib models are loaded lazily, once per process, so this module can be pickled to Spark executors:
nothing unpicklable lives at module level, only the cached loader function.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from enum import Enum

import cv2
import dlib
import numpy as np

logger = logging.getLogger(__name__)

# Registry of the dlib model files shipped by face-recognition-models.
MODEL_FILES = {
    "shape_5": "shape_predictor_5_face_landmarks.dat",
    "shape_68": "shape_predictor_68_face_landmarks.dat",
    "embedding": "dlib_face_recognition_resnet_model_v1.dat",
}

# Embedding distance below which dlib's resnet considers two faces the same person.
SAME_PERSON_THRESHOLD = 0.6

REJECT_REASONS = ("no_face", "multiple_faces", "too_small")


class FaceRejected(ValueError):
    """No usable face under the given policy; ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, message: str):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; known: {REJECT_REASONS}")
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.reason, self.message))


@dataclass(frozen=True)
class Box:
    """Face box in pixel coordinates, half-open; ``source`` is "hog" or "whole_image"."""

    left: int
    top: int
    right: int
    bottom: int
    source: str = "hog"

    def __post_init__(self):
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError(f"empty box {self}")

    @property
    def width(self) -> int:
        """Box width in pixels."""
        return self.right - self.left

    @property
    def height(self) -> int:
        """Box height in pixels."""
        return self.bottom - self.top

    @property
    def area(self) -> int:
        """Box area in pixels."""
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in the pixel-centre convention."""
        return ((self.left + self.right - 1) / 2.0, (self.top + self.bottom - 1) / 2.0)

    def scaled(self, factor: float, offset: tuple[float, float] = (0.0, 0.0)) -> Box:
        """The box mapped by ``p -> p * factor + offset`` (edge coordinates, rounded)."""
        ox, oy = offset
        return Box(
            int(round(self.left * factor + ox)),
            int(round(self.top * factor + oy)),
            max(int(round(self.right * factor + ox)), int(round(self.left * factor + ox)) + 1),
            max(int(round(self.bottom * factor + oy)), int(round(self.top * factor + oy)) + 1),
            self.source,
        )

    def to_dlib(self) -> dlib.rectangle:
        """dlib's inclusive rectangle for this box."""
        return dlib.rectangle(self.left, self.top, self.right - 1, self.bottom - 1)

    @classmethod
    def from_dlib(cls, rect: dlib.rectangle, source: str = "hog") -> Box:
        """Box from dlib's inclusive rectangle."""
        return cls(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, source)


class OnMultiple(str, Enum):
    """What to do when several faces are detected."""

    LARGEST = "largest"
    REJECT = "reject"


class OnNone(str, Enum):
    """What to do when no face is detected."""

    REJECT = "reject"
    WHOLE_IMAGE = "whole_image"


@dataclass(frozen=True)
class FacePolicy:
    """How find_face picks a face: multiple/no-face handling, size limit and detection settings."""

    on_multiple: OnMultiple = OnMultiple.LARGEST
    on_none: OnNone = OnNone.REJECT
    min_face_size: int = 32  # shorter box side, original pixels; smaller detections are ignored
    min_detect_side: int = 160  # images with a shorter side are upscaled to it before detection
    upsample: int = 0  # dlib pyramid upsampling; 1 costs ~4x and found no more faces on our data
    pad_retry: float = 0.2  # if nothing found, retry once on the image padded by this * long side

    def __post_init__(self):
        object.__setattr__(self, "on_multiple", _enum(OnMultiple, self.on_multiple))
        object.__setattr__(self, "on_none", _enum(OnNone, self.on_none))


def _enum(cls: type[Enum], value):
    """Coerce a string to an Enum member, with a readable error."""
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a {cls.__name__}; known: {[m.value for m in cls]}") from None


DEFAULT_POLICY = FacePolicy()


# Models: loaded once per process


def model_path(name: str) -> str:
    """Absolute path of a dlib model file from face-recognition-models (without importing it)."""
    if name not in MODEL_FILES:
        raise KeyError(f"unknown dlib model {name!r}; known: {sorted(MODEL_FILES)}")
    # importing face_recognition_models runs pkg_resources; only locate its package directory
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package face-recognition-models is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", MODEL_FILES[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return path


@functools.lru_cache(maxsize=None)
def _model(name: str):
    """The dlib model called ``name`` (or the HOG detector for "hog"), loaded on first use."""
    if name == "hog":
        return dlib.get_frontal_face_detector()
    path = model_path(name)
    logger.debug("loading dlib model %s", path)
    if name == "embedding":
        return dlib.face_recognition_model_v1(path)
    return dlib.shape_predictor(path)


# Image helpers


def as_rgb(image: np.ndarray) -> np.ndarray:
    """The image as a C-contiguous uint8 (H, W, 3) array; greyscale is expanded."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def upscale_small(rgb: np.ndarray, min_side: int) -> tuple[np.ndarray, float]:
    """Upscale (cubic) so the shorter side is at least ``min_side``; returns (image, factor >= 1)."""
    short = min(rgb.shape[:2])
    if short >= min_side:
        return rgb, 1.0
    factor = min_side / short
    width = int(round(rgb.shape[1] * factor))
    height = int(round(rgb.shape[0] * factor))
    # the exact per-axis factor may differ by rounding; use the mean for the mapping back
    factor = 0.5 * (width / rgb.shape[1] + height / rgb.shape[0])
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC), factor


def _points(shape: dlib.full_object_detection) -> np.ndarray:
    """dlib shape parts as a float32 (n, 2) array."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


# Detection, landmarks, embeddings


def detect_faces(rgb: np.ndarray, upsample: int = 1) -> list[Box]:
    """HOG frontal-face detections, largest first."""
    rects = _model("hog")(as_rgb(rgb), upsample)
    return sorted((Box.from_dlib(r) for r in rects), key=lambda b: b.area, reverse=True)


def landmarks_5(rgb: np.ndarray, box: Box) -> np.ndarray:
    """dlib 5-point landmarks (float32 (5, 2)): 0-1 image-right eye outer/inner corner,
    2-3 image-left eye outer/inner corner, 4 bottom of the nose."""
    return _points(_model("shape_5")(as_rgb(rgb), box.to_dlib()))


def landmarks_68(rgb: np.ndarray, box: Box) -> np.ndarray:
    """iBUG 68-point landmarks (float32 (68, 2)); 36-41 is the eye on the image's left."""
    return _points(_model("shape_68")(as_rgb(rgb), box.to_dlib()))


def face_embedding(rgb: np.ndarray, face: Box | np.ndarray, num_jitters: int = 0) -> np.ndarray:
    """128-d dlib resnet embedding of the face given by a Box or 5/68 landmarks (float32 (128,))."""
    rgb = as_rgb(rgb)
    points = landmarks_5(rgb, face) if isinstance(face, Box) else np.asarray(face, dtype=np.float64)
    if points.shape not in ((5, 2), (68, 2)):
        raise ValueError(f"expected a Box or (5, 2)/(68, 2) landmarks, got shape {points.shape}")
    parts = [dlib.point(int(round(x)), int(round(y))) for x, y in points]
    lo, hi = points.min(axis=0), points.max(axis=0)
    rect = dlib.rectangle(int(lo[0]), int(lo[1]), int(np.ceil(hi[0])), int(np.ceil(hi[1])))
    shape = dlib.full_object_detection(rect, parts)
    return np.asarray(_model("embedding").compute_face_descriptor(rgb, shape, num_jitters), dtype=np.float32)


def embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings (< SAME_PERSON_THRESHOLD: same person)."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


# Face selection


def _detect_with_retry(rgb: np.ndarray, policy: FacePolicy) -> list[Box]:
    """Detections in original coordinates: on the upscaled image, then once more on it padded."""
    work, factor = upscale_small(rgb, policy.min_detect_side)
    boxes = detect_faces(work, policy.upsample)
    if not boxes and policy.pad_retry > 0:
        # tightly cropped faces lack the context HOG needs at the border: pad with the mean colour
        pad = int(round(policy.pad_retry * max(work.shape[:2])))
        fill = tuple(float(v) for v in work.reshape(-1, 3).mean(axis=0))
        padded = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill)
        boxes = [b.scaled(1.0, (-pad, -pad)) for b in detect_faces(padded, policy.upsample)]
    return [b.scaled(1.0 / factor) for b in boxes] if factor != 1.0 else boxes


def find_face(rgb: np.ndarray, policy: FacePolicy = DEFAULT_POLICY) -> Box:
    """The one face to use under ``policy``; raises FaceRejected (no_face/multiple_faces/too_small)."""
    rgb = as_rgb(rgb)
    height, width = rgb.shape[:2]
    found = _detect_with_retry(rgb, policy)
    boxes = [b for b in found if min(b.width, b.height) >= policy.min_face_size]

    # Faces found but all too small: never fall back to the whole image (it is not a face crop)
    if found and not boxes:
        sizes = ", ".join(f"{b.width}x{b.height}" for b in found)
        raise FaceRejected(
            "too_small", f"detected face(s) {sizes} below min_face_size={policy.min_face_size}"
        )

    # No face: reject, or treat the whole (tightly cropped) image as the face
    if not boxes:
        if policy.on_none is not OnNone.WHOLE_IMAGE:
            raise FaceRejected("no_face", f"no face detected in {width}x{height} image")
        if min(width, height) < policy.min_face_size:
            raise FaceRejected(
                "too_small", f"image {width}x{height} is below min_face_size={policy.min_face_size}"
            )
        return Box(0, 0, width, height, source="whole_image")

    # Several faces: take the largest, or reject
    if len(boxes) > 1 and policy.on_multiple is OnMultiple.REJECT:
        raise FaceRejected("multiple_faces", f"{len(boxes)} faces detected in {width}x{height} image")
    return boxes[0]
