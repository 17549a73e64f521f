"""The Dockerfiles (not buildable here: no Docker engine) pin the same stack as pyproject and constraints."""
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraint(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        locked, _, version = line.partition("==")
        if version and _normalise(locked) == _normalise(name):
            return version
    raise AssertionError(f"{name} is not locked in constraints.txt")


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_pins_match_the_project(dockerfile):
    text = (REPO / "docker" / dockerfile).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert args["TORCH_VERSION"] == torch_pin.split("==")[1] == _constraint("torch")
    assert args["HOROVOD_VERSION"] == _constraint("horovod")
    # Both images go through the same set-up script as CI, so every other pin comes from constraints.txt.
    assert "scripts/setup_env.sh" in text
    assert "openjdk-17" in text
    assert "MLFLOW_DISABLE_TELEMETRY=true" in text


def test_pyproject_and_constraints_agree():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for dep in pyproject["project"]["dependencies"]:
        if "==" in dep:
            name, version = dep.split("==")
            assert _constraint(name.strip()) == version.strip(), name
