"""bncourse.lab.depth: deep plain nets, init schemes and the first/last gradient ratio."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.lab.depth import deep_mlp, gradient_ratio, gradient_ratios, init_linear_


def test_deep_mlp_layout_and_seeding():
    model = deep_mlp(5, width=16, norm="bn", seed=3)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(linears) == 6 and all(m.bias is None for m in linears[:-1])
    assert model(torch.randn(8, 64)).shape == (8, 10)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    again = deep_mlp(5, width=16, norm="bn", seed=3)
    assert torch.rand(1) == expected  # global RNG untouched
    assert torch.equal(model.fc3.weight, again.fc3.weight)
    assert not torch.equal(model.fc3.weight, deep_mlp(5, width=16, norm="bn", seed=4).fc3.weight)


@pytest.mark.parametrize("scheme, var", [("he", lambda i, o: 2 / i), ("xavier", lambda i, o: 2 / (i + o))])
def test_init_schemes_have_the_stated_variance(scheme, var):
    torch.manual_seed(0)
    layer = init_linear_(nn.Sequential(nn.Linear(400, 300)), scheme)[0]
    assert layer.weight.var().item() == pytest.approx(var(400, 300), rel=0.03)
    assert torch.count_nonzero(layer.bias) == 0


def test_init_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="init scheme"):
        init_linear_(nn.Linear(2, 2), "lecun")


def test_gradient_ratio_is_first_over_last_weight_gradient():
    model = deep_mlp(3, width=8, seed=0)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    g_first, g_last = torch.autograd.grad(loss, [model.fc1.weight, model.out.weight])
    assert gradient_ratio(model, x, y) == pytest.approx((g_first.norm() / g_last.norm()).item(), rel=1e-5)
    assert model.fc1.weight.grad is None  # nothing accumulated


def test_bn_gradients_grow_with_depth_and_he_plain_ones_do_not():
    # The chapter's effect in miniature: with BN the ratio grows about geometrically with depth.
    torch.manual_seed(0)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    bn = gradient_ratios(lambda d, s: deep_mlp(d, norm="bn", seed=s), [4, 24], [0, 1], x, y)
    plain = gradient_ratios(lambda d, s: deep_mlp(d, seed=s), [4, 24], [0, 1], x, y)
    assert np.all(bn[:, 1] > 10 * bn[:, 0])
    assert np.all(np.abs(np.log10(plain)) < 1)
    assert bn.shape == (2, 2) and not math.isnan(bn.sum())
