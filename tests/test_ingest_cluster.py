"""The ingest job through spark-submit against a Spark standalone master and worker on 127.0.0.1."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A Spark standalone master and one 2-core worker, bound to 127.0.0.1."""
    work = tmp_path_factory.mktemp("spark-standalone")
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "SPARK_LOG_DIR": str(work)}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    logs = [open(work / "master.log", "w"), open(work / "worker.log", "w")]
    master = subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env, stdout=logs[0],
                              stderr=subprocess.STDOUT)
    procs = [master]
    try:
        _wait_for_port(port, master)
        worker = subprocess.Popen([spark_class, "org.apache.spark.deploy.worker.Worker", master_url,
                                   "--host", "127.0.0.1", "--cores", "2", "--memory", "3g",
                                   "--webui-port", str(worker_ui), "--work-dir", str(work / "worker")],
                                  env=env, stdout=logs[1], stderr=subprocess.STDOUT)
        procs.append(worker)
        _wait_for_port(worker_ui, worker)
        yield master_url, env, work
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


@pytest.mark.slow
def test_spark_submit_to_standalone_master(standalone_cluster, sample_dir, tmp_path):
    master_url, env, work = standalone_cluster
    # A 24-photo slice of the bundled sample, as its own legend source.
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    with open(sample_dir / "legend.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::9][:24]
    for row in rows:
        shutil.copy(sample_dir / "images" / row["image"], source / "images" / row["image"])
    with open(source / "legend.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["user.id", "image", "emotion"])
        writer.writeheader()
        writer.writerows(rows)
    salt = tmp_path / "salt"
    salt.write_bytes(b"s" * 40)

    proc = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", master_url,
         "--conf", f"spark.pyspark.python={sys.executable}", "--conf", "spark.executor.memory=2g",
         str(REPO / "jobs" / "ingest.py"), "--source", f"legend:{source}", "--output", str(tmp_path / "ds"),
         "--size", "64", "--min-row-groups", "4", "--salt-file", str(salt)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "shipped etl/ and schemas/ to the executors" in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "ds_report.json").read_text())
    assert report["counts"]["inputs"] == 24
    assert report["counts"]["reconciled"] is True
    assert report["counts"]["written"] >= 20
    assert report["verified"]["rows"] == report["counts"]["rows_in_dataset"]
    # The work really ran on the standalone worker: its executor left a folder for this application.
    assert any((work / "worker").glob("app-*/0"))
