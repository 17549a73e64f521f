"""Dataset metadata I/O and the read-back check run after every ingest."""
from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow.parquet as pq
from petastorm import make_reader
from petastorm.fs_utils import FilesystemResolver
from petastorm.utils import add_to_dataset_metadata

from schemas.faces import METADATA_KEY, NUM_LANDMARKS, SPLITS, DatasetMetadata, FaceFields

log = logging.getLogger(__name__)

_PSEUDONYM = {FaceFields.SUBJECT: re.compile(r"^p[0-9a-f]{16}$"), FaceFields.SOURCE_ID: re.compile(r"^f[0-9a-f]{16}$")}
_HASH = re.compile(r"^[0-9a-f]{64}$")


class DatasetCheckFailed(RuntimeError):
    """A written dataset does not read back as written."""


def _dataset(url: str) -> pq.ParquetDataset:
    """The legacy pyarrow dataset petastorm works with."""
    resolver = FilesystemResolver(url)
    return pq.ParquetDataset(resolver.get_dataset_path(), filesystem=resolver.filesystem(),
                             validate_schema=False, use_legacy_dataset=True)


def write_metadata(url: str, metadata: DatasetMetadata) -> None:
    """Store the label names, sizes and schema version in the dataset's Parquet metadata."""
    add_to_dataset_metadata(_dataset(url), METADATA_KEY, metadata.to_json())


def read_metadata(url: str) -> DatasetMetadata:
    """The DatasetMetadata of a face dataset; a clear error when the URL is not one."""
    dataset = _dataset(url)
    common = dataset.common_metadata
    values = (common.schema.to_arrow_schema().metadata or {}) if common is not None else {}
    if METADATA_KEY not in values:
        raise ValueError(f"{url} is not a palsygan face dataset (no {METADATA_KEY.decode()} metadata); "
                         f"write it with jobs/ingest.py")
    return DatasetMetadata.from_json(values[METADATA_KEY])


def row_group_count(url: str, split: str) -> int:
    """Number of Parquet row groups holding one split."""
    dataset = _dataset(url)
    return sum(1 for piece in dataset.pieces if f"{FaceFields.SPLIT}={split}" in piece.path
               for _ in range(piece.get_metadata().num_row_groups))


def _check_row(row, metadata: DatasetMetadata) -> None:
    """Raise DatasetCheckFailed naming the first field of ``row`` that is not as written."""
    size, n = metadata.image_size, len(metadata.labels)
    where = f"row {getattr(row, FaceFields.SOURCE_ID)!r}"
    image, labels = getattr(row, FaceFields.IMAGE), getattr(row, FaceFields.LABELS)
    landmarks = getattr(row, FaceFields.LANDMARKS)
    checks = [
        (image.dtype == np.uint8 and image.shape == (size, size, 3), f"image {image.dtype} {image.shape}"),
        (image.std() > 0, "image is blank"),
        (labels.shape == (n,) and set(np.unique(labels)) <= {0.0, 1.0} and labels.sum() >= 1, f"labels {labels}"),
        (metadata.multi_label or (labels.sum() == 1 and labels.argmax() == getattr(row, FaceFields.LABEL_INDEX)),
         "label_index does not match the one-hot label vector"),
        (landmarks.shape == (NUM_LANDMARKS, 2) and np.isfinite(landmarks).all(), f"landmarks {landmarks.shape}"),
        (getattr(row, FaceFields.SPLIT) in SPLITS, f"split {getattr(row, FaceFields.SPLIT)!r}"),
        (bool(_HASH.match(getattr(row, FaceFields.CONTENT_HASH))), "content_hash is not a sha256 hex digest"),
        (isinstance(getattr(row, FaceFields.AUGMENTED), (bool, np.bool_)), "augmented is not a boolean"),
        (not getattr(row, FaceFields.AUGMENTED) or getattr(row, FaceFields.SPLIT) == SPLITS[0],
         "augmented copy outside the training split"),
    ] + [(bool(pattern.match(getattr(row, name))), f"{name} is not a pseudonym") for name, pattern in _PSEUDONYM.items()]
    for ok, message in checks:
        if not ok:
            raise DatasetCheckFailed(f"{where}: {message}")


def verify_dataset(url: str, metadata: DatasetMetadata, expected_rows: int, sample_rows: int,
                   min_row_groups: int) -> dict:
    """Read back the row count and a sample of every split; check every field. Returns what was checked."""
    stored = read_metadata(url)
    if stored != metadata:
        raise DatasetCheckFailed(f"metadata read back differs: {stored} != {metadata}")
    rows = sum(piece.get_metadata().num_rows for piece in _dataset(url).pieces)
    if rows != expected_rows:
        raise DatasetCheckFailed(f"{rows} rows read back, {expected_rows} written")
    checked = {}
    for split in SPLITS:
        if not metadata.counts["originals"].get(split):
            continue
        with make_reader(url, filters=[(FaceFields.SPLIT, "=", split)], num_epochs=1, workers_count=1,
                         shuffle_row_groups=False) as reader:
            checked[split] = 0
            for row in reader:
                _check_row(row, metadata)
                checked[split] += 1
                if checked[split] >= sample_rows:
                    break
    train_groups = row_group_count(url, SPLITS[0])
    if train_groups < min(min_row_groups, metadata.counts["originals"].get(SPLITS[0], 0)):
        raise DatasetCheckFailed(f"only {train_groups} row groups in the training split; "
                                 f"readers beyond that would get no data")
    log.info("read back %s rows, %d training row groups: every field checked", checked, train_groups)
    return {"rows": rows, "sampled": checked, "train_row_groups": train_groups}
