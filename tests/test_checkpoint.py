"""Checkpoints: exact round trip of the training state, atomic writes, pruning, safe loading."""
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    make_state,
    restore_state,
    save_checkpoint,
)
from training.config import LossConfig, ModelConfig, OptimConfig, TrainConfig
from training.models import build_discriminator, build_generator
from training.steps import build_optimizers, train_iteration

WRITER = Path(__file__).parent / "scripts" / "checkpoint_writer.py"
TINY = TrainConfig(
    model=ModelConfig(image_size=32, c_dim=3, g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, d_repeat_num=2),
    loss=LossConfig(),
    optim=OptimConfig(n_critic=1, num_iters=10, num_iters_decay=5),
)


def _training_objects(seed: int):
    torch.manual_seed(seed)
    G, D = build_generator(TINY.model), build_discriminator(TINY.model)
    g_opt, d_opt = build_optimizers(G, D, TINY.optim)
    return G, D, g_opt, d_opt, torch.Generator().manual_seed(seed)


def _batch():
    data = torch.Generator().manual_seed(123)
    x = torch.rand(2, 3, 32, 32, generator=data) * 2 - 1
    return x, torch.eye(3)[[0, 2]]


def _assert_same_tensors(a, b):
    """Recursively compare nested dict/list/tuple structures of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tensors(x, y)
    else:
        assert a == b


def test_round_trip_restores_weights_optimizers_and_random_draws(tmp_path):
    G, D, g_opt, d_opt, gen = _training_objects(seed=0)
    x, c = _batch()
    for step in range(2):  # Adam state (exp_avg, exp_avg_sq, step tensors) exists after a step
        train_iteration(G, D, g_opt, d_opt, x, c, step, TINY, gen)
    state = make_state(2, G, D, g_opt, d_opt, gen, "run-123", {"labels": ["happy", "sad", "neutral"]},
                       {"model": {"image_size": 32}})
    path = save_checkpoint(tmp_path, state, step=2)

    # A fresh set of objects with different weights and RNG states.
    G2, D2, g_opt2, d_opt2, gen2 = _training_objects(seed=99)
    loaded = load_checkpoint(path)
    step, run_id = restore_state(loaded, G2, D2, g_opt2, d_opt2, gen2)

    assert (step, run_id) == (2, "run-123")
    assert loaded["model_meta"] == {"labels": ["happy", "sad", "neutral"]}
    _assert_same_tensors(G.state_dict(), G2.state_dict())
    _assert_same_tensors(D.state_dict(), D2.state_dict())
    _assert_same_tensors(g_opt.state_dict(), g_opt2.state_dict())
    _assert_same_tensors(d_opt.state_dict(), d_opt2.state_dict())
    assert isinstance(g_opt2.state_dict()["state"][0]["step"], torch.Tensor)

    # The same subsequent draws from the explicit generator (the loop draws only from it)...
    assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=gen2))
    # ...and the same next training iteration, bit for bit.
    m1 = train_iteration(G, D, g_opt, d_opt, x, c, 2, TINY, gen)
    m2 = train_iteration(G2, D2, g_opt2, d_opt2, x, c, 2, TINY, gen2)
    assert m1 == m2
    _assert_same_tensors(G.state_dict(), G2.state_dict())


def test_global_rng_is_restored(tmp_path):
    G, D, g_opt, d_opt, gen = _training_objects(seed=0)
    torch.manual_seed(7)
    path = save_checkpoint(tmp_path, make_state(0, G, D, g_opt, d_opt, gen, None, {}, {}), step=0)
    expected = torch.rand(3)
    torch.manual_seed(8)
    restore_state(load_checkpoint(path), G, D, g_opt, d_opt, gen)
    assert torch.equal(torch.rand(3), expected)


def test_pruning_keeps_the_newest(tmp_path):
    for step in (5, 10, 15, 20, 25):
        save_checkpoint(tmp_path, {"step": step}, step, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 25]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000020.pt", "ckpt-00000025.pt"]
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, {}, 30, keep=0)


def test_latest_skips_a_truncated_file(tmp_path, caplog):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.arange(10_000.0)}, 1)
    newest = save_checkpoint(tmp_path, {"step": 2, "w": torch.arange(10_000.0)}, 2)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # e.g. a non-atomic copy interrupted half way

    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "ckpt-00000001.pt"
    assert load_checkpoint(latest)["step"] == 1
    assert "ckpt-00000002.pt" in caplog.text


def test_latest_skips_a_corrupted_record(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(10_000)}, 1)
    newest = save_checkpoint(tmp_path, {"w": torch.zeros(10_000)}, 2)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the tensor data: only the CRC notices
    newest.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000001.pt"


def test_latest_of_an_empty_or_missing_directory_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


class _RunsCode:
    """Unpickling this object would run a shell command (the classic pickle attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt-00000001.pt"
    payload = {"step": 1, "G": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)

    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert latest_checkpoint(tmp_path) is None
    assert not marker.exists()


def test_sigkill_mid_write_leaves_an_intact_latest_checkpoint(tmp_path):
    rng = random.Random(0)
    killed_mid_write = 0
    for attempt in range(8):
        directory = tmp_path / f"attempt{attempt}"
        kill_at = rng.randint(3, 5)
        proc = subprocess.Popen([sys.executable, str(WRITER), str(directory)], stdout=subprocess.PIPE, text=True)
        try:
            last_saved = writing = 0
            while writing < kill_at:
                line = proc.stdout.readline()
                assert line, "writer exited early"
                kind, number = line.split()
                if kind == "saved":
                    last_saved = int(number)
                else:
                    writing = int(number)
            # Kill a few milliseconds into the write of step `kill_at` (a 20 MB save takes tens of ms).
            time.sleep(rng.uniform(0.0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()

        leftovers = [p for p in directory.iterdir() if p.name.endswith(".tmp")]
        latest = latest_checkpoint(directory)
        assert latest is not None
        state = load_checkpoint(latest)
        # Every completed save is visible, and the newest file is whole and consistent.
        assert last_saved <= state["step"] <= kill_at
        assert torch.all(state["payload"] == float(state["step"]))
        for _, path in list_checkpoints(directory):
            load_checkpoint(path)
        if leftovers:
            killed_mid_write += 1
            # The next writer clears the killed writer's temporary file.
            save_checkpoint(directory, {"step": 100}, 100)
            assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
            if attempt >= 1:
                break
    assert killed_mid_write >= 1, "no kill landed mid-write; the test did not exercise the atomic write"
