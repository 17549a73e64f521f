"""Training configuration: frozen dataclasses, one per component, plus the learning-rate schedule.

The job entry point (jobs/train.py) builds one `TrainConfig` and hands each component only its slice:
the models get `cfg.model`, the losses/steps get `cfg.loss` and `cfg.precision`, the optimizers and
`lr_at` get `cfg.optim`. Nothing mutates a config: variants are made with `dataclasses.replace`
(e.g. `with_c_dim`), and schedules are pure functions of the step, so a resumed run is exact.

Extending: other components add their own frozen sub-config here as one more field of `TrainConfig`
with a `field(default_factory=...)` default (e.g. `data: DataConfig = field(default_factory=DataConfig)`);
presets and existing callers keep working because every field has a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    """Generator and discriminator architecture (StarGAN paper / official code names)."""

    image_size: int = 128
    # Number of domain labels (expressions / attributes). 0 means "take it from the dataset":
    # resolve with `with_c_dim` before building models (the models reject c_dim < 1).
    c_dim: int = 0
    g_conv_dim: int = 64
    d_conv_dim: int = 64
    g_repeat_num: int = 6
    d_repeat_num: int = 6

    def __post_init__(self) -> None:
        if self.c_dim < 0:
            raise ValueError(f"c_dim must be >= 0 (0 = from the dataset), got {self.c_dim}")
        for name in ("image_size", "g_conv_dim", "d_conv_dim", "d_repeat_num"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % 4 != 0:
            raise ValueError(
                f"image_size must be a multiple of 4 (the generator down- and up-samples twice by 2), "
                f"got {self.image_size}"
            )
        if self.g_repeat_num < 0:
            raise ValueError(f"g_repeat_num must be >= 0, got {self.g_repeat_num}")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and the classification mode (single-label softmax vs multi-label sigmoid)."""

    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    # False: one expression per image (RaFD-style, cross-entropy).
    # True: independent binary attributes (CelebA-style, BCE summed over attributes / batch).
    multi_label: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Adam settings, the D:G update ratio and the learning-rate schedule."""

    g_lr: float = 1e-4
    d_lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 5
    num_iters: int = 200_000
    num_iters_decay: int = 100_000
    # Multiply both learning rates by the number of workers (Horovod's linear-scaling recipe).
    scale_lr_by_workers: bool = False

    def __post_init__(self) -> None:
        if self.n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {self.n_critic}")
        if not 0 <= self.num_iters_decay <= self.num_iters:
            raise ValueError(
                f"num_iters_decay must be in [0, num_iters={self.num_iters}], got {self.num_iters_decay}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration; components receive only their slice."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # Arithmetic of the forward passes: "fp32", or "bf16" = torch.autocast(device_type, torch.bfloat16)
    # with parameters, optimizer state and loss reductions kept in fp32.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def with_c_dim(cfg: TrainConfig, c_dim: int) -> TrainConfig:
    """Return `cfg` with the model's c_dim set from the dataset; error if a preset c_dim disagrees."""
    if c_dim < 1:
        raise ValueError(f"the dataset must have at least one label, got c_dim={c_dim}")
    if cfg.model.c_dim not in (0, c_dim):
        raise ValueError(f"config says c_dim={cfg.model.c_dim} but the dataset has {c_dim} labels")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, c_dim=c_dim))


def lr_at(step: int, base_lr: float, optim_cfg: OptimConfig, world_size: int = 1) -> float:
    """Learning rate at 0-based iteration `step`: constant, then linear decay to 0 over the last num_iters_decay."""
    # The paper decays linearly to 0 over the last 100k of 200k iterations; the official code lowers
    # the rate in steps every 1000 iterations (and, as written, by only ~0.1% in total). This is the
    # smooth form of the paper's schedule: base_lr * (num_iters - step) / num_iters_decay from
    # step = num_iters - num_iters_decay on, 0 from num_iters on. `world_size` multiplies the rate
    # when optim_cfg.scale_lr_by_workers is set.
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    lr = base_lr * (world_size if optim_cfg.scale_lr_by_workers else 1)
    decay_start = optim_cfg.num_iters - optim_cfg.num_iters_decay
    if optim_cfg.num_iters_decay == 0 or step < decay_start:
        return lr
    return lr * max(0.0, (optim_cfg.num_iters - step) / optim_cfg.num_iters_decay)


# Presets -----------------------------------------------------------------------------------------

def paper(c_dim: int = 0) -> TrainConfig:
    """The paper's setting: 128x128, 64-channel convs, 6 residual blocks, 6 D layers, 200k iterations."""
    return TrainConfig(model=ModelConfig(image_size=128, c_dim=c_dim))


def cpu_small(c_dim: int = 0) -> TrainConfig:
    """A CPU-sized model: 64x64, 32-channel convs, 3 residual blocks, 5 D layers (2x2 final map)."""
    return TrainConfig(
        model=ModelConfig(
            image_size=64, c_dim=c_dim, g_conv_dim=32, d_conv_dim=32, g_repeat_num=3, d_repeat_num=5
        )
    )


PRESETS: dict[str, Callable[..., TrainConfig]] = {"paper": paper, "cpu_small": cpu_small}


def preset(name: str, c_dim: int = 0) -> TrainConfig:
    """Build a named preset; KeyError lists the known names."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
    return factory(c_dim)
