"""Translate faces with a trained generator: load it as a `Translator`, align photos as the ETL does, paste back.

A `Translator` comes from the MLflow registry or a run (models:/NAME@ALIAS, models:/NAME/VERSION,
runs:/RUN_ID/generator, an MLflow model folder) or from a training checkpoint file; in every case the
label names, image size and normalisation are the model's own metadata, never flags. Photos are
aligned by etl.align.align_face under the ETL's face policy (etl.process.ProcessConfig), so the
generator sees faces framed exactly as in training; `paste_back` warps a translated face into the
original photo with a feathered mask.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from etl.align import AlignedFace, align_face, paste_back
from etl.decode import encode_png
from etl.face import FacePolicy
from etl.process import ProcessConfig
from schemas.vocabulary import UnknownLabel, canonical_label
from training.data import to_model_input, to_uint8_images
from training.registry import ModelNotFound, source_run_id
from training.samples import labelled_grid

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GRID_MIN_CELL = 128  # grid cells are upscaled to at least this many pixels, so the labels stay legible


class UnknownTarget(KeyError):
    """A requested target expression the model does not know; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Normalisation:
    """How uint8 faces become model input and back."""

    to_input: Callable[[np.ndarray, int], torch.Tensor]
    to_uint8: Callable[[torch.Tensor], np.ndarray]


_MINUS_ONE_TO_ONE = Normalisation(to_model_input, to_uint8_images)
# The normalisation strings models carry in their metadata (training.trainer.model_metadata,
# training.generator_model.NORMALISATION).
NORMALISATIONS: dict[str, Normalisation] = {
    "x / 127.5 - 1 (RGB, [-1, 1])": _MINUS_ONE_TO_ONE,
    "[-1,1] (x/127.5-1)": _MINUS_ONE_TO_ONE,
}


def normalisation(name: str) -> Normalisation:
    """The registered normalisation called `name`; KeyError lists the known ones."""
    try:
        return NORMALISATIONS[name]
    except KeyError:
        raise KeyError(f"unknown normalisation {name!r}; known: {sorted(NORMALISATIONS)}") from None


@dataclass(frozen=True, eq=False)
class Translator:
    """A generator with what it needs to be used: label names, image size, normalisation, provenance."""

    generator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    labels: tuple[str, ...]
    image_size: int
    multi_label: bool
    normalisation: Normalisation
    source: str
    run_id: str | None = None
    meta: dict = field(default_factory=dict)

    def check_targets(self, targets: Iterable[str] | None) -> tuple[str, ...]:
        """The requested targets (all labels when None or empty); UnknownTarget names the known ones."""
        targets = tuple(dict.fromkeys(self._label_for(t) for t in targets or ()))
        if not targets:
            return self.labels
        unknown = [t for t in targets if t not in self.labels]
        if unknown:
            raise UnknownTarget(f"unknown target expression{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown))}; the model knows: {', '.join(self.labels)}")
        return targets

    def _label_for(self, target: str) -> str:
        """A target as the model's label: expression synonyms and spellings (happy, Happiness) canonicalised."""
        if target in self.labels or self.multi_label:
            return target
        try:
            return canonical_label(target)
        except UnknownLabel:
            return target

    def target_vectors(self, targets: Sequence[str], n: int) -> list[torch.Tensor]:
        """One (n, c_dim) one-hot label batch per target."""
        eye = torch.eye(len(self.labels))
        return [eye[self.labels.index(t)].expand(n, -1).contiguous() for t in self.check_targets(targets)]

    def to_input(self, faces: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) aligned faces -> model input (N, 3, S, S)."""
        return self.normalisation.to_input(faces, self.image_size)

    def to_images(self, x: torch.Tensor) -> np.ndarray:
        """Model output (N, 3, S, S) -> uint8 (N, S, S, 3)."""
        return self.normalisation.to_uint8(x)

    def __call__(self, x: torch.Tensor, c: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """G(x, c) in batches, without gradients."""
        with torch.no_grad():
            return torch.cat([self.generator(x[i:i + batch_size].float(), c[i:i + batch_size].float())
                              for i in range(0, len(x), batch_size)])


# Loading ---------------------------------------------------------------------------------------------

def _from_meta(generator, meta: dict, source: str, run_id: str | None) -> Translator:
    """A Translator from a generator and its model_meta; ValueError names what is missing."""
    missing = [k for k in ("labels", "image_size", "normalisation") if k not in meta]
    if missing:
        raise ValueError(f"{source} carries no {', '.join(missing)} in its metadata; it was not logged by "
                         f"jobs/train.py")
    return Translator(generator=generator, labels=tuple(meta["labels"]), image_size=int(meta["image_size"]),
                      multi_label=bool(meta.get("multi_label", False)),
                      normalisation=normalisation(meta["normalisation"]), source=source, run_id=run_id,
                      meta=dict(meta))


def _load_checkpoint(source: str) -> Translator:
    """A training checkpoint file (training.checkpoint): G's weights, rebuilt as its inference copy."""
    from training.checkpoint import load_checkpoint
    from training.config import ModelConfig
    from training.inference import inference_generator
    from training.models import build_generator

    state = load_checkpoint(Path(source))
    if "G" not in state or "model_meta" not in state:
        raise ValueError(f"{source} is not a training checkpoint (no G weights or model_meta)")
    meta = state["model_meta"]
    G = build_generator(ModelConfig(**meta["model"]))
    G.load_state_dict(state["G"])
    # Per-image instance-norm statistics, as in training samples and the logged model (training.inference).
    return _from_meta(inference_generator(G, "cpu"), meta, source, state.get("run_id"))


