"""bncourse.nn.SyncBatchNorm with real processes: equal to batch norm on the global batch.

Each world size is launched once (module-scoped fixture): the workers run every
case and send back their local outputs, gradients and buffers; the assertions
run here, against ``torch.nn.functional.batch_norm`` (torch's kernel) on the
concatenated global batch. Workers bind 127.0.0.1 only and are bounded by
``launch``'s timeout; the last test checks that none is left.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bncourse.lab.distributed import launch
from bncourse.nn import BatchNorm2d as OurBatchNorm2d
from bncourse.nn import SyncBatchNorm
from bncourse.nn.sync_batchnorm import SyncBatchNormFunction, local_moments

TOL = 1e-10
TIMEOUT = 90.0

# (input shape without N, per-rank splits by world size, affine, momentum)
CASES = [
    ((5,), {2: [3, 6], 3: [1, 4, 6]}, True, 0.1),  # 2-D (N, C)
    ((3, 4, 5), {2: [2, 5], 3: [3, 0, 4]}, True, 0.1),  # 4-D, one rank empty with 3
    ((4, 3, 3), {2: [1, 3], 3: [2, 1, 2]}, False, None),  # no affine, cumulative average
]
STEPS = 2
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
    "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
    "gather", "scatter", "barrier", "send", "recv", "isend", "irecv",
)


def _case_data(case_index: int, step: int, shape: tuple[int, ...], total: int, dtype, device):
    g = torch.Generator().manual_seed(1000 * case_index + step)
    x = torch.randn((total,) + shape, generator=g, dtype=torch.float64) * 2 + 3
    upstream = torch.randn((total,) + shape, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), upstream.to(device=device, dtype=dtype)


def _affine_init(c: int, case_index: int):
    g = torch.Generator().manual_seed(7 + case_index)
    return torch.rand(c, generator=g, dtype=torch.float64) + 0.5, torch.randn(c, generator=g, dtype=torch.float64)


class _Counter:
    """Counts calls of every torch.distributed collective while installed."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._saved = {}

    def __enter__(self):
        for name in COLLECTIVES:
            if hasattr(dist, name):
                original = getattr(dist, name)
                self._saved[name] = original

                def counted(*a, __name=name, __f=original, **k):
                    self.calls.append(__name)
                    return __f(*a, **k)

                setattr(dist, name, counted)
        return self

    def __exit__(self, *exc):
        for name, f in self._saved.items():
            setattr(dist, name, f)


def _slice(t: torch.Tensor, splits: list[int], rank: int) -> torch.Tensor:
    start = sum(splits[:rank])
    return t[start : start + splits[rank]]


def _layer_cases(rank: int, world: int, device: str) -> list[dict]:
    out = []
    for i, (shape, splits_by_world, affine, momentum) in enumerate(CASES):
        splits = splits_by_world[world]
        c = shape[0]
        layer = SyncBatchNorm(c, momentum=momentum, affine=affine, device=device, dtype=torch.float64)
        if affine:
            w, b = _affine_init(c, i)
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        steps = []
        for step in range(STEPS):
            x, up = _case_data(i, step, shape, sum(splits), torch.float64, device)
            x_r = _slice(x, splits, rank).clone().requires_grad_(True)
            layer.zero_grad(set_to_none=True)
            with _Counter() as fwd:
                y = layer(x_r)
            with _Counter() as bwd:
                (y * _slice(up, splits, rank)).sum().backward()
            steps.append({
                "out": y.detach().cpu(),
                "dx": x_r.grad.cpu(),
                "dw": None if not affine else layer.weight.grad.cpu(),
                "db": None if not affine else layer.bias.grad.cpu(),
                "fwd_calls": fwd.calls,
                "bwd_calls": bwd.calls,
            })
        layer.eval()
        x, _ = _case_data(i, STEPS, shape, sum(splits), torch.float64, device)
        with _Counter() as ev:
            y_eval = layer(_slice(x, splits, rank))
        out.append({
            "steps": steps,
            "running_mean": layer.running_mean.cpu(),
            "running_var": layer.running_var.cpu(),
            "num_batches_tracked": int(layer.num_batches_tracked),
            "eval_out": y_eval.detach().cpu(),
            "eval_calls": ev.calls,
        })
    return out


