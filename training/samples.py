"""The training sample grid: fixed faces translated to every target expression, with labelled columns."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from training.data import to_uint8_images
from training.inference import inference_generator

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MIN_FONT_SCALE = 0.3


def target_columns(c_dim: int, multi_label: bool, c_fixed: torch.Tensor | None, n: int,
                   device: torch.device) -> list[torch.Tensor]:
    """One (n, c_dim) label batch per column: one-hot per label, or attribute j flipped for multi-label."""
    columns = []
    for j in range(c_dim):
        if multi_label and c_fixed is not None:
            # As the official code does for attributes: flip attribute j of each face's own labels.
            c = c_fixed.to(device=device, dtype=torch.float32).clone()
            c[:, j] = 1.0 - c[:, j]
        else:
            c = torch.zeros(n, c_dim, device=device)
            c[:, j] = 1.0
        columns.append(c)
    return columns


def _fit(text: str, cell: int, height: int) -> tuple[float, int, int, int]:
    """Font scale that fits `text` in a cell x height box, and the text's width, height and baseline then."""
    (w, h), baseline = cv2.getTextSize(text, _FONT, 1.0, 1)
    scale = min(1.0, (cell - 4) / max(w, 1), (height - 4) / max(h + baseline, 1))
    (w, h), baseline = cv2.getTextSize(text, _FONT, max(scale, _MIN_FONT_SCALE), 1)
    return scale, w, h, baseline


def _draw_header(names: Sequence[str], cell: int) -> np.ndarray:
    """A white strip with each name centred in its `cell`-pixel-wide column."""
    height = max(16, cell // 4)
    strip = np.full((height, cell * len(names), 3), 255, np.uint8)
    for i, name in enumerate(names):
        text = name
        scale, w, h, baseline = _fit(text, cell, height)
        while scale < _MIN_FONT_SCALE and len(text) > 1:  # too long for the cell even small: shorten it
            text = text[:-1]
            scale, w, h, baseline = _fit(text, cell, height)
        origin = (i * cell + max(0, (cell - w) // 2), (height - h - baseline) // 2 + h)
        cv2.putText(strip, text, origin, _FONT, max(scale, _MIN_FONT_SCALE), (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def sample_grid(
    G: nn.Module,
    x_fixed: torch.Tensor,
    labels: Sequence[str],
    c_dim: int,
    multi_label: bool,
    c_fixed: torch.Tensor | None = None,
) -> np.ndarray:
    """Rows = fixed faces; columns = input + one per target label, headed by the label names; uint8 RGB."""
    # G itself is not touched (mode, buffers, grads): the translations come from its inference copy
    # (see training.inference), which normalises per image as StarGAN's own test code does.
    if len(labels) != c_dim:
        raise ValueError(f"got {len(labels)} label names for c_dim={c_dim}")
    n = x_fixed.shape[0]
    device = x_fixed.device
    G_inf = inference_generator(G, device)

    with torch.no_grad():
        columns = [x_fixed] + [G_inf(x_fixed, c) for c in target_columns(c_dim, multi_label, c_fixed, n, device)]
    return labelled_grid([to_uint8_images(col) for col in columns], ["input", *labels])


def labelled_grid(columns: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Columns of uint8 (n, H, W, 3) faces side by side under a header naming each column; uint8 RGB."""
    if len(columns) != len(names) or not columns:
        raise ValueError(f"got {len(columns)} columns for {len(names)} names")
    shapes = {np.shape(col) for col in columns}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[-1] != 3:
        raise ValueError(f"columns must all be (n, H, W, 3) arrays of one shape, got {sorted(shapes)}")
    body = np.concatenate([np.concatenate(list(col), axis=0) for col in columns], axis=1)  # (n*H, cols*W, 3)
    header = _draw_header(list(names), columns[0].shape[2])
    return np.ascontiguousarray(np.concatenate([header, body.astype(np.uint8, copy=False)], axis=0))
