"""The measuring helpers: byte counts are exact; timings are only checked to run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bncourse.lab import bench


@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3, 3)])
def test_saved_bytes_are_exact(shape):
    report = bench.saved_bytes_report(shape)
    c, itemsize = shape[1], 4
    assert report["input"] == np.prod(shape) * itemsize
    # x itself, plus weight, mean and inv_std of C values each.
    assert report[bench.OURS] == report["input"] + 3 * c * itemsize
    assert report[bench.OURS] <= report[bench.NATIVE]
    # Autograd over composed ops keeps at least two tensors as large as x.
    assert report[bench.NAIVE] >= 2 * report["input"]
    # NumPy's cache: x_hat, inv_std and gamma.
    assert report[bench.NUMPY] == report["input"] + 2 * c * itemsize


def test_saved_tensor_bytes_counts_each_storage_once():
    x = torch.randn(10, 10, requires_grad=True)
    assert bench.saved_tensor_bytes(lambda: x * x) == 400  # x saved twice, counted once
    assert bench.saved_tensor_bytes(lambda: x + x) == 0  # addition saves nothing
    assert bench.saved_tensor_bytes(lambda: x[:2].exp()) == 2 * 10 * 4  # exp saves its output


def test_cases_compute_the_same_gradients():
    cases = bench.batchnorm_training_cases((6, 4, 3, 3), dtype=torch.float64)
    native = cases[bench.NATIVE]().clone()
    torch.testing.assert_close(cases[bench.OURS](), native, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cases[bench.NAIVE](), native, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cases[bench.NUMPY](), native.numpy(), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="2-D"):
        bench.batchnorm_training_cases((2, 3, 4))


def test_numpy_backward_cases_agree():
    cases = bench.numpy_backward_cases((8, 3, 2, 2), dtype=np.float64)
    for a, b in zip(cases["compact"](), cases["staged"](), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_folding_cases_agree():
    cases = bench.folding_cases(batch=2, channels=4, size=5)
    torch.testing.assert_close(cases["folded conv"](), cases["conv + bn"](), rtol=1e-5, atol=1e-5)


def test_time_interleaved_reports_every_case():
    calls = []
    times = bench.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls.count("a") == calls.count("b") == 4
    assert calls[:2] == ["a", "b"] and calls[2:4] == ["b", "a"]  # rotating order
    with pytest.raises(ValueError, match="repeats"):
        bench.time_interleaved({"a": lambda: None}, repeats=0)


def test_saved_tensors_summary_lists_shapes_of_distinct_storages():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    summary = bench.saved_tensors_summary(lambda: (x * w.view(1, 4)) * x)
    assert sorted(summary) == [((1, 4), 16), ((3, 4), 48), ((3, 4), 48)]  # w, x, x * w
    assert sum(n for _, n in summary) == bench.saved_tensor_bytes(lambda: (x * w.view(1, 4)) * x)


def test_reduction_cases_agree():
    cases = bench.reduction_cases((4, 3, 5, 5))
    sums = [cases[k]() for k in cases if "sum" in k]
    variances = [cases["torch.var_mean"](), cases["two passes: mean, then squares"]()]
    assert len(sums) == 3
    for s in sums[1:]:
        torch.testing.assert_close(s, sums[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(variances[0], variances[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="4-D"):
        bench.reduction_cases((4, 3))


@pytest.mark.parametrize("shape,fmt", [((40, 3), torch.contiguous_format), ((4, 3, 2, 2), torch.channels_last)])
@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
def test_layer_cases_compute_the_same_thing(shape, fmt, mode):
    cases = bench.layer_cases(shape, mode, memory_format=fmt, dtype=torch.float64)
    native = cases[bench.NATIVE]().clone()
    for name in (bench.OURS, bench.FUSED):
        if name in cases:
            torch.testing.assert_close(cases[name](), native, rtol=1e-10, atol=1e-10)
    assert cases[bench.COPY]().shape == shape
    assert (bench.FUSED in cases) == bench.fused_available()


def test_roofline():
    assert bench.roofline_passes("train") == (6, 2) and bench.roofline_passes("eval") == (1, 1)
    assert bench.roofline_passes("frozen") == (3, 2)
    assert bench.roofline_time("train", read_time=1.0, copy_time=3.0) == 6 + 2 * 2
    assert bench.roofline_time("eval", read_time=1.0, copy_time=3.0) == 3.0
    with pytest.raises(ValueError, match="mode"):
        bench.roofline_passes("infer")


def test_time_interleaved_min_is_at_most_median():
    cases = {"a": lambda: sum(range(1000))}
    fastest = bench.time_interleaved(cases, repeats=5, statistic="min")["a"]
    assert 0 < fastest
    with pytest.raises(ValueError, match="statistic"):
        bench.time_interleaved(cases, repeats=1, statistic="mean")