def _error_cases(rank: int, world: int, device: str) -> dict[str, str]:
    """Each bad input must raise ValueError on *every* rank, and the group must stay usable."""
    layer = SyncBatchNorm(4, device=device, dtype=torch.float64)
    bad_inputs = {
        "channels_one_rank": torch.randn(3, 3 if rank == world - 1 else 4, dtype=torch.float64),
        "rank_1d": torch.randn(4, dtype=torch.float64),
        "empty_global": torch.randn(0, 4, 2, dtype=torch.float64),
        "single_value": torch.randn(1 if rank == 0 else 0, 4, dtype=torch.float64),
    }
    messages = {}
    for name, x in bad_inputs.items():
        try:
            layer(x.to(device))
            messages[name] = "no error"
        except ValueError as e:
            messages[name] = str(e)
    messages["buffers_untouched"] = str(int(layer.num_batches_tracked))
    layer(torch.randn(3, 4, dtype=torch.float64, device=device))  # still in step with the others
    messages["after"] = str(int(layer.num_batches_tracked))
    return messages


def _large_offset_case(rank: int, world: int, device: str) -> dict:
    """float32 inputs 1e4 + N(0, 1): the float64 combine keeps the variance right."""
    splits = [7 + 5 * r for r in range(world)]
    g = torch.Generator().manual_seed(3)
    x = (1e4 + torch.randn(sum(splits), 3, 4, generator=g, dtype=torch.float64)).float()
    layer = SyncBatchNorm(3, momentum=1.0, affine=False, device=device)
    layer(_slice(x, splits, rank).to(device))
    return {"running_var": layer.running_var.cpu(), "running_mean": layer.running_mean.cpu()}


def _ddp_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=False), OurBatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(24, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10),
    ).double()


DDP_STEPS = 3


def _ddp_data(step: int, total: int):
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(total, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (total,), generator=g)


def _train_step(model, opt, x, y, scale: float) -> float:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y, reduction="sum") * scale
    loss.backward()
    opt.step()
    return loss.item()


def _ddp_case(rank: int, world: int, device: str) -> dict:
    splits = [3 + 2 * r for r in range(world)]  # uneven
    total = sum(splits)
    model = SyncBatchNorm.convert_sync_batchnorm(_ddp_net()).to(device)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    for step in range(DDP_STEPS):
        x, y = _ddp_data(step, total)
        # DDP averages gradients over ranks: scale each rank's summed loss by W / N.
        _train_step(ddp, opt, _slice(x, splits, rank).to(device), _slice(y, splits, rank).to(device), world / total)
    return {k: v.cpu() for k, v in model.state_dict().items()}


def _all_cases(rank: int, world: int, device: str = "cpu") -> dict:
    return {
        "layers": _layer_cases(rank, world, device),
        "errors": _error_cases(rank, world, device),
        "offset": _large_offset_case(rank, world, device),
        "ddp": _ddp_case(rank, world, device),
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
    }


# -- Launching ---------------------------------------------------------------------

_RUNS: dict[tuple[int, str, str], list[dict]] = {}


def _variants():
    yield pytest.param((2, "gloo", "cpu"), id="gloo-cpu-2")
    yield pytest.param((3, "gloo", "cpu"), id="gloo-cpu-3")
    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    # gloo also reduces CUDA tensors: this runs on a single GPU.
    yield pytest.param((2, "gloo", "cuda"), id="gloo-cuda-2", marks=no_cuda)
    enough_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank (>= 2)")
    yield pytest.param((2, "nccl", "cuda"), id="nccl-cuda-2", marks=enough_gpus)


