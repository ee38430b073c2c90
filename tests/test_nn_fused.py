"""The fused (Numba) training path: same values as torch.nn, and a clean fallback without Numba."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.nn import fused

CASES = {  # our fused class, torch's class, shape, memory format
    "1d-rows": (bnn.FusedBatchNorm1d, nn.BatchNorm1d, (300, 7), None),
    "1d-planes": (bnn.FusedBatchNorm1d, nn.BatchNorm1d, (6, 7, 5), None),
    "2d-planes": (bnn.FusedBatchNorm2d, nn.BatchNorm2d, (5, 7, 4, 3), None),
    "2d-channels-last": (bnn.FusedBatchNorm2d, nn.BatchNorm2d, (5, 7, 4, 3), torch.channels_last),
    "3d-channels-last": (bnn.FusedBatchNorm3d, nn.BatchNorm3d, (3, 7, 2, 3, 4), torch.channels_last_3d),
}


def _compare(ours_cls, ref_cls, shape, fmt, dtype, tol):
    torch.manual_seed(0)
    ref = ref_cls(shape[1], dtype=dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    ours = ours_cls(shape[1], dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(shape, dtype=dtype) * 2 + step
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        dout = torch.randn_like(x)
        results = []
        for layer in (ours, ref):
            layer.zero_grad()
            xi = x.clone().requires_grad_(True)
            out = layer(xi)
            out.backward(dout)
            results.append((out, xi.grad, layer.weight.grad, layer.bias.grad))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, **tol)
        assert results[0][0].stride() == results[1][0].stride()  # the layout is kept
    for a, b in zip(ours.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.skipif(not fused.fused_available(), reason="Numba is not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_fused_kernels_match_torch(case):
    ours_cls, ref_cls, shape, fmt = CASES[case]
    _compare(ours_cls, ref_cls, shape, fmt, torch.float32, dict(rtol=1e-4, atol=1e-5))
    if case in ("2d-planes", "1d-rows"):
        _compare(ours_cls, ref_cls, shape, fmt, torch.float64, dict(rtol=1e-10, atol=1e-10))


@pytest.mark.skipif(not fused.fused_available(), reason="Numba is not installed")
def test_fused_kernels_really_run(monkeypatch):
    """The kernels, not the fallback, computed the result above."""
    calls = []
    original = fused._stats
    monkeypatch.setattr(fused, "_stats", lambda *a: calls.append(1) or original(*a))
    bnn.FusedBatchNorm2d(3)(torch.randn(4, 3, 2, 2))
    assert calls


def test_fallback_without_numba_is_the_plain_path(monkeypatch):
    monkeypatch.setattr(fused, "_kernels", False)  # as if `import numba` had failed
    assert not fused.fused_available()
    _compare(*CASES["2d-channels-last"][:3], torch.channels_last, torch.float64, dict(rtol=1e-10, atol=1e-10))


def test_fused_layer_keeps_second_order_and_mixed_precision():
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: bnn.fused.FusedBatchNormFunction.apply(x, w, None, 1e-5)[0], (x, w))
    out = bnn.FusedBatchNorm2d(3)(torch.randn(4, 3, 2, 2).bfloat16())
    assert out.dtype == torch.bfloat16


def test_import_compiles_nothing():
    code = "import bncourse.nn, sys; assert 'numba' not in sys.modules, 'numba imported at import'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_replace_batchnorm_fused():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.BatchNorm1d(12))
    x = torch.randn(4, 2, 2, 2)
    reference = model(x)  # training mode: batch statistics
    bnn.replace_batchnorm(model, fused=True)
    assert type(model[1]) is bnn.FusedBatchNorm2d and type(model[3]) is bnn.FusedBatchNorm1d
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fused_eval_matches_torch_with_and_without_grad(fmt):
    ref = nn.BatchNorm2d(3)
    ref.train()(torch.randn(8, 3, 4, 4) * 2 + 1)  # some running statistics
    ours = bnn.FusedBatchNorm2d(3)
    ours.load_state_dict(ref.state_dict())
    ours.eval(), ref.eval()
    x = torch.randn(5, 3, 4, 4).contiguous(memory_format=fmt)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xo).sum().backward()
    ref(xr).sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
