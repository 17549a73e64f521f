"""jobs/translate.py as users run it, on a tiny model trained on the bundled sample; and its library."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch

from etl.decode import decode_image
from etl.process import ProcessConfig, align_image
from tiny_models import tiny_store
from training.registry import use_tracking_uri
from training.translate import GRID_MIN_CELL, TranslateConfig, UnknownTarget, load_translator, translate_photo

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("s009122d7_0001.jpg", "s010395de_0004.jpg")


@pytest.fixture(scope="module")
def store(sample_run, tmp_path_factory):
    out, _, _ = sample_run
    return tiny_store(tmp_path_factory, out / "dataset", count=1)


@pytest.fixture(scope="module")
def labels(sample_run):
    return sample_run[1]["labels"]


@pytest.fixture(scope="module")
def no_face(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "no-face.png"
    noise = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.GaussianBlur(noise, (0, 0), 3))
    return path


def _translate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    return subprocess.run([sys.executable, "jobs/translate.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_every_target_a_grid_and_paste_back_from_the_registry(store, labels, sample_dir, no_face, tmp_path):
    photos = [sample_dir / "images" / name for name in PHOTOS]
    proc = _translate(*map(str, photos), str(no_face), "--model", f"models:/{store.name}/1",
                      "--tracking-uri", store.tracking_uri, "--output", str(tmp_path), "--paste-back")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"{no_face}: no usable face" in log  # named, and the others still translated
    assert "translated 2 of 3 photos" in log
    size = 32  # the tiny model's own size, from its metadata
    for photo in photos:
        folder = tmp_path / photo.stem
        assert cv2.imread(str(folder / "aligned.png")).shape == (size, size, 3)
        for label in labels:
            assert cv2.imread(str(folder / f"{label}.png")).shape == (size, size, 3)
            original = decode_image(photo.read_bytes())
            assert cv2.imread(str(folder / "pasted" / f"{label}.png")).shape == original.shape
        grid = cv2.imread(str(folder / "grid.png"))
        header = grid.shape[0] - GRID_MIN_CELL
        assert 0 < header <= GRID_MIN_CELL // 2
        assert grid.shape[1:] == (GRID_MIN_CELL * (1 + len(labels)), 3)
        assert len(list(folder.glob("*.png"))) == 2 + len(labels)
    assert not (tmp_path / no_face.stem).exists()


def test_chosen_targets_only_named_as_the_vocabulary_allows(store, sample_dir, tmp_path):
    photo = sample_dir / "images" / PHOTOS[0]
    model = ["--model", f"models:/{store.name}/1", "--tracking-uri", store.tracking_uri, "--output", str(tmp_path)]
    proc = _translate(str(photo), *model, "--targets", "happy, Neutral,happiness")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 targets (happiness, neutral)" in proc.stderr
    folder = tmp_path / photo.stem
    assert sorted(p.name for p in folder.iterdir()) == ["aligned.png", "grid.png", "happiness.png", "neutral.png"]
    assert cv2.imread(str(folder / "grid.png")).shape[1] == 3 * GRID_MIN_CELL

    # A rerun into the same folder replaces the earlier run's images.
    proc = _translate(str(photo), *model, "--targets", "sad", "--paste-back")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 target (sadness)" in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["aligned.png", "grid.png", "pasted", "sadness.png"]
    assert [p.name for p in (folder / "pasted").iterdir()] == ["sadness.png"]
    proc = _translate(str(photo), *model, "--targets", "neutral")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["aligned.png", "grid.png", "neutral.png"]


def test_unknown_target_lists_the_known_ones(store, labels, sample_dir, tmp_path):
    proc = _translate(str(sample_dir / "images" / PHOTOS[0]), "--model", f"models:/{store.name}/1",
                      "--tracking-uri", store.tracking_uri, "--output", str(tmp_path), "--targets", "happiness,smirk")
    assert proc.returncode == 2
    assert "unknown target expression 'smirk'; the model knows: " + ", ".join(labels) in proc.stderr
    assert not any(tmp_path.iterdir())


def test_only_photos_without_a_face_exit_1_and_are_named(store, no_face, tmp_path):
    proc = _translate(str(no_face), "--model", f"models:/{store.name}/1", "--tracking-uri", store.tracking_uri,
                      "--output", str(tmp_path))
    assert proc.returncode == 1
    assert f"{no_face}: no usable face (no_face: no face detected" in proc.stderr
    assert "translated 0 of 1 photos" in proc.stderr


def test_missing_model_or_photo_is_a_usage_error(store, sample_dir, tmp_path):
    photo = str(sample_dir / "images" / PHOTOS[0])
    # An alias that was never set: the model does not exist.
    proc = _translate(photo, "--model", f"models:/{store.name}@never-set", "--tracking-uri", store.tracking_uri)
    assert proc.returncode == 2 and "model not found" in proc.stderr
    proc = _translate(str(tmp_path / "absent.jpg"), "--model", f"models:/{store.name}/1",
                      "--tracking-uri", store.tracking_uri)
    assert proc.returncode == 2 and "no such photo or folder" in proc.stderr


def test_checkpoint_and_registered_model_translate_alike_and_align_as_the_etl(store, sample_dir):
    use_tracking_uri(store.tracking_uri)
    try:
        registered = load_translator(f"models:/{store.name}/1")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    checkpoint = load_translator(str(store.checkpoints[0]))
    assert checkpoint.labels == registered.labels and checkpoint.image_size == registered.image_size == 32
    assert checkpoint.run_id == registered.run_id == store.run_ids[0]

    rgb = decode_image((sample_dir / "images" / PHOTOS[1]).read_bytes())
    config = TranslateConfig(targets=("sadness", "surprise"))
    a, b = translate_photo(registered, rgb, config), translate_photo(checkpoint, rgb, config)
    # The same aligned face as the ETL's per-image work produces, at the model's size.
    np.testing.assert_array_equal(a.face.image, align_image(rgb, ProcessConfig(size=32))[0])
    assert list(a.outputs) == ["sadness", "surprise"]
    for target in a.outputs:  # exported (pt2) and eager generator agree to rounding
        assert np.abs(a.outputs[target].astype(int) - b.outputs[target].astype(int)).max() <= 1
    x = registered.to_input(a.face.image[None])
    c = registered.target_vectors(["anger"], 1)[0]
    torch.testing.assert_close(registered(x, c), checkpoint(x, c), atol=1e-4, rtol=1e-4)
    with pytest.raises(UnknownTarget, match="the model knows: neutral"):
        translate_photo(checkpoint, rgb, TranslateConfig(targets=("smirk",)))
