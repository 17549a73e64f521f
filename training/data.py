"""Streaming training batches from the Petastorm face dataset, one disjoint shard per worker.

Memory stays flat whatever the dataset size: rows are decoded by a bounded pool of reader threads into a
bounded queue, shuffled in a bounded buffer, and never collected. Streams are infinite (num_epochs=None),
so every rank draws exactly one batch per iteration and no rank runs dry before the others.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np
import torch
from petastorm import make_reader
from petastorm.pytorch import DataLoader

from etl.verify import read_metadata
from schemas.faces import SPLITS, DatasetMetadata, FaceFields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Where the faces come from and how they are batched."""

    dataset_url: str = ""
    batch_size: int = 16
    split: str = SPLITS[0]
    reader_workers: int = 2
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
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


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
        return self.rng.random(len(label_index)) < self.accept[label_index]


def open_stream(config: DataConfig, image_size: int, rank: int, world_size: int,
                metadata: DatasetMetadata | None = None) -> Iterator[Batch]:
    """An endless iterator of batches from this rank's shard of one split."""
    metadata = metadata or read_metadata(config.dataset_url)
    reader = make_reader(
        config.dataset_url,
        schema_fields=[FaceFields.IMAGE, FaceFields.LABELS, FaceFields.LABEL_INDEX],
        filters=[(FaceFields.SPLIT, "=", config.split)],
        cur_shard=rank, shard_count=world_size, shard_seed=config.seed,
        num_epochs=None, shuffle_row_groups=True, seed=config.seed + rank,
        workers_count=config.reader_workers, results_queue_size=8,
    )
    balance = _BalancedRows(train_label_counts(metadata, config.split), config.seed + rank) \
        if config.balance_classes and not metadata.multi_label else None
    return _batches(reader, config, image_size, balance)


def _batches(reader, config: DataConfig, image_size: int, balance: _BalancedRows | None) -> Iterator[Batch]:
    """Regroup the loader's rows into full batches (after optional class thinning)."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    pending = 0
    with DataLoader(reader, batch_size=config.batch_size,
                    shuffling_queue_capacity=config.shuffle_buffer) as loader:
        for rows in loader:
            im, lab = rows[FaceFields.IMAGE].numpy(), rows[FaceFields.LABELS].numpy()
            if balance is not None:
                keep = balance.keep(rows[FaceFields.LABEL_INDEX].numpy())
                im, lab = im[keep], lab[keep]
            images.append(im)
            labels.append(lab)
            pending += len(im)
            while pending >= config.batch_size:
                im_all, lab_all = np.concatenate(images), np.concatenate(labels)
                yield Batch(to_model_input(im_all[:config.batch_size], image_size),
                            torch.from_numpy(np.ascontiguousarray(lab_all[:config.batch_size])))
                images, labels = [im_all[config.batch_size:]], [lab_all[config.batch_size:]]
                pending -= config.batch_size


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
