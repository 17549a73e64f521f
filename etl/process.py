"""Per-image work of the ETL (read, decode, hash, detect, align): the same functions on Spark and in a loop."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from etl.align import align_face
from etl.decode import DEFAULT_MAX_PIXELS, ImageRejected, decode_image, encode_png, pixel_hash
from etl.face import DEFAULT_POLICY, FacePolicy, FaceRejected
from etl.pseudonym import scrub
from etl.sources import SourceError, SourceRecord, read_record_bytes

# Per-image stages, in order; their CPU seconds are summed into the ingest report.
STAGES = ("read", "decode", "face", "encode")


@dataclass(frozen=True)
class ProcessConfig:
    """What the per-image work needs: crop size, face policy and the decompression-bomb limit."""

    size: int = 128
    policy: FacePolicy = DEFAULT_POLICY
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ProcessedFace:
    """An aligned face ready to write: PNG of the crop, its 68 landmarks, the source's pixel hash."""

    image_png: bytes
    landmarks: np.ndarray
    content_hash: str
    seconds: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """Why one input did not become a face: the stage, a stable reason code and a message."""

    stage: str
    reason: str
    detail: str
    seconds: dict = field(default_factory=dict)


class _Clock:
    """Accumulates wall seconds per stage for one image."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def align_image(rgb: np.ndarray, config: ProcessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Detect and align one decoded photo: (aligned uint8 crop, 68 landmarks); raises FaceRejected."""
    face = align_face(rgb, size=config.size, policy=config.policy)
    return face.image, face.landmarks.astype(np.float32)


def process_record(root: str, record: SourceRecord, config: ProcessConfig) -> ProcessedFace | Rejection:
    """Read, decode, hash, detect and align one source record; never raises for bad input."""
    clock = _Clock()
    try:
        data = read_record_bytes(root, record)
        clock.lap("read")
        rgb = decode_image(data, max_pixels=config.max_pixels)
        content_hash = pixel_hash(rgb)
        clock.lap("decode")
        image, landmarks = align_image(rgb, config)
        clock.lap("face")
        png = encode_png(image)
        clock.lap("encode")
    except SourceError as exc:
        return Rejection("read", exc.reason, str(exc), clock.seconds)
    except ImageRejected as exc:
        return Rejection("decode", exc.reason, exc.message, clock.seconds)
    except FaceRejected as exc:
        return Rejection("face", exc.reason, exc.message, clock.seconds)
    return ProcessedFace(png, landmarks, content_hash, clock.seconds)


def process_partition(items, root: str, config: ProcessConfig, seconds):
    """process_record over (source_id, subject pseudonym, SourceRecord) items: processed-row tuples; stage
    seconds go to accumulators."""
    # Spark runs one task per core: OpenCV's own thread pool would only oversubscribe the cores.
    cv2.setNumThreads(1)
    for source_id, subject, record in items:
        result = process_record(root, record, config)
        for stage, value in result.seconds.items():
            seconds[stage].add(value)
        head = (source_id, record.row, subject, list(record.labels))
        if isinstance(result, ProcessedFace):
            yield (*head, True, None, None, None,
                   result.content_hash, result.image_png, result.landmarks.astype(np.float32).tobytes())
        else:
            yield (*head, False, result.stage, result.reason, scrub(result.detail, record.path, source_id),
                   None, None, None)
