"""Config schedule, D/G steps, freezing, target labels and the reference training iteration."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from training.config import (
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    cpu_small,
    lr_at,
    paper,
    preset,
    with_c_dim,
)
from training.models import build_discriminator, build_generator
from training.steps import (
    DeferredStep,
    StepHooks,
    autocast_for,
    build_optimizers,
    d_backward,
    d_step,
    frozen,
    g_step,
    make_target_labels,
    set_lr,
    train_iteration,
)

D_KEYS = {"D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp"}
G_KEYS = {"G/loss_fake", "G/loss_rec", "G/loss_cls"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run fastest on one thread, and a busy machine makes OpenMP threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> TrainConfig:
    model = ModelConfig(image_size=32, c_dim=3, g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, d_repeat_num=5)
    return dataclasses.replace(TrainConfig(model=model), **overrides)


def tiny_models(cfg: TrainConfig, seed: int = 0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_generator(cfg.model), build_discriminator(cfg.model)


def tiny_batch(n: int = 4, size: int = 32, c_dim: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    c_org = F.one_hot(torch.arange(n) % c_dim, c_dim).float()
    return x, c_org


def params_of(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


# Config and schedule ---------------------------------------------------------------------------

def test_lr_at_constant_then_linear_decay_to_zero():
    cfg = OptimConfig(num_iters=200_000, num_iters_decay=100_000)
    assert lr_at(0, 1e-4, cfg) == 1e-4
    assert lr_at(99_999, 1e-4, cfg) == 1e-4
    assert lr_at(100_000, 1e-4, cfg) == pytest.approx(1e-4)  # decay starts here
    assert lr_at(150_000, 1e-4, cfg) == pytest.approx(5e-5)  # midpoint of the decay
    assert lr_at(199_999, 1e-4, cfg) == pytest.approx(1e-9)
    assert lr_at(200_000, 1e-4, cfg) == 0.0
    assert lr_at(250_000, 1e-4, cfg) == 0.0


def test_lr_at_without_decay_and_with_worker_scaling():
    assert lr_at(999, 1e-4, OptimConfig(num_iters=1000, num_iters_decay=0)) == 1e-4
    scaled = OptimConfig(num_iters=100, num_iters_decay=50, scale_lr_by_workers=True)
    assert lr_at(0, 1e-4, scaled, world_size=4) == pytest.approx(4e-4)
    assert lr_at(75, 1e-4, scaled, world_size=4) == pytest.approx(2e-4)
    assert lr_at(0, 1e-4, OptimConfig(), world_size=4) == 1e-4  # scaling off by default
    with pytest.raises(ValueError):
        lr_at(-1, 1e-4, OptimConfig())


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="num_iters_decay"):
        OptimConfig(num_iters=10, num_iters_decay=20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper().model.c_dim = 3  # type: ignore[misc]

    cfg = with_c_dim(paper(), 8)
    assert cfg.model.c_dim == 8 and cfg.model.image_size == 128 and cfg.model.g_repeat_num == 6
    assert with_c_dim(cfg, 8) == cfg
    with pytest.raises(ValueError, match="dataset has 7"):
        with_c_dim(cfg, 7)

    small = preset("cpu_small", c_dim=5)
    assert small == cpu_small(5) and small.model.image_size == 64
    build_discriminator(small.model)  # 64 / 2**5 = 2x2 final map
    with pytest.raises(KeyError, match="cpu_small"):
        preset("huge")


def test_autocast_for():
    with autocast_for("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast_for(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError):
        autocast_for("cpu", "fp16")


# Steps -----------------------------------------------------------------------------------------

def test_frozen_restores_flags_even_on_error():
    cfg = tiny_config()
    _, D = tiny_models(cfg)
    first = next(D.parameters())
    first.requires_grad_(False)  # a deliberately frozen parameter stays frozen
    with pytest.raises(RuntimeError):
        with frozen(D):
            assert not any(p.requires_grad for p in D.parameters())
            raise RuntimeError
    assert not first.requires_grad
    assert all(p.requires_grad for p in list(D.parameters())[1:])


def test_g_step_backward_leaves_d_without_gradients():
    cfg = tiny_config()
    G, D = tiny_models(cfg)
    x, c_org = tiny_batch()
    c_trg = make_target_labels(c_org, torch.Generator().manual_seed(0), multi_label=False)
    hook_calls = []
    for p in D.parameters():
        p.register_hook(lambda grad: hook_calls.append(1))

    g_loss, metrics = g_step(G, D, x, c_org, c_trg, cfg.loss)
    g_loss.backward()

    assert set(metrics) == G_KEYS and all(isinstance(v, float) for v in metrics.values())
    assert all(p.grad is None for p in D.parameters())
    assert not hook_calls
    assert all(p.requires_grad for p in D.parameters())  # restored after the step
    assert all(p.grad is not None for p in G.parameters())
    assert any(p.grad.abs().sum() > 0 for p in G.parameters())


def test_d_step_backward_leaves_g_without_gradients():
    cfg = tiny_config()
    G, D = tiny_models(cfg)
    x, c_org = tiny_batch()
    c_trg = make_target_labels(c_org, torch.Generator().manual_seed(0), multi_label=False)
    d_loss, metrics = d_step(G, D, x, c_org, c_trg, cfg.loss, torch.rand(4, 1, 1, 1))
    d_backward(D, d_loss)

    assert set(metrics) == D_KEYS and all(isinstance(v, float) for v in metrics.values())
    lc = cfg.loss
    total = (metrics["D/loss_real"] + metrics["D/loss_fake"] + lc.lambda_cls * metrics["D/loss_cls"]
             + lc.lambda_gp * metrics["D/loss_gp"])
    assert d_loss.total().item() == pytest.approx(total, rel=1e-5)
    assert d_loss.penalty.item() == pytest.approx(lc.lambda_gp * metrics["D/loss_gp"], rel=1e-6)
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is not None for p in D.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_d_backward_gives_the_joint_backward_gradients_completing_them_once(precision):
    cfg = tiny_config(precision=precision)
    G, D = tiny_models(cfg)
    x, c_org = tiny_batch()
    c_trg = make_target_labels(c_org, torch.Generator().manual_seed(0), multi_label=False)
    alpha = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    d_loss, _ = d_step(G, D, x, c_org, c_trg, cfg.loss, alpha, precision)
    d_loss.total().backward()
    joint = [p.grad.clone() for p in D.parameters()]
    D.zero_grad()

    # Relative to each gradient's largest entry; bf16 sums the parts in another order (one bf16 rounding).
    tolerance = 1e-6 if precision == "fp32" else 1e-2

    def matches(grad: torch.Tensor, expected: torch.Tensor) -> bool:
        return grad.stride() == expected.stride() and bool(
            (grad - expected).abs().max() <= tolerance * expected.abs().max())

    # Each parameter's accumulate-grad hook (where Horovod's allreduce hooks sit) fires exactly once,
    # when its gradient is complete.
    fired: dict[int, int] = {}
    complete: dict[int, bool] = {}
    for i, p in enumerate(D.parameters()):
        def hook(param, i=i):
            fired[i] = fired.get(i, 0) + 1
            complete[i] = matches(param.grad, joint[i])
        p.register_post_accumulate_grad_hook(hook)
    d_loss, _ = d_step(G, D, x, c_org, c_trg, cfg.loss, alpha, precision)
    d_backward(D, d_loss)

    n = len(joint)
    assert fired == {i: 1 for i in range(n)}
    assert complete == {i: True for i in range(n)}


def test_d_and_g_step_match_the_official_formulation():
    # The official solver's losses, written out pass by pass (D on real, on fake, on interpolates).
    cfg = tiny_config()
    G, D = tiny_models(cfg)
    x, c_org = tiny_batch()
    c_trg = make_target_labels(c_org, torch.Generator().manual_seed(0), multi_label=False)
    alpha = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    _, d_metrics = d_step(G, D, x, c_org, c_trg, cfg.loss, alpha)
    _, g_metrics = g_step(G, D, x, c_org, c_trg, cfg.loss)

    out_src, out_cls = D(x)
    x_fake = G(x, c_trg).detach()
    x_hat = (alpha * x + (1 - alpha) * x_fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat)[0].sum(), x_hat)
    expected_d = {
        "D/loss_real": -out_src.mean().item(),
        "D/loss_fake": D(x_fake)[0].mean().item(),
        "D/loss_cls": F.cross_entropy(out_cls, c_org.argmax(1)).item(),
        "D/loss_gp": ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean().item(),
    }
    x_fake = G(x, c_trg)
    out_src, out_cls = D(x_fake)
    expected_g = {
        "G/loss_fake": -out_src.mean().item(),
        "G/loss_rec": (x - G(x_fake, c_org)).abs().mean().item(),
        "G/loss_cls": F.cross_entropy(out_cls, c_trg.argmax(1)).item(),
    }
    for key, value in {**expected_d, **expected_g}.items():
        got = {**d_metrics, **g_metrics}[key]
        assert got == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_make_target_labels():
    c_org = F.one_hot(torch.tensor([0, 0, 1, 2, 2, 2]), 4).float()
    single = make_target_labels(c_org, torch.Generator().manual_seed(3), multi_label=False)
    again = make_target_labels(c_org, torch.Generator().manual_seed(3), multi_label=False)
    assert torch.equal(single, again)
    assert single.shape == c_org.shape and single.dtype == c_org.dtype
    assert torch.equal(single.sum(1), torch.ones(6))

    attrs = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    multi = make_target_labels(attrs, torch.Generator().manual_seed(3), multi_label=True)
    assert sorted(map(tuple, multi.tolist())) == sorted(map(tuple, attrs.tolist()))


# The reference iteration -----------------------------------------------------------------------

class RecordingHooks(StepHooks):
    def __init__(self):
        self.calls = []

    def before_d_step(self, d_opt):
        self.calls.append(("D", all(p.grad is not None for g in d_opt.param_groups for p in g["params"])))

    def before_g_step(self, g_opt):
        self.calls.append(("G", all(p.grad is not None for g in g_opt.param_groups for p in g["params"])))


def test_train_iteration_updates_g_every_n_critic_and_sets_lr():
    cfg = tiny_config(optim=OptimConfig(n_critic=2, num_iters=4, num_iters_decay=2))
    G, D = tiny_models(cfg)
    g_opt, d_opt = build_optimizers(G, D, cfg.optim)
    x, c_org = tiny_batch()
    gen = torch.Generator().manual_seed(0)
    hooks = RecordingHooks()

    g_before, d_before = params_of(G), params_of(D)
    metrics = train_iteration(G, D, g_opt, d_opt, x, c_org, 0, cfg, gen, hooks)
    assert set(metrics) == D_KEYS
    assert changed(d_before, D) and not changed(g_before, G)

    g_before = params_of(G)
    metrics = train_iteration(G, D, g_opt, d_opt, x, c_org, 1, cfg, gen, hooks)
    assert set(metrics) == D_KEYS | G_KEYS
    assert changed(g_before, G)
    assert hooks.calls == [("D", True), ("D", True), ("G", True)]

    train_iteration(G, D, g_opt, d_opt, x, c_org, 3, cfg, gen, hooks)
    assert d_opt.param_groups[0]["lr"] == pytest.approx(lr_at(3, cfg.optim.d_lr, cfg.optim)) == pytest.approx(5e-5)
    assert g_opt.param_groups[0]["lr"] == pytest.approx(5e-5)


def _reference_iteration(G, D, g_opt, d_opt, x_real, c_org, step, cfg, gen):
    """The iteration written out with D's update applied at once, before anything else runs."""
    optim_cfg = cfg.optim
    set_lr(d_opt, lr_at(step, optim_cfg.d_lr, optim_cfg))
    set_lr(g_opt, lr_at(step, optim_cfg.g_lr, optim_cfg))
    c_trg = make_target_labels(c_org, gen, cfg.loss.multi_label)
    alpha = torch.rand(x_real.size(0), 1, 1, 1, generator=gen)
    d_loss, metrics = d_step(G, D, x_real, c_org, c_trg, cfg.loss, alpha, cfg.precision)
    d_opt.zero_grad()
    d_backward(D, d_loss)
    d_opt.step()
    d_opt.zero_grad()
    if (step + 1) % optim_cfg.n_critic == 0:
        g_loss, g_metrics = g_step(G, D, x_real, c_org, c_trg, cfg.loss, cfg.precision)
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        g_opt.zero_grad()
        metrics.update(g_metrics)
    return metrics


