"""jobs/evaluate.py and jobs/champion.py as users run them on two tiny models; the summary arithmetic."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tiny_models import tiny_store
from training.asymmetry import MEASURES
from training.evaluation import PLOTS, Evaluation, metric_label, summarise
from training.expression_classifier import TrainedClassifier, load_classifier
from training.registry import CHAMPION_ALIAS, set_champion

REPO = Path(__file__).resolve().parents[1]
METRIC = "eval/target_accuracy_balanced"
PER_TARGET = ("target_accuracy", "target_accuracy_balanced", "identity_distance", "identity_same_person_rate",
              "face_detected_rate", "cycle_l1", *(f"asymmetry/{m}" for m in MEASURES),
              *(f"asymmetry_change/{m}" for m in MEASURES))
OVERALL = ("faces", "target_accuracy", "target_accuracy_balanced", "classification_error", "identity_distance",
           "identity_same_person_rate", "face_detected_rate", "cycle_l1",
           *(f"{kind}/{m}" for kind in ("asymmetry", "asymmetry_input", "asymmetry_change") for m in MEASURES),
           "classifier/real_accuracy", "classifier/real_accuracy_balanced", "classifier/train_accuracy")


def _job(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    return subprocess.run([sys.executable, f"jobs/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def evaluated(sample_run, tmp_path_factory):
    """Two tiny versions, each evaluated by jobs/evaluate.py (8 test faces, a quick classifier)."""
    out, report, _ = sample_run
    store = tiny_store(tmp_path_factory, out / "dataset", count=2)
    work = tmp_path_factory.mktemp("evaluate")
    logs = []
    for version in store.versions:
        proc = _job("evaluate.py", "--model", f"models:/{store.name}/{version}", "--tracking-uri", store.tracking_uri,
                    "--output", str(work / "reports"), "--classifier-cache", str(work / "classifiers"),
                    "--classifier-epochs", "5", "--max-faces", "8", "--example-faces", "3", "--threads", "1")
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        logs.append(proc.stderr)
    return store, report["labels"], work, logs


def test_evaluate_logs_every_metric_and_plot_to_the_model_run(evaluated, tmp_path):
    store, labels, work, logs = evaluated
    client = MlflowClient(store.tracking_uri)
    for run_id in store.run_ids:
        metrics = client.get_run(run_id).data.metrics
        expected = [f"eval/{name}" for name in OVERALL] + [
            f"eval/by_target/{metric_label(label)}/{name}" for label in labels for name in PER_TARGET]
        assert not [name for name in expected if name not in metrics]
        assert metrics["eval/faces"] == 8
        assert metrics["eval/classification_error"] == pytest.approx(1 - metrics["eval/target_accuracy"])
        for name in expected:
            assert np.isfinite(metrics[name]), name
        for name in ("target_accuracy", "target_accuracy_balanced", "identity_same_person_rate", "face_detected_rate"):
            assert 0 <= metrics[f"eval/{name}"] <= 1
        assert metrics["eval/identity_distance"] > 0 and metrics["eval/cycle_l1"] > 0
        # The figures read back equal the local report's.
        report = json.loads((work / "reports" / run_id / "metrics.json").read_text())
        assert all(metrics[k] == pytest.approx(v) for k, v in report.items())

        names = {a.path for a in client.list_artifacts(run_id, "eval")}
        assert {f"eval/{p}" for p in (*PLOTS, "per_target.csv", "metrics.json")} <= names
        classifier_files = client.list_artifacts(run_id, "eval/classifier")
        assert len(classifier_files) == 1
        local = Path(client.download_artifacts(run_id, "eval", str(tmp_path / run_id)))
        for plot in PLOTS:
            image = cv2.imread(str(local / plot))
            assert image is not None and image.shape[0] > 100 and image.std() > 0, plot
        rows = (local / "per_target.csv").read_text().splitlines()
        assert rows[0].startswith("target,") and [r.split(",")[0] for r in rows[1:]] == labels
        classifier = load_classifier(local / "classifier" / classifier_files[0].path.rsplit("/", 1)[-1])
        assert list(classifier.labels) == labels and classifier.image_size == 32
        run = client.get_run(run_id)
        assert run.data.tags["eval.model_uri"].startswith(f"models:/{store.name}/")
    assert "reusing the expression classifier" in logs[1]  # both versions judged by the same classifier


def test_champion_moves_to_the_better_run(evaluated):
    store, _, _, logs = evaluated
    client = MlflowClient(store.tracking_uri)
    values = {v: client.get_run(r).data.metrics[METRIC] for v, r in zip(store.versions, store.run_ids)}
    best = max(values, key=lambda v: (values[v], int(v)))
    # evaluate.py re-picked the champion after each evaluation.
    assert str(client.get_model_version_by_alias(store.name, CHAMPION_ALIAS).version) == best
    assert f"champion of {store.name}: version {best}" in logs[1]

    # Make the other version clearly better on a metric: the alias follows, through jobs/champion.py.
    other = next(v for v in store.versions if v != best)
    other_run = store.run_ids[store.versions.index(other)]
    client.log_metric(other_run, "eval/identity_distance", 0.01)
    client.log_metric(store.run_ids[store.versions.index(best)], "eval/identity_distance", 0.9)
    proc = _job("champion.py", "--registered-model", store.name, "--metric", "eval/identity_distance",
                "--tracking-uri", store.tracking_uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(client.get_model_version_by_alias(store.name, CHAMPION_ALIAS).version) == other
    # And back, by a metric where higher is better.
    client.log_metric(store.run_ids[store.versions.index(best)], METRIC, 2.0)
    choice = set_champion(client, store.name, METRIC, "max")
    assert choice.version == best and choice.value == 2.0
    assert str(client.get_model_version_by_alias(store.name, CHAMPION_ALIAS).version) == best

    proc = _job("champion.py", "--registered-model", store.name, "--metric", "eval/not_a_metric",
                "--tracking-uri", store.tracking_uri)
    assert proc.returncode == 2 and "known: ['eval/classification_error'" in proc.stderr


def test_translate_uses_the_champion_by_default(evaluated, sample_dir, tmp_path):
    store, labels, _, _ = evaluated
    proc = _job("translate.py", str(sample_dir / "images" / "s009122d7_0001.jpg"), "--tracking-uri",
                store.tracking_uri, "--model", f"models:/{store.name}@{CHAMPION_ALIAS}", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "s009122d7_0001").glob("*.png"))) == 2 + len(labels)
    spec = importlib.util.spec_from_file_location("translate_job", REPO / "jobs" / "translate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.parse_args(["photo.jpg"]).model == "models:/palsygan-stargan@champion"
    assert job.parse_args(["photo.jpg"]).tracking_uri == f"sqlite:///{REPO / 'output' / 'mlflow.db'}"


def test_summary_arithmetic_on_a_known_evaluation():
    labels = ("neutral", "happiness")
    # Inputs: three neutral faces, one happy. Target 0 (neutral): all four judged neutral. Target 1: only the
    # happy face and one neutral face judged happy -> accuracy 2/4, balanced (1/3 + 1/1) / 2.
    predicted = np.array([[0, 0, 0, 0], [1, 0, 0, 1]])
    source = np.array([0, 0, 0, 1])
    identity = np.array([[0.1, 0.5, 0.7, 0.2], [0.3, 0.65, 0.4, 0.59]])
    base = {m: np.zeros(4) for m in MEASURES}
    base["eye_aperture_ratio"] = np.ones(4)
    out = {m: np.zeros((2, 4)) for m in MEASURES}
    out["eye_aperture_ratio"] = np.ones((2, 4))
    out["eye_aperture_ratio"][0] = [2.0, 0.5, 1.0, 1.0]  # one eye twice the other's aperture, either side
    out["mouth_corner_height_diff"][1] = [0.1, -0.1, 0.0, 0.2]  # happiness lifts corners unevenly
    ev = Evaluation(targets=labels, labels=labels, source_index=source, predicted=predicted, identity=identity,
                    detected=np.array([[True, True, False, True], [True] * 4]), cycle_l1=np.full((2, 4), 0.25),
                    asymmetry_input=base, asymmetry_output=out, examples=np.zeros((10, 10, 3), np.uint8))
    classifier = TrainedClassifier(model=None, labels=labels, image_size=32,
                                   metrics={"real_accuracy": 0.5, "real_accuracy_balanced": 0.4,
                                            "real_recall/happiness": 1.0})
    m = summarise(ev, classifier)
    assert m["eval/target_accuracy"] == pytest.approx(6 / 8)
    assert m["eval/by_target/happiness/target_accuracy"] == pytest.approx(0.5)
    assert m["eval/by_target/happiness/target_accuracy_balanced"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["eval/target_accuracy_balanced"] == pytest.approx((1 + (1 / 3 + 1) / 2) / 2)
    assert m["eval/classification_error"] == pytest.approx(2 / 8)
    assert m["eval/by_target/neutral/identity_same_person_rate"] == pytest.approx(3 / 4)
    assert m["eval/identity_same_person_rate"] == pytest.approx(6 / 8)
    assert m["eval/identity_distance"] == pytest.approx(identity.mean())
    assert m["eval/face_detected_rate"] == pytest.approx(7 / 8)
    assert m["eval/by_target/happiness/asymmetry/mouth_corner_height_diff"] == pytest.approx(0.1)
    assert m["eval/by_target/happiness/asymmetry_change/mouth_corner_height_diff"] == pytest.approx(0.1)
    assert m["eval/asymmetry_change/mouth_corner_height_diff"] == pytest.approx(0.05)
    assert m["eval/asymmetry_input/eye_aperture_ratio"] == 0.0
    assert m["eval/by_target/neutral/asymmetry/eye_aperture_ratio"] == pytest.approx(0.25)
    assert m["eval/classifier/real_recall/happiness"] == 1.0 and m["eval/classifier/real_accuracy"] == 0.5
