"""StarGAN generator and discriminator (Choi et al., CVPR 2018), layer for layer as the official code.

Generator: 7x7 conv on [image, tiled label] -> two stride-2 down-convs -> residual blocks -> two
stride-2 transposed convs -> 7x7 conv + tanh; instance norm (affine, tracked running stats) + ReLU
after every conv but the last. Discriminator: PatchGAN of stride-2 4x4 convs + LeakyReLU(0.01), no
normalisation, with a 3x3 real/fake head and a classification head whose kernel covers the whole
final map. This module knows nothing about devices, precision, Horovod or tracking.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import ModelConfig


class ResidualBlock(nn.Module):
    """Residual block with instance normalisation."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            nn.InstanceNorm2d(dim_out, affine=True, track_running_stats=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim_out, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            nn.InstanceNorm2d(dim_out, affine=True, track_running_stats=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x + F(x)."""
        return x + self.main(x)


class Generator(nn.Module):
    """StarGAN generator G(x, c): image plus target-domain label to translated image in [-1, 1]."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        if c_dim < 1:
            raise ValueError(f"c_dim must be >= 1 (set it from the dataset), got {c_dim}")
        if conv_dim < 1 or repeat_num < 0:
            raise ValueError(f"need conv_dim >= 1 and repeat_num >= 0, got {conv_dim}, {repeat_num}")
        self.c_dim = c_dim

        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, conv_dim, kernel_size=7, stride=1, padding=3, bias=False),
            nn.InstanceNorm2d(conv_dim, affine=True, track_running_stats=True),
            nn.ReLU(inplace=True),
        ]

        # Down-sampling layers.
        curr_dim = conv_dim
        for _ in range(2):
            layers += [
                nn.Conv2d(curr_dim, curr_dim * 2, kernel_size=4, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(curr_dim * 2, affine=True, track_running_stats=True),
                nn.ReLU(inplace=True),
            ]
            curr_dim *= 2

        # Bottleneck layers.
        layers += [ResidualBlock(curr_dim, curr_dim) for _ in range(repeat_num)]

        # Up-sampling layers.
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(curr_dim, curr_dim // 2, kernel_size=4, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(curr_dim // 2, affine=True, track_running_stats=True),
                nn.ReLU(inplace=True),
            ]
            curr_dim //= 2

        layers += [nn.Conv2d(curr_dim, 3, kernel_size=7, stride=1, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Translate images x (N, 3, H, W) to the domains given by labels c (N, c_dim)."""
        # Replicate the label spatially and concatenate it with the image.
        c = c.to(x.dtype).reshape(c.size(0), c.size(1), 1, 1).expand(-1, -1, x.size(2), x.size(3))
        return self.main(torch.cat([x, c], dim=1))


class Discriminator(nn.Module):
    """StarGAN PatchGAN discriminator D(x) -> (out_src (N, 1, h, w), out_cls (N, c_dim))."""

    def __init__(self, image_size: int = 128, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        if c_dim < 1:
            raise ValueError(f"c_dim must be >= 1 (set it from the dataset), got {c_dim}")
        if repeat_num < 1 or conv_dim < 1:
            raise ValueError(f"need repeat_num >= 1 and conv_dim >= 1, got {repeat_num}, {conv_dim}")
        # The classification head's kernel covers the final map: image_size / 2**repeat_num pixels.
        if image_size % (2**repeat_num) != 0:
            raise ValueError(
                f"image_size={image_size} must be a multiple of 2**d_repeat_num={2**repeat_num}: the "
                f"discriminator halves the image {repeat_num} times and its classification kernel is "
                f"image_size / 2**d_repeat_num (e.g. 128 -> d_repeat_num 6, 64 -> 5 or 6)"
            )
        kernel_size = image_size // 2**repeat_num

        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        curr_dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(curr_dim, curr_dim * 2, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            curr_dim *= 2

        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(curr_dim, 1, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(curr_dim, c_dim, kernel_size=kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the real/fake patch map and the domain-classification logits."""
        h = self.main(x)
        out_src = self.conv1(h)
        out_cls = self.conv2(h)
        return out_src, out_cls.view(out_cls.size(0), out_cls.size(1))


def build_generator(model_cfg: ModelConfig) -> Generator:
    """Build G from the model config."""
    return Generator(model_cfg.g_conv_dim, model_cfg.c_dim, model_cfg.g_repeat_num)


def build_discriminator(model_cfg: ModelConfig) -> Discriminator:
    """Build D from the model config."""
    return Discriminator(model_cfg.image_size, model_cfg.d_conv_dim, model_cfg.c_dim, model_cfg.d_repeat_num)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
