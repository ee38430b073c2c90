"""Folding batch norm into Linear/Conv layers: equal outputs in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.fold import fold_batchnorm, fold_batchnorm_arrays

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _trained_bn(bn: nn.Module, layer: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give ``bn`` non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        for _ in range(5):
            bn.train()(layer(x))
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
    return bn.eval()


CASES = {
    "linear": (lambda: nn.Linear(6, 4), nn.BatchNorm1d, (16, 6)),
    "linear-nobias": (lambda: nn.Linear(6, 4, bias=False), nn.BatchNorm1d, (16, 6)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.BatchNorm2d, (5, 3, 8, 8)),
    "conv2d-groups": (
        lambda: nn.Conv2d(4, 4, 3, groups=2, bias=False),
        nn.BatchNorm2d,
        (5, 4, 6, 6),
    ),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), nn.BatchNorm1d, (5, 3, 10)),
    "ours-conv2d": (lambda: nn.Conv2d(3, 4, 3), bnn.BatchNorm2d, (5, 3, 8, 8)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("affine", [True, False])
def test_folded_layer_equals_layer_then_bn_in_eval(dtype, case, affine):
    make_layer, bn_cls, shape = CASES[case]
    torch.manual_seed(0)
    layer = make_layer().to(dtype)
    x = torch.randn(shape, dtype=dtype) * 3 + 2
    bn = _trained_bn(bn_cls(4, affine=affine, dtype=dtype), layer, x)
    unfolded = nn.Sequential(layer, bn).eval()
    before = {k: v.clone() for k, v in unfolded.state_dict().items()}
    folded = fold_batchnorm(layer, bn)
    assert type(folded) is type(layer) and folded.bias is not None and not folded.training
    assert folded.weight.dtype == dtype
    with torch.no_grad():
        expected = unfolded(x)
        torch.testing.assert_close(folded(x), expected, **TOL[dtype])
    # Folding changed something (the test is not vacuous) and left the inputs alone.
    assert not torch.allclose(expected, layer(x).detach())
    for key, value in unfolded.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_numpy_folding_matches_torch_folding():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3).double()
    bn = _trained_bn(
        nn.BatchNorm2d(4, eps=1e-3, dtype=torch.float64),
        layer,
        torch.randn(4, 3, 6, 6, dtype=torch.float64),
    )
    folded = fold_batchnorm(layer, bn)
    w, b = fold_batchnorm_arrays(
        layer.weight.detach().numpy(),
        layer.bias.detach().numpy(),
        bn.running_mean.numpy(),
        bn.running_var.numpy(),
        bn.weight.detach().numpy(),
        bn.bias.detach().numpy(),
        eps=1e-3,
    )
    np.testing.assert_allclose(w, folded.weight.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, folded.bias.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_numpy_folding_of_a_dense_layer_by_hand():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 5)), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    x = rng.standard_normal((7, 5))
    z = x @ w.T + b
    expected = gamma * (z - mean) / np.sqrt(var + 1e-5) + beta
    fw, fb = fold_batchnorm_arrays(w, b, mean, var, gamma, beta)
    np.testing.assert_allclose(x @ fw.T + fb, expected, rtol=1e-10, atol=1e-10)
    fw, fb = fold_batchnorm_arrays(w, None, mean, var)  # no bias, no affine
    np.testing.assert_allclose(
        x @ fw.T + fb, (x @ w.T - mean) / np.sqrt(var + 1e-5), rtol=1e-10, atol=1e-10
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="Linear or Conv"):
        fold_batchnorm(nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="over 4 channels"):
        fold_batchnorm(nn.Linear(3, 4), nn.BatchNorm1d(5))
    with pytest.raises(ValueError, match=r"running_mean of shape \(4,\)"):
        fold_batchnorm_arrays(np.ones((4, 3)), None, np.zeros(5), np.ones(4))
    with pytest.raises(ValueError, match="output channels on axis 0"):
        fold_batchnorm_arrays(np.ones(4), None, np.zeros(4), np.ones(4))
