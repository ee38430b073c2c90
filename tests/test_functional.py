"""The NumPy core against torch (float64, 1e-10 relative) and against numerical gradients."""

import numpy as np
import pytest
import torch

from bncourse import functional as F
from bncourse.gradcheck import numerical_gradient, relative_error

SHAPES = [(8, 3), (4, 3, 5), (4, 3, 2, 5), (2, 3, 2, 2, 2)]
TOL = 1e-10


def _inputs(shape, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.normal(1.5, 2.0, shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.normal(size=c).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dout


def _torch_bn(x, gamma, beta, dout, eps=1e-5):
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    yt.backward(torch.tensor(dout))
    return yt.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_torch(shape):
    x, gamma, beta, dout = _inputs(shape)
    out, cache = F.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = F.batchnorm_backward(dout, cache)
    expected = _torch_bn(x, gamma, beta, dout)
    for ours, theirs in zip((out, dx, dgamma, dbeta), expected):
        assert ours.shape == theirs.shape
        assert relative_error(ours, theirs) < TOL


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_staged_backward_equals_compact(shape):
    x, gamma, beta, dout = _inputs(shape, seed=1)
    _, cache = F.batchnorm_forward(x, gamma, beta)
    for a, b in zip(F.batchnorm_backward(dout, cache), F.batchnorm_backward_staged(dout, cache)):
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 2, 3, 2)])
def test_backward_matches_numerical_gradient(shape):
    x, gamma, beta, dout = _inputs(shape, seed=2)
    _, cache = F.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = F.batchnorm_backward(dout, cache)
    assert relative_error(dx, numerical_gradient(lambda v: F.batchnorm_forward(v, gamma, beta)[0], x, dout)) < 1e-7
    assert relative_error(dgamma, numerical_gradient(lambda g: F.batchnorm_forward(x, g, beta)[0], gamma, dout)) < 1e-7
    assert relative_error(dbeta, numerical_gradient(lambda b: F.batchnorm_forward(x, gamma, b)[0], beta, dout)) < 1e-7


def test_float32_in_float32_out_and_stable_variance():
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(size=(512, 4))).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    out, cache = F.batchnorm_forward(x, ones, zeros)
    assert out.dtype == np.float32
    assert cache.x_hat.dtype == np.float32 and cache.inv_std.dtype == np.float32
    np.testing.assert_allclose(out.astype(np.float64).var(axis=0), 1.0, atol=1e-3)
    # float32 resolves 1e4 only to ~1e-3, so the mean is known to about 1e-2 after summing.
    np.testing.assert_allclose(out.astype(np.float64).mean(axis=0), 0.0, atol=1e-2)
    # The one-pass formula really does fail here: the test would be pointless otherwise.
    one_pass = (x * x).mean(axis=0) - x.mean(axis=0) ** 2
    assert np.max(np.abs(one_pass - 1.0)) > 0.5
    dx, _, _ = F.batchnorm_backward(np.ones_like(x), cache)
    assert dx.dtype == np.float32


