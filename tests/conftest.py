"""Shared fixtures: one Spark local session per test run, paths to the bundled sample and the full set."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Patient data: nothing leaves the machine, whatever a test starts.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# Spark's Python workers must run the interpreter that runs the tests (the project's venv).
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable

REPO = Path(__file__).resolve().parents[1]
# Spark pickles test-module functions by reference: its Python workers must be able to import them.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).parent), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
SAMPLE = REPO / "data" / "expressions-sample"
# The salt of every test ingest (tests must not create or read the user's own salt file).
TEST_SALT = b"0123456789abcdef0123456789abcdef-test-salt"
FULL_SET = REPO.parent / "shared" / "data" / "expressions"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository checkout."""
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled 222-image real sample (legend.csv + images/)."""
    return SAMPLE


@pytest.fixture(scope="session")
def full_set_dir() -> Path:
    """The 3,000-image set beside the checkout; skips the test when it is absent."""
    if not (FULL_SET / "legend.csv").is_file():
        pytest.skip(f"full data set not present at {FULL_SET}")
    return FULL_SET


@pytest.fixture(scope="session")
def spark():
    """A Spark local session on 127.0.0.1, shared by the whole run."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("palsygan-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("WARN")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts in a temp dir); yields its URL."""
    import contextlib
    import logging
    import signal
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:  # a free port (released just before the server binds it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log_path = root / "server.log"
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        # Clients upload over HTTP (mlflow-artifacts:/); the server writes here.
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
    ]
    with log_path.open("wb") as log:
        # Own session: the server's uvicorn child is stopped with it via the process group.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    try:
        started, deadline = time.monotonic(), time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n"
                                   f"{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        logging.getLogger(__name__).info("mlflow server healthy at %s after %.1f s", url, time.monotonic() - started)
        yield url
    finally:
        # The group is the server and the workers it started (its session, created above).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, sample_dir):
    """The ingest job run as a user runs it (python jobs/ingest.py) on the bundled sample."""
    out = tmp_path_factory.mktemp("ingest")
    salt_file = out / "salt"
    salt_file.write_bytes(TEST_SALT)
    proc = subprocess.run(
        [sys.executable, "jobs/ingest.py", "--source", f"legend:{sample_dir}", "--output", str(out / "dataset"),
         "--salt-file", str(salt_file), "--master", "local[2]", "--size", "64"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "dataset_report.json").read_text())
    return out, report, proc.stderr


@pytest.fixture(autouse=True)
def _no_mlflow_uri_leaks():
    """Reset MLflow's process-wide tracking and registry URIs after each test (some code sets them)."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
