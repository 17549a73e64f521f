"""Whole splits of a face dataset in memory, for evaluation and the expression classifier (small splits only).

Training streams its split (training.data); evaluation needs every face of the test split at once and
in a fixed order, which this reads: rows sorted by source id, so two evaluations see the same faces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from petastorm import make_reader

from schemas.faces import SPLITS, FaceFields

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FaceSplit:
    """Aligned faces uint8 (N, D, D, 3), label vectors (N, c_dim), label indices (N,), landmarks (N, 68, 2)."""

    images: np.ndarray
    labels: np.ndarray
    label_index: np.ndarray
    landmarks: np.ndarray
    source_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def read_split(dataset_url: str, split: str, include_augmented: bool = False, limit: int | None = None) -> FaceSplit:
    """Every face of one split (originals only unless `include_augmented`) by source id; `limit` keeps the first."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; known: {list(SPLITS)}")
    fields = [FaceFields.IMAGE, FaceFields.LABELS, FaceFields.LABEL_INDEX, FaceFields.LANDMARKS,
              FaceFields.SOURCE_ID, FaceFields.AUGMENTED]
    with make_reader(dataset_url, schema_fields=fields, filters=[(FaceFields.SPLIT, "=", split)], num_epochs=1,
                     workers_count=1, shuffle_row_groups=False) as reader:
        rows = [r for r in reader if include_augmented or not getattr(r, FaceFields.AUGMENTED)]
    if not rows:
        raise ValueError(f"no faces in the {split!r} split of {dataset_url}")
    # Augmented copies share their source id: keep them after their original, in read order.
    order = sorted(range(len(rows)), key=lambda i: (getattr(rows[i], FaceFields.SOURCE_ID),
                                                    bool(getattr(rows[i], FaceFields.AUGMENTED)), i))
    rows = [rows[i] for i in order][:limit]
    log.info("read %d faces of the %s split of %s", len(rows), split, dataset_url)
    return FaceSplit(
        images=np.stack([getattr(r, FaceFields.IMAGE) for r in rows]),
        labels=np.stack([getattr(r, FaceFields.LABELS) for r in rows]).astype(np.float32),
        label_index=np.array([getattr(r, FaceFields.LABEL_INDEX) for r in rows], dtype=np.int64),
        landmarks=np.stack([getattr(r, FaceFields.LANDMARKS) for r in rows]).astype(np.float32),
        source_ids=tuple(str(getattr(r, FaceFields.SOURCE_ID)) for r in rows),
    )