@pytest.fixture(scope="module", params=list(_variants()))
def run(request):
    world, backend, device = request.param
    key = (world, backend, device)
    if key not in _RUNS:
        _RUNS[key] = launch(_all_cases, world, (device,), backend=backend, timeout=TIMEOUT)
    return key, _RUNS[key]


# -- Assertions ----------------------------------------------------------------------


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= tol) if a.numel() else a.shape == b.shape


def test_workers_joined_the_requested_group(run):
    (world, backend, _), results = run
    assert [r["world_size"] for r in results] == [world] * world
    assert {r["backend"] for r in results} == {backend}


@pytest.mark.parametrize("case_index", range(len(CASES)))
def test_layer_equals_batch_norm_on_the_global_batch(run, case_index):
    (world, _, _), results = run
    shape, splits_by_world, affine, momentum = CASES[case_index]
    splits, c = splits_by_world[world], shape[0]
    ref = (nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d)(c, momentum=momentum, affine=affine).double()
    if affine:
        w, b = _affine_init(c, case_index)
        with torch.no_grad():
            ref.weight.copy_(w)
            ref.bias.copy_(b)
    for step in range(STEPS):
        x, up = _case_data(case_index, step, shape, sum(splits), torch.float64, "cpu")
        x.requires_grad_(True)
        ref.zero_grad(set_to_none=True)
        y = ref(x)
        (y * up).sum().backward()
        got = [r["layers"][case_index]["steps"][step] for r in results]
        assert _close(torch.cat([g["out"] for g in got]), y.detach())
        assert _close(torch.cat([g["dx"] for g in got]), x.grad)
        if affine:
            # Each rank holds its local share; DDP's all-reduce adds them.
            assert _close(sum(g["dw"] for g in got), ref.weight.grad)
            assert _close(sum(g["db"] for g in got), ref.bias.grad)
    # Functional form too (torch's kernel with its own running buffers).
    for r in results:
        layer = r["layers"][case_index]
        assert _close(layer["running_mean"], ref.running_mean)
        assert _close(layer["running_var"], ref.running_var)
        assert layer["num_batches_tracked"] == int(ref.num_batches_tracked) == STEPS
    ref.eval()
    x, _ = _case_data(case_index, STEPS, shape, sum(splits), torch.float64, "cpu")
    expected = F.batch_norm(x, ref.running_mean, ref.running_var, ref.weight, ref.bias, False, 0.0, ref.eps)
    assert _close(torch.cat([r["layers"][case_index]["eval_out"] for r in results]), expected.detach())


def test_exactly_one_all_reduce_forward_and_backward_none_in_eval(run):
    _, results = run
    for r in results:
        for layer in r["layers"]:
            for step in layer["steps"]:
                assert step["fwd_calls"] == ["all_reduce"]
                assert step["bwd_calls"] == ["all_reduce"]
            assert layer["eval_calls"] == []


def test_bad_input_raises_value_error_on_every_rank(run):
    (world, _, _), results = run
    for rank, r in enumerate(results):
        e = r["errors"]
        if rank == world - 1:
            assert "expected 4 channels" in e["channels_one_rank"] and "got 3" in e["channels_one_rank"]
        else:
            assert "rank(s) of the group got invalid input" in e["channels_one_rank"]
        assert e["rank_1d"] == "expected at least 2D input (got 1D input)"
        assert "non-empty global batch" in e["empty_global"]
        assert "more than 1 value per channel" in e["single_value"]
        assert e["buffers_untouched"] == "0"
        assert e["after"] == "1"


def test_float64_combine_keeps_float32_variance_at_a_large_offset(run):
    (world, _, _), results = run
    splits = [7 + 5 * r for r in range(world)]
    g = torch.Generator().manual_seed(3)
    x = (1e4 + torch.randn(sum(splits), 3, 4, generator=g, dtype=torch.float64)).float().double()
    var = x.transpose(0, 1).reshape(3, -1).var(dim=1)
    for r in results:
        assert torch.allclose(r["offset"]["running_var"].double(), var, rtol=1e-3)
    # The one-pass float32 formula E[x^2] - E[x]^2 has no correct digit here.
    x32 = x.float().transpose(0, 1).reshape(3, -1)
    naive = (x32.square().mean(1) - x32.mean(1).square()) * (x32.shape[1] / (x32.shape[1] - 1))
    assert ((naive.double() - var).abs() / var).max() > 0.1


