"""The sample grid: layout, column contents, labelled header, and no side effects on G."""
import copy

import numpy as np
import pytest
import torch

from training.config import ModelConfig
from training.inference import inference_generator
from training.models import build_generator
from training.data import to_uint8_images
from training.samples import sample_grid

LABELS = ["neutral", "happy", "a-very-long-expression-name"]
S = 32


@pytest.fixture
def G():
    torch.manual_seed(0)
    G = build_generator(ModelConfig(image_size=S, c_dim=3, g_conv_dim=8, g_repeat_num=1))
    with torch.no_grad():  # running stats away from their initial values
        G(torch.rand(4, 3, S, S) * 2 - 1, torch.eye(3)[[0, 1, 2, 0]])
    return G


def _x(n=2):
    return torch.rand(n, 3, S, S, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("training", [True, False])
def test_layout_columns_and_no_side_effects(G, training):
    G.train(training)
    before = copy.deepcopy(G.state_dict())
    x = _x()
    grid = sample_grid(G, x, LABELS, 3, multi_label=False)

    header = grid.shape[0] - 2 * S
    assert grid.dtype == np.uint8 and grid.shape[1:] == (4 * S, 3) and header > 0
    body = grid[header:]
    np.testing.assert_array_equal(body[:S, :S], to_uint8_images(x)[0])  # input column
    with torch.no_grad():
        happy = inference_generator(G)(x, torch.eye(3)[[1, 1]])
    np.testing.assert_array_equal(body[S:, 2 * S:3 * S], to_uint8_images(happy)[1])
    for column in range(4):  # every column has a drawn name
        assert (grid[:header, column * S:(column + 1) * S] < 128).any()

    assert G.training is training
    assert all(p.requires_grad for p in G.parameters())
    after = G.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_multi_label_flips_each_attribute(G):
    x = _x()
    c_fixed = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    grid = sample_grid(G, x, LABELS, 3, multi_label=True, c_fixed=c_fixed)
    body = grid[grid.shape[0] - 2 * S:]
    flipped = c_fixed.clone()
    flipped[:, 0] = 1 - flipped[:, 0]
    with torch.no_grad():
        expected = inference_generator(G)(x, flipped)
    np.testing.assert_array_equal(body[:S, S:2 * S], to_uint8_images(expected)[0])


def test_gradients_are_neither_copied_nor_touched(G):
    for p in G.parameters():
        p.grad = torch.ones_like(p)
    sample_grid(G, _x(1), LABELS, 3, multi_label=False)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in G.parameters())
    assert all(p.grad is None for p in inference_generator(G).parameters())


def test_label_count_must_match(G):
    with pytest.raises(ValueError, match="c_dim"):
        sample_grid(G, _x(), LABELS[:2], 3, multi_label=False)
