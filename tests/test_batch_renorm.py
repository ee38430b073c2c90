"""BatchRenorm1d/2d and GhostBatchNorm1d/2d against torch's batch norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bncourse.nn import BatchRenorm1d, BatchRenorm2d, GhostBatchNorm1d, GhostBatchNorm2d, LinearRamp
from bncourse.nn.batch_renorm import BatchRenormFunction
from bncourse.nn.utils import recalibrate_bn

TOL = 1e-10


def _steps(ours, ref, shape, steps=3, seed=0):
    """Train both for a few steps on the same data; compare outputs, gradients and buffers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
        for m in (ours, ref):
            m.weight.copy_(w)
    for _ in range(steps):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_(True)
        up = torch.randn(shape, generator=g, dtype=torch.float64)
        grads = []
        for m in (ours, ref):
            m.zero_grad(set_to_none=True)
            x.grad = None
            y = m(x)
            (y * up).sum().backward()
            grads.append((y.detach(), x.grad.clone(), m.weight.grad.clone(), m.bias.grad.clone()))
        for a, b in zip(*grads):
            assert (a - b).abs().max() <= TOL
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(ours, name).double(), getattr(ref, name).double(), atol=TOL, rtol=0), name


@pytest.mark.parametrize("cls, ref_cls, shape", [
    (BatchRenorm1d, nn.BatchNorm1d, (7, 4)),
    (BatchRenorm2d, nn.BatchNorm2d, (5, 3, 4, 4)),
])
def test_renorm_with_r_max_1_and_d_max_0_is_batch_norm(cls, ref_cls, shape):
    ours = cls(shape[1], r_max=1.0, d_max=0.0, dtype=torch.float64)
    ref = ref_cls(shape[1]).double()
    _steps(ours, ref, shape)
    ours.eval(), ref.eval()
    x = torch.randn(shape, dtype=torch.float64)
    assert (ours(x) - ref(x)).abs().max() <= TOL


def test_unclipped_renorm_trains_with_the_inference_output():
    """With r and d free, x_hat = (x - running_mean) / sigma: training output = eval output."""
    torch.manual_seed(0)
    layer = BatchRenorm2d(3, r_max=1e6, d_max=1e6, momentum=0.0, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64) * 2
    y_train = layer(x)
    layer.eval()
    assert (y_train - layer(x)).abs().max() <= TOL


def test_clipping_limits_the_correction():
    layer = BatchRenorm1d(2, r_max=2.0, d_max=0.5, momentum=0.0, dtype=torch.float64)
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10 + 5
    y = layer(x).detach()  # running stats (0, 1): sigma_B / sigma ~ 10 clipped to 2, d ~ 5 clipped to 0.5
    assert torch.allclose(y.std(0, unbiased=False), torch.full((2,), 2.0, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(y.mean(0), torch.full((2,), 0.5, dtype=torch.float64), atol=1e-12)


def test_gradcheck_with_fixed_corrections():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64, generator=g) + 0.5).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    r = torch.rand(3, dtype=torch.float64, generator=g) + 0.5
    d = torch.randn(3, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x, w, b: BatchRenormFunction.apply(x, w, b, r, d, 1e-5)[0], (x, w, b))


def test_linear_ramp_and_schedules():
    ramp = LinearRamp(1.0, 3.0, 10, 30)
    assert [ramp(s) for s in (0, 10, 20, 30, 100)] == [1.0, 1.0, 2.0, 3.0, 3.0]
    layer = BatchRenorm1d(2, r_max=ramp, d_max=LinearRamp(0.0, 5.0, 10, 20))
    assert layer.limits() == (1.0, 0.0)
    layer.num_batches_tracked.fill_(15)
    assert layer.limits() == (1.5, 2.5)
    with pytest.raises(ValueError, match="begin <= finish"):
        LinearRamp(1, 3, 10, 5)
    with pytest.raises(ValueError, match="r_max >= 1"):
        BatchRenorm1d(2, r_max=0.5).limits()


def test_renorm_rejects_bad_input_and_recalibrates():
    layer = BatchRenorm2d(3)
    with pytest.raises(ValueError, match="expected 4-D"):
        layer(torch.randn(4, 3))
    with pytest.raises(ValueError, match="more than 1 value"):
        layer(torch.randn(1, 3, 1, 1))
    model = nn.Sequential(nn.Conv2d(1, 3, 3), layer)
    x = torch.randn(64, 1, 5, 5)
    recalibrate_bn(model, x, batch_size=64)
    assert torch.allclose(layer.running_mean, model[0](x).mean((0, 2, 3)), atol=1e-5)


@pytest.mark.parametrize("cls, ref_cls, shape", [
    (GhostBatchNorm1d, nn.BatchNorm1d, (4, 3)),
    (GhostBatchNorm2d, nn.BatchNorm2d, (3, 2, 3, 3)),
])
def test_ghost_batch_norm_is_batch_norm_per_ghost_batch(cls, ref_cls, shape):
    ghosts = 3
    n = shape[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn((ghosts * n,) + shape[1:], dtype=torch.float64, generator=g).requires_grad_(True)
    up = torch.randn(x.shape, dtype=torch.float64, generator=g)
    layer = cls(shape[1], virtual_batch_size=n, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=g)
    (layer(x) * up).sum().backward()
    y = layer(x.detach())  # a second step, for the running statistics
    refs = [ref_cls(shape[1]).double() for _ in range(ghosts)]
    outs, dxs = [], []
    for k, ref in enumerate(refs):
        with torch.no_grad():
            ref.weight.copy_(layer.weight)
        xk = x.detach()[k * n : (k + 1) * n].clone().requires_grad_(True)
        (ref(xk) * up[k * n : (k + 1) * n]).sum().backward()
        outs.append(ref(xk.detach()))
        dxs.append(xk.grad)
    assert (y - torch.cat(outs)).abs().max() <= TOL
    assert (x.grad - torch.cat(dxs)).abs().max() <= TOL
    assert (layer.weight.grad - sum(r.weight.grad for r in refs)).abs().max() <= TOL
    # Running statistics: the mean over ghost batches of what each would have tracked.
    assert (layer.running_mean - sum(r.running_mean for r in refs) / ghosts).abs().max() <= TOL
    assert (layer.running_var - sum(r.running_var for r in refs) / ghosts).abs().max() <= TOL
    layer.eval(), refs[0].eval()
    refs[0].running_mean.copy_(layer.running_mean), refs[0].running_var.copy_(layer.running_var)
    assert (layer(x.detach()) - refs[0](x.detach())).abs().max() <= TOL


def test_ghost_batch_equal_to_the_batch_is_batch_norm_and_a_remainder_is_its_own_ghost_batch():
    layer, ref = GhostBatchNorm1d(3, virtual_batch_size=8, dtype=torch.float64), nn.BatchNorm1d(3).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    assert (layer(x) - ref(x)).abs().max() <= TOL
    x = torch.randn(13, 3, dtype=torch.float64)
    expected = torch.cat([nn.BatchNorm1d(3).double()(x[:8]), nn.BatchNorm1d(3).double()(x[8:])])
    assert (layer(x) - expected).abs().max() <= TOL
    with pytest.raises(ValueError, match="virtual_batch_size an int >= 2"):
        GhostBatchNorm2d(3, virtual_batch_size=1)