def test_ddp_training_equals_single_process_training_on_the_global_batch(run):
    (world, _, _), results = run
    splits = [3 + 2 * r for r in range(world)]
    total = sum(splits)
    ref = _ddp_net()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(DDP_STEPS):
        x, y = _ddp_data(step, total)
        _train_step(ref, opt, x, y, 1.0 / total)
    expected = ref.state_dict()
    for r in results:
        got = r["ddp"]
        assert [k.removeprefix("module.") for k in got] == list(expected)
        for k, v in expected.items():
            assert _close(got[k].to(v.dtype), v), k


# -- In-process: no process group, conversion ------------------------------------------


def test_without_process_group_it_is_plain_batch_norm():
    assert not dist.is_initialized()
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    layer = SyncBatchNorm(3, dtype=torch.float64)
    ref = nn.BatchNorm2d(3).double()
    for m in (layer, ref):
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    up = torch.randn_like(x)
    y = layer(x)
    (y * up).sum().backward()
    dx, x.grad = x.grad, None
    y_ref = ref(x)
    (y_ref * up).sum().backward()
    assert _close(y, y_ref.detach()) and _close(dx, x.grad)
    assert _close(layer.weight.grad, ref.weight.grad) and _close(layer.bias.grad, ref.bias.grad)
    assert _close(layer.running_var, ref.running_var) and int(layer.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        layer(torch.randn(3, dtype=torch.float64))


def test_gradcheck_of_the_hand_derived_backward():
    """The Function's dx includes the statistics' dependence on x (passed in detached)."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64).add_(0.5).requires_grad_(True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        n, mean, m2 = local_moments(x.detach())
        inv_std = (m2 / n + 1e-5).rsqrt()
        return SyncBatchNormFunction.apply(x, w, b, mean, inv_std, n, None)

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_autocast_keeps_statistics_and_buffers_float32():
    torch.manual_seed(0)
    layer = SyncBatchNorm(3)
    x = (torch.randn(8, 3, 4, 4) * 3 + 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32
    ref = nn.BatchNorm2d(3)
    ref(x.float())
    assert torch.allclose(layer.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(layer.running_var, ref.running_var, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_float16_on_cuda():
    torch.manual_seed(0)
    layer, ref = SyncBatchNorm(3).cuda(), nn.BatchNorm2d(3).cuda()
    x = (torch.randn(64, 3, 32, 32, device="cuda") + 1).half()  # 65536 values per channel
    with torch.autocast("cuda", dtype=torch.float16):
        y = layer(x)
        ref(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert layer.running_mean.dtype == torch.float32
    assert torch.allclose(layer.running_mean, ref.running_mean, atol=1e-5)
    assert torch.allclose(layer.running_var, ref.running_var, rtol=1e-4)


@pytest.mark.parametrize("source", [nn.BatchNorm2d, OurBatchNorm2d])
def test_convert_keeps_state_exactly(source):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), source(3, momentum=0.3, eps=1e-3), nn.ReLU(), nn.Sequential(source(3)))
    bn = model[1]
    torch.manual_seed(0)
    bn.train()
    bn(torch.randn(4, 3, 2, 2))
    with torch.no_grad():
        bn.weight.add_(0.5)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [bn.weight, bn.bias]
    converted = SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], SyncBatchNorm) and isinstance(model[3][0], SyncBatchNorm)
    assert model[1].weight is params[0] and model[1].bias is params[1]
    assert (model[1].momentum, model[1].eps, model[1].training) == (0.3, 1e-3, False)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    single = SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm1d(2, affine=False))
    assert isinstance(single, SyncBatchNorm) and single.weight is None


def test_no_worker_left_behind():
    assert mp.active_children() == []
