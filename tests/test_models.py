"""StarGAN generator/discriminator: shapes, parameter counts, argument validation."""

import pytest
import torch
from torch import nn

from training.config import ModelConfig, paper
from training.models import Discriminator, Generator, build_discriminator, build_generator, count_parameters


@pytest.mark.parametrize(
    "image_size, d_repeat_num",
    [(32, 4), (32, 5), (64, 5), (64, 6), (128, 6)],
)
def test_shapes(image_size, d_repeat_num):
    cfg = ModelConfig(image_size=image_size, c_dim=3, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1,
                      d_repeat_num=d_repeat_num)
    G, D = build_generator(cfg), build_discriminator(cfg)
    x = torch.rand(2, 3, image_size, image_size) * 2 - 1
    c = torch.eye(3)[[0, 2]]

    y = G(x, c)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0  # tanh output

    out_src, out_cls = D(y)
    side = image_size // 2**d_repeat_num
    assert out_src.shape == (2, 1, side, side)
    assert out_cls.shape == (2, 3)


def test_generator_uses_the_label():
    torch.manual_seed(0)
    G = Generator(conv_dim=4, c_dim=3, repeat_num=1)
    x = torch.rand(1, 3, 16, 16)
    assert not torch.allclose(G(x, torch.tensor([[1.0, 0, 0]])), G(x, torch.tensor([[0, 1.0, 0]])))


def test_generator_layers_match_the_official_code():
    G = Generator(conv_dim=8, c_dim=5, repeat_num=2)
    norms = [m for m in G.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(m.affine and m.track_running_stats for m in norms)
    convs = [m for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is None for m in convs)
    assert convs[0].in_channels == 3 + 5 and convs[0].kernel_size == (7, 7)
    assert convs[-1].out_channels == 3 and convs[-1].kernel_size == (7, 7)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in convs) == 2

    D = Discriminator(image_size=64, conv_dim=8, c_dim=5, repeat_num=5)
    assert not any(isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) for m in D.modules())
    assert all(m.negative_slope == 0.01 for m in D.modules() if isinstance(m, nn.LeakyReLU))
    assert D.conv1.kernel_size == (3, 3) and D.conv1.out_channels == 1
    assert D.conv2.kernel_size == (2, 2) and D.conv2.out_channels == 5


def test_parameter_counts_at_paper_config():
    cfg = paper(c_dim=8).model
    n_g = count_parameters(build_generator(cfg))
    n_d = count_parameters(build_discriminator(cfg))
    assert abs(n_g - 8.43e6) / 8.43e6 < 0.01
    assert abs(n_d - 44.8e6) / 44.8e6 < 0.01
    # Exact: the official code prints 8430528 / 44762048 for c_dim=5; c_dim=8 adds 3*64*7*7 to G's
    # first conv and 3*2048*2*2 to D's classification head.
    assert n_g == 8_430_528 + 3 * 64 * 7 * 7 == 8_439_936
    assert n_d == 44_762_048 + 3 * 2048 * 2 * 2 == 44_786_624


@pytest.mark.parametrize("image_size, repeat_num", [(96, 6), (32, 6), (100, 3)])
def test_invalid_image_size_for_repeat_num(image_size, repeat_num):
    with pytest.raises(ValueError, match="multiple of 2\\*\\*d_repeat_num"):
        Discriminator(image_size=image_size, conv_dim=4, c_dim=3, repeat_num=repeat_num)


def test_invalid_sizes_and_c_dim():
    with pytest.raises(ValueError, match="c_dim"):
        Generator(conv_dim=4, c_dim=0)
    with pytest.raises(ValueError, match="c_dim"):
        build_discriminator(ModelConfig(image_size=32, c_dim=0, d_repeat_num=5))
    with pytest.raises(ValueError, match="repeat_num"):
        Discriminator(image_size=32, conv_dim=4, c_dim=3, repeat_num=0)
    with pytest.raises(ValueError, match="c_dim"):
        ModelConfig(c_dim=-1)
    with pytest.raises(ValueError, match="image_size"):
        ModelConfig(image_size=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        ModelConfig(image_size=66, d_repeat_num=1)
