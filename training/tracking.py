"""Experiment tracking: one `Tracker` interface, an MLflow implementation for rank 0 and a no-op for the rest.

The training loop calls the tracker unconditionally; `make_tracker(is_rank0=False, ...)` returns a
`NullTracker`, so the loop never branches on rank and only rank 0 talks to MLflow (or imports it).
One training job is exactly one MLflow run: a resumed job passes the run id saved in its checkpoint
and the same run is re-opened.

Patient data: MLflow's usage telemetry is switched off (MLFLOW_DISABLE_TELEMETRY, DO_NOT_TRACK)
before MLflow is imported here, whatever the entry point set.

MLflow specifics: params are flattened with "." ("optim.g_lr") and their values cut to MLflow's
6000-character limit; metric names keep StarGAN's "D/loss_gp" form; images are logged with a key and
a step (the run's image view shows them over steps; files under images/); the dataset is logged as a
run input (a `MetaDataset`: name, source URL, digest) with its metadata as input tags and as the JSON
artifact dataset/metadata.json; the generator is logged and registered by training.generator_model.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from torch import nn

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation): param values and tag values it would otherwise reject.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_INPUT_TAG_VALUE_LENGTH = 500
MAX_DATASET_DIGEST_LENGTH = 36
DATASET_CONTEXT = "training"
DATASET_METADATA_FILE = "dataset/metadata.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def disable_telemetry() -> None:
    """Switch MLflow's usage telemetry off for this process and the processes it starts."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts to {"a.b": str(value)}, with values cut to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            logger.warning("param %s is %d characters long; logging the first %d", name, len(text),
                           MAX_PARAM_VALUE_LENGTH)
            text = text[:MAX_PARAM_VALUE_LENGTH]
        flat[name] = text
    return flat


class Tracker(Protocol):
    """What the training loop logs; rank 0 gets MlflowTracker, every other rank NullTracker."""

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None when not tracking)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) parameters, flattened with "." keys."""

    def log_dataset(self, url: str, digest: str, metadata: Mapping[str, Any]) -> None:
        """Record the training dataset (URL, digest, metadata) as the run's input."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics (e.g. "D/loss_gp") at `step`."""

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """Log an RGB uint8 (H, W, 3) image under `key` at `step`."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file into the run's artifacts."""

    def log_generator(self, G: nn.Module, model_meta: Mapping[str, Any],
                      input_example: tuple[np.ndarray, np.ndarray], registered_name: str | None) -> str | None:
        """Log G as an MLflow model; return the registered version (None if not registered)."""

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED)."""


class _ContextManager:
    """`with tracker:` ends the run as FINISHED, or FAILED when the block raises."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish("FINISHED" if exc_type is None else "FAILED")


class NullTracker(_ContextManager):
    """The tracker of ranks other than 0: every method does nothing."""

    @property
    def run_id(self) -> str | None:
        """No run."""
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Do nothing."""

    def log_dataset(self, url: str, digest: str, metadata: Mapping[str, Any]) -> None:
        """Do nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Do nothing."""

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """Do nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def log_generator(self, G: nn.Module, model_meta: Mapping[str, Any],
                      input_example: tuple[np.ndarray, np.ndarray], registered_name: str | None) -> str | None:
        """Do nothing; no model version."""
        return None

    def finish(self, status: str = "FINISHED") -> None:
        """Do nothing."""


class MlflowTracker(_ContextManager):
    """Logs to one MLflow run, created or (with `run_id`) re-opened; it is this process's active run."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None = None,
                 run_id: str | None = None, artifact_location: str | None = None) -> None:
        disable_telemetry()
        import mlflow

        self._mlflow = mlflow
        # Model logging and registration resolve the process-wide URIs, so set them, not just a client.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id)
            logger.info("resumed MLflow run %s at %s", run_id, tracking_uri)
        else:
            found = mlflow.get_experiment_by_name(experiment)
            experiment_id = (found.experiment_id if found is not None
                             else mlflow.create_experiment(experiment, artifact_location=artifact_location))
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
            logger.info("started MLflow run %s in experiment %r at %s", run.info.run_id, experiment, tracking_uri)
        self._run_id: str = run.info.run_id
        self._finished = False

    @property
    def run_id(self) -> str | None:
        """The MLflow run id."""
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) parameters; on a resumed run, equal values are skipped and changed ones refused."""
        flat = flatten_params(params)
        existing = self._mlflow.get_run(self._run_id).data.params
        changed = {k: (existing[k], v) for k, v in flat.items() if k in existing and existing[k] != v}
        if changed:
            raise ValueError(f"run {self._run_id} already has different values for {changed} "
                             "(old, new); a resumed job must keep its configuration")
        new = {k: v for k, v in flat.items() if k not in existing}
        if new:
            self._mlflow.log_params(new)

    def log_dataset(self, url: str, digest: str, metadata: Mapping[str, Any]) -> None:
        """Log the dataset as the run's training input (URL source, digest cut to 36 chars) and its metadata."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():
            # MLflow registers the local-file source for both "" and "file" schemes and warns about it.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(url)
        name = Path(url.rstrip("/")).name or url
        dataset = MetaDataset(source=source, name=name, digest=digest[:MAX_DATASET_DIGEST_LENGTH])
        tags = {k: v[:MAX_INPUT_TAG_VALUE_LENGTH] for k, v in flatten_params(metadata).items()}
        self._mlflow.log_input(dataset, context=DATASET_CONTEXT, tags=tags)
        # JSON round trip: tuples become lists, numpy scalars and other oddities become strings.
        document = json.loads(json.dumps({"url": url, "digest": digest, "metadata": dict(metadata)}, default=str))
        self._mlflow.log_dict(document, DATASET_METADATA_FILE)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at `step` in one request."""
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step), synchronous=True)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """Log an RGB uint8 (H, W, 3) image under `key` at `step` (shown over steps in the run's images)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        if Path(key).suffix.lower() in IMAGE_SUFFIXES:
            # A file name per step would make one image series per step instead of one over steps.
            raise ValueError(f"log_image takes a series key such as 'samples', not a file name: {key!r}")
        self._mlflow.log_image(image, key=key, step=int(step), synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file into the run's artifacts (under `artifact_path`)."""
        self._mlflow.log_artifact(str(path), artifact_path)

    def log_generator(self, G: nn.Module, model_meta: Mapping[str, Any],
                      input_example: tuple[np.ndarray, np.ndarray], registered_name: str | None) -> str | None:
        """Log G (pytorch + pyfunc flavors, metadata=model_meta); return the registered version or None."""
        from training.generator_model import log_generator

        info = log_generator(G, dict(model_meta), input_example, registered_name)
        logger.info("logged generator %s%s", info.model_uri,
                    f" as {registered_name} version {info.registered_model_version}" if registered_name else "")
        return None if info.registered_model_version is None else str(info.registered_model_version)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status`; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        active = self._mlflow.active_run()
        if active is not None and active.info.run_id == self._run_id:
            self._mlflow.end_run(status)
        else:
            self._mlflow.MlflowClient().set_terminated(self._run_id, status)
        logger.info("MLflow run %s ended: %s", self._run_id, status)


def make_tracker(
    is_rank0: bool,
    tracking_uri: str,
    experiment: str,
    run_name: str | None,
    run_id: str | None = None,
    *,
    artifact_location: str | None = None,
) -> Tracker:
    """MlflowTracker on rank 0 (re-opening `run_id` when resuming), NullTracker on every other rank."""
    if not is_rank0:
        return NullTracker()
    return MlflowTracker(tracking_uri, experiment, run_name, run_id, artifact_location)
