"""StarGAN discriminator/generator steps and the reference training iteration.

`d_step` and `g_step` only compute losses and return `(loss, {log key: float})` (D's loss as a `DLoss`
of two parts, see `d_backward`); the caller owns zero_grad / backward / optimizer.step, so the same
steps serve the single-process benchmark and the Horovod trainer. `train_iteration` is the one training
iteration both use: one D update and, every n_critic iterations, one G update, using only standard
optimizer APIs (zero_grad, step, param_groups) so Horovod's DistributedOptimizer can be passed in
unchanged.

Precision: with precision="bf16" the forward passes run under torch.autocast(device_type,
torch.bfloat16); parameters, gradients and optimizer state stay fp32, and loss reductions and the
gradient penalty's input gradient and norm are computed in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ContextManager, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from training.config import PRECISIONS, LossConfig, OptimConfig, TrainConfig, lr_at
from training.losses import classification_loss, gradient_penalty, reconstruction_loss


def autocast_for(device: str | torch.device, precision: str) -> ContextManager:
    """Context for the forward passes: bf16 autocast on `device`'s type, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Set requires_grad=False on the module's parameters inside the block, then restore their flags."""
    # Graphs built inside do not contain the parameters at all, so a later backward neither computes
    # their gradients nor fires their hooks (e.g. Horovod's allreduce hooks on D during G's backward).
    params = list(module.parameters())
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(params, previous):
            p.requires_grad_(flag)


def make_target_labels(c_org: torch.Tensor, generator: torch.Generator, multi_label: bool) -> torch.Tensor:
    """Draw target-domain labels (N, c_dim) for a batch whose original labels are c_org (N, c_dim)."""
    # Multi-label: the batch's own label vectors in a random order (official code). Single-label: a
    # uniformly random class per image, one-hot (the official code permutes here too; uniform targets
    # train every expression equally often whatever the dataset's class balance). Draws come from the
    # explicit `generator`, on its own device, and are moved to c_org's device.
    n, c_dim = c_org.shape
    if multi_label:
        perm = torch.randperm(n, generator=generator, device=generator.device).to(c_org.device)
        return c_org[perm]
    idx = torch.randint(c_dim, (n,), generator=generator, device=generator.device).to(c_org.device)
    return F.one_hot(idx, c_dim).to(c_org.dtype)


class DLoss(NamedTuple):
    """D's loss in two parts: d_loss_real + d_loss_fake + lambda_cls*d_loss_cls, and lambda_gp*d_loss_gp."""

    main: torch.Tensor
    penalty: torch.Tensor

    def total(self) -> torch.Tensor:
        """d_loss, the sum of both parts."""
        return self.main + self.penalty


def d_backward(D: nn.Module, d_loss: DLoss) -> None:
    """Accumulate d_loss's gradient into D's parameters: the penalty's part first, then the main part's."""
    # The same gradients as d_loss.total().backward(), in an order that lets a distributed optimizer
    # average them while they are computed. In one joint backward every parameter's gradient is only
    # complete at the very end (the penalty's double backward runs through D's whole graph last), so
    # each worker sits idle while they are averaged. autograd.grad fires no gradient hooks; the main
    # part's backward then completes D's gradients from the output layers (most of the parameters)
    # down, each hook firing as its layer is done.
    params = [p for p in D.parameters() if p.requires_grad]
    for p, grad in zip(params, torch.autograd.grad(d_loss.penalty, params, allow_unused=True)):
        if grad is None:
            continue
        if grad.stride() != p.stride():  # the double backward's layout: accumulate in the parameter's own
            grad = torch.empty_like(p).copy_(grad)
        p.grad = grad if p.grad is None else p.grad + grad
    d_loss.main.backward()


