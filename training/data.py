"""Streaming training batches from the Petastorm face dataset, one disjoint shard per worker.

Memory stays flat whatever the dataset size: row groups are decoded by a bounded pool of reader threads
into a bounded queue, their rows shuffled in a bounded buffer, and nothing is collected. Streams are
infinite (num_epochs=None), so every rank draws exactly one batch per iteration and none runs dry first.
"""
from __future__ import annotations

import io
import itertools
import logging
import warnings
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np
import torch
from petastorm import make_batch_reader, make_reader
from petastorm.transform import TransformSpec
from petastorm.workers_pool import thread_pool

from etl.decode import decode_png
from etl.verify import read_metadata
from schemas.faces import SPLITS, DatasetMetadata, FaceFields

log = logging.getLogger(__name__)

# petastorm's reader threads wait on their queues in 1 ms time-outs (thread_pool.IO_TIMEOUT_INTERVAL_S):
# about 4% of a core per thread, and GIL hand-overs, taken from the training step. The time-out only
# bounds how fast an idle thread notices the reader stopping, so 50 ms is plenty.
READER_POLL_S = 0.05


@dataclass(frozen=True)
class DataConfig:
    """Where the faces come from and how they are batched."""

    dataset_url: str = ""
    batch_size: int = 16
    split: str = SPLITS[0]
    reader_workers: int = 2
    reader_queue: int = 4  # decoded row groups waiting per reader
    shuffle_buffer: int = 256
    balance_classes: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Batch:
    """Images in [-1, 1] (N, 3, S, S) float32 and their label vectors (N, c_dim) float32."""

    x: torch.Tensor
    c: torch.Tensor


