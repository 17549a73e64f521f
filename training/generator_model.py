"""The generator as an MLflow model: a pytorch flavor that loads as G(x, c) and a pyfunc flavor.

G takes two tensors, which MLflow 3's pytorch flavor only half supports: its pt2 format (the default,
and the only one that loads without unpickling code) exports G(x, c) with torch.export, but then adds
no pyfunc flavor ("two inputs: pyfunc not supported yet"), and its pyfunc wrapper takes one array
anyway. So one model directory is written with both flavors:

  pytorch  data/model.pt2, written by `mlflow.pytorch.save_model(serialization_format="pt2")` from the
           inference copy of G (training.inference), batch dimension dynamic.
           `mlflow.pytorch.load_model(uri)` returns a module called as `model(x, c)`; it is already in
           inference mode (calling .eval()/.train() on it raises NotImplementedError; no need to).
  pyfunc   loader `stargan_pyfunc` (training/stargan_pyfunc.py, copied into the model's code/ dir):
           `mlflow.pyfunc.load_model(uri).predict({"image": x, "labels": c})` with numpy float32 arrays.

The signature names the two inputs (image float32 (-1, 3, S, S) in [-1, 1], labels float32
(-1, c_dim)) and the input example is stored as that dict. `model_meta` (label names, image size,
normalisation, multi_label, schema version, config) goes into the MLmodel's metadata, so translate
and evaluate read everything they need from the model itself (`load_generator`).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec
from torch import nn

from training import stargan_pyfunc
from training.inference import inference_generator

logger = logging.getLogger(__name__)

MODEL_NAME = "generator"
NORMALISATION = "[-1,1] (x/127.5-1)"


def generator_signature(image_size: int, c_dim: int) -> ModelSignature:
    """Named tensor inputs image (-1, 3, S, S) and labels (-1, c_dim); output image (-1, 3, S, S)."""
    image = (-1, 3, image_size, image_size)
    return ModelSignature(
        inputs=Schema([
            TensorSpec(np.dtype(np.float32), image, stargan_pyfunc.IMAGE),
            TensorSpec(np.dtype(np.float32), (-1, c_dim), stargan_pyfunc.LABELS),
        ]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), image)]),
    )


def _pip_requirements() -> list[str]:
    """Pinned run-time requirements (no inference subprocess); torch without its local +cpu/+cuXXX tag."""
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={np.__version__}"]


def save_model(
    path: str,
    mlflow_model: Model,
    generator: nn.Module,
    input_example: tuple[np.ndarray, np.ndarray],
    serialization_format: str = "pt2",
) -> None:
    """Write the two-flavor model directory at `path` (MLflow calls this through `Model.log`)."""
    if serialization_format != "pt2":
        raise ValueError("the generator is only saved in the pickle-free pt2 format")
    x, c = (np.ascontiguousarray(a, dtype=np.float32) for a in input_example)
    if x.ndim != 4 or c.ndim != 2 or x.shape[0] != c.shape[0] or x.shape[0] < 1:
        raise ValueError(f"input example must be images (N, 3, S, S) and labels (N, c_dim), "
                         f"got {x.shape} and {c.shape}")
    signature = generator_signature(x.shape[-1], c.shape[-1])
    G_inf = inference_generator(generator, "cpu")
    # torch.export fixes a dimension whose example size is 1: trace with a batch of at least 2 so the
    # exported batch dimension is dynamic (the stored example stays the one given).
    trace = (np.concatenate([x, x])[: max(2, len(x))], np.concatenate([c, c])[: max(2, len(c))])

    with tempfile.TemporaryDirectory() as tmp:
        # The pytorch flavor: torch.export of G_inf(x, c), done by MLflow itself.
        torch_dir = Path(tmp) / "torch"
        mlflow.pytorch.save_model(G_inf, str(torch_dir), signature=signature, input_example=trace,
                                  serialization_format="pt2", pip_requirements=_pip_requirements())
        mlflow_model.add_flavor(mlflow.pytorch.FLAVOR_NAME, **Model.load(torch_dir).flavors["pytorch"])

        # The pyfunc flavor around the same file; pyfunc.save_model copies it to data/model.pt2,
        # where the pytorch flavor's model_data ("data") expects it, and writes the MLmodel.
        mlflow.pyfunc.save_model(
            path,
            loader_module=stargan_pyfunc.__name__.rsplit(".", 1)[-1],
            data_path=str(torch_dir / "data" / "model.pt2"),
            code_paths=[stargan_pyfunc.__file__],
            mlflow_model=mlflow_model,
            signature=signature,
            input_example={stargan_pyfunc.IMAGE: x, stargan_pyfunc.LABELS: c},
            pip_requirements=_pip_requirements(),
        )
    if mlflow_model.flavors["pytorch"]["model_data"] != "data":
        raise RuntimeError(f"unexpected pytorch flavor layout: {mlflow_model.flavors['pytorch']}")


def log_generator(
    G: nn.Module,
    model_meta: dict,
    input_example: tuple[np.ndarray, np.ndarray],
    registered_name: str | None,
) -> mlflow.models.model.ModelInfo:
    """Log G to the active run as model "generator", registering a version under `registered_name` if given."""
    # JSON round trip: the MLmodel is YAML and takes plain lists/dicts only (no tuples, numpy types).
    metadata = json.loads(json.dumps(model_meta, default=str))
    return Model.log(
        name=MODEL_NAME,
        artifact_path=None,
        flavor=sys.modules[__name__],  # this module is the "flavor": Model.log calls its save_model
        flavor_name=mlflow.pytorch.FLAVOR_NAME,
        registered_model_name=registered_name,
        metadata=metadata,
        generator=G,
        input_example=input_example,
        serialization_format="pt2",
    )


def load_generator(model_uri: str) -> tuple[nn.Module, dict]:
    """Load a logged generator as (G callable as G(x, c), model_meta) from runs:/, models:/ or a path."""
    # Resolved against the process-wide tracking/registry URIs (mlflow.set_tracking_uri or
    # MLFLOW_TRACKING_URI). Not a tracking_uri argument: MLflow 3.17 ignores the one given to
    # download_artifacts for models:/ URIs and opens the default store (./mlflow.db) instead.
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    G = mlflow.pytorch.load_model(local)
    return G, dict(Model.load(local).metadata or {})
