"""Training checkpoints: one file per saved step holding the whole training state, written atomically.

A checkpoint is one `torch.save`d dict (see `make_state`): G, D, both optimizers, the step, the RNG
states, the MLflow run id, the model metadata and the config as a plain dict. Schedules are pure
functions of the step (`lr_at`), so the step is their whole state. Files are `ckpt-{step:08d}.pt`;
each is written to a temporary file in the same directory, fsynced, renamed over its final name and
the directory fsynced, so a reader sees either the complete previous set or the complete new file,
never a partial one, and there is no separate "latest" pointer that could be stale or half-written.
One writer per directory (rank 0); rank 0 loads and broadcasts.

Loading uses `torch.load(weights_only=True)`: only tensors and plain containers/primitives are
unpickled, never arbitrary classes, so a tampered checkpoint cannot execute code. Everything in the
state is therefore tensors, dicts, lists, tuples, str, int, float, bool or None.

RNG: the trainer draws every random number it needs (target labels, gradient-penalty weights) from
one explicit `torch.Generator`; its state and torch's global CPU RNG (and the current CUDA device's,
when CUDA is up) are saved. numpy's and Python's global RNGs are not: library code does not draw
from them, and the data stream position is not part of a checkpoint (a resumed job starts a fresh
pass over the data), so restoring them would not make a resume more exact. The generator state in
a checkpoint is rank 0's; other ranks must derive their own after the broadcast.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")
_TMP_PREFIX = ".ckpt-"
_TMP_SUFFIX = ".tmp"
# What torch.load / zipfile raise for a truncated, corrupt or unsafe (non-weights-only) file.
_UNREADABLE = (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)


def checkpoint_path(directory: Path, step: int) -> Path:
    """The file name of the checkpoint for `step`."""
    return Path(directory) / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in `directory`, oldest first; [] if it does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _fsync_directory(directory: Path) -> None:
    """Persist the directory entry changes (the rename, the unlinks)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network/FUSE filesystems refuse fsync on a directory; the rename is still atomic there.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
        logger.debug("directory fsync not supported on %s: %s", directory, exc)
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files left by a writer that was killed mid-write (one writer per directory)."""
    for entry in directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        logger.info("removing unfinished checkpoint write %s", entry)
        entry.unlink(missing_ok=True)


def save_checkpoint(directory: Path, state: dict, step: int, keep: int = 3) -> Path:
    """Write `state` atomically as ckpt-{step:08d}.pt in `directory`, then keep only the newest `keep`."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(directory)
    final = checkpoint_path(directory, step)

    # Write to a temporary file on the same filesystem, make it durable, then rename it into place.
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    logger.info("saved checkpoint %s", final)

    # Prune: the newest `keep` by step stay.
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        logger.debug("pruned checkpoint %s", old)
    _fsync_directory(directory)
    return final


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True (no code runs); tensors go to `map_location`."""
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a checkpoint dict (got {type(state).__name__})")
    return state


def _check_loadable(path: Path) -> None:
    """Raise if `path` is truncated, fails its CRCs or does not unpickle under weights_only."""
    # torch.save writes a zip archive with a CRC-32 per record: a truncated file has no central
    # directory, and testzip reads every record and checks its CRC (torch computes them by default).
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"record {bad} fails its CRC")
    # The pickle itself must load safely; mmap avoids reading the tensor data a second time.
    torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint in `directory` that loads intact; unreadable ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            _check_loadable(path)
        except _UNREADABLE as exc:
            logger.warning("skipping unreadable checkpoint %s (step %d): %s", path, step, exc)
            continue
        return path
    return None


# Training state ------------------------------------------------------------------------------------

def rng_state(generator: torch.Generator) -> dict:
    """Capture torch's global CPU RNG, the current CUDA device's RNG (if CUDA is up) and `generator`."""
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "generator": generator.get_state(),
        "generator_device": str(generator.device),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    """Restore the states captured by `rng_state` into the global RNGs and `generator`."""
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
    saved_type = torch.device(state["generator_device"]).type
    if saved_type != generator.device.type:
        # A CPU and a CUDA generator have different state layouts (Mersenne Twister vs Philox).
        logger.warning(
            "checkpoint generator was on %s, this one is on %s: keeping its current state, so "
            "random draws after the resume differ from the uninterrupted run",
            state["generator_device"], generator.device,
        )
        return
    generator.set_state(state["generator"])


def make_state(
    step: int,
    G: nn.Module,
    D: nn.Module,
    g_opt: torch.optim.Optimizer,
    d_opt: torch.optim.Optimizer,
    generator: torch.Generator,
    run_id: str | None,
    model_meta: dict,
    config: dict,
) -> dict:
    """The training state at `step` (the number of completed iterations) as a weights_only-loadable dict."""
    return {
        "format": STATE_FORMAT,
        "step": int(step),
        "run_id": run_id,
        "G": G.state_dict(),
        "D": D.state_dict(),
        "g_opt": g_opt.state_dict(),
        "d_opt": d_opt.state_dict(),
        "rng": rng_state(generator),
        "model_meta": model_meta,
        "config": config,
    }


def restore_state(
    state: dict,
    G: nn.Module,
    D: nn.Module,
    g_opt: torch.optim.Optimizer,
    d_opt: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, str | None]:
    """Load a `make_state` dict into the networks, optimizers and RNGs; return (step, run_id)."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')!r} is not the supported {STATE_FORMAT}")
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    # Optimizer.load_state_dict moves the state tensors to each parameter's device.
    g_opt.load_state_dict(state["g_opt"])
    d_opt.load_state_dict(state["d_opt"])
    restore_rng(state["rng"], generator)
    return int(state["step"]), state["run_id"]