def d_step(
    G: nn.Module,
    D: nn.Module,
    x_real: torch.Tensor,
    c_org: torch.Tensor,
    c_trg: torch.Tensor,
    loss_cfg: LossConfig,
    alpha: torch.Tensor,
    precision: str = "fp32",
    d_update: DeferredStep | None = None,
) -> tuple[DLoss, dict[str, float]]:
    """Discriminator loss d_loss_real + d_loss_fake + lambda_cls*d_loss_cls + lambda_gp*d_loss_gp.

    A pending `d_update` (the previous iteration's) is applied once G has run, right before D is used.
    """
    device = x_real.device

    # Translate to the target domains (no graph: D's loss never reaches G).
    with torch.no_grad(), autocast_for(device, precision):
        x_fake = G(x_real, c_trg)
    if d_update is not None:
        d_update.apply()

    with autocast_for(device, precision):
        # Real and fake images in one D pass (D has no batch statistics, so this equals two passes).
        out_src, out_cls = D(torch.cat([x_real, x_fake.to(x_real.dtype)]))
        # Gradient penalty on interpolates (same autocast region: D's bf16 weight casts are reused).
        d_loss_gp = gradient_penalty(D, x_real, x_fake, alpha)

    # Compute loss with real images.
    out_src_real, out_src_fake = out_src.float().chunk(2)
    d_loss_real = -out_src_real.mean()
    d_loss_cls = classification_loss(out_cls[: x_real.size(0)], c_org, loss_cfg.multi_label)

    # Compute loss with fake images.
    d_loss_fake = out_src_fake.mean()

    d_loss = DLoss(d_loss_real + d_loss_fake + loss_cfg.lambda_cls * d_loss_cls, loss_cfg.lambda_gp * d_loss_gp)
    return d_loss, {
        "D/loss_real": d_loss_real.item(),
        "D/loss_fake": d_loss_fake.item(),
        "D/loss_cls": d_loss_cls.item(),
        "D/loss_gp": d_loss_gp.item(),
    }


