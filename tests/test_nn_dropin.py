"""bncourse.nn used the way PyTorch code uses torch.nn's batch norm.

Each test runs the same thing through torch's layer and ours: second-order
gradients, mixed precision, checkpointing, torch.func, empty batches, tracing
and scripting, and replace_batchnorm's corner cases.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.utils.checkpoint import checkpoint

import bncourse.nn as bnn

import function_cases  # the helper sits next to this file

F64 = dict(rtol=1e-10, atol=1e-10)
LAYERS = {1: (bnn.BatchNorm1d, nn.BatchNorm1d), 2: (bnn.BatchNorm2d, nn.BatchNorm2d), 3: (bnn.BatchNorm3d, nn.BatchNorm3d)}


def _twins(make_model, dtype=torch.float32, seed=0):
    """The same torch model twice, the second with the course's batch norm."""
    torch.manual_seed(seed)
    ref = make_model().to(dtype)
    ours = bnn.replace_batchnorm(copy.deepcopy(ref))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ours.modules())
    return ours, ref


def _assert_same_buffers(ours, ref, **tol):
    for (name, a), (_, b) in zip(ours.named_buffers(), ref.named_buffers(), strict=True):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, msg=name, **tol)


# -- second order -------------------------------------------------------------------


@pytest.mark.parametrize("shape", function_cases.SHAPES, ids=["1d", "1d-L", "2d", "3d"])
def test_gradgradcheck_float64(shape):
    x, w, b = function_cases.inputs(shape)
    assert torch.autograd.gradgradcheck(function_cases.normalized, (x, w, b))
    assert torch.autograd.gradgradcheck(function_cases.normalized, (x,))


@pytest.mark.parametrize("head", ["linear-bn", "linear-bn-linear"])
def test_gradient_penalty_training_step_equals_torch(head):
    """WGAN-GP style: the loss contains the norm of d(output)/d(input)."""

    def make():
        layers = [nn.Linear(4, 6), nn.BatchNorm1d(6)]
        if head == "linear-bn-linear":
            layers += [nn.Tanh(), nn.Linear(6, 1)]
        return nn.Sequential(*layers)

    ours, ref = _twins(make, torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 4, dtype=torch.float64, generator=gen)
        grads = []
        for model in (ours, ref):
            xi = x.clone().requires_grad_(True)
            out = model(xi)
            (dx,) = torch.autograd.grad((out**3).sum(), xi, create_graph=True)
            loss = out.square().mean() + ((dx.norm(dim=1) - 1) ** 2).mean()
            grads.append(torch.autograd.grad(loss, list(model.parameters())))
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads[-1], strict=True):
                    p -= 0.1 * g
        scale = max(g.abs().max().item() for g in grads[1])
        for g_o, g_r in zip(*grads, strict=True):
            # The Linear bias before batch norm has gradient 0 exactly in theory;
            # both land within rounding of 0 relative to the other gradients.
            torch.testing.assert_close(g_o, g_r, rtol=1e-9, atol=1e-12 * scale)
    _assert_same_buffers(ours, ref, **F64)


# -- mixed and reduced precision ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_reduced_precision_input_with_float32_layer(dtype, dim):
    ours_cls, ref_cls = LAYERS[dim]
    ours, ref = ours_cls(5), ref_cls(5)
    shape = (6, 5) + (3,) * (dim if dim > 1 else 0)
    x = (torch.randn(shape) * 3 + 2).to(dtype)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_o, out_r = ours(xo), ref(xr)
        assert out_o.dtype == out_r.dtype == dtype
        torch.testing.assert_close(out_o, out_r)
        out_o.float().square().sum().backward()
        out_r.float().square().sum().backward()
        assert xo.grad.dtype == dtype and ours.weight.grad.dtype == torch.float32
        torch.testing.assert_close(xo.grad, xr.grad, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=2e-2, atol=1e-1)
        _assert_same_buffers(ours, ref, rtol=1e-3, atol=1e-3)


def test_autocast_conv_model_forward_backward_matches_torch():
    def make():
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4),
            nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
        )

    ours, ref = _twins(make)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    results = []
    for model in (ours, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().mean().backward()
        results.append((out, [p.grad for p in model.parameters()]))
    (out_o, grads_o), (out_r, grads_r) = results
    assert out_o.dtype == out_r.dtype == torch.bfloat16
    torch.testing.assert_close(out_o, out_r, rtol=2e-2, atol=2e-2)
    # A conv bias right before batch norm has gradient 0 in exact arithmetic: compare
    # every gradient at the scale of the largest one.
    scale = max(g.abs().max().item() for g in grads_r)
    for g_o, g_r in zip(grads_o, grads_r, strict=True):
        torch.testing.assert_close(g_o, g_r, rtol=5e-2, atol=2e-2 * scale)
    _assert_same_buffers(ours, ref, rtol=1e-2, atol=1e-2)
    assert ours[1].running_mean.dtype == torch.float32


def test_half_model_with_70k_values_per_channel_stays_finite():
    """float16 sums of 70,000 values (or of squares with std 20) overflow 65,504."""
    ours, ref = bnn.BatchNorm2d(2).half(), nn.BatchNorm2d(2).half()
    x = (torch.randn(70, 2, 10, 100) * 20 + 30).half()  # 70,000 values per channel
    out_o, out_r = ours(x), ref(x)
    assert torch.isfinite(out_o).all() and torch.isfinite(ours.running_var).all()
    torch.testing.assert_close(out_o, out_r, rtol=1e-2, atol=1e-2)
    _assert_same_buffers(ours, ref, rtol=1e-3, atol=1e-2)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xo).float().square().mean().backward()
    ref(xr).float().square().mean().backward()
    assert torch.isfinite(xo.grad).all()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-2, atol=1e-4)


