"""The pinned stack: every member imports at its pinned version, and horovod has PyTorch and Gloo."""
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PINNED = {
    "torch": "2.13.0",
    "petastorm": "0.12.1",
    "pyarrow": "14.0.2",
    "horovod": "0.28.1",
}


@pytest.mark.parametrize(
    "module", ["torch", "pyspark", "petastorm", "pyarrow", "numpy", "pandas", "cv2", "dlib", "mlflow",
               "horovod.torch", "PIL", "matplotlib"]
)
def test_stack_member_imports(module):
    imported = importlib.import_module(module)
    assert imported is not None


def test_pinned_versions():
    import numpy
    import pandas
    import pyspark

    for module, version in PINNED.items():
        assert importlib.import_module(module).__version__.split("+")[0] == version, module
    assert numpy.__version__.startswith("1."), "pyarrow 14 needs numpy 1.x"
    assert pandas.__version__.startswith("2.2.")
    assert pyspark.__version__.startswith("4.")


def test_dlib_models_are_on_disk():
    from importlib.util import find_spec

    models = Path(find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    for name in ("shape_predictor_5_face_landmarks.dat", "shape_predictor_68_face_landmarks.dat",
                 "dlib_face_recognition_resnet_model_v1.dat"):
        assert (models / name).stat().st_size > 1_000_000, name


def test_horovod_built_with_pytorch_and_gloo():
    horovodrun = Path(sys.executable).with_name("horovodrun")
    assert horovodrun.exists() or shutil.which("horovodrun")
    out = subprocess.run([str(horovodrun), "--check-build"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "[X] PyTorch" in out
    assert "[X] Gloo" in out
    assert "[ ] MPI" in out  # built without MPI, on purpose: Gloo is the controller here


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
