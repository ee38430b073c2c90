"""Measuring batch normalization: time of forward+backward, and bytes saved for backward.

Used by ``benchmarks/bench_batchnorm.py`` (big sizes) and by the performance
chapter (small sizes). Timing on a shared machine is noisy, so every
function here interleaves the contenders (one run of each per round, in
rotating order) and reports medians over rounds; compare ratios measured in
the same call, never absolute times from different runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .. import functional as F_np
from ..fold import fold_batchnorm
from ..nn import BatchNorm1d, BatchNorm2d, naive_batchnorm
from ..nn.fused import fused_available, use_kernels

__all__ = [
    "time_interleaved",
    "saved_tensor_bytes",
    "saved_tensors_summary",
    "reduction_cases",
    "batchnorm_training_cases",
    "numpy_backward_cases",
    "saved_bytes_report",
    "folding_cases",
    "layer_cases",
    "roofline_passes",
    "roofline_time",
    "READ",
    "NATIVE",
    "FUSED",
    "COPY",
    "OURS",
    "NAIVE",
    "NUMPY",
]

NATIVE = "torch.nn (native kernel)"
OURS = "bncourse.nn, torch ops (compact backward)"
NAIVE = "naive (autograd over ops)"
NUMPY = "NumPy core (bncourse.functional)"
FUSED = "bncourse.nn (default: C kernels)"
COPY = "x.clone() (read + write bandwidth)"
READ = "x.sum() (read bandwidth)"


def time_interleaved(
    cases: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 2, statistic: str = "median"
) -> dict[str, float]:
    """Median (or ``statistic="min"``: fastest) wall time in seconds of each zero-argument callable in ``cases``.

    Each round runs every case once; the starting case rotates from round to
    round so that none always runs right after the same neighbour. ``warmup``
    rounds are run first and discarded (allocator and cache warm-up). On a
    machine shared with other jobs, load only ever adds time, so the fastest
    round estimates the time without it.
    """
    if statistic not in ("median", "min"):
        raise ValueError(f"expected statistic 'median' or 'min', got {statistic!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            cases[name]()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    summarize = statistics.median if statistic == "median" else min
    return {name: summarize(ts) for name, ts in times.items()}


def saved_tensors_summary(fn: Callable[[], object]) -> list[tuple[tuple[int, ...], int]]:
    """What autograd keeps for the backward pass of the graph ``fn()`` builds.

    Every tensor saved for backward (by built-in ops or by a custom
    ``autograd.Function``'s ``save_for_backward``) goes through
    ``torch.autograd.graph.saved_tensors_hooks``. Returns one
    ``(shape, nbytes)`` per distinct underlying storage, in the order first
    saved, with ``nbytes`` the storage's full size: a saved view keeps its whole
    base alive, and a tensor saved twice costs nothing extra.
    """
    storages: dict[int, tuple[tuple[int, ...], int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages.setdefault(storage.data_ptr(), (tuple(t.shape), storage.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return list(storages.values())


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Total bytes of :func:`saved_tensors_summary`: what ``fn()``'s graph holds for backward."""
    return sum(nbytes for _, nbytes in saved_tensors_summary(fn))


def reduction_cases(shape: tuple[int, ...], seed: int = 0) -> dict[str, Callable[[], torch.Tensor]]:
    """Ways to get per-channel statistics of a ``(N, C, H, W)`` tensor; each returns ``(C,)``.

    Sums (``"sum over (0, 2, 3)"``, ``"view (N, C, HW), sum 2 then 0"``,
    ``"transpose to (C, N*H*W) copy, sum 1"``) all return the channel sums;
    ``"torch.var_mean"`` and ``"two passes: mean, then squares"`` return the
    biased variance. Time them with :func:`time_interleaved`.
    """
    if len(shape) != 4:
        raise ValueError(f"expected a 4-D (N, C, H, W) shape, got {shape}")
    n, c = shape[:2]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2 + 1
    dims = (0, 2, 3)
    m = x.numel() // c

    def two_pass() -> torch.Tensor:
        centered = x - x.view(n, c, -1).sum(2).sum(0).div_(m).view(1, c, 1, 1)
        return centered.square_().view(n, c, -1).sum(2).sum(0).div_(m)

    return {
        "sum over (0, 2, 3)": lambda: x.sum(dims),
        "view (N, C, HW), sum 2 then 0": lambda: x.view(n, c, -1).sum(2).sum(0),
        "transpose to (C, N*H*W) copy, sum 1": lambda: x.transpose(0, 1).reshape(c, -1).sum(1),
        "torch.var_mean": lambda: torch.var_mean(x, dims, correction=0)[0],
        "two passes: mean, then squares": two_pass,
    }


def _torch_bn(num_features: int, ndim: int, module: str, dtype: torch.dtype) -> nn.Module:
    two_d = ndim == 4
    if module == "torch":
        return (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(num_features, dtype=dtype)
    return (BatchNorm2d if two_d else BatchNorm1d)(num_features, dtype=dtype)


def batchnorm_training_cases(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, each one training-mode forward + backward on ``shape``.

    ``shape`` is ``(N, C)`` or ``(N, C, H, W)``. The cases share the same input
    ``x`` and upstream gradient ``dout``:

    - :data:`NATIVE`: ``torch.nn.BatchNorm1d/2d`` (torch's C++ kernel);
    - :data:`OURS`: ``bncourse.nn.BatchNorm1d/2d`` on its torch-ops path
      (``use_kernels(False)``), the compact backward of the course;
    - :data:`NAIVE`: :func:`bncourse.nn.naive_batchnorm`;
    - :data:`NUMPY`: ``bncourse.functional.batchnorm_forward/backward`` on
      NumPy copies (single-threaded NumPy).

    The modules also update their running statistics, as in real training.
    Each callable returns the gradient with respect to ``x`` (a tensor, or a
    NumPy array for :data:`NUMPY`), so callers can check they all agree.
    """
    if len(shape) not in (2, 4):
        raise ValueError(f"expected a 2-D (N, C) or 4-D (N, C, H, W) shape, got {shape}")
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1).requires_grad_(True)
    dout = torch.randn(shape, generator=gen, dtype=dtype)
    native = _torch_bn(c, len(shape), "torch", dtype)
    ours = _torch_bn(c, len(shape), "ours", dtype)
    weight = torch.ones(c, dtype=dtype, requires_grad=True)
    bias = torch.zeros(c, dtype=dtype, requires_grad=True)
    x_np, dout_np = x.detach().numpy().copy(), dout.numpy().copy()
    gamma_np, beta_np = np.ones(c, x_np.dtype), np.zeros(c, x_np.dtype)

    def torch_case(layer: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def run() -> torch.Tensor:
            x.grad = None
            layer(x).backward(dout)
            return x.grad

        return run

    def numpy_case() -> np.ndarray:
        _, cache = F_np.batchnorm_forward(x_np, gamma_np, beta_np)
        return F_np.batchnorm_backward(dout_np, cache)[0]

    return {
        NATIVE: torch_case(native),
        OURS: _without_kernels(torch_case(ours)),
        NAIVE: torch_case(lambda t: naive_batchnorm(t, weight, bias)),
        NUMPY: numpy_case,
    }


def _without_kernels(case: Callable[[], object]) -> Callable[[], object]:
    """``case`` run with the compiled kernels off: the torch-ops path of :mod:`bncourse.nn.batchnorm`."""

    def run() -> object:
        with use_kernels(False):  # the forward picks the path; its backward follows
            return case()

    return run


def numpy_backward_cases(
    shape: tuple[int, ...], dtype: type = np.float32, seed: int = 0
) -> dict[str, Callable[[], object]]:
    """The two NumPy backward passes on the same cache: ``"compact"`` and ``"staged"``.

    ``"staged"`` is ``bncourse.functional.batchnorm_backward_staged`` (node by
    node through the graph, as autograd would); ``"compact"`` is
    ``batchnorm_backward`` (the closed form). Only the backward is timed.
    """
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    _, cache = F_np.batchnorm_forward(x, np.ones(c, dtype), np.zeros(c, dtype))
    return {
        "compact": lambda: F_np.batchnorm_backward(dout, cache),
        "staged": lambda: F_np.batchnorm_backward_staged(dout, cache),
    }


def saved_bytes_report(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> dict[str, int]:
    """Bytes saved for backward by one training-mode forward of each torch version.

    Keys :data:`NATIVE`, :data:`OURS`, :data:`NAIVE`, plus ``"input"`` (the
    bytes of ``x`` alone, for scale) and :data:`NUMPY` (the bytes of the NumPy
    cache: ``x_hat`` plus the per-channel ``inv_std`` and ``gamma``).
    """
    c = shape[1]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    weight = torch.ones(c, dtype=dtype, requires_grad=True)
    bias = torch.zeros(c, dtype=dtype, requires_grad=True)
    native = _torch_bn(c, len(shape), "torch", dtype)
    ours = _torch_bn(c, len(shape), "ours", dtype)
    x_np = x.detach().numpy()
    _, cache = F_np.batchnorm_forward(x_np, np.ones(c, x_np.dtype), np.zeros(c, x_np.dtype))
    return {
        "input": x.numel() * x.element_size(),
        NATIVE: saved_tensor_bytes(lambda: native(x)),
        OURS: saved_tensor_bytes(lambda: ours(x)),
        NAIVE: saved_tensor_bytes(lambda: naive_batchnorm(x, weight, bias)),
        # Only what the NumPy backward reads (the cache also carries mean/var for the layer).
        NUMPY: cache.x_hat.nbytes + cache.inv_std.nbytes + cache.gamma.nbytes,
    }


def folding_cases(
    batch: int = 32,
    channels: int = 32,
    size: int = 16,
    kernel_size: int = 3,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, Callable[[], object]]:
    """Inference of a ``Conv2d`` + ``BatchNorm2d`` pair, unfolded and folded.

    The convolution is ``Conv2d(channels, channels, kernel_size)``, padded to
    keep the ``size x size`` resolution.
    Keys ``"conv + bn"`` (two layers, eval mode) and ``"folded conv"`` (one
    layer from :func:`bncourse.fold.fold_batchnorm`); both run under
    ``torch.inference_mode()`` on the same ``(batch, channels, size, size)`` input.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, dtype=dtype)
    bn = nn.BatchNorm2d(channels, dtype=dtype)
    x = torch.randn(batch, channels, size, size, generator=gen, dtype=dtype)
    with torch.no_grad():
        bn.train()(conv(x))  # some running statistics
    unfolded = nn.Sequential(conv, bn).eval()
    folded = fold_batchnorm(conv, bn)

    def infer(model: nn.Module) -> Callable[[], object]:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return model(x)

        return run

    return {"conv + bn": infer(unfolded), "folded conv": infer(folded)}


def roofline_passes(mode: str) -> tuple[int, int]:
    """``(reads, writes)`` of full tensors of a two-pass layer, per ``mode``, every pass from memory.

    ``"train"``: forward + backward that keeps only ``x``: statistics (read
    ``x``), output (read ``x``, write ``out``), gradient sums (read ``x`` and
    ``dout``), input gradient (read ``x`` and ``dout``, write ``dx``): 6 reads
    and 2 writes. ``"eval"``: read ``x``, write ``out``. ``"frozen"``: an
    evaluation forward and its backward (fine-tuning with frozen statistics):
    the output, then ``sum(dout)`` and ``sum(dout * (x - running_mean))``
    with ``dx = alpha * dout`` in the same pass: 3 reads and 2 writes. A kernel
    that re-reads a channel from cache right after its first pass
    (``bncourse.nn``'s C kernels on contiguous input) moves less through
    memory than this.
    """
    passes = {"train": (6, 2), "eval": (1, 1), "frozen": (3, 2)}
    if mode not in passes:
        raise ValueError(f"expected mode 'train', 'eval' or 'frozen', got {mode!r}")
    return passes[mode]


def roofline_time(mode: str, read_time: float, copy_time: float) -> float:
    """The least time of :func:`roofline_passes` at the measured bandwidths.

    ``read_time``: one read of the tensor (``x.sum()``); ``copy_time``: one
    read and one write (``x.clone()``), so a write costs ``copy_time - read_time``.
    """
    reads, writes = roofline_passes(mode)
    return reads * read_time + writes * max(copy_time - read_time, 0.0)


def layer_cases(
    shape: tuple[int, ...],
    mode: str = "train",
    memory_format: torch.memory_format = torch.contiguous_format,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, Callable[[], object]]:
    """Zero-argument callables running one layer step on the same ``x`` (``(N, C)`` or ``(N, C, H, W)``).

    Keys :data:`NATIVE` (``torch.nn``), :data:`OURS` (``bncourse.nn`` with
    ``use_kernels(False)``: torch ops), :data:`FUSED` (``bncourse.nn`` as it
    runs by default, with the compiled kernels; only where they can be built),
    :data:`COPY` (``x.clone()``: one read and one write of the tensor) and
    :data:`READ` (``x.sum()``: one read), the yardsticks for
    :func:`roofline_time`. ``mode="train"``: forward + backward in
    training mode, returning ``x``'s gradient; ``"eval"``: an evaluation
    forward under ``torch.no_grad()``, returning the output; ``"frozen"``:
    forward + backward in evaluation mode (the running statistics frozen, the
    parameters and ``x`` learning), returning ``x``'s gradient.
    ``memory_format=torch.channels_last`` stores ``x`` and ``dout`` channels-last.
    """
    if len(shape) not in (2, 4):
        raise ValueError(f"expected a 2-D (N, C) or 4-D (N, C, H, W) shape, got {shape}")
    if mode not in ("train", "eval", "frozen"):
        raise ValueError(f"expected mode 'train', 'eval' or 'frozen', got {mode!r}")
    gen = torch.Generator().manual_seed(seed)
    c, two_d = shape[1], len(shape) == 4
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1).contiguous(memory_format=memory_format)
    dout = torch.randn(shape, generator=gen, dtype=dtype).contiguous(memory_format=memory_format)
    ours = BatchNorm2d if two_d else BatchNorm1d
    classes = {NATIVE: nn.BatchNorm2d if two_d else nn.BatchNorm1d, OURS: ours}
    if fused_available():
        classes[FUSED] = ours
    layers = {name: cls(c, dtype=dtype).train(mode == "train") for name, cls in classes.items()}
    if mode != "train":
        running_mean = torch.rand(c, generator=gen, dtype=dtype) * 2 - 1  # some statistics to use
        running_var = torch.rand(c, generator=gen, dtype=dtype) + 0.5
        with torch.no_grad():
            for layer in layers.values():
                layer.running_mean.copy_(running_mean)
                layer.running_var.copy_(running_var)
    x_train = x.clone().requires_grad_(mode != "eval")

    def case(layer: nn.Module) -> Callable[[], torch.Tensor]:
        def train() -> torch.Tensor:
            x_train.grad = None
            layer(x_train).backward(dout)
            return x_train.grad

        def evaluate() -> torch.Tensor:
            with torch.no_grad():
                return layer(x)

        return evaluate if mode == "eval" else train

    cases = {name: case(layer) for name, layer in layers.items()}
    cases[OURS] = _without_kernels(cases[OURS])
    cases[COPY] = x.clone
    cases[READ] = x.sum
    return cases
