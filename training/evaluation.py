"""Evaluation of a generator on held-out faces: expression accuracy, identity, cycle L1, asymmetry; table and plots.

Every face of the test split (subjects never seen in training) is translated to every target label,
and each translation is measured:
  target accuracy   the expression classifier (training.expression_classifier) assigns the target label.
                    Per target and overall; "balanced" averages over the inputs' own expressions first,
                    so a frequent source expression does not dominate (every target has the same count).
                    classification_error = 1 - target_accuracy is the StarGAN paper's figure.
  identity          distance between dlib face embeddings of input and output (< 0.6: same person).
  cycle L1          mean |G(G(x, target), source) - x| in the model's [-1, 1] range.
  face detected     whether dlib's HOG detector (the ETL's policy) still finds a face in the output.
  asymmetry         training.asymmetry's unsigned measures from the 68 landmarks of input and output.
Faces are compared at the generator's resolution (inputs go through the same downscale as in
training) and upscaled to `analysis_size` for dlib. Input landmarks are the dataset's (fitted on the
original photo); the 68-point predictor is run on input and output with the box derived from them, so
input-to-output changes come from the same procedure. The output's identity embedding uses landmarks
fitted on the box HOG finds on the output, or the input's landmarks when it finds none.

Metric names (all under "eval/"): overall `eval/<name>`, per target `eval/by_target/<target>/<name>`,
the classifier's scores on real test faces `eval/classifier/<name>`. No name is a path prefix of
another, so they also fit MLflow's file store.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from etl.align import box_from_landmarks
from etl.face import SAME_PERSON_THRESHOLD, FaceRejected, embedding_distance, face_embedding, find_face, landmarks_68
from etl.process import ProcessConfig
from training.asymmetry import MEASURES, asymmetry_magnitude, measure_asymmetry
from training.expression_classifier import ClassifierConfig, TrainedClassifier
from training.samples import labelled_grid
from training.splits import FaceSplit
from training.translate import Translator

logger = logging.getLogger(__name__)

PREFIX = "eval/"
# Which way is better, for choosing a champion by a metric (training.registry.set_champion).
METRIC_GOALS: dict[str, str] = {
    "eval/target_accuracy": "max",
    "eval/target_accuracy_balanced": "max",
    "eval/classification_error": "min",
    "eval/identity_distance": "min",
    "eval/identity_same_person_rate": "max",
    "eval/cycle_l1": "min",
    "eval/face_detected_rate": "max",
}
PLOTS = ("per_target.png", "identity_distance_hist.png", "examples.png")


def goal_of(metric: str) -> str:
    """"max" or "min" for a metric champions can be chosen by; KeyError lists them."""
    try:
        return METRIC_GOALS[metric]
    except KeyError:
        raise KeyError(f"no known goal for metric {metric!r}; known: {sorted(METRIC_GOALS)} "
                       f"(or give the goal explicitly)") from None


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how."""

    split: str = "test"
    max_faces: int | None = None  # None: the whole split
    analysis_size: int = 128  # faces are upscaled to this for dlib landmarks and embeddings
    example_faces: int = 6
    batch_size: int = 64
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


@dataclass(frozen=True)
class EvaluateJob:
    """One evaluation run of jobs/evaluate.py: model, data, tracking and champion settings, and the EvalConfig."""

    model: str
    dataset: str | None  # None: the dataset named in the model's metadata
    tracking_uri: str
    run_id: str | None  # None: the model's source run
    output: Path
    classifier_cache: Path
    registered_model: str | None  # whose champion to re-pick (None: none)
    champion_metric: str | None
    champion_goal: str | None
    threads: int
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Per-face results: arrays (T, N) per target t and input face n, plus the inputs' own values."""

    targets: tuple[str, ...]
    labels: tuple[str, ...]
    source_index: np.ndarray  # (N,) the inputs' own label index
    predicted: np.ndarray  # (T, N) classifier's label index for each translation
    identity: np.ndarray  # (T, N) embedding distance input -> output
    detected: np.ndarray  # (T, N) bool, HOG finds a face in the output
    cycle_l1: np.ndarray  # (T, N)
    asymmetry_input: dict  # measure -> (N,) signed
    asymmetry_output: dict  # measure -> (T, N) signed
    examples: np.ndarray  # uint8 labelled grid: example inputs x (input + targets)


