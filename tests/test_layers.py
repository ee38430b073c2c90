"""bncourse.BatchNorm1d/2d step for step against torch.nn.BatchNorm1d/2d (float64, 1e-10 relative)."""

import numpy as np
import pytest
import torch

import bncourse
from bncourse.gradcheck import relative_error

TOL = 1e-10
CASES = [
    (bncourse.BatchNorm1d, torch.nn.BatchNorm1d, (16, 5)),
    (bncourse.BatchNorm1d, torch.nn.BatchNorm1d, (8, 5, 7)),
    (bncourse.BatchNorm2d, torch.nn.BatchNorm2d, (4, 5, 3, 6)),
    (bncourse.BatchNorm3d, torch.nn.BatchNorm3d, (3, 5, 2, 3, 4)),
]


def _pair(ours_cls, torch_cls, c, seed=0, **kwargs):
    torch.manual_seed(seed)
    theirs = torch_cls(c, **kwargs).double()
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-1.0, 1.0)
    ours = ours_cls(c, dtype=np.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _close(a, b):
    return relative_error(np.asarray(a), b.detach().numpy()) < TOL


def _step_both(ours, theirs, rng, shape):
    """One forward + backward through both layers on the same data; compare everything."""
    x = rng.normal(3.0, 2.0, shape)
    dout = rng.normal(size=shape)
    xt = torch.tensor(x, requires_grad=True)
    theirs.zero_grad()
    yt = theirs(xt)
    yt.backward(torch.tensor(dout))
    assert _close(ours(x), yt)
    assert _close(ours.backward(dout), xt.grad)
    assert _close(ours.grad_weight, theirs.weight.grad)
    assert _close(ours.grad_bias, theirs.bias.grad)
    assert _close(ours.running_mean, theirs.running_mean)
    assert _close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)


@pytest.mark.parametrize("ours_cls,torch_cls,shape", CASES)
@pytest.mark.parametrize("momentum", [0.1, 0.37, None])
def test_training_steps_then_eval_match_torch(ours_cls, torch_cls, shape, momentum):
    ours, theirs = _pair(ours_cls, torch_cls, shape[1], momentum=momentum)
    rng = np.random.default_rng(1)
    for _ in range(5):
        _step_both(ours, theirs, rng, shape)
    before = ours.running_mean.copy()
    ours.eval()
    theirs.eval()
    _step_both(ours, theirs, rng, shape)
    np.testing.assert_array_equal(ours.running_mean, before)  # eval does not update


@pytest.mark.parametrize("kwargs", [{"affine": False}, {"track_running_stats": False}])
def test_options_match_torch(kwargs):
    ours, theirs = _pair(bncourse.BatchNorm1d, torch.nn.BatchNorm1d, 4, **kwargs)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    rng = np.random.default_rng(2)
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        x = rng.normal(size=(10, 4))
        assert _close(ours(x), theirs(torch.tensor(x)))


def test_state_dict_round_trip_and_keys():
    layer = bncourse.BatchNorm2d(3)
    layer(np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32))
    assert list(layer.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())
    assert isinstance(layer.state_dict()["num_batches_tracked"], np.ndarray)
    other = bncourse.BatchNorm2d(3)
    other.load_state_dict(layer.state_dict())
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)
    # Our state loads into torch as tensors.
    theirs = torch.nn.BatchNorm2d(3)
    theirs.load_state_dict({k: torch.as_tensor(v) for k, v in layer.state_dict().items()})
    np.testing.assert_array_equal(theirs.running_mean.numpy(), layer.running_mean)


def test_float32_layer_keeps_float32():
    layer = bncourse.BatchNorm1d(3)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    out = layer(x)
    assert out.dtype == np.float32
    assert layer.backward(np.ones_like(out)).dtype == np.float32
    assert layer.running_var.dtype == np.float32 and layer.grad_weight.dtype == np.float32


def test_float32_agrees_with_torch_float32():
    ours, theirs = bncourse.BatchNorm1d(6), torch.nn.BatchNorm1d(6)
    x = np.random.default_rng(3).normal(5, 3, size=(32, 6)).astype(np.float32)
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-5)


def test_train_mode_depends_on_batch_eval_mode_does_not():
    layer = bncourse.BatchNorm1d(2, dtype=np.float64)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 2))
    y = x.copy()
    y[1:] += 10.0
    assert not np.allclose(layer(x)[0], layer(y)[0])
    layer.eval()
    np.testing.assert_array_equal(layer(x)[0], layer(y)[0])


