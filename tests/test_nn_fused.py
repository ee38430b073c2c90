"""The fused (C kernel) path, on by default: same values as torch.nn, and a clean fallback without a compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.nn import fused

NO_KERNELS = "the C kernels cannot be built here (no C compiler, not Linux, or torch without OpenMP)"

CASES = {  # our fused class, torch's class, shape, memory format
    "1d-rows": (bnn.FusedBatchNorm1d, nn.BatchNorm1d, (300, 7), None),
    "1d-planes": (bnn.FusedBatchNorm1d, nn.BatchNorm1d, (6, 7, 5), None),
    "2d-planes": (bnn.FusedBatchNorm2d, nn.BatchNorm2d, (5, 7, 4, 3), None),
    # planes of 3 values: several hundred planes per statistics chunk
    "1d-small-planes": (bnn.FusedBatchNorm1d, nn.BatchNorm1d, (700, 7, 3), None),
    "3d-planes": (bnn.FusedBatchNorm3d, nn.BatchNorm3d, (3, 7, 2, 3, 4), None),
    "2d-channels-last": (bnn.FusedBatchNorm2d, nn.BatchNorm2d, (5, 7, 4, 3), torch.channels_last),
    "3d-channels-last": (bnn.FusedBatchNorm3d, nn.BatchNorm3d, (3, 7, 2, 3, 4), torch.channels_last_3d),
    # more columns than one cache block: blocks of 256 columns and a remainder
    "1d-wide-rows": (bnn.FusedBatchNorm1d, nn.BatchNorm1d, (40, 600), None),
    # enough columns for blocks of 512 and a remainder
    "1d-many-columns": (bnn.FusedBatchNorm1d, nn.BatchNorm1d, (30, 2100), None),
    # too many rows for a column block to stay in cache: the two-pass kernels, rows split across threads
    "2d-channels-last-many-rows": (bnn.FusedBatchNorm2d, nn.BatchNorm2d, (32, 5, 40, 40), torch.channels_last),
}


def _compare(ours_cls, ref_cls, shape, fmt, dtype, tol):
    """Three training steps of our layer in ``dtype`` against torch's layer in float64 on the same values.

    The reference is float64 because torch's own float32 sums drift: on a
    channels-last ``(32, 5, 40, 40)`` batch its ``weight.grad`` is 1e-3 away
    from the float64 value, ten times farther than ours.
    """
    torch.manual_seed(0)
    ref = ref_cls(shape[1], dtype=torch.float64)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    ours = ours_cls(shape[1], dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(shape, dtype=torch.float64) * 2 + step
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        dout = torch.randn_like(x)
        results = []
        for layer, x_dtype in ((ours, dtype), (ref, torch.float64)):
            layer.zero_grad()
            xi = x.to(x_dtype).clone().requires_grad_(True)
            out = layer(xi)
            out.backward(dout.to(x_dtype))
            results.append((out, xi.grad, layer.weight.grad, layer.bias.grad))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a.double(), b, **tol)
        assert results[0][0].stride() == results[1][0].stride()  # the layout is kept
    for a, b in zip(ours.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a.to(b.dtype), b, **tol)


def test_kernels_build_wherever_a_c_compiler_exists():
    """Where the kernels should build, they do: else every test below would skip and pass unseen.

    A compile error in ``_kernels.c`` makes ``fused_available()`` False with a
    warning, and the layers quietly run the torch-ops path.
    """
    compiler = os.environ.get("CC")  # as _compile: $CC if set, else cc or gcc
    found = shutil.which(compiler) if compiler else shutil.which("cc") or shutil.which("gcc")
    if not sys.platform.startswith("linux") or not found:
        pytest.skip(f"no C compiler ({compiler or 'cc or gcc'}) on Linux here: the kernels are not expected to build")
    from bncourse.nn import _compile

    assert _compile.build().exists()  # raises Unavailable with the compiler's own message


@pytest.mark.skipif(not fused.fused_available(), reason=NO_KERNELS)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_kernels_match_torch(case):
    ours_cls, ref_cls, shape, fmt = CASES[case]
    _compare(ours_cls, ref_cls, shape, fmt, torch.float32, dict(rtol=1e-4, atol=1e-5))
    if case in ("2d-planes", "1d-rows", "1d-wide-rows", "1d-many-columns", "2d-channels-last-many-rows", "1d-small-planes"):
        _compare(ours_cls, ref_cls, shape, fmt, torch.float64, dict(rtol=1e-10, atol=1e-10))


@pytest.mark.skipif(not fused.fused_available(), reason=NO_KERNELS)
def test_fused_kernels_really_run(monkeypatch):
    """The kernels, not the fallback, computed the results above: training, backward, evaluation."""
    calls = []
    original = fused._kernel
    monkeypatch.setattr(fused, "_kernel", lambda name, dtype: calls.append(name) or original(name, dtype))
    layer = bnn.FusedBatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    layer(x).sum().backward()
    layer(x.detach().contiguous(memory_format=torch.channels_last)).sum().backward()
    with torch.no_grad():
        layer.eval()(x)
    assert calls == ["forward_planes", "backward_planes", "forward_rows", "backward_rows", "evaluate"]


@pytest.mark.skipif(not fused.fused_available(), reason=NO_KERNELS)
def test_batchnorm_runs_the_kernels_by_default_and_use_kernels_turns_them_off(monkeypatch):
    calls = []
    original = fused._kernel
    monkeypatch.setattr(fused, "_kernel", lambda name, dtype: calls.append(name) or original(name, dtype))
    layer, x = bnn.BatchNorm2d(3), torch.randn(4, 3, 2, 2, requires_grad=True)
    layer(x).sum().backward()
    assert calls == ["forward_planes", "backward_planes"]
    with bnn.use_kernels(False):
        layer(x).sum().backward()
        with torch.no_grad():
            bnn.batch_norm(x, layer.running_mean, layer.running_var, training=False)
        bnn.FusedBatchNorm2d(3)(x)  # the Fused classes ask for the kernels regardless
    assert calls == ["forward_planes", "backward_planes", "forward_planes"]
    with torch.no_grad():
        bnn.batch_norm(x, layer.running_mean, layer.running_var, training=False)
    assert calls[-1] == "evaluate"


@pytest.mark.skipif(not fused.fused_available(), reason=NO_KERNELS)
def test_loading_the_kernels_adds_no_openmp_runtime():
    """The kernels bind to the OpenMP runtime torch loaded: loading them maps no second one (no second pool).

    In a fresh process, since other libraries (scikit-learn's wheels) bring OpenMP runtimes of their own.
    """
    code = (
        "import torch\n"
        "from bncourse.nn import fused\n"
        "def runtimes():\n"
        "    names = ('libgomp', 'libiomp5', 'libomp')\n"
        "    return {l.split()[-1] for l in open('/proc/self/maps') if l.split()[-1].rsplit('/', 1)[-1].startswith(names)}\n"
        "before = runtimes()\n"
        "assert fused.fused_available()\n"
        "assert len(before) == 1 and runtimes() == before, (before, runtimes())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.skipif(not fused.fused_available(), reason=NO_KERNELS)
def test_parameter_gradients_alone_skip_the_input_gradient():
    ref, ours = nn.BatchNorm2d(3), bnn.FusedBatchNorm2d(3)
    x, g = torch.randn(6, 3, 4, 4) * 3 + 1, torch.randn(6, 3, 4, 4)
    for layer in (ref, ours):
        (layer(x) * g).sum().backward()  # x needs no gradient: only weight and bias
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-4)


def test_without_a_compiler_the_fused_layers_run_the_plain_path(tmp_path):
    """No C compiler (as on most Windows and macOS laptops): a warning saying why, and the plain path's values."""
    code = (
        "import warnings, torch, bncourse.nn as bnn\n"
        "from bncourse.nn import fused\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert not fused.fused_available()\n"
        "print(caught[0].message)\n"
        "torch.manual_seed(0); x = torch.randn(4, 3, 5, 5, dtype=torch.float64)\n"
        "a, b = bnn.FusedBatchNorm2d(3, dtype=torch.float64), bnn.BatchNorm2d(3, dtype=torch.float64)\n"
        "assert torch.equal(a(x), b(x))\n"
    )
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"), BNCOURSE_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop("BNCOURSE_KERNELS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "runs the plain path" in done.stdout and "no-such-compiler" in done.stdout


def test_fused_layer_keeps_second_order_and_mixed_precision():
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: bnn.fused.FusedBatchNormFunction.apply(x, w, None, 1e-5)[0], (x, w))
    out = bnn.FusedBatchNorm2d(3)(torch.randn(4, 3, 2, 2).bfloat16())
    assert out.dtype == torch.bfloat16