def metric_label(label: str) -> str:
    """A label as an MLflow metric-name segment (letters, digits, _ - . and spaces kept)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]+", "_", label) or "_"


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3), cubic (area when shrinking)."""
    if images.shape[1] == size:
        return images
    flag = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_CUBIC
    return np.stack([cv2.resize(im, (size, size), interpolation=flag) for im in images])


def evaluate_translator(translator: Translator, faces: FaceSplit, classifier: TrainedClassifier,
                        config: EvalConfig) -> Evaluation:
    """Translate every face to every target and measure each translation (see the module docstring)."""
    if translator.multi_label:
        raise ValueError("evaluation needs a single-label (expression) model; this one is multi-label")
    if tuple(classifier.labels) != translator.labels:
        raise ValueError(f"the classifier's labels {classifier.labels} differ from the model's {translator.labels}")
    targets = translator.labels
    n, dataset_size, size = len(faces), faces.images.shape[1], config.analysis_size
    policy = ProcessConfig().policy

    # The inputs as the model sees them, and their geometry at the analysis size.
    x = translator.to_input(faces.images)
    inputs = translator.to_images(x)
    inputs_big = _resize(inputs, size)
    landmarks_in = (faces.landmarks.astype(np.float64) + 0.5) * size / dataset_size - 0.5
    boxes = [box_from_landmarks(lm) for lm in landmarks_in]
    embeddings_in = [face_embedding(inputs_big[i], landmarks_in[i]) for i in range(n)]
    fitted_in = np.stack([landmarks_68(inputs_big[i], boxes[i]) for i in range(n)])
    c_source = torch.from_numpy(faces.labels)

    predicted = np.zeros((len(targets), n), np.int64)
    identity = np.zeros((len(targets), n))
    detected = np.zeros((len(targets), n), bool)
    cycle = np.zeros((len(targets), n))
    fitted_out = np.zeros((len(targets), n, 68, 2))
    shown = min(config.example_faces, n)
    example_columns = [inputs[:shown]]
    for t, (target, c) in enumerate(zip(targets, translator.target_vectors(targets, n))):
        y = translator(x, c, config.batch_size)
        reconstructed = translator(y, c_source, config.batch_size)
        cycle[t] = (reconstructed - x).abs().flatten(1).mean(1).numpy()
        outputs = translator.to_images(y)
        example_columns.append(outputs[:shown])
        predicted[t] = classifier.predict(outputs)
        outputs_big = _resize(outputs, size)
        for i in range(n):
            fitted_out[t, i] = landmarks_68(outputs_big[i], boxes[i])
            try:
                found = find_face(outputs_big[i], policy)
                detected[t, i] = True
                identity_points = landmarks_68(outputs_big[i], found)
            except FaceRejected:
                identity_points = landmarks_in[i]
            identity[t, i] = embedding_distance(embeddings_in[i], face_embedding(outputs_big[i], identity_points))
        logger.info("target %s: accuracy %.3f, identity distance %.3f, cycle L1 %.3f", target,
                    float((predicted[t] == t).mean()), float(identity[t].mean()), float(cycle[t].mean()))

    cell = max(translator.image_size, 96)
    examples = labelled_grid([_resize(col, cell) for col in example_columns], ["input", *targets])
    out_measures = measure_asymmetry(fitted_out.reshape(-1, 68, 2))
    return Evaluation(
        targets=targets, labels=translator.labels, source_index=faces.label_index.copy(), predicted=predicted,
        identity=identity, detected=detected, cycle_l1=cycle,
        asymmetry_input=measure_asymmetry(fitted_in),
        asymmetry_output={k: v.reshape(len(targets), n) for k, v in out_measures.items()},
        examples=examples,
    )


def _balanced_hit_rate(hits: np.ndarray, groups: np.ndarray) -> float:
    """Mean over groups of the hit rate within each group."""
    return float(np.mean([hits[groups == g].mean() for g in np.unique(groups)]))


