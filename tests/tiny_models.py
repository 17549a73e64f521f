"""Tiny StarGANs trained once per test session (jobs/train.py on the ingested sample), shared by several test files.

The first caller trains; later callers, in any test module, find the finished runs under the session's
base temp folder. Version k of the registered model TINY_NAME is the k-th run, trained for NUM_ITERS[k-1].
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from test_train import TINY

REPO = Path(__file__).resolve().parents[1]
TINY_NAME = "tiny-stargan"
NUM_ITERS = (4, 8)


@dataclass(frozen=True)
class TinyStore:
    """A SQLite MLflow store holding registered versions "1".."n" of TINY_NAME and their checkpoints."""

    root: Path
    tracking_uri: str
    name: str
    versions: tuple[str, ...]
    run_ids: tuple[str, ...]
    checkpoints: tuple[Path, ...]


def tiny_store(tmp_path_factory, dataset: Path, count: int = 1) -> TinyStore:
    """The session's store with at least `count` trained versions (training the missing ones, in order)."""
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    root.mkdir(exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    runs = []
    for k in range(1, count + 1):
        done = root / f"version-{k}.json"
        if not done.is_file():
            proc = subprocess.run(
                [sys.executable, "jobs/train.py", "--dataset", dataset.as_uri(), *TINY,
                 "--num-iters", str(NUM_ITERS[k - 1]), "--log-every", "2", "--sample-every", "0",
                 "--tracking-uri", uri, "--checkpoint-dir", str(root / f"ckpt-{k}"), "--experiment", "tiny",
                 "--registered-model", TINY_NAME],
                cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
            assert f"model version {k};" in proc.stderr, proc.stderr[-2000:]
            run_id = proc.stderr.split("; run ")[1].split(";")[0]
            checkpoint = sorted((root / f"ckpt-{k}").glob("ckpt-*.pt"))[-1]
            done.write_text(json.dumps({"run_id": run_id, "checkpoint": str(checkpoint)}))
        runs.append(json.loads(done.read_text()))
    return TinyStore(root=root, tracking_uri=uri, name=TINY_NAME, versions=tuple(str(k) for k in range(1, count + 1)),
                     run_ids=tuple(r["run_id"] for r in runs), checkpoints=tuple(Path(r["checkpoint"]) for r in runs))
