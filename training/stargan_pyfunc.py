"""MLflow pyfunc loader for the logged StarGAN generator; shipped inside each logged model (its code/ dir).

Self-contained on purpose (numpy, torch, mlflow only; no palsygan imports): `mlflow.pyfunc.load_model`
and `mlflow models serve` import it from the model's own code/ directory as the top-level module
`stargan_pyfunc`, so the model loads where this repository is not installed. The weights are the
model's pytorch flavor (a torch.export program, data/model.pt2), loaded through
`mlflow.pytorch.load_model`, which checks the archive is free of pickled objects first.

predict input: {"image": float32 (N, 3, S, S) in [-1, 1], "labels": float32 (N, c_dim)};
output: float32 (N, 3, S, S) in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE = "image"
LABELS = "labels"


class GeneratorPyfunc:
    """predict({"image", "labels"}) -> translated images, on the CPU."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Translate the batch of images to the target labels."""
        if not isinstance(data, dict) or IMAGE not in data or LABELS not in data:
            raise TypeError(f"expected a dict with {IMAGE!r} and {LABELS!r} arrays, got {type(data).__name__}")
        x = torch.as_tensor(np.asarray(data[IMAGE], dtype=np.float32))
        c = torch.as_tensor(np.asarray(data[LABELS], dtype=np.float32))
        with torch.no_grad():
            return self.generator(x, c).numpy()


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> GeneratorPyfunc:
    """MLflow's loader hook: `data_path` is <model>/data/model.pt2."""
    import mlflow.pytorch

    model_root = Path(data_path).resolve().parents[1]
    return GeneratorPyfunc(mlflow.pytorch.load_model(str(model_root)))
