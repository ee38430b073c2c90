"""bncourse.nn.RMSNorm against torch.nn.RMSNorm: outputs, gradients, state_dict, gradcheck."""

import pytest
import torch
from torch import nn

from bncourse import nn as bnn


@pytest.mark.parametrize("shape, normalized", [((4, 7), 7), ((3, 5, 6), (6,)), ((2, 3, 4, 5), (4, 5))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_matches_torch_forward_and_backward(shape, normalized, dtype, eps):
    torch.manual_seed(0)
    ours, ref = bnn.RMSNorm(normalized, eps=eps, dtype=dtype), nn.RMSNorm(normalized, eps=eps, dtype=dtype)
    with torch.no_grad():
        w = torch.randn(ref.weight.shape, dtype=dtype)
        ours.weight.copy_(w), ref.weight.copy_(w)
    x = (2.0 * torch.randn(shape, dtype=dtype) + 0.5).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = ours(x), ref(x_ref)
    dout = torch.randn_like(out)
    out.backward(dout), out_ref.backward(dout)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(x.grad, x_ref.grad, **tol)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol)


def test_signature_and_state_dict_match_torch():
    ours, ref = bnn.RMSNorm(8), nn.RMSNorm(8)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    plain = bnn.RMSNorm((2, 3), eps=1e-6, elementwise_affine=False, dtype=torch.float64)
    assert plain.weight is None and list(plain.parameters()) == []
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(plain(x), nn.RMSNorm((2, 3), eps=1e-6, elementwise_affine=False, dtype=torch.float64)(x))


def test_constant_and_zero_rows():
    # A constant row becomes +-1 (RMSNorm does not subtract the mean); a zero row stays 0, no NaN.
    x = torch.stack([torch.full((6,), 3.0), torch.zeros(6)])
    out = bnn.RMSNorm(6)(x)
    torch.testing.assert_close(out, torch.stack([torch.ones(6), torch.zeros(6)]))


def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: bnn.rms_norm(x, (5,), w, 1e-5), (x, w))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="last 1 axes"):
        bnn.RMSNorm(4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="floating-point"):
        bnn.RMSNorm(4)(torch.ones(3, 4, dtype=torch.int64))
