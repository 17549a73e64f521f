"""The generator as used for inference: a detached copy that normalises every image by its own statistics.

The networks use InstanceNorm2d(track_running_stats=True), as the official StarGAN code. In eval()
mode such a layer normalises with the running averages instead of each image's statistics, which the
generator never trained with, and the translations degrade badly (yunjey/stargan issue #102); the
official test code never calls eval(), so it normalises per image (and, as a side effect, keeps
updating the running averages). `inference_generator` reproduces that arithmetic without touching the
training model: it returns an eval()-mode copy whose instance-norm layers use per-image statistics
and hold no running buffers. Training samples and the exported MLflow model both use it, so the
grid logged during training shows exactly what the registered model produces.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm


def inference_generator(G: nn.Module, device: str | torch.device | None = None) -> nn.Module:
    """An eval()-mode, gradient-free fp32 copy of G that normalises each image by its own statistics."""
    # Copy weights and buffers but not gradients (the memo maps each .grad to None).
    G_inf = copy.deepcopy(G, memo={id(p.grad): None for p in G.parameters() if p.grad is not None})
    if device is not None:
        G_inf = G_inf.to(device)
    G_inf = G_inf.float().eval().requires_grad_(False)
    for module in G_inf.modules():
        if isinstance(module, _InstanceNorm) and module.track_running_stats:
            # Per-image statistics in eval() too, and no buffers to update or export.
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
    return G_inf