def summarise(ev: Evaluation, classifier: TrainedClassifier) -> dict[str, float]:
    """Every figure of an evaluation as a flat {MLflow metric name: value}."""
    metrics: dict[str, float] = {f"{PREFIX}faces": float(len(ev.source_index))}
    hits = ev.predicted == np.arange(len(ev.targets))[:, None]
    same = ev.identity < SAME_PERSON_THRESHOLD
    mag_in = asymmetry_magnitude(ev.asymmetry_input)
    mag_out = asymmetry_magnitude(ev.asymmetry_output)

    # Overall.
    metrics[f"{PREFIX}target_accuracy"] = float(hits.mean())
    metrics[f"{PREFIX}target_accuracy_balanced"] = float(np.mean(
        [_balanced_hit_rate(hits[t], ev.source_index) for t in range(len(ev.targets))]))
    metrics[f"{PREFIX}classification_error"] = 1.0 - metrics[f"{PREFIX}target_accuracy"]
    metrics[f"{PREFIX}identity_distance"] = float(ev.identity.mean())
    metrics[f"{PREFIX}identity_same_person_rate"] = float(same.mean())
    metrics[f"{PREFIX}face_detected_rate"] = float(ev.detected.mean())
    metrics[f"{PREFIX}cycle_l1"] = float(ev.cycle_l1.mean())
    for m in MEASURES:
        metrics[f"{PREFIX}asymmetry_input/{m}"] = float(mag_in[m].mean())
        metrics[f"{PREFIX}asymmetry/{m}"] = float(mag_out[m].mean())
        metrics[f"{PREFIX}asymmetry_change/{m}"] = float((mag_out[m] - mag_in[m][None]).mean())

    # Per target.
    for t, target in enumerate(ev.targets):
        key = f"{PREFIX}by_target/{metric_label(target)}/"
        metrics[key + "target_accuracy"] = float(hits[t].mean())
        metrics[key + "target_accuracy_balanced"] = _balanced_hit_rate(hits[t], ev.source_index)
        metrics[key + "identity_distance"] = float(ev.identity[t].mean())
        metrics[key + "identity_same_person_rate"] = float(same[t].mean())
        metrics[key + "face_detected_rate"] = float(ev.detected[t].mean())
        metrics[key + "cycle_l1"] = float(ev.cycle_l1[t].mean())
        for m in MEASURES:
            metrics[key + f"asymmetry/{m}"] = float(mag_out[m][t].mean())
            metrics[key + f"asymmetry_change/{m}"] = float((mag_out[m][t] - mag_in[m]).mean())

    # The judge's own accuracy on real test faces, beside it.
    for name, value in classifier.metrics.items():
        label = name.split("/", 1)
        metrics[f"{PREFIX}classifier/" + (f"{label[0]}/{metric_label(label[1])}" if len(label) == 2 else name)] = \
            float(value)
    return metrics


# Table and plots -------------------------------------------------------------------------------------

TABLE_COLUMNS = ("target_accuracy", "target_accuracy_balanced", "classifier_real_recall", "identity_distance",
                 "identity_same_person_rate", "face_detected_rate", "cycle_l1",
                 *(f"asymmetry/{m}" for m in MEASURES), *(f"asymmetry_change/{m}" for m in MEASURES))