def test_import_compiles_nothing(tmp_path):
    code = "import bncourse.nn, bncourse.nn.fused, os, sys; assert not os.listdir(sys.argv[1]), 'compiled at import'"
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, BNCOURSE_KERNEL_CACHE=str(cache))
    subprocess.run([sys.executable, "-c", code, str(cache)], check=True, timeout=120, env=env)


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


def test_cases_cover_both_row_strategies():
    """The rows cases above reach both the column-blocked and the two-pass kernels."""
    blocks = []
    for key in ("1d-many-columns", "1d-wide-rows", "2d-channels-last-many-rows"):
        shape, fmt = CASES[key][2], CASES[key][3] or torch.contiguous_format
        kind, dims = fused._layout(torch.empty(shape).contiguous(memory_format=fmt))
        blocks.append(fused._column_block(dims[0], dims[1], 4))
    assert blocks == [*fused.COL_BLOCKS, 0]
    assert CASES["1d-wide-rows"][2][1] > fused.COL_BLOCKS[-1]
    assert fused._column_block(256, 4096, 4) == 512  # the benchmark's (256, 4096): 8 blocks of 512


def test_fallback_backward_unpacks_the_saved_tensors_once(monkeypatch):
    """Non-reentrant checkpointing allows one unpack: the fused Function falling back must not unpack twice."""
    from bncourse.nn import _compile

    monkeypatch.setattr(_compile, "_library", False)  # as where no C compiler exists
    torch.manual_seed(0)
    layer = bnn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    out = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
    out.pow(2).sum().backward()
    expected = torch.autograd.grad(nn.functional.batch_norm(x, None, None, layer.weight, layer.bias, True).pow(2).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-5)