def test_mixed_dtypes_torch_refuses_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        bnn.BatchNorm2d(3, dtype=torch.float64)(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="dtype"):
        bnn.BatchNorm2d(3)(torch.randn(2, 3, 2, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError):
        nn.BatchNorm2d(3)(torch.randn(2, 3, 2, 2, dtype=torch.float64))


# -- checkpointing, torch.func --------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None])
def test_activation_checkpointing_updates_running_stats_like_torch(momentum):
    def make():
        return nn.Sequential(
            nn.Linear(4, 5), nn.BatchNorm1d(5, momentum=momentum), nn.ReLU(),
            nn.Linear(5, 5), nn.BatchNorm1d(5, momentum=momentum),
        )

    ours, ref = _twins(make, torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(8, 4, dtype=torch.float64, generator=gen, requires_grad=True)
        for model in (ours, ref):
            checkpoint(model, x, use_reentrant=False).square().sum().backward()
    # torch's layers update once in the forward and once more in the recomputation.
    assert int(ref[4].num_batches_tracked) == 6
    _assert_same_buffers(ours, ref, **F64)
    for p_o, p_r in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p_o.grad, p_r.grad, **F64)


def _func_twins():
    ours = bnn.BatchNorm2d(3, track_running_stats=False, dtype=torch.float64)
    ref = nn.BatchNorm2d(3, track_running_stats=False, dtype=torch.float64)
    with torch.no_grad():
        for layer in (ours, ref):
            layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return ours, ref


def test_torch_func_grad_vmap_jvp_equal_torch():
    ours, ref = _func_twins()
    gen = torch.Generator().manual_seed(3)
    xb = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64, generator=gen) * 2 + 1
    t = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=gen)

    def loss(layer):
        return lambda x: layer(x).pow(3).sum()

    torch.testing.assert_close(grad(loss(ours))(xb[0]), grad(loss(ref))(xb[0]), **F64)
    torch.testing.assert_close(vmap(ours)(xb), vmap(ref)(xb), **F64)
    torch.testing.assert_close(vmap(grad(loss(ours)))(xb), vmap(grad(loss(ref)))(xb), **F64)
    torch.testing.assert_close(jvp(ours, (xb[0],), (t,))[1], jvp(ref, (xb[0],), (t,))[1], **F64)
    # grad of grad, and gradients with respect to the parameters through functional_call.
    torch.testing.assert_close(
        grad(lambda x: grad(loss(ours))(x).square().sum())(xb[0]),
        grad(lambda x: grad(loss(ref))(x).square().sum())(xb[0]),
        **F64,
    )
    p_o = grad(lambda p: functional_call(ours, p, (xb[0],)).pow(3).sum())(dict(ours.named_parameters()))
    p_r = grad(lambda p: functional_call(ref, p, (xb[0],)).pow(3).sum())(dict(ref.named_parameters()))
    for name in p_r:
        torch.testing.assert_close(p_o[name], p_r[name], **F64)
    # Evaluation mode with running statistics works under vmap, as torch's.
    torch.testing.assert_close(vmap(bnn.BatchNorm2d(3).eval())(xb.float()), vmap(nn.BatchNorm2d(3).eval())(xb.float()))


def test_torch_func_refuses_running_stat_updates_as_torch_does():
    """Both layers mutate captured buffers in training; torch.func refuses that for both."""
    x = torch.randn(2, 4, 3, 5, 5)
    for layer in (bnn.BatchNorm2d(3), nn.BatchNorm2d(3)):
        with pytest.raises(RuntimeError):
            grad(lambda x: layer(x).sum())(x[0])
        with pytest.raises(RuntimeError):
            vmap(layer)(x)


def test_forward_mode_ad_matches_torch():
    ours, ref = _func_twins()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.randn_like(x)
    import torch.autograd.forward_ad as fwAD

    tangents = []
    for layer in (ours, ref):
        with fwAD.dual_level():
            tangents.append(fwAD.unpack_dual(layer(fwAD.make_dual(x, t))).tangent)
    torch.testing.assert_close(*tangents, **F64)