def to_model_input(images: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 NHWC faces -> float32 NCHW in [-1, 1], downscaled (area) when the model is smaller."""
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.shape[1] != image_size:
        images = np.stack([cv2.resize(im, (image_size, image_size), interpolation=cv2.INTER_AREA)
                           for im in images])
    # Contiguous NCHW, not a permuted NHWC view: such an input runs every convolution of G and D in the
    # channels-last layout, 5-8% slower per training iteration on CPU. NumPy, single-threaded, rather than
    # torch ops: these run beside the reader's threads, and torch's intra-op threads would wait on them.
    x = np.empty((len(images), images.shape[3], image_size, image_size), np.float32)
    np.copyto(x, images.transpose(0, 3, 1, 2))
    np.divide(x, 127.5, out=x)
    np.subtract(x, 1.0, out=x)
    return torch.from_numpy(x)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC (the inverse of to_model_input's normalisation)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def train_label_counts(metadata: DatasetMetadata, split: str) -> np.ndarray:
    """Rows per label in one split, from the dataset metadata."""
    per = metadata.counts.get("rows_per_split_label", {}).get(split, {})
    return np.array([per.get(label, 0) for label in metadata.labels], dtype=np.float64)


class _BalancedRows:
    """Thins a row stream so each label is accepted with probability min_count / count (class balance)."""

    def __init__(self, counts: np.ndarray, seed: int):
        present = counts[counts > 0]
        if present.size == 0:
            raise ValueError("class balancing needs per-label row counts in the dataset metadata")
        self.accept = np.where(counts > 0, present.min() / np.maximum(counts, 1), 0.0)
        self.rng = np.random.default_rng(seed)

    def keep(self, label_index: np.ndarray) -> np.ndarray:
        """A mask of the rows (given their label indices) to keep."""
        return self.rng.random(len(label_index)) < self.accept[label_index]


class _ShuffleBuffer:
    """Bounded shuffle: holds ``capacity`` rows; once full, each row added releases a uniformly chosen one."""

    # petastorm.pytorch.DataLoader's own shuffling buffer preallocates a list of capacity + 10^8 slots
    # (0.8 GB of pointers whatever the capacity), so the stream shuffles here instead.

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity = capacity
        self.rng = rng
        self.rows: list = []

    def push(self, row):
        """Add a row; return the row released, or None while the buffer fills."""
        if self.capacity <= 1:
            return row
        if len(self.rows) < self.capacity:
            self.rows.append(row)
            return None
        i = int(self.rng.integers(self.capacity))
        released, self.rows[i] = self.rows[i], row
        return released


def _decoding(image_size: int, c_dim: int, fields: tuple[str, ...]) -> TransformSpec:
    """Decode a row group in the reader thread: PNG bytes -> uint8 HxWx3, npy label bytes -> float32."""
    def decode(frame):
        frame[FaceFields.IMAGE] = [decode_png(data) for data in frame[FaceFields.IMAGE]]
        if FaceFields.LABELS in frame:
            frame[FaceFields.LABELS] = [np.load(io.BytesIO(data)).astype(np.float32) for data in frame[FaceFields.LABELS]]
        return frame

    return TransformSpec(decode, selected_fields=list(fields), edit_fields=[
        (FaceFields.IMAGE, np.uint8, (image_size, image_size, 3), False),
        (FaceFields.LABELS, np.float32, (c_dim,), False)])


def open_rows(config: DataConfig, rank: int, world_size: int, metadata: DatasetMetadata | None = None,
              fields: tuple[str, ...] = (FaceFields.IMAGE, FaceFields.LABELS)) -> Iterator[dict]:
    """An endless, shuffled (and optionally class-balanced) stream of this rank's rows of one split, as dicts.

    A generator: the reader and its threads start at the first row and stop when it is closed.
    """
    metadata = metadata or read_metadata(config.dataset_url)
    balance = _BalancedRows(train_label_counts(metadata, config.split), config.seed + rank) \
        if config.balance_classes and not metadata.multi_label else None
    read = tuple(dict.fromkeys((*fields, FaceFields.IMAGE, FaceFields.LABELS, FaceFields.LABEL_INDEX)))
    thread_pool.IO_TIMEOUT_INTERVAL_S = max(thread_pool.IO_TIMEOUT_INTERVAL_S, READER_POLL_S)
    # A batch reader hands over whole row groups as column arrays, decoded by its threads: much less
    # per-row Python than make_reader's namedtuple per row (1.5x the images/s here).
    with warnings.catch_warnings():
        # petastorm suggests make_reader for datasets with codecs; the transform above does the decoding.
        warnings.filterwarnings("ignore", message="Please use make_reader", category=UserWarning)
        reader = make_batch_reader(
            config.dataset_url,
            schema_fields=list(read),
            filters=[(FaceFields.SPLIT, "=", config.split)],
            cur_shard=rank, shard_count=world_size, shard_seed=config.seed,
            num_epochs=None, shuffle_row_groups=True, shuffle_rows=True, seed=config.seed + rank,
            workers_count=config.reader_workers, results_queue_size=config.reader_queue,
            transform_spec=_decoding(metadata.image_size, len(metadata.labels), read),
        )
    buffer = _ShuffleBuffer(config.shuffle_buffer, np.random.default_rng(config.seed + rank))
    with reader:
        for group in reader:
            keep = balance.keep(group.label_index) if balance is not None else np.ones(len(group.image), bool)
            columns = {name: getattr(group, name) for name in fields}
            for i in np.flatnonzero(keep):
                # Copies: a row must not keep its whole row group alive inside the buffer.
                released = buffer.push({name: _own(column[i]) for name, column in columns.items()})
                if released is not None:
                    yield released


def _own(value):
    """An array value as its own copy (not a view into its row group); scalars as they are."""
    return value.copy() if isinstance(value, np.ndarray) else value


def open_stream(config: DataConfig, image_size: int, rank: int, world_size: int,
                metadata: DatasetMetadata | None = None) -> Iterator[Batch]:
    """An endless iterator of batches from this rank's shard of one split."""
    rows = open_rows(config, rank, world_size, metadata)
    try:
        while True:
            chunk = list(itertools.islice(rows, config.batch_size))
            yield Batch(to_model_input(np.stack([row[FaceFields.IMAGE] for row in chunk]), image_size),
                        torch.from_numpy(np.stack([row[FaceFields.LABELS] for row in chunk])))
    finally:
        rows.close()  # stops and joins the reader's threads


def fixed_faces(dataset_url: str, image_size: int, count: int, split: str = SPLITS[1]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` non-augmented faces of a split in storage order (for sample grids)."""
    images, labels = [], []
    with make_reader(dataset_url, schema_fields=[FaceFields.IMAGE, FaceFields.LABELS, FaceFields.SOURCE_ID,
                                                 FaceFields.AUGMENTED],
                     filters=[(FaceFields.SPLIT, "=", split)], num_epochs=1, workers_count=1,
                     shuffle_row_groups=False) as reader:
        rows = list(itertools.islice((r for r in reader if not r.augmented), count))
    if not rows:
        raise ValueError(f"no faces in the {split!r} split of {dataset_url}")
    for row in rows:
        images.append(row.image)
        labels.append(row.labels)
    return to_model_input(np.stack(images), image_size), torch.from_numpy(np.stack(labels))