def g_step(
    G: nn.Module,
    D: nn.Module,
    x_real: torch.Tensor,
    c_org: torch.Tensor,
    c_trg: torch.Tensor,
    loss_cfg: LossConfig,
    precision: str = "fp32",
    d_update: DeferredStep | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Generator loss g_loss_fake + lambda_rec*g_loss_rec + lambda_cls*g_loss_cls, with D frozen.

    A pending `d_update` is applied after G's first pass, right before D is used.
    """
    device = x_real.device

    # One autocast region: G's bf16 weight casts serve both of its passes.
    with autocast_for(device, precision):
        # Original-to-target domain.
        x_fake = G(x_real, c_trg)
        if d_update is not None:
            d_update.apply()  # an optimizer step: no autocast op
        # D's verdict and target-to-original domain, with D's parameters out of the graph.
        with frozen(D):
            out_src, out_cls = D(x_fake)
            x_reconst = G(x_fake, c_org)

    g_loss_fake = -out_src.float().mean()
    g_loss_cls = classification_loss(out_cls, c_trg, loss_cfg.multi_label)
    g_loss_rec = reconstruction_loss(x_real, x_reconst)

    g_loss = g_loss_fake + loss_cfg.lambda_rec * g_loss_rec + loss_cfg.lambda_cls * g_loss_cls
    return g_loss, {
        "G/loss_fake": g_loss_fake.item(),
        "G/loss_rec": g_loss_rec.item(),
        "G/loss_cls": g_loss_cls.item(),
    }


class StepHooks:
    """Callbacks between backward and optimizer.step(); the defaults do nothing."""

    # A trainer subclasses this for work on freshly computed gradients (gradient statistics,
    # clipping). Horovod correctness needs no hook: d_step's graph never contains G's parameters and
    # g_step freezes D, so each DistributedOptimizer only sees its own network's gradients, and its
    # step() synchronizes them.

    def before_d_step(self, d_opt: torch.optim.Optimizer) -> None:
        """Called after D's backward, before d_opt.step()."""

    def before_g_step(self, g_opt: torch.optim.Optimizer) -> None:
        """Called after G's backward, before g_opt.step()."""


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class DeferredStep:
    """An optimizer update whose gradients are computed but not yet applied (under Horovod: being averaged).

    `train_iteration` leaves D's update pending after D's backward; `d_step` and `g_step` apply it only
    when D is next needed, after their first G pass (the next D step's x_fake, or the G step's). Meanwhile
    Horovod averages D's gradients, instead of every worker waiting for that at the end of D's backward.
    The weights are the same as with an immediate update: that G pass does not read D. Whoever reads D or
    its optimizer between iterations (a checkpoint, the end of training) calls `apply` first.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.lr: float | None = None  # the learning rate of the pending update; None: nothing pending

    def defer(self, lr: float) -> None:
        """Mark the optimizer's current gradients as an update to apply later, at learning rate ``lr``."""
        if self.lr is not None:
            raise RuntimeError("an update is already pending: apply it before computing the next one")
        self.lr = lr

    def apply(self) -> None:
        """Apply the pending update, if any (waiting for its gradients' averaging), and free the gradients."""
        if self.lr is None:
            return
        set_lr(self.optimizer, self.lr)
        self.optimizer.step()
        self.optimizer.zero_grad()  # not needed until the next update: free them now
        self.lr = None


def train_iteration(
    G: nn.Module,
    D: nn.Module,
    g_opt: torch.optim.Optimizer,
    d_opt: torch.optim.Optimizer,
    x_real: torch.Tensor,
    c_org: torch.Tensor,
    step: int,
    cfg: TrainConfig,
    gen: torch.Generator,
    hooks: StepHooks | None = None,
    world_size: int = 1,
    d_update: DeferredStep | None = None,
) -> dict[str, float]:
    """One StarGAN iteration at 0-based `step`: a D update, plus a G update when (step+1) % n_critic == 0.

    With a `d_update` (one per training run) D's update is left pending in it (see `DeferredStep`);
    without one it is applied before returning.
    """
    hooks = hooks if hooks is not None else StepHooks()
    immediate = d_update is None
    d_update = DeferredStep(d_opt) if immediate else d_update
    if d_update.optimizer is not d_opt:
        raise ValueError("d_update must hold this iteration's d_opt")
    optim_cfg = cfg.optim

    # Schedules are functions of the step.
    set_lr(g_opt, lr_at(step, optim_cfg.g_lr, optim_cfg, world_size))

    # Generate target domain labels and the gradient-penalty mixing weights.
    c_trg = make_target_labels(c_org, gen, cfg.loss.multi_label)
    alpha = torch.rand(x_real.size(0), 1, 1, 1, generator=gen, device=gen.device).to(x_real.device)

    # Train the discriminator.
    d_loss, metrics = d_step(G, D, x_real, c_org, c_trg, cfg.loss, alpha, cfg.precision, d_update)
    d_opt.zero_grad()
    d_backward(D, d_loss)
    hooks.before_d_step(d_opt)
    d_update.defer(lr_at(step, optim_cfg.d_lr, optim_cfg, world_size))

    # Train the generator (against the updated D).
    if (step + 1) % optim_cfg.n_critic == 0:
        g_loss, g_metrics = g_step(G, D, x_real, c_org, c_trg, cfg.loss, cfg.precision, d_update)
        g_opt.zero_grad()
        g_loss.backward()
        hooks.before_g_step(g_opt)
        g_opt.step()
        g_opt.zero_grad()
        metrics.update(g_metrics)
    if immediate:
        d_update.apply()
    return metrics


def build_optimizers(
    G: nn.Module, D: nn.Module, optim_cfg: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam optimizers for G and D with the config's betas and base learning rates (official setup)."""
    # fused=True: the same Adam update in one kernel per parameter group; on CPU the D step over its
    # 45M parameters takes ~0.04 s instead of ~0.26 s (foreach) on one thread.
    betas = (optim_cfg.beta1, optim_cfg.beta2)
    return (
        torch.optim.Adam(G.parameters(), optim_cfg.g_lr, betas, fused=True),
        torch.optim.Adam(D.parameters(), optim_cfg.d_lr, betas, fused=True),
    )