BAD_INPUTS = [
    (lambda: bncourse.BatchNorm1d(3)(np.ones((4, 3, 2, 2), np.float32)), r"expected 2-D \(N, C\) or 3-D \(N, C, L\) input, got 4-D"),
    (lambda: bncourse.BatchNorm2d(3)(np.ones((4, 3), np.float32)), r"expected 4-D \(N, C, H, W\) input, got 2-D"),
    (lambda: bncourse.BatchNorm1d(3)(np.ones((4, 2), np.float32)), "expected 3 channels on axis 1, got 2"),
    (lambda: bncourse.BatchNorm1d(3)(np.ones((1, 3), np.float32)), "more than 1 value per channel"),
    (lambda: bncourse.BatchNorm2d(3)(np.ones((1, 3, 1, 1), np.float32)), "more than 1 value per channel"),
    (lambda: bncourse.BatchNorm1d(3).backward(np.ones((4, 3))), "backward called before forward"),
    (lambda: bncourse.BatchNorm1d(3)([[1.0, 2.0, 3.0]]), "numpy array"),
    (lambda: bncourse.BatchNorm1d(3).eval()(np.ones((4, 3), np.int64)), "floating-point input, got dtype int64"),
    (lambda: bncourse.BatchNorm1d(0), "positive int"),
    (lambda: bncourse.BatchNorm1d(3, momentum=1.5), "momentum in"),
    (lambda: bncourse.BatchNorm1d(3).load_state_dict({"weight": np.ones(3)}), "missing"),
    (
        lambda: bncourse.BatchNorm1d(3).load_state_dict(torch.nn.BatchNorm1d(4).state_dict()),
        r"running_mean of shape \(3,\), got shape \(4,\)|weight of shape \(3,\)|bias of shape",
    ),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_torch_refuses_what_we_refuse():
    """The single-value-per-channel rule is torch's too, not our invention."""
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.ones(1, 3))


def test_backward_rejects_wrong_shape():
    layer = bncourse.BatchNorm1d(3)
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"dout of shape \(4, 3\)"):
        layer.backward(np.ones((5, 3), np.float32))


def test_eval_single_example_is_fine():
    layer = bncourse.BatchNorm1d(3).eval()
    assert layer(np.ones((1, 3), np.float32)).shape == (1, 3)


def test_old_checkpoint_without_num_batches_tracked_loads_as_in_torch():
    theirs = torch.nn.BatchNorm2d(3)
    theirs(torch.randn(4, 3, 2, 2))
    old = {k: v for k, v in theirs.state_dict().items() if k != "num_batches_tracked"}
    ours = bncourse.BatchNorm2d(3)
    ours.load_state_dict(old)
    np.testing.assert_array_equal(ours.running_var, theirs.running_var.numpy())
    assert int(ours.num_batches_tracked) == 0  # torch also keeps the current count
    fresh = torch.nn.BatchNorm2d(3)
    fresh.load_state_dict(old, strict=False)
    assert int(fresh.num_batches_tracked) == 0


def test_dtype_mismatch_refused_as_torch_refuses():
    x64 = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(RuntimeError, match="mixed dtype"):
        torch.nn.BatchNorm1d(3)(torch.from_numpy(x64))
    with pytest.raises(ValueError, match="expected input of dtype float32.*got dtype float64"):
        bncourse.BatchNorm1d(3)(x64)
    with pytest.raises(ValueError, match="expected input of dtype float64"):
        bncourse.BatchNorm1d(3, dtype=np.float64)(x64.astype(np.float32))


def test_float16_input_computed_in_float32_like_torch():
    """70,000 values per channel: a float16 sum would overflow (max 65,504)."""
    x = (np.random.default_rng(1).normal(30, 20, size=(700, 2, 100))).astype(np.float16)
    for layer_dtype, torch_dtype in ((np.float32, torch.float32), (np.float16, torch.float16)):
        ours = bncourse.BatchNorm1d(2, dtype=layer_dtype)
        theirs = torch.nn.BatchNorm1d(2).to(torch_dtype)
        xt = torch.from_numpy(x).requires_grad_(True)
        out, ref = ours(x), theirs(xt)
        assert out.dtype == np.float16 and np.isfinite(out).all()
        np.testing.assert_allclose(out.astype(np.float32), ref.detach().float().numpy(), atol=1e-2)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-3)
        dout = np.random.default_rng(2).normal(size=x.shape).astype(np.float16)
        ref.backward(torch.from_numpy(dout))
        dx = ours.backward(dout)
        assert dx.dtype == np.float16
        np.testing.assert_allclose(dx.astype(np.float32), xt.grad.float().numpy(), atol=1e-3)
