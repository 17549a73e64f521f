"""jobs/train.py as users run it: horovodrun -np 2 with Gloo, MLflow over SQLite and over HTTP, kill + resume."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
HOROVODRUN = str(Path(sys.executable).with_name("horovodrun"))
# A tiny StarGAN (32 px, 8 channels) so that a few iterations take seconds on 2 cores.
TINY = ["--preset", "cpu_small", "--image-size", "32", "--g-conv-dim", "8", "--d-conv-dim", "8",
        "--g-repeat-num", "1", "--d-repeat-num", "3", "--batch-size", "4", "--n-critic", "2", "--threads", "1",
        "--no-progress"]


def _train_command(dataset: Path, tmp_path: Path, tracking_uri: str, *extra: str) -> list[str]:
    return [str(REPO / "jobs" / "train.py"), "--dataset", dataset.as_uri(), *TINY,
            "--tracking-uri", tracking_uri, "--checkpoint-dir", str(tmp_path / "ckpt"), *extra]


def _run(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


@pytest.mark.slow
def test_horovodrun_two_workers_identical_weights_and_one_run(sample_run, tmp_path):
    out, report, _ = sample_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable,
                 *_train_command(out / "dataset", tmp_path, uri, "--num-iters", "8", "--log-every", "2",
                                 "--sample-every", "4", "--checkpoint-every", "4", "--experiment", "hvd")])
    log = proc.stdout + proc.stderr
    assert "on 2 workers" in log
    client = MlflowClient(uri, registry_uri=uri)
    run = _only_run(client, "hvd")  # two ranks, exactly one run
    assert run.data.params["workers"] == "2"
    assert run.data.params["device_type"] == "cpu"
    assert "Horovod cycle time 20.0 ms" in log  # the CPU default, set before hvd.init()
    assert run.data.params["train.model.c_dim"] == str(len(report["labels"]))
    # G and D weights identical on both ranks after training, measured on the ranks themselves.
    assert run.data.metrics["dist/G_max_abs_diff"] == 0.0
    assert run.data.metrics["dist/D_max_abs_diff"] == 0.0
    history = client.get_metric_history(run.info.run_id, "D/loss_gp")
    assert [m.step for m in history] == [2, 4, 6, 8]
    assert all(np.isfinite(m.value) for m in history)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "G/loss_rec")] == [2, 4, 6, 8]
    checkpoints = list_checkpoints(tmp_path / "ckpt")
    assert [step for step, _ in checkpoints] == [4, 8]
    state = load_checkpoint(checkpoints[-1][1])
    assert state["model_meta"]["labels"] == report["labels"]
    assert client.search_model_versions("name = 'palsygan-stargan'")[0].run_id == run.info.run_id


@pytest.mark.slow
def test_training_against_a_real_mlflow_server(sample_run, mlflow_server, tmp_path):
    out, report, _ = sample_run
    _run([sys.executable, *_train_command(out / "dataset", tmp_path, mlflow_server, "--num-iters", "4",
                                          "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "4",
                                          "--experiment", "over-http", "--registered-model", "stargan-http")])
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    run = _only_run(client, "over-http")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.optim.n_critic"] == "2"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "G/loss_rec")]
    # The sample grid image, downloaded over HTTP: rows of faces x (input + every expression).
    images = client.list_artifacts(run.info.run_id, "images") + client.list_artifacts(run.info.run_id, "samples")
    assert images, "no sample grid logged"
    version = client.search_model_versions("name = 'stargan-http'")[0]
    assert version.run_id == run.info.run_id
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/stargan-http/{version.version}")
    assert model.metadata.metadata["labels"] == report["labels"]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_from_an_intact_checkpoint(sample_run, tmp_path):
    out, _, _ = sample_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, *_train_command(out / "dataset", tmp_path, uri, "--num-iters", "60",
                                               "--log-every", "2", "--sample-every", "0",
                                               "--checkpoint-every", "2", "--experiment", "resume",
                                               "--registered-model", "")]
    victim = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any(step >= 6 for step, _ in list_checkpoints(tmp_path / "ckpt")):
            assert victim.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.05)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    intact = latest_checkpoint(tmp_path / "ckpt")
    resumed = load_checkpoint(intact)  # before the rerun prunes it
    resumed_at = resumed["step"]
    assert 6 <= resumed_at < 60

    proc = _run(command)
    log = proc.stdout + proc.stderr
    assert f"resuming from {intact} at step {resumed_at}" in log
    assert "finished at step 60" in log
    client = MlflowClient(uri, registry_uri=uri)
    run = _only_run(client, "resume")  # the rerun continued the killed job's run
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "D/loss_real")]
    assert steps[-1] == 60 and resumed_at + 2 in steps
    final = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    assert final["step"] == 60
    # The optimizers' state was resumed too: Adam's step counts are the updates made since the start of
    # the first run (G is updated every n_critic iterations), none lost or added by the resume.
    n_critic = final["config"]["train.optim.n_critic"]
    for name, updates_at in (("d_opt", lambda step: step), ("g_opt", lambda step: step // n_critic)):
        assert {float(s["step"]) for s in resumed[name]["state"].values()} == {updates_at(resumed_at)}, name
        assert {float(s["step"]) for s in final[name]["state"].values()} == {updates_at(60)}, name


def test_device_choice():
    from training.trainer import device_type

    assert device_type("cpu") == "cpu"
    assert device_type("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        device_type("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            device_type("cuda")


def test_an_explicit_horovod_cycle_time_wins(tmp_path):
    # horovodrun --cycle-time-ms sets HOROVOD_CYCLE_TIME for its workers; the trainer's default must not replace it.
    code = ("import os; from training.distributed import Workers; Workers(cycle_time_ms=20.0); "
            "print('CYCLE', os.environ['HOROVOD_CYCLE_TIME'])")
    for env, expected in (({}, "20.0"), ({"HOROVOD_CYCLE_TIME": "3.5"}, "3.5")):
        base = {k: v for k, v in os.environ.items() if k != "HOROVOD_CYCLE_TIME"}
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**base, **env})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"CYCLE {expected}" in proc.stdout