def _load_mlflow(source: str) -> Translator:
    """An MLflow model URI or folder, resolved against the process-wide tracking URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.generator_model import load_generator

    run_id = source_run_id(source, mlflow.MlflowClient())
    try:
        G, meta = load_generator(source)
    except MlflowException as exc:
        raise ModelNotFound(f"{source}: {exc.message}") from None
    except OSError as exc:
        raise ModelNotFound(f"{source}: {exc}") from None
    return _from_meta(G, meta, source, run_id)


LOADERS: dict[str, Callable[[str], Translator]] = {"checkpoint": _load_checkpoint, "mlflow": _load_mlflow}


def source_kind(source: str) -> str:
    """"checkpoint" for a file, "mlflow" for a models:/ or runs:/ URI or an MLflow model folder."""
    path = Path(source)
    if path.is_file():
        return "checkpoint"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", source) or (path / "MLmodel").is_file():
        return "mlflow"
    raise ModelNotFound(f"{source} is neither a checkpoint file, an MLflow model folder nor a model URI "
                        f"(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/generator)")


def load_translator(source: str, kind: str | None = None) -> Translator:
    """Load a generator as a Translator from a checkpoint file or an MLflow URI (see LOADERS)."""
    kind = kind or source_kind(source)
    try:
        loader = LOADERS[kind]
    except KeyError:
        raise KeyError(f"unknown model source kind {kind!r}; known: {sorted(LOADERS)}") from None
    translator = loader(source)
    logger.info("loaded %s: %d labels (%s), %dpx%s", source, len(translator.labels), ", ".join(translator.labels),
                translator.image_size, f", run {translator.run_id}" if translator.run_id else "")
    return translator


# Photos ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TranslateConfig:
    """What to produce for each photo."""

    targets: tuple[str, ...] = ()  # empty: every label the model knows
    paste_back: bool = False
    feather: float = 0.08
    policy: FacePolicy = ProcessConfig().policy  # the ETL's face selection
    grid_cell: int = GRID_MIN_CELL


@dataclass(frozen=True, eq=False)
class PhotoTranslation:
    """One photo's aligned face, its translation per target, the labelled grid and (optionally) pasted photos."""

    face: AlignedFace
    outputs: dict[str, np.ndarray]
    grid: np.ndarray
    pasted: dict[str, np.ndarray]


def translate_faces(translator: Translator, faces: np.ndarray, targets: Sequence[str]) -> dict[str, np.ndarray]:
    """uint8 (N, S, S, 3) aligned faces -> {target: uint8 (N, S, S, 3) translated faces}."""
    targets = translator.check_targets(targets)
    x = translator.to_input(faces)
    vectors = translator.target_vectors(targets, len(x))
    return {t: translator.to_images(translator(x, c)) for t, c in zip(targets, vectors)}


def translation_grid(aligned: np.ndarray, outputs: dict[str, np.ndarray], cell: int = GRID_MIN_CELL) -> np.ndarray:
    """One labelled row: the aligned input, then each translation; cells upscaled to at least `cell` px."""
    side = max(cell, aligned.shape[0])

    def fit(image: np.ndarray) -> np.ndarray:
        if image.shape[0] == side:
            return image
        return cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)

    columns = [fit(aligned)[None]] + [fit(image)[None] for image in outputs.values()]
    return labelled_grid(columns, ["input", *outputs])


def translate_photo(translator: Translator, rgb: np.ndarray, config: TranslateConfig) -> PhotoTranslation:
    """Align the photo's face as the ETL does and translate it to each target; raises FaceRejected."""
    targets = translator.check_targets(config.targets)
    face = align_face(rgb, size=translator.image_size, policy=config.policy)
    outputs = {t: images[0] for t, images in translate_faces(translator, face.image[None], targets).items()}
    pasted = {t: paste_back(rgb, image, face.matrix, feather=config.feather) for t, image in outputs.items()} \
        if config.paste_back else {}
    return PhotoTranslation(face=face, outputs=outputs, grid=translation_grid(face.image, outputs, config.grid_cell),
                            pasted=pasted)


def photo_files(paths: Iterable[Path]) -> list[Path]:
    """The photos named, and those inside named folders (recursively, sorted); FileNotFoundError if one is absent."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such photo or folder: {path}")
    return found


def _file_name(label: str) -> str:
    """A label as a safe file name stem."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "label"


def save_translation(result: PhotoTranslation, folder: Path) -> list[Path]:
    """Write aligned.png, <target>.png per target, grid.png and pasted/<target>.png (replacing the images
    of an earlier run in that folder); return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.png"), *(folder / "pasted").glob("*.png")]:
        stale.unlink()
    if (folder / "pasted").is_dir() and not any((folder / "pasted").iterdir()):
        (folder / "pasted").rmdir()  # made again below when this run pastes back
    images = {folder / "aligned.png": result.face.image, folder / "grid.png": result.grid}
    images.update({folder / f"{_file_name(t)}.png": image for t, image in result.outputs.items()})
    images.update({folder / "pasted" / f"{_file_name(t)}.png": image for t, image in result.pasted.items()})
    for path, image in images.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(image))  # PNG without metadata chunks
    return list(images)