def test_inference_matches_torch_eval():
    x, gamma, beta, _ = _inputs((6, 3, 4), seed=3)
    rng = np.random.default_rng(3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    out = F.batchnorm_inference(x, mean, var, gamma, beta)
    expected = torch.nn.functional.batch_norm(
        torch.tensor(x), torch.tensor(mean), torch.tensor(var), torch.tensor(gamma), torch.tensor(beta),
        training=False,
    ).numpy()
    assert relative_error(out, expected) < TOL


@pytest.mark.parametrize("shape,groups", [((4, 6, 3, 2), 3), ((4, 6, 5), 1), ((3, 4, 5), 4)])
def test_groupnorm_matches_torch(shape, groups):
    x, gamma, beta, dout = _inputs(shape, seed=4)
    out, cache = F.groupnorm_forward(x, groups, gamma, beta)
    dx, dgamma, dbeta = F.groupnorm_backward(dout, cache)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = torch.nn.functional.group_norm(xt, groups, gt, bt, 1e-5)
    yt.backward(torch.tensor(dout))
    for ours, theirs in zip((out, dx, dgamma, dbeta), (yt, xt.grad, gt.grad, bt.grad)):
        assert relative_error(ours, theirs.detach().numpy()) < TOL


@pytest.mark.parametrize("shape", [(4, 6), (4, 3, 5), (1, 3, 2, 2)])
def test_layernorm_matches_torch(shape):
    x, _, _, dout = _inputs(shape, seed=5)
    rng = np.random.default_rng(5)
    gamma, beta = rng.normal(size=shape[1:]), rng.normal(size=shape[1:])
    out, cache = F.layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = F.layernorm_backward(dout, cache)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = torch.nn.functional.layer_norm(xt, shape[1:], gt, bt, 1e-5)
    yt.backward(torch.tensor(dout))
    for ours, theirs in zip((out, dx, dgamma, dbeta), (yt, xt.grad, gt.grad, bt.grad)):
        assert relative_error(ours, theirs.detach().numpy()) < TOL


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: F.batchnorm_forward(np.ones(5), np.ones(5), np.zeros(5)), "at least 2 dimensions"),
        (lambda: F.batchnorm_forward(np.ones((4, 3)), np.ones(2), np.zeros(3)), r"gamma of shape \(3,\)"),
        (lambda: F.batchnorm_forward(np.ones((4, 3)), np.ones(3), np.zeros((3, 1))), r"beta of shape \(3,\)"),
        (lambda: F.batchnorm_forward(np.ones((1, 3)), np.ones(3), np.zeros(3)), "more than 1 value per channel"),
        (lambda: F.batchnorm_forward(np.ones((4, 3), dtype=np.int64), np.ones(3), np.zeros(3)), "floating dtype"),
        (lambda: F.batchnorm_forward([[1.0, 2.0]], np.ones(2), np.zeros(2)), "numpy array"),
        (lambda: F.batchnorm_backward(np.ones((4, 3)), "not a cache"), "cache returned by batchnorm_forward"),
        (lambda: F.groupnorm_forward(np.ones((2, 6, 3)), 4, np.ones(6), np.zeros(6)), "dividing the 6 channels"),
        (lambda: F.layernorm_forward(np.ones((2, 6)), np.ones(5), np.zeros(6)), r"gamma of shape \(6,\)"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_backward_rejects_wrong_dout_shape():
    x, gamma, beta, _ = _inputs((4, 3))
    _, cache = F.batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match=r"dout of shape \(4, 3\)"):
        F.batchnorm_backward(np.ones((4, 2)), cache)


@pytest.mark.parametrize("shape, weight_shape", [((6, 5), (5,)), ((3, 4, 5), (5,)), ((3, 4, 5), (4, 5)),
                                                 ((3, 4, 5), None)])
def test_rmsnorm_matches_torch(shape, weight_shape):
    rng = np.random.default_rng(1)
    x, dout = rng.normal(0.5, 2.0, shape), rng.normal(size=shape)
    x[0] = 0.0  # a slice of zeros: only eps keeps it finite
    weight = None if weight_shape is None else rng.normal(size=weight_shape)
    out, cache = F.rmsnorm_forward(x, weight, eps=1e-6)
    dx, dweight = F.rmsnorm_backward(dout, cache)
    xt = torch.tensor(x, requires_grad=True)
    wt = None if weight is None else torch.tensor(weight, requires_grad=True)
    expected = torch.nn.functional.rms_norm(xt, weight_shape or shape[-1:], wt, eps=1e-6)
    expected.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-9)
    if weight is None:
        assert dweight is None
    else:
        np.testing.assert_allclose(dweight, wt.grad.numpy(), rtol=TOL, atol=TOL)


def test_rmsnorm_keeps_float32_and_rejects_a_misshaped_weight():
    x = np.ones((2, 3), np.float32)
    out, cache = F.rmsnorm_forward(x, np.ones(3, np.float32))
    assert out.dtype == F.rmsnorm_backward(x, cache)[0].dtype == np.float32
    with pytest.raises(ValueError, match="normalized_shape"):
        F.rmsnorm_forward(x, np.ones(2))
