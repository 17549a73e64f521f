"""Tracking: a real MLflow server over HTTP (and a SQLite store): params, dataset, metrics, images,
the logged + registered generator read back, resume into the same run, and the rank != 0 no-op."""
import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from training.config import ModelConfig, TrainConfig
from training.generator_model import load_generator
from training.inference import inference_generator
from training.models import build_generator
from training.samples import sample_grid
from training.tracking import DATASET_METADATA_FILE, MAX_PARAM_VALUE_LENGTH, NullTracker, make_tracker

LABELS = ["neutral", "happy", "sad"]
CFG = TrainConfig(model=ModelConfig(image_size=32, c_dim=3, g_conv_dim=8, d_conv_dim=8, g_repeat_num=1,
                                    d_repeat_num=2))
MODEL_META = {
    "labels": LABELS,
    "image_size": 32,
    "normalisation": "[-1,1] (x/127.5-1)",
    "multi_label": False,
    "schema_version": "1.0",
    "config": dataclasses.asdict(CFG),
}
REGISTERED = "palsygan-test-generator"
DATASET_URL = "file:///data/faces/expressions-32"
DIGEST = "0123456789abcdef" * 4  # a sha256-length digest; MLflow keeps 36 characters


def _generator() -> torch.nn.Module:
    torch.manual_seed(0)
    G = build_generator(CFG.model)
    with torch.no_grad():  # move the instance-norm running stats away from their initial values
        for _ in range(3):
            G(torch.rand(4, 3, 32, 32) * 2 - 1, torch.eye(3)[[0, 1, 2, 0]])
    return G


def _example() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    return x, np.eye(3, dtype=np.float32)[[1, 2]]