def test_deferred_d_updates_give_the_weights_and_state_of_immediate_ones():
    # n_critic=3 over 7 iterations: D's pending update is applied by the next D step, inside G steps
    # (iterations 2 and 5) and by the caller at the end; lr decays over the last 4, so a pending update
    # applied at the next iteration's rate would show, as would one applied after D was used.
    cfg = tiny_config(optim=OptimConfig(n_critic=3, num_iters=7, num_iters_decay=4))
    x, c_org = tiny_batch()
    runs = {}
    for mode in ("reference", "immediate", "deferred"):
        G, D = tiny_models(cfg)
        g_opt, d_opt = build_optimizers(G, D, cfg.optim)
        gen = torch.Generator().manual_seed(0)
        d_update = DeferredStep(d_opt) if mode == "deferred" else None
        history, d_weights = [], [params_of(D)]
        for step in range(7):
            if mode == "reference":
                history.append(_reference_iteration(G, D, g_opt, d_opt, x, c_org, step, cfg, gen))
            else:
                history.append(train_iteration(G, D, g_opt, d_opt, x, c_org, step, cfg, gen, d_update=d_update))
            d_weights.append(params_of(D))
            if d_update is not None:  # pending, at its own iteration's rate, unless a G step applied it
                pending = None if step % 3 == 2 else pytest.approx(lr_at(step, cfg.optim.d_lr, cfg.optim))
                assert d_update.lr == pending
        if d_update is not None:
            d_update.apply()
            assert d_update.lr is None and all(p.grad is None for p in D.parameters())
        d_weights.append(params_of(D))
        runs[mode] = (history, d_weights, G.state_dict(), D.state_dict(), g_opt.state_dict(), d_opt.state_dict())

    history, weights, *states = runs["reference"]
    for mode in ("immediate", "deferred"):
        h, w, *s = runs[mode]
        assert h == history, mode
        # D after each iteration: the reference's; when deferred, the previous one's, except after a G step.
        for step in range(7):
            expected = weights[step + 1] if mode == "immediate" or step % 3 == 2 else weights[step]
            assert all(torch.equal(a, b) for a, b in zip(expected, w[step + 1])), (mode, step)
        assert all(torch.equal(a, b) for a, b in zip(weights[-1], w[-1])), mode
        for a, b in zip(states[:2], s[:2]):
            assert all(torch.equal(a[k], b[k]) for k in a), mode
        for a, b in zip(states[2:], s[2:]):
            assert a["param_groups"] == b["param_groups"], mode
            assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def test_deferred_step_refuses_a_second_pending_update_and_another_optimizer():
    cfg = tiny_config()
    G, D = tiny_models(cfg)
    _, d_opt = build_optimizers(G, D, cfg.optim)
    d_update = DeferredStep(d_opt)
    d_update.apply()  # nothing pending: nothing happens
    d_update.defer(1e-4)
    with pytest.raises(RuntimeError, match="already pending"):
        d_update.defer(1e-4)
    g_opt, other = build_optimizers(G, D, cfg.optim)
    x, c_org = tiny_batch()
    with pytest.raises(ValueError, match="this iteration's d_opt"):
        train_iteration(G, D, g_opt, other, x, c_org, 0, cfg, torch.Generator(), d_update=d_update)


