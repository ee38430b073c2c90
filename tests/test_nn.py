"""bncourse.nn against torch.nn: values, gradients, state, modes, bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bncourse.nn as bnn

import function_cases  # the helper sits next to this file

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
SHAPES = {  # (our class, torch class, input shape)
    "1d-2D": (bnn.BatchNorm1d, nn.BatchNorm1d, (16, 5)),
    "1d-3D": (bnn.BatchNorm1d, nn.BatchNorm1d, (6, 5, 7)),
    "2d-4D": (bnn.BatchNorm2d, nn.BatchNorm2d, (4, 5, 6, 3)),
    "3d-5D": (bnn.BatchNorm3d, nn.BatchNorm3d, (3, 5, 2, 3, 4)),
}


def _pair(ours_cls, torch_cls, dtype, seed=0, **kwargs):
    """A torch layer with random affine params and our layer loaded from its state."""
    torch.manual_seed(seed)
    ref = torch_cls(5, dtype=dtype, **kwargs)
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            if ref.bias is not None:
                ref.bias.normal_()
    ours = ours_cls(5, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _step(layer, x, dout):
    x = x.clone().requires_grad_(True)
    for p in layer.parameters():
        p.grad = None
    out = layer(x)
    out.backward(dout)
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return out.detach(), grads


def _assert_same_state(ours, ref, tol):
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for key in a:
        if a[key].dtype == torch.long:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], **tol, msg=key)


def _assert_same_step(ours, ref, x, dout, tol) -> None:
    """One forward + backward through both modules: same output, gradients and state."""
    out_o, grads_o = _step(ours, x, dout)
    out_r, grads_r = _step(ref, x, dout)
    torch.testing.assert_close(out_o, out_r, **tol)
    for g_o, g_r in zip(grads_o, grads_r, strict=True):
        torch.testing.assert_close(g_o, g_r, **tol)
    _assert_same_state(ours, ref, tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": 0.3},
        {"momentum": None},
        {"affine": False},
        {"bias": False},
        {"track_running_stats": False},
        {"eps": 1e-3, "momentum": 0.01},
    ],
    ids=["default", "momentum0.3", "momentumNone", "noaffine", "nobias", "notrack", "keraslike"],
)
def test_matches_torch_over_training_steps_and_eval(dtype, case, kwargs):
    ours_cls, torch_cls, shape = SHAPES[case]
    ours, ref = _pair(ours_cls, torch_cls, dtype, **kwargs)
    tol = TOL[dtype]
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        # Shifted, scaled data so the statistics are not trivially 0 and 1.
        x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + step).to(dtype)
        dout = torch.randn(shape, generator=gen, dtype=dtype)
        _assert_same_step(ours, ref, x, dout, tol)
        # The same SGD step on both, so later steps see changed parameters.
        with torch.no_grad():
            for p_o, p_r in zip(ours.parameters(), ref.parameters(), strict=True):
                p_o -= 0.1 * p_o.grad
                p_r -= 0.1 * p_r.grad
    if kwargs.get("track_running_stats", True):
        assert int(ours.num_batches_tracked) == 4
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=gen, dtype=dtype)
    dout = torch.randn(shape, generator=gen, dtype=dtype)
    _assert_same_step(ours, ref, x, dout, tol)  # in eval mode the buffers must not move


def test_cumulative_average_when_momentum_is_none():
    layer = bnn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    batches = [torch.randn(10, 3, dtype=torch.float64) + i for i in range(5)]
    for x in batches:
        layer(x)
    expected_mean = torch.stack([x.mean(0) for x in batches]).mean(0)
    expected_var = torch.stack([x.var(0, unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, expected_var, rtol=1e-12, atol=1e-12)


def test_running_var_is_unbiased_and_momentum_weights_the_new_value():
    layer = bnn.BatchNorm1d(2, momentum=0.25, dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]], dtype=torch.float64)
    layer(x)
    torch.testing.assert_close(layer.running_mean, 0.25 * x.mean(0))
    torch.testing.assert_close(layer.running_var, 0.75 + 0.25 * x.var(0, unbiased=True))


@pytest.mark.parametrize("shape", function_cases.SHAPES)
def test_function_gradcheck_float64(shape):
    x, w, b = function_cases.inputs(shape)
    assert torch.autograd.gradcheck(function_cases.normalized, (x, w, b))
    assert torch.autograd.gradcheck(function_cases.normalized, (x,))


def test_modules_gradcheck_train_and_eval():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    layer = bnn.BatchNorm2d(3, dtype=torch.float64, track_running_stats=False)
    assert torch.autograd.gradcheck(layer, (x,))
    layer = bnn.BatchNorm2d(3, dtype=torch.float64).eval()
    assert torch.autograd.gradcheck(layer, (x,))


def test_state_dict_keys_params_and_buffers_match_torch():
    for ours_cls, torch_cls, _ in SHAPES.values():
        for kwargs in ({}, {"affine": False}, {"track_running_stats": False}, {"bias": False}):
            ours, ref = ours_cls(4, **kwargs), torch_cls(4, **kwargs)
            assert list(ours.state_dict()) == list(ref.state_dict())
            assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
            assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
            for (n, a), (_, b) in zip(
                ours.state_dict().items(), ref.state_dict().items(), strict=True
            ):
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), n
            ref.load_state_dict(ours.state_dict(), strict=True)
            assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]


def test_state_dict_loads_both_ways_inside_sequential():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    for _ in range(3):
        ref(torch.randn(8, 4))
    ours = nn.Sequential(nn.Linear(4, 6), bnn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(8, 4)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    ref2 = copy.deepcopy(ref)
    ref2.load_state_dict(ours.state_dict(), strict=True)


def test_old_state_without_num_batches_tracked_still_loads():
    ref = nn.BatchNorm1d(3)
    state = ref.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    ours = bnn.BatchNorm1d(3)
    ours.load_state_dict(state, strict=True)
    assert int(ours.num_batches_tracked) == 0


def test_factory_kwargs_and_defaults():
    layer = bnn.BatchNorm2d(3, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.running_var.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.long
    assert (layer.eps, layer.momentum, layer.affine, layer.track_running_stats) == (
        1e-5,
        0.1,
        True,
        True,
    )
    assert not isinstance(layer, nn.modules.batchnorm._BatchNorm)


def test_no_grad_and_train_updates_stats_without_graph():
    layer = bnn.BatchNorm1d(3)
    ref = nn.BatchNorm1d(3)
    x = torch.randn(10, 3)
    with torch.no_grad():
        out = layer(x)
        out_ref = ref(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(layer.running_mean, ref.running_mean)
    with torch.inference_mode():
        torch.testing.assert_close(layer.eval()(x), ref.eval()(x))


def test_never_calls_torch_batch_norm_kernels():
    layer = bnn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x).sum().backward()
        layer.eval()(x).sum().backward()
    names = {event.name for event in prof.events()}
    assert any(name.startswith("aten::") for name in names)
    assert not [name for name in names if "batch_norm" in name], names


@pytest.mark.parametrize(
    "cls, shape",
    [
        (bnn.BatchNorm1d, (2, 3, 4, 5)),  # 4-D into 1d
        (bnn.BatchNorm1d, (3,)),  # 1-D
        (bnn.BatchNorm2d, (4, 3)),  # 2-D into 2d
        (bnn.BatchNorm2d, (4, 3, 5)),  # 3-D into 2d
        (bnn.BatchNorm3d, (4, 3, 5, 5)),  # 4-D into 3d
    ],
)
def test_wrong_rank_raises_like_torch(cls, shape):
    torch_cls = {
        bnn.BatchNorm1d: nn.BatchNorm1d,
        bnn.BatchNorm2d: nn.BatchNorm2d,
        bnn.BatchNorm3d: nn.BatchNorm3d,
    }[cls]
    x = torch.randn(shape)
    with pytest.raises(ValueError, match="expected"):
        torch_cls(3)(x)
    with pytest.raises(ValueError, match=r"expected .*got \d-D input"):
        cls(3)(x)


def test_wrong_channels_raise():
    x = torch.randn(4, 5)
    with pytest.raises((RuntimeError, ValueError)):
        nn.BatchNorm1d(3)(x)
    layer = bnn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="expected 3 channels on axis 1, got 5"):
        layer(x)
    assert int(layer.num_batches_tracked) == 0
    with pytest.raises(ValueError, match="channels"):
        bnn.BatchNorm2d(3).eval()(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize(
    "shape, cls",
    [((1, 3), bnn.BatchNorm1d), ((1, 3, 1), bnn.BatchNorm1d), ((1, 3, 1, 1), bnn.BatchNorm2d)],
)
def test_one_value_per_channel_in_training_raises(shape, cls):
    torch_cls = nn.BatchNorm1d if cls is bnn.BatchNorm1d else nn.BatchNorm2d
    x = torch.randn(shape)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch_cls(3)(x)
    layer = cls(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(x)
    assert int(layer.num_batches_tracked) == 0 and torch.equal(layer.running_mean, torch.zeros(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cls(3, track_running_stats=False).eval()(x)  # no running stats: batch stats even in eval
    torch.testing.assert_close(layer.eval()(x), torch_cls(3).eval()(x))  # eval is fine


def test_bad_constructor_and_functional_arguments():
    with pytest.raises(ValueError, match="num_features"):
        bnn.BatchNorm1d(0)
    with pytest.raises(ValueError, match="momentum"):
        bnn.BatchNorm1d(3, momentum=1.5)
    with pytest.raises(ValueError, match="floating"):
        bnn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="dtype"):
        bnn.BatchNorm1d(3)(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="running_mean and running_var"):
        bnn.batch_norm(torch.randn(4, 3), None, None, training=False)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\)"):
        bnn.batch_norm(torch.randn(4, 3), None, None, torch.ones(4), training=True)


def test_functional_matches_torch_functional():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, dtype=torch.float64)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    w, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    for training in (True, False):
        rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()
        ours = bnn.batch_norm(x, rm1, rv1, w, b, training, 0.2, 1e-4)
        ref = torch.nn.functional.batch_norm(x, rm2, rv2, w, b, training, 0.2, 1e-4)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rm1, rm2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv1, rv2, rtol=1e-12, atol=1e-12)


def test_naive_batchnorm_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    dout = torch.randn_like(x)
    ours = bnn.naive_batchnorm(x, w, b)
    ref = torch.nn.functional.batch_norm(x, None, None, w, b, True)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    for g, h in zip(
        torch.autograd.grad(ours, (x, w, b), dout),
        torch.autograd.grad(ref, (x, w, b), dout),
        strict=True,
    ):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-10)


# -- layer norm and group norm -------------------------------------------------


def _randomize(*modules, seed=0):
    torch.manual_seed(seed)
    first = modules[0]
    with torch.no_grad():
        for p in first.parameters():
            p.normal_()
    for m in modules[1:]:
        m.load_state_dict(first.state_dict(), strict=True)


def _compare_forward_backward(ours, ref, x, tol):
    dout = torch.randn_like(x)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_o, out_r = ours(xo), ref(xr)
    torch.testing.assert_close(out_o, out_r, **tol)
    out_o.backward(dout)
    out_r.backward(dout)
    torch.testing.assert_close(xo.grad, xr.grad, **tol)
    for p_o, p_r in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p_o.grad, p_r.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "normalized_shape, x_shape, kwargs",
    [
        (8, (5, 8), {}),
        ((4, 3), (2, 5, 4, 3), {}),
        (6, (3, 2, 6), {"elementwise_affine": False}),
        (6, (3, 2, 6), {"bias": False, "eps": 1e-3}),
    ],
)
def test_layer_norm_matches_torch(dtype, normalized_shape, x_shape, kwargs):
    ours = bnn.LayerNorm(normalized_shape, dtype=dtype, **kwargs)
    ref = nn.LayerNorm(normalized_shape, dtype=dtype, **kwargs)
    _randomize(ours, ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(x_shape, dtype=dtype) * 3 + 1
    _compare_forward_backward(ours, ref, x, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "groups, channels, x_shape, kwargs",
    [
        (2, 6, (4, 6), {}),
        (3, 6, (4, 6, 5), {}),
        (1, 4, (2, 4, 3, 3), {}),
        (4, 4, (2, 4, 3, 3), {"eps": 1e-3}),
        (2, 4, (2, 4, 3, 3), {"affine": False}),
    ],
)
def test_group_norm_matches_torch(dtype, groups, channels, x_shape, kwargs):
    ours = bnn.GroupNorm(groups, channels, dtype=dtype, **kwargs)
    ref = nn.GroupNorm(groups, channels, dtype=dtype, **kwargs)
    _randomize(ours, ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(x_shape, dtype=dtype) * 3 + 1
    _compare_forward_backward(ours, ref, x, TOL[dtype])


def test_layer_and_group_norm_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: bnn.layer_norm(x, (4, 5), w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: bnn.layer_norm(x, (5,)), (x,))
    wg = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bg = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: bnn.group_norm(x, 2, w, b), (x, wg, bg))


def test_layer_and_group_norm_bad_inputs():
    with pytest.raises(ValueError, match="last 1 axes are"):
        bnn.LayerNorm(4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="divisible"):
        bnn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="divisible"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"\(N, 6, \*\)"):
        bnn.GroupNorm(3, 6)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="floating"):
        bnn.LayerNorm(3)(torch.ones(2, 3, dtype=torch.long))


def test_layer_and_group_norm_batch_of_one_is_fine():
    x = torch.randn(1, 6, 4)
    torch.testing.assert_close(bnn.LayerNorm(4)(x), nn.LayerNorm(4)(x))
    torch.testing.assert_close(bnn.GroupNorm(3, 6)(x), nn.GroupNorm(3, 6)(x))


# -- replace_batchnorm --------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8, momentum=None)
        )
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.head(self.features(x)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_replace_batchnorm_keeps_function_state_dtype_and_mode(dtype):
    torch.manual_seed(0)
    net = _Net().to(dtype)
    for _ in range(3):
        net(torch.randn(5, 2, 6, 6, dtype=dtype)).sum().backward()
    net.features[1].weight.requires_grad_(False)
    net.eval()
    reference = copy.deepcopy(net)
    replaced = bnn.replace_batchnorm(net)
    assert replaced is net
    assert type(net.features[1]) is bnn.BatchNorm2d and type(net.head[2]) is bnn.BatchNorm1d
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert net.head[2].momentum is None and not net.features[1].training
    assert net.features[1].weight.dtype == dtype and not net.features[1].weight.requires_grad
    _assert_same_state(net.head[2], reference.head[2], TOL[dtype])
    x = torch.randn(5, 2, 6, 6, dtype=dtype)
    torch.testing.assert_close(net(x), reference(x), **TOL[dtype])
    net.train(), reference.train()
    torch.testing.assert_close(net(x), reference(x), **TOL[dtype])
    _assert_same_state(net.features[1], reference.features[1], TOL[dtype])


def test_replace_batchnorm_top_level_and_lazy():
    layer = nn.BatchNorm1d(3, affine=False).eval()
    new = bnn.replace_batchnorm(layer)
    assert type(new) is bnn.BatchNorm1d and not new.training and new.weight is None
    with pytest.raises(ValueError, match="uninitialized"):
        bnn.replace_batchnorm(nn.Sequential(nn.LazyBatchNorm1d()))
    lazy = nn.Sequential(nn.LazyBatchNorm1d())
    lazy(torch.randn(4, 3))
    assert type(bnn.replace_batchnorm(lazy)[0]) is bnn.BatchNorm1d
    with pytest.raises(ValueError, match="torch.nn.Module"):
        bnn.replace_batchnorm("not a model")


def test_channels_last_input_and_expanded_upstream_gradient():
    torch.manual_seed(0)
    x = (torch.randn(4, 5, 3, 3, dtype=torch.float64) * 2 + 1).to(memory_format=torch.channels_last)
    ours, ref = _pair(bnn.BatchNorm2d, nn.BatchNorm2d, torch.float64)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_o, out_r = ours(xo), ref(xr)
    torch.testing.assert_close(out_o, out_r, **TOL[torch.float64])
    # (out * c).sum() hands the backward an expanded, non-contiguous gradient.
    c = torch.randn(1, 5, 1, 1, dtype=torch.float64)
    (out_o * c).sum().backward()
    (out_r * c).sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, **TOL[torch.float64])
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TOL[torch.float64])
    _assert_same_state(ours, ref, TOL[torch.float64])
