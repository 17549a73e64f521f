"""StarGAN losses: gradient penalty, classification, reconstruction."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.losses import classification_loss, gradient_penalty, reconstruction_loss


class LinearCritic(nn.Module):
    """D_src(x) = <w, x> per image: its input gradient is w, whatever x."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        out_src = (x * self.w).flatten(1).sum(1).view(-1, 1, 1, 1)
        return out_src, torch.zeros(x.size(0), 2)


def _unit(shape, generator):
    w = torch.randn(shape, generator=generator)
    return w / w.norm()


def _batch(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            torch.rand(n, 1, 1, 1, generator=g))


def test_gradient_penalty_is_zero_for_unit_gradient_norm():
    x_real, x_fake, alpha = _batch()
    d = LinearCritic(_unit((3, 8, 8), torch.Generator().manual_seed(1)))
    assert gradient_penalty(d, x_real, x_fake, alpha).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_one_for_gradient_norm_two_and_backpropagates_into_d():
    x_real, x_fake, alpha = _batch()
    d = LinearCritic(2 * _unit((3, 8, 8), torch.Generator().manual_seed(1)))
    gp = gradient_penalty(d, x_real, x_fake, alpha)
    assert gp.item() == pytest.approx(1.0, rel=1e-5)
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = w when ||w|| = 2 (needs create_graph=True).
    gp.backward()
    torch.testing.assert_close(d.w.grad, d.w.detach())


def test_gradient_penalty_uses_alpha_for_interpolation():
    x_real, x_fake, _ = _batch()
    torch.manual_seed(0)
    d = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 8))
    critic = lambda x: (d(x), None)  # noqa: E731

    def penalty_at(x):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x).sum(), x)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    ones, zeros = torch.ones(3, 1, 1, 1), torch.zeros(3, 1, 1, 1)
    torch.testing.assert_close(gradient_penalty(critic, x_real, x_fake, ones), penalty_at(x_real))
    torch.testing.assert_close(gradient_penalty(critic, x_real, x_fake, zeros), penalty_at(x_fake))
    half = torch.full((3, 1, 1, 1), 0.5)
    torch.testing.assert_close(gradient_penalty(critic, x_real, x_fake, half), penalty_at((x_real + x_fake) / 2))


def test_gradient_penalty_under_bf16_autocast():
    x_real, x_fake, alpha = _batch()
    conv = nn.Conv2d(3, 1, kernel_size=8, bias=False)  # linear, and autocast runs it in bf16
    with torch.no_grad():
        conv.weight.copy_(_unit((1, 3, 8, 8), torch.Generator().manual_seed(2)))
    critic = lambda x: (conv(x), None)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x_real).dtype == torch.bfloat16
        gp = gradient_penalty(critic, x_real, x_fake.to(torch.bfloat16), alpha)
    assert gp.dtype == torch.float32
    assert gp.item() == pytest.approx(0.0, abs=1e-3)
    gp.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_classification_loss_single_label_matches_cross_entropy():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    onehot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    loss = classification_loss(logits, onehot, multi_label=False)
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([0, 2])))
    by_hand = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 2]) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # Class indices are accepted too.
    torch.testing.assert_close(classification_loss(logits, torch.tensor([0, 2]), multi_label=False), loss)


def test_classification_loss_multi_label_sums_over_attributes_and_averages_over_batch():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    loss = classification_loss(logits, target, multi_label=True)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    total = sum(
        -(t * math.log(sig(z)) + (1 - t) * math.log(1 - sig(z)))
        for row_z, row_t in zip(logits.tolist(), target.tolist())
        for z, t in zip(row_z, row_t)
    )
    assert loss.item() == pytest.approx(total / 2, rel=1e-6)


def test_losses_reduce_in_fp32_from_bf16_inputs():
    logits = torch.randn(4, 3).to(torch.bfloat16)
    target = torch.eye(3)[[0, 1, 2, 0]]
    assert classification_loss(logits, target, multi_label=False).dtype == torch.float32
    assert classification_loss(logits, target, multi_label=True).dtype == torch.float32
    x = torch.rand(2, 3, 4, 4)
    assert reconstruction_loss(x, x.to(torch.bfloat16)).dtype == torch.float32


def test_reconstruction_loss_is_mean_absolute_error():
    x = torch.zeros(2, 3, 2, 2)
    y = torch.zeros(2, 3, 2, 2)
    y[0, 0, 0, 0] = 2.0
    y[1, 2, 1, 1] = -1.0
    assert reconstruction_loss(x, y).item() == pytest.approx(3.0 / 24)
