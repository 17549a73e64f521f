"""The README's main job end to end at a reduced size, from a clean working folder."""
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    salt = tmp_path / "salt"
    salt.write_bytes(b"d" * 40)
    proc = subprocess.run([sys.executable, "jobs/demo.py", "--output", str(out), "--num-iters", "10",
                           "--batch-size", "4", "--salt-file", str(salt)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    # 1. the dataset and its report
    assert (out / "dataset" / "_common_metadata").is_file()
    assert (out / "dataset_report.json").is_file()
    # 2-3. one training run with metrics, a registered version carrying the champion alias, evaluated
    store = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    version = client.get_model_version_by_alias("palsygan-stargan", "champion")
    metrics = client.get_run(version.run_id).data.metrics
    assert "G/loss_rec" in metrics and "D/loss_gp" in metrics
    assert any(k.startswith("eval/") for k in metrics)
    # 4. the translated test-split photo: a grid and one image per expression, pasted back too
    grids = list((out / "translations").rglob("grid.png"))
    assert len(grids) == 1
    faces = [p for p in grids[0].parent.glob("*.png") if p.name not in ("grid.png", "aligned.png")]
    assert len(faces) >= 2 and all(Image.open(p).size == (64, 64) for p in faces)
    assert len(list((grids[0].parent / "pasted").glob("*.png"))) == len(faces)
    # The summary names the grid and the MLflow UI command on 127.0.0.1.
    assert str(grids[0]) in log
    assert "--host 127.0.0.1" in log