def _read_image(client: MlflowClient, run_id: str, key: str, step: int, dst) -> np.ndarray:
    """Download the full-size PNG that mlflow.log_image(key=, step=) stored for `step`."""
    prefix = f"images/{key}+step+{step}+"
    names = [f.path for f in client.list_artifacts(run_id, "images")
             if f.path.startswith(prefix) and f.path.endswith(".png")]
    assert len(names) == 1, names
    path = client.download_artifacts(run_id, names[0], str(dst))
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(autouse=True)
def _reset_mlflow(tmp_path, monkeypatch):
    """Each test runs in an empty cwd, must leave no default store there, and resets MLflow's globals."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def logged(mlflow_server, tmp_path_factory):
    """One tracked 'training job' against the server; returns what the tests read back."""
    G = _generator()
    x, c = _example()
    grid = sample_grid(G, torch.from_numpy(x), LABELS, 3, multi_label=False)
    notes = tmp_path_factory.mktemp("notes") / "report.json"
    notes.write_text('{"ok": true}')

    tracker = make_tracker(True, mlflow_server, "palsygan-tests", run_name="tiny")
    tracker.log_params({"model": dataclasses.asdict(CFG.model), "optim": {"g_lr": 1e-4, "n_critic": 5},
                        "note": "x" * (MAX_PARAM_VALUE_LENGTH + 10)})
    tracker.log_dataset(DATASET_URL, DIGEST, {"labels": LABELS, "image_size": 32, "counts": {"train": 7}})
    for step in (10, 20):
        tracker.log_metrics({"D/loss_gp": step / 100, "G/loss_rec": 1 / step}, step)
    tracker.log_image(grid, "samples", 20)
    tracker.log_artifact(notes, "reports")
    version = tracker.log_generator(G, MODEL_META, (x, c), REGISTERED)
    run_id = tracker.run_id
    tracker.finish()
    return {"url": mlflow_server, "run_id": run_id, "version": version, "G": G, "x": x, "c": c, "grid": grid,
            "client": MlflowClient(mlflow_server)}


@pytest.mark.slow
def test_params_are_flattened_and_cut_to_the_limit(logged):
    params = logged["client"].get_run(logged["run_id"]).data.params
    assert params["model.image_size"] == "32"
    assert params["optim.g_lr"] == "0.0001"
    assert params["optim.n_critic"] == "5"
    assert params["note"] == "x" * MAX_PARAM_VALUE_LENGTH


@pytest.mark.slow
def test_dataset_is_the_runs_input(logged, tmp_path):
    run = logged["client"].get_run(logged["run_id"])
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "expressions-32"
    assert dataset_input.dataset.digest == DIGEST[:36]
    assert DATASET_URL in dataset_input.dataset.source
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["labels"] == '["neutral", "happy", "sad"]'
    assert tags["counts.train"] == "7"
    path = logged["client"].download_artifacts(logged["run_id"], DATASET_METADATA_FILE, str(tmp_path))
    meta = json.loads(Path(path).read_text())
    assert meta == {"url": DATASET_URL, "digest": DIGEST,
                    "metadata": {"labels": LABELS, "image_size": 32, "counts": {"train": 7}}}


@pytest.mark.slow
def test_metrics_with_slashes_over_steps(logged):
    client = logged["client"]
    history = client.get_metric_history(logged["run_id"], "D/loss_gp")
    assert [(m.step, m.value) for m in history] == [(10, 0.1), (20, 0.2)]
    assert {m.step for m in client.get_metric_history(logged["run_id"], "G/loss_rec")} == {10, 20}


@pytest.mark.slow
def test_image_reads_back_pixel_exact(logged, tmp_path):
    image = _read_image(logged["client"], logged["run_id"], "samples", 20, tmp_path)
    assert image.shape == logged["grid"].shape
    np.testing.assert_array_equal(image, logged["grid"])


@pytest.mark.slow
def test_artifact_uploaded_over_http(logged, tmp_path):
    client = logged["client"]
    assert [f.path for f in client.list_artifacts(logged["run_id"], "reports")] == ["reports/report.json"]
    assert client.get_run(logged["run_id"]).info.artifact_uri.startswith("mlflow-artifacts:")


@pytest.mark.slow
def test_registered_version_reads_back(logged):
    assert logged["version"] == "1"
    version = logged["client"].get_model_version(REGISTERED, logged["version"])
    assert version.status == "READY"
    assert version.run_id == logged["run_id"]


@pytest.mark.slow
def test_logged_generator_matches_the_in_memory_one(logged):
    mlflow.set_tracking_uri(logged["url"])
    G_loaded, meta = load_generator(f"models:/{REGISTERED}/{logged['version']}")
    assert meta == MODEL_META
    G_inf = inference_generator(logged["G"])
    x, c = torch.from_numpy(logged["x"]), torch.from_numpy(logged["c"])
    with torch.no_grad():
        expected = G_inf(x, c)
        torch.testing.assert_close(G_loaded(x, c), expected, atol=1e-5, rtol=0)
        # Per-image normalisation, as the training-mode forward of the official test code.
        torch.testing.assert_close(expected, copy.deepcopy(logged["G"]).train()(x, c), atol=1e-5, rtol=0)
        # The batch dimension is dynamic: one face, and five.
        torch.testing.assert_close(G_loaded(x[:1], c[:1]), expected[:1], atol=1e-5, rtol=0)
        x5, c5 = x[[0, 1, 0, 1, 0]], torch.eye(3)[[0, 1, 2, 0, 1]]
        torch.testing.assert_close(G_loaded(x5, c5), G_inf(x5, c5), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_logged_generator_as_pyfunc(logged):
    mlflow.set_tracking_uri(logged["url"])
    model = mlflow.pyfunc.load_model(f"runs:/{logged['run_id']}/generator")
    out = model.predict({"image": logged["x"], "labels": logged["c"]})
    assert out.dtype == np.float32 and out.shape == logged["x"].shape
    with torch.no_grad():
        expected = inference_generator(logged["G"])(torch.from_numpy(logged["x"]), torch.from_numpy(logged["c"]))
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5, rtol=0)
    info = mlflow.models.get_model_info(f"models:/{REGISTERED}/{logged['version']}")
    assert set(info.flavors) >= {"pytorch", "python_function"}
    assert [s["name"] for s in info.signature.inputs.to_dict()] == ["image", "labels"]
    assert info.saved_input_example_info is not None


@pytest.mark.slow
def test_resume_appends_to_the_same_run(logged):
    client = logged["client"]
    run_id = logged["run_id"]
    tracker = make_tracker(True, logged["url"], "palsygan-tests", run_name=None, run_id=run_id)
    assert tracker.run_id == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    tracker.log_params({"optim": {"g_lr": 1e-4}})  # unchanged: accepted
    with pytest.raises(ValueError, match="optim.g_lr"):
        tracker.log_params({"optim": {"g_lr": 2e-4}})
    tracker.log_metrics({"D/loss_gp": 0.3}, 30)
    tracker.finish()

    experiment = client.get_experiment_by_name("palsygan-tests")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "D/loss_gp")] == [10, 20, 30]


@pytest.mark.slow
def test_failed_block_marks_the_run_failed(mlflow_server):
    with pytest.raises(RuntimeError):
        with make_tracker(True, mlflow_server, "palsygan-failing", run_name=None) as tracker:
            raise RuntimeError("boom")
    assert MlflowClient(mlflow_server).get_run(tracker.run_id).info.status == "FAILED"


def test_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    G = _generator()
    x, c = _example()
    art = (tmp_path / "art").as_uri()
    with make_tracker(True, uri, "palsygan-sqlite", "tiny", artifact_location=art) as tracker:
        tracker.log_params({"loss": {"lambda_gp": 10.0}})
        tracker.log_metrics({"G/loss_rec": 0.5}, 1)
        grid = sample_grid(G, torch.from_numpy(x), LABELS, 3, multi_label=False)
        tracker.log_image(grid, "samples", 1)
        with pytest.raises(ValueError, match="series key"):
            tracker.log_image(grid, "samples/step_00000001.png", 1)
        version = tracker.log_generator(G, MODEL_META, (x[:1], c[:1]), None)  # a one-face example
        run_id = tracker.run_id
    assert version is None

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"loss.lambda_gp": "10.0"}
    assert client.get_metric_history(run_id, "G/loss_rec")[0].value == 0.5
    np.testing.assert_array_equal(_read_image(client, run_id, "samples", 1, tmp_path), grid)
    assert (tmp_path / "art").is_dir()
    mlflow.set_tracking_uri(uri)
    G_loaded, meta = load_generator(f"runs:/{run_id}/generator")
    assert meta["labels"] == LABELS
    one = mlflow.pyfunc.load_model(f"runs:/{run_id}/generator").predict({"image": x[:1], "labels": c[:1]})
    assert one.shape == (1, 3, 32, 32)
    with torch.no_grad():
        expected = inference_generator(G)(torch.from_numpy(x), torch.from_numpy(c))
        # Exported from a one-face example, the batch dimension is still dynamic.
        torch.testing.assert_close(G_loaded(torch.from_numpy(x), torch.from_numpy(c)), expected, atol=1e-5, rtol=0)


def test_null_tracker_does_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'would-be.db'}")
    tracker = make_tracker(False, f"sqlite:///{tmp_path / 'mlflow.db'}", "never", "never")
    assert isinstance(tracker, NullTracker)
    with tracker:
        tracker.log_params({"a": {"b": 1}})
        tracker.log_dataset(DATASET_URL, DIGEST, {"labels": LABELS})
        tracker.log_metrics({"D/loss_gp": 1.0}, 1)
        tracker.log_image(np.zeros((4, 4, 3), np.uint8), "samples", 1)
        tracker.log_artifact(tmp_path / "missing.txt", "x")
        assert tracker.log_generator(_generator(), MODEL_META, _example(), REGISTERED) is None
        assert tracker.run_id is None
    assert list(tmp_path.iterdir()) == []
    assert mlflow.active_run() is None


def test_null_tracker_does_not_import_mlflow(repo_root):
    code = ("import sys; from training.tracking import make_tracker; "
            "t = make_tracker(False, 'sqlite:///x.db', 'e', None); t.log_metrics({'a': 1.0}, 0); t.finish(); "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'")
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True, timeout=120)