# -- empty batch, eps, constructor --------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_empty_batch_in_training_as_torch(dim):
    ours_cls, ref_cls = LAYERS[dim]
    ours, ref = ours_cls(3, momentum=None), ref_cls(3, momentum=None)
    for layer in (ours, ref):
        with torch.no_grad():
            layer.running_mean.fill_(2.0)
            layer.running_var.fill_(3.0)
    shape = (0, 3) + (4,) * (dim if dim > 1 else 0)
    xo, xr = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    out_o, out_r = ours(xo), ref(xr)
    assert out_o.shape == out_r.shape == shape
    out_o.sum().backward()
    out_r.sum().backward()
    assert xo.grad.shape == shape
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    _assert_same_buffers(ours, ref)
    assert int(ours.num_batches_tracked) == 1


def test_eps_zero_refused_in_training_like_torch():
    x = torch.randn(4, 2, 3, 3)
    x[:, 0] = 3.0  # a constant channel: variance 0, 0 / sqrt(0 + eps) needs eps > 0
    with pytest.raises((RuntimeError, ValueError), match="eps must be positive"):
        nn.BatchNorm2d(2, eps=0)(x)
    ours = bnn.BatchNorm2d(2, eps=0)
    with pytest.raises(ValueError, match="eps > 0"):
        ours(x)
    assert int(ours.num_batches_tracked) == 0  # refused before any state changed
    # Evaluation with running statistics divides by sqrt(running_var): both accept eps=0.
    torch.testing.assert_close(ours.eval()(x), nn.BatchNorm2d(2, eps=0).eval()(x))


def test_numpy_integer_num_features():
    layer = bnn.BatchNorm2d(np.int64(3))
    assert type(layer.num_features) is int and layer.weight.shape == (3,)
    assert nn.BatchNorm2d(np.int64(3)).num_features == 3


# -- tracing, export, scripting, fusion ------------------------------------------------------


def _conv_bn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_fx_symbolic_trace_records_one_call_and_matches():
    ours, _ = _twins(_conv_bn)
    traced = torch.fx.symbolic_trace(ours)
    x = torch.randn(2, 3, 6, 6)
    twin = copy.deepcopy(ours)
    torch.testing.assert_close(traced(x), twin(x))
    _assert_same_buffers(traced, twin)  # the traced module also updates its buffers


def test_export_in_train_mode_matches_eager():
    ours, _ = _twins(_conv_bn)
    x = torch.randn(2, 3, 6, 6)
    exported = torch.export.export(copy.deepcopy(ours).train(), (x,)).module()
    torch.testing.assert_close(exported(x), ours(x))


@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}])
def test_jit_script_matches_torch_and_saves(kwargs):
    torch.manual_seed(0)
    scripted, ref = torch.jit.script(bnn.BatchNorm2d(3, **kwargs)), nn.BatchNorm2d(3, **kwargs)
    for step in range(3):
        x = torch.randn(4, 3, 5, 5) + step
        torch.testing.assert_close(scripted(x), ref(x))
    _assert_same_buffers(scripted, ref)
    buffer = io.BytesIO()
    torch.jit.save(scripted.eval(), buffer)
    buffer.seek(0)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(torch.jit.load(buffer)(x), ref.eval()(x))


def test_fuse_modules_with_the_course_mapping():
    ours, ref = _twins(_conv_bn)
    ours.train()(torch.randn(8, 3, 6, 6))
    ours.eval()
    fused = torch.ao.quantization.fuse_modules(
        copy.deepcopy(ours), [["0", "1", "2"]],
        fuse_custom_config_dict={"additional_fuser_method_mapping": bnn.fuser_method_mapping()},
    )
    assert isinstance(fused[1], nn.Identity)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), ours(x), rtol=1e-5, atol=1e-5)


# -- replace_batchnorm corner cases -----------------------------------------------------------


class _ScaledBN(nn.BatchNorm2d):
    def forward(self, x):
        return 2 * super().forward(x)


class _PlainSubclass(nn.BatchNorm2d):
    pass


def test_replace_leaves_subclass_with_own_forward_and_converts_plain_subclass():
    model = nn.Sequential(_ScaledBN(3), _PlainSubclass(3))
    with pytest.warns(UserWarning, match="overrides forward"):
        bnn.replace_batchnorm(model)
    assert type(model[0]) is _ScaledBN and type(model[1]) is bnn.BatchNorm2d


def test_replace_shared_module_converted_once():
    shared = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared)
    bnn.replace_batchnorm(model)
    assert type(model[1]) is bnn.BatchNorm1d and model[1] is model[3]
    assert len(list(model.parameters())) == 6  # two Linear layers, one shared batch norm


def test_replace_with_uninitialized_lazy_linear():
    model = nn.Sequential(nn.LazyLinear(4), nn.BatchNorm1d(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnn.replace_batchnorm(model)
    assert type(model[1]) is bnn.BatchNorm1d
    assert model(torch.randn(5, 7)).shape == (5, 4)


def test_torch_compile_fullgraph_matches_torch():
    ours, ref = bnn.BatchNorm2d(3), nn.BatchNorm2d(3)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    grads = []
    for layer in (compiled, ref):
        xi = x.clone().requires_grad_(True)
        layer(xi).pow(3).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(*grads, rtol=1e-4, atol=1e-4)
    _assert_same_buffers(ours, ref)
