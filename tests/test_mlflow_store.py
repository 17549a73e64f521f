"""An MLflow run logged to a temporary SQLite store reads back through the client."""
import mlflow
from mlflow.tracking import MlflowClient


def test_run_logged_to_sqlite_reads_back(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = mlflow.create_experiment("stack-check", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_params({"lambda_rec": 10.0, "n_critic": 5})
            for step, value in enumerate([3.0, 2.0, 1.5]):
                mlflow.log_metric("G/loss_rec", value, step=step)
            mlflow.log_text("hello", "notes/hello.txt")
    finally:
        mlflow.set_tracking_uri(None)

    client = MlflowClient(tracking_uri=uri)
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {"lambda_rec": "10.0", "n_critic": "5"}
    history = client.get_metric_history(run.info.run_id, "G/loss_rec")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.5)]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
    assert (tmp_path / "art" / run.info.run_id / "artifacts" / "notes" / "hello.txt").read_text() == "hello"
