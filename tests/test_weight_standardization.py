"""bncourse.nn.WSConv2d: standardized kernels, invariance to the weight's scale, gradcheck."""

import torch
from torch import nn
from torch.nn import functional as F

from bncourse import nn as bnn


def _naive_standardize(w, eps=1e-5):
    rows = w.reshape(w.shape[0], -1)
    mean = rows.mean(1, keepdim=True)
    var = rows.var(1, unbiased=False, keepdim=True)
    return ((rows - mean) / torch.sqrt(var + eps)).view(w.shape)


def test_standardized_kernels_have_zero_mean_unit_variance():
    w = 3.0 + 5.0 * torch.randn(6, 4, 3, 3, dtype=torch.float64)
    s = bnn.standardize_weight(w).reshape(6, -1)
    assert torch.allclose(s.mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(s.var(1, unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(bnn.standardize_weight(w), _naive_standardize(w))


def test_conv_uses_the_standardized_weight_and_ignores_its_scale():
    torch.manual_seed(0)
    conv = bnn.WSConv2d(3, 5, kernel_size=3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = F.conv2d(x, _naive_standardize(conv.weight), conv.bias, padding=1)
    assert torch.allclose(conv(x), expected)
    # Invariance is exact up to eps (which weighs against the kernels' small variance): drop it.
    conv.ws_eps = 0.0
    expected = F.conv2d(x, _naive_standardize(conv.weight, eps=0.0), conv.bias, padding=1)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(2.0)  # per-kernel scale and shift
    assert torch.allclose(conv(x), expected, atol=1e-9)
    assert isinstance(conv, nn.Conv2d)


def test_hand_derived_backward_passes_gradcheck():
    torch.manual_seed(0)
    conv = bnn.WSConv2d(2, 3, kernel_size=3, padding=1, bias=False, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_(True)
    f = lambda x, w: F.conv2d(x, bnn.standardize_weight(w), None, padding=1)
    assert torch.autograd.gradcheck(f, (x, w))