def _run(cfg, steps, seed=0):
    G, D = tiny_models(cfg, seed)
    g_opt, d_opt = build_optimizers(G, D, cfg.optim)
    x, c_org = tiny_batch(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    return [train_iteration(G, D, g_opt, d_opt, x, c_org, s, cfg, gen) for s in range(steps)]


def test_training_is_deterministic_and_reduces_reconstruction_loss():
    cfg = tiny_config(optim=OptimConfig(g_lr=1e-3, d_lr=1e-3, n_critic=1))
    history = _run(cfg, 12)
    assert history == _run(cfg, 12)
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in history)
    rec = [m["G/loss_rec"] for m in history]
    assert rec[-1] < 0.9 * rec[0]


def test_multi_label_iteration_runs():
    cfg = tiny_config(loss=LossConfig(multi_label=True), optim=OptimConfig(n_critic=1))
    G, D = tiny_models(cfg)
    g_opt, d_opt = build_optimizers(G, D, cfg.optim)
    x, _ = tiny_batch()
    attrs = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    metrics = train_iteration(G, D, g_opt, d_opt, x, attrs, 0, cfg, torch.Generator().manual_seed(0))
    assert set(metrics) == D_KEYS | G_KEYS
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_bf16_losses_track_fp32():
    fp32 = _run(tiny_config(optim=OptimConfig(n_critic=1)), 3)
    bf16 = _run(tiny_config(optim=OptimConfig(n_critic=1), precision="bf16"), 3)
    for m32, m16 in zip(fp32, bf16):
        assert m32.keys() == m16.keys()
        for key in m32:
            assert m16[key] == pytest.approx(m32[key], rel=0.05, abs=0.02), key
