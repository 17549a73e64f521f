"""The judge of translated expressions: a small CNN trained on the real training split (StarGAN's protocol).

The StarGAN paper trains an expression classifier on real RaFD faces and reports how often it assigns
translated faces their target expression (classification error 2.12% for StarGAN vs 4.10% DIAT, 5.99%
CycleGAN, 8.07% IcGAN); its accuracy on real test faces says how far to trust it. Here the classifier
is deliberately small (three conv blocks, global pooling: seconds to a minute on a CPU), trained on the
aligned training faces (ETL augmented copies included) at the generator's image size (at most 64 px), with
class-weighted cross-entropy against label imbalance. It is cached as a weights-only file keyed by the
dataset, image size and config, so every model evaluated on a dataset is judged by the same classifier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from etl.verify import read_metadata
from schemas.faces import SPLITS
from training.data import to_model_input
from training.splits import FaceSplit, read_split

logger = logging.getLogger(__name__)

FILE_FORMAT = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture width and training schedule of the expression classifier."""

    width: int = 16
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.3
    seed: int = 0
    # Faces are judged at min(generator size, this): expressions read well at 64 px (FER2013 is 48 px)
    # and the cost stays bounded for 128 px and larger generators.
    max_image_size: int = 64

    def __post_init__(self) -> None:
        for name in ("width", "epochs", "batch_size", "max_image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ExpressionClassifier(nn.Module):
    """Three conv-BN-ReLU-pool blocks, global average pooling, dropout, a linear layer: logits (N, c_dim)."""

    def __init__(self, c_dim: int, width: int = 16, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, c_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images in [-1, 1]."""
        return self.head(self.features(x))


@dataclass(frozen=True, eq=False)
class TrainedClassifier:
    """A classifier in eval mode with its labels, image size and scores on real faces."""

    model: ExpressionClassifier
    labels: tuple[str, ...]
    image_size: int
    metrics: dict  # real_accuracy, real_accuracy_balanced, real_recall/<label> (test split), train_accuracy
    path: Path | None = None

    def predict(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted label index of each uint8 (N, H, W, 3) aligned face (downscaled to the classifier's size)."""
        x = to_model_input(faces, self.image_size)
        with torch.no_grad():
            return torch.cat([self.model(x[i:i + batch_size].float()).argmax(1)
                              for i in range(0, len(x), batch_size)]).numpy()


def accuracy_scores(true: np.ndarray, pred: np.ndarray, c_dim: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and recall per class index."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape or true.size == 0:
        raise ValueError(f"need equal, non-empty label arrays, got {true.shape} and {pred.shape}")
    recalls = {int(k): float((pred[true == k] == k).mean()) for k in range(c_dim) if (true == k).any()}
    return {"accuracy": float((true == pred).mean()), "balanced_accuracy": float(np.mean(list(recalls.values()))),
            **{f"recall/{k}": v for k, v in recalls.items()}}


def train_classifier(train: FaceSplit, c_dim: int, image_size: int, config: ClassifierConfig) -> ExpressionClassifier:
    """Fit a classifier on aligned faces (class-weighted cross-entropy, random flips); returned in eval mode."""
    x_all = to_model_input(train.images, image_size)
    y_all = torch.from_numpy(train.label_index)
    counts = np.bincount(train.label_index, minlength=c_dim).astype(np.float64)
    weights = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0),
                           dtype=torch.float32)
    gen = torch.Generator().manual_seed(config.seed)
    # Initialisation and dropout draw from torch's global RNG: seed a fork of it, leave the caller's alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ExpressionClassifier(c_dim, config.width, config.dropout)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
        model.train()
        for epoch in range(config.epochs):
            order = torch.randperm(len(x_all), generator=gen)
            total = 0.0
            for i in range(0, len(order), config.batch_size):
                idx = order[i:i + config.batch_size]
                x, y = x_all[idx], y_all[idx]
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                loss = F.cross_entropy(model(x), y, weight=weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == config.epochs:
                logger.info("classifier epoch %d/%d: loss %.4f", epoch + 1, config.epochs, total / len(order))
    return model.eval().requires_grad_(False)


def cache_key(dataset_url: str, metadata_json: str, image_size: int, config: ClassifierConfig) -> str:
    """A short digest naming one classifier: dataset (URL + metadata), image size and config."""
    text = json.dumps([dataset_url, metadata_json, image_size, dataclasses.asdict(config)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_classifier(path: Path, classifier: TrainedClassifier, config: ClassifierConfig, extra: dict) -> Path:
    """Write the classifier atomically as a weights_only-loadable file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FILE_FORMAT, "state_dict": classifier.model.state_dict(), "labels": list(classifier.labels),
             "image_size": classifier.image_size, "config": dataclasses.asdict(config),
             "metrics": dict(classifier.metrics), **extra}
    fd, tmp = tempfile.mkstemp(prefix=".classifier-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_classifier(path: Path) -> TrainedClassifier:
    """Load a classifier file written by save_classifier (weights only: no code runs)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FILE_FORMAT:
        raise ValueError(f"{path} is not an expression classifier file (format {FILE_FORMAT})")
    config = ClassifierConfig(**state["config"])
    model = ExpressionClassifier(len(state["labels"]), config.width, config.dropout)
    model.load_state_dict(state["state_dict"])
    return TrainedClassifier(model=model.eval().requires_grad_(False), labels=tuple(state["labels"]),
                             image_size=int(state["image_size"]), metrics=dict(state["metrics"]), path=Path(path))


def classifier_for(dataset_url: str, image_size: int, cache_dir: Path, config: ClassifierConfig,
                   test_split: str = SPLITS[2]) -> TrainedClassifier:
    """The cached classifier for `image_size` px faces of this dataset; trained and scored on real faces if absent."""
    image_size = min(image_size, config.max_image_size)
    metadata = read_metadata(dataset_url)
    if metadata.multi_label:
        raise ValueError("the expression classifier needs single-label data; this dataset is multi-label")
    key = cache_key(dataset_url, metadata.to_json(), image_size, config)
    path = Path(cache_dir) / f"expression-classifier-{key}.pt"
    if path.is_file():
        classifier = load_classifier(path)
        if classifier.labels == tuple(metadata.labels) and classifier.image_size == image_size:
            logger.info("reusing the expression classifier %s (real test accuracy %.3f, balanced %.3f)", path,
                        classifier.metrics["real_accuracy"], classifier.metrics["real_accuracy_balanced"])
            return classifier
        logger.warning("%s does not match this dataset's labels or size: training a new one", path)

    c_dim = len(metadata.labels)
    train = read_split(dataset_url, SPLITS[0], include_augmented=True)
    model = train_classifier(train, c_dim, image_size, config)
    classifier = TrainedClassifier(model=model, labels=tuple(metadata.labels), image_size=image_size, metrics={})
    train_scores = accuracy_scores(train.label_index, classifier.predict(train.images), c_dim)
    test = read_split(dataset_url, test_split)
    test_scores = accuracy_scores(test.label_index, classifier.predict(test.images), c_dim)
    metrics = {"train_accuracy": train_scores["accuracy"], "real_accuracy": test_scores["accuracy"],
               "real_accuracy_balanced": test_scores["balanced_accuracy"], "train_faces": float(len(train)),
               "test_faces": float(len(test)),
               **{f"real_recall/{metadata.labels[k]}": test_scores[f"recall/{k}"]
                  for k in range(c_dim) if f"recall/{k}" in test_scores}}
    classifier = dataclasses.replace(classifier, metrics=metrics, path=path)
    save_classifier(path, classifier, config, {"dataset_url": dataset_url})
    logger.info("expression classifier trained on %d faces: train accuracy %.3f; on %d real test faces accuracy "
                "%.3f, balanced %.3f; saved %s", len(train), metrics["train_accuracy"], len(test),
                metrics["real_accuracy"], metrics["real_accuracy_balanced"], path)
    return classifier