def per_target_table(metrics: Mapping[str, float], targets: Sequence[str]) -> list[dict]:
    """One row per target: the per-target metrics (and the classifier's recall on real faces of that label)."""
    rows = []
    for target in targets:
        key = f"{PREFIX}by_target/{metric_label(target)}/"
        row: dict = {"target": target}
        for column in TABLE_COLUMNS:
            if column == "classifier_real_recall":
                row[column] = metrics.get(f"{PREFIX}classifier/real_recall/{metric_label(target)}", math.nan)
            else:
                row[column] = metrics[key + column]
        rows.append(row)
    return rows


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_per_target(metrics: Mapping[str, float], targets: Sequence[str], path: Path, title: str = "") -> Path:
    """Bar charts over targets: accuracy, identity, same-person rate, detection, cycle L1, asymmetry change."""
    plt = _pyplot()
    rows = per_target_table(metrics, targets)
    pos = np.arange(len(targets))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    real_acc = metrics.get(f"{PREFIX}classifier/real_accuracy_balanced", math.nan)

    def bars(ax, columns: Sequence[str], names: Sequence[str], heading: str, ylim=None):
        width = 0.8 / len(columns)
        for j, (column, name) in enumerate(zip(columns, names)):
            values = [row[column] for row in rows]
            ax.bar(pos + (j - (len(columns) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(pos, targets, rotation=35, ha="right")
        ax.set_title(heading)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(axis="y", alpha=0.3)

    ax = axes[0, 0]
    bars(ax, ["target_accuracy", "target_accuracy_balanced", "classifier_real_recall"],
         ["translated", "translated, balanced", "classifier recall, real faces"], "Target-expression accuracy",
         (0, 1.45))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.axhline(1 / len(targets), color="grey", ls=":", label="chance")
    if math.isfinite(real_acc):
        ax.axhline(real_acc, color="black", ls="--", lw=1, label=f"classifier, real, balanced ({real_acc:.2f})")
    ax.legend(fontsize=7, ncol=2, loc="upper center")  # above the bars: the axis runs to 1.45
    ax = axes[0, 1]
    top = max([SAME_PERSON_THRESHOLD, *(row["identity_distance"] for row in rows)])
    bars(ax, ["identity_distance"], ["mean"], "Identity: embedding distance (lower = same person)", (0, 1.3 * top))
    ax.axhline(SAME_PERSON_THRESHOLD, color="red", ls="--", lw=1, label=f"threshold {SAME_PERSON_THRESHOLD}")
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    bars(axes[0, 2], ["identity_same_person_rate"], ["rate"], f"Identity kept (distance < {SAME_PERSON_THRESHOLD})",
         (0, 1))
    bars(axes[1, 0], ["face_detected_rate"], ["rate"], "Face detected in the output (dlib HOG)", (0, 1))
    bars(axes[1, 1], ["cycle_l1"], ["mean"], "Cycle reconstruction L1 (target -> source)")
    ax = axes[1, 2]
    changes = [row[f"asymmetry_change/{m}"] for row in rows for m in MEASURES]
    low, high = min(0.0, *changes), max(0.0, *changes)
    span = (high - low) or 1.0
    bars(ax, [f"asymmetry_change/{m}" for m in MEASURES], list(MEASURES),
         "Asymmetry change, output - input\n(unsigned measures; < 0: more symmetric)",
         (low - 0.45 * span, high + 0.1 * span))
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(fontsize=7, ncol=2, loc="lower center")  # below the bars: the axis is extended downwards
    fig.suptitle(title or "Evaluation per target expression")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_identity_histogram(ev: Evaluation, path: Path, title: str = "") -> Path:
    """Histogram of input-output embedding distances, overall and per target, with the same-person threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    edges = np.linspace(0, max(1.2, float(ev.identity.max()) * 1.05), 31)
    ax.hist(ev.identity.ravel(), bins=edges, color="lightgrey", label="all targets")
    for t, target in enumerate(ev.targets):
        ax.hist(ev.identity[t], bins=edges, histtype="step", lw=1.2, label=target)
    ax.axvline(SAME_PERSON_THRESHOLD, color="red", ls="--", label=f"same-person threshold {SAME_PERSON_THRESHOLD}")
    ax.set_xlabel("dlib face-embedding distance, input -> translated")
    ax.set_ylabel("translations")
    ax.set_title(title or "Identity preservation")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(ev: Evaluation, metrics: Mapping[str, float], folder: Path, title: str = "") -> list[Path]:
    """per_target.png, identity_distance_hist.png, examples.png, per_target.csv and metrics.json in `folder`."""
    from etl.decode import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    files = [plot_per_target(metrics, ev.targets, folder / PLOTS[0], title),
             plot_identity_histogram(ev, folder / PLOTS[1], title)]
    (folder / PLOTS[2]).write_bytes(encode_png(ev.examples))
    files.append(folder / PLOTS[2])
    rows = per_target_table(metrics, ev.targets)
    with (folder / "per_target.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["target", *TABLE_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    files.append(folder / "per_target.csv")
    (folder / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=1))
    files.append(folder / "metrics.json")
    return files


def log_evaluation(client, run_id: str, metrics: Mapping[str, float], files: Sequence[Path],
                   tags: Mapping[str, str], artifact_path: str = "eval") -> None:
    """Log metrics (one batch per 1000), the report files under `artifact_path` and tags to an existing run."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    entries = [Metric(key, float(value), now, 0) for key, value in metrics.items() if math.isfinite(value)]
    for i in range(0, len(entries), 1000):
        client.log_batch(run_id, metrics=entries[i:i + 1000], synchronous=True)
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()], synchronous=True)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)
    logger.info("logged %d metrics and %d files (%s/) to run %s", len(entries), len(files), artifact_path, run_id)