LAYER_CONFIGS = {
    "default": {},
    "cumulative-average": {"momentum": None},
    "no-running-stats": {"track_running_stats": False},
    "no-affine": {"affine": False},
}


@pytest.mark.skipif(not fused.fused_available(), reason=NO_KERNELS)
@pytest.mark.parametrize("config", list(LAYER_CONFIGS))
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_layer_shortcut_matches_torch_in_every_mode(config, fmt, monkeypatch):
    """The layers' shortcut to the kernels (fused._layer_forward) in each mode, against torch in float64.

    Training with and without a graph, evaluation with and without one, in
    that order, so the running statistics of one step feed the next; every
    step must have run the kernels.
    """
    calls = []
    original = fused._kernel
    monkeypatch.setattr(fused, "_kernel", lambda name, dtype: calls.append(name) or original(name, dtype))
    kwargs = LAYER_CONFIGS[config]
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, dtype=torch.float64, **kwargs)
    ours = bnn.BatchNorm2d(5, dtype=torch.float64, **kwargs)
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    for training, grad in ((True, True), (True, False), (False, True), (False, False), (True, True)):
        x = (torch.randn(6, 5, 4, 3, dtype=torch.float64) * 3 + 1).contiguous(memory_format=fmt)
        dout = torch.randn_like(x)
        results = []
        for layer in (ours, ref):
            layer.train(training).zero_grad()
            xi = x.clone().requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                out = layer(xi)
            if grad:
                out.backward(dout)
            params = [p.grad for p in layer.parameters()] if grad else []
            results.append([out, *([xi.grad] if grad else []), *params, *layer.buffers()])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert results[0][0].stride() == results[1][0].stride()
    kind = "planes" if fmt == torch.contiguous_format else "rows"
    train, backward = f"forward_{kind}", f"backward_{kind}"
    evaluate = "evaluate" if ref.track_running_stats else train  # without running statistics: the batch's
    assert calls == [train, backward, train, evaluate, backward, evaluate, train, backward]


@pytest.mark.skipif(not fused.fused_available(), reason=NO_KERNELS)
@pytest.mark.parametrize("training", [True, False])
def test_layer_shortcut_double_backward(training):
    """A gradient of the gradient through a layer (gradient penalties) in train and eval mode, float64.

    gradgradcheck checks that the gradient is differentiated consistently;
    the comparison with torch's layer checks that it is the right gradient
    (with create_graph=True, the backward takes its differentiable branch)
    and the right second derivative.
    """
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3, momentum=0.0, dtype=torch.float64).train(training)
    with torch.no_grad():
        ref.running_mean.normal_()
        ref.running_var.uniform_(0.5, 2)
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    # momentum 0: the same function at each of gradgradcheck's calls
    layer = bnn.BatchNorm2d(3, momentum=0.0, dtype=torch.float64).train(training)
    layer.load_state_dict(ref.state_dict())
    x, g = torch.randn(2, 4, 3, 2, 2, dtype=torch.float64).unbind()
    penalties = []
    for module in (layer, ref):
        xi = x.clone().requires_grad_()
        dx, dw = torch.autograd.grad((module(xi) * g).sum(), (xi, module.weight), create_graph=True)
        penalty = dx.square().sum() + dw.square().sum()
        penalties.append((dx, dw, *torch.autograd.grad(penalty, (xi, module.weight))))
    for a, b in zip(*penalties, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    weight, bias = (p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))

    def normalize(x, weight, bias):  # the layer with its parameters as inputs the check differentiates
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(normalize, (x, weight, bias))
    assert torch.autograd.gradgradcheck(normalize, (x, weight, bias))
