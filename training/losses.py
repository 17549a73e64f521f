"""StarGAN losses as plain functions: WGAN-GP gradient penalty, domain classification, L1 reconstruction.

Reductions run in fp32 whatever the forward precision: callers may pass bf16 activations, and each
function upcasts before reducing.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def gradient_penalty(
    d: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    alpha: torch.Tensor,
) -> torch.Tensor:
    """WGAN-GP penalty mean((||dD_src(x_hat)/dx_hat||_2 - 1)^2) at x_hat = alpha*x_real + (1-alpha)*x_fake."""
    # `alpha` (N, 1, 1, 1) comes from the caller (drawn from an explicit torch.Generator), so the step
    # is deterministic. D's forward on x_hat runs under whatever autocast the caller set; the input
    # gradient (create_graph=True, so d_loss_gp back-propagates into D) and its norm are computed
    # with autocast off, in fp32.
    x_real = x_real.detach()
    x_fake = x_fake.detach().to(x_real.dtype)
    alpha = alpha.to(device=x_real.device, dtype=x_real.dtype)
    x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
    out_src, _ = d(x_hat)
    with torch.autocast(x_hat.device.type, enabled=False):
        # Autograd returns the gradient in x_hat's dtype (fp32) even when D ran in bf16.
        (dydx,) = torch.autograd.grad(
            outputs=out_src,
            inputs=x_hat,
            grad_outputs=torch.ones_like(out_src),
            create_graph=True,
            retain_graph=True,
        )
        dydx_l2norm = dydx.float().flatten(1).norm(2, dim=1)
        return ((dydx_l2norm - 1) ** 2).mean()


def classification_loss(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Domain classification loss of D's logits (N, c_dim) against labels (N, c_dim), or class indices (N,)."""
    # Single-label: cross-entropy with the class index of the one-hot target (official RaFD path).
    # Multi-label: binary cross-entropy with logits summed over attributes and divided by the batch
    # size (official CelebA path).
    logits = logits.float()
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum") / logits.size(0)
    if target.dim() == 2:
        target = target.argmax(dim=1)
    return F.cross_entropy(logits, target.long())


def reconstruction_loss(x_real: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Cycle-consistency loss: mean absolute error between the input and its reconstruction."""
    return (x_real.float() - x_rec.float()).abs().mean()
