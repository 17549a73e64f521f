"""Shared fixtures: one Spark local session per test run, paths to the bundled sample and the full set."""
import os
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
