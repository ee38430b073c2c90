"""Fused batch norm: the same layers, with the training pass in compiled loops.

Training-mode batch norm is memory-bound: a few arithmetic operations per
value, so its time is set by how many times the big tensors travel between
memory and the cores. Built from torch's generic ops, every step is its own
pass. Here the training forward is two passes, and the backward two:

1. statistics: one read of ``x``, mean and variance by Welford/Chan merging
   of cache-sized chunks (:mod:`bncourse.nn._fused_kernels`);
2. output: one read of ``x``, one write of ``out = x * alpha + shift``;
3. gradient sums: one read of ``x`` and ``dout`` for ``sum(dout)`` and
   ``sum(dout * (x - mean))``;
4. input gradient: one read of both, one write of
   ``dx = k * dout + coef * x + const``.

Six tensor reads and two writes: the least a forward + backward that keeps
only ``x`` can do (the first pass could be avoided only by keeping the
statistics from somewhere else).

Why Numba: the kernels are plain Python loops (readable next to the
formulas), compiled by LLVM in a few seconds at the first call and cached on
disk afterwards, with no C++ compiler on the machine; a C++ extension would
take a minute of compiling per environment and ``torch.compile`` a new
compilation per shape. Numba is optional: without it, or for anything the
kernels do not cover (GPU tensors, float16/bfloat16, layouts other than
contiguous and channels-last, ``torch.func`` transforms, a backward that will
be differentiated again), ``FusedBatchNorm*d`` computes exactly what
``BatchNorm*d`` computes. The evaluation forward, when no gradient is
needed, is one compiled pass too. Nothing is compiled at import.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from . import batchnorm as _batchnorm_module
from .batchnorm import (
    _TRAINING_FUNCTIONS,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormFunction,
    _batch_norm,
    _functorch_active,
    _update_running_buffers,
)

__all__ = [
    "FusedBatchNormFunction",
    "FusedBatchNorm1d",
    "FusedBatchNorm2d",
    "FusedBatchNorm3d",
    "fused_batch_norm",
    "fused_available",
]

_kernels = None  # the kernel module once loaded, False if Numba is missing


def _load_kernels():
    global _kernels
    if _kernels is None:
        try:
            from . import _fused_kernels
        except ImportError:  # no Numba: the fallback is the ordinary path
            _kernels = False
        else:
            _kernels = _fused_kernels
    return _kernels or None


def fused_available() -> bool:
    """Whether the compiled kernels can run here (Numba importable). Imports Numba; compiles nothing."""
    return _load_kernels() is not None


def _as_layout(t: Tensor) -> tuple[str, np.ndarray] | None:
    """A NumPy view of ``t`` in the kernels' layouts (see ``_fused_kernels``), or None."""
    c = t.shape[1]
    if t.dim() == 2 and t.is_contiguous():
        return "rows", t.numpy()
    if t.is_contiguous():
        return "planes", t.view(t.shape[0], c, -1).numpy()
    rows = t.movedim(1, -1)  # channels-last: the channel axis has stride 1
    if rows.is_contiguous():
        return "rows", rows.reshape(-1, c).numpy()
    return None


def _fusable(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.numel() > 0
        and not _functorch_active()
        and not torch.compiler.is_compiling()
        and _load_kernels() is not None
    )


_pool: ThreadPoolExecutor | None = None


def _run(kernel, args: tuple, size: int, chunks: list[tuple[int, int]] | None = None) -> None:
    """Run ``kernel(*args, lo, hi)`` over ``range(size)`` split in one slice per torch thread.

    The kernels release the GIL, so the slices run in parallel; the benchmark
    compares at equal thread counts (``torch.get_num_threads()``).
    """
    global _pool
    threads = max(1, min(torch.get_num_threads(), size))
    bounds = chunks or _split(size, threads)
    if len(bounds) == 1:
        kernel(*args, *bounds[0])
        return
    if _pool is None or _pool._max_workers < len(bounds) - 1:
        _pool = ThreadPoolExecutor(max_workers=len(bounds) - 1, thread_name_prefix="bncourse-fused")
    futures = [_pool.submit(kernel, *args, lo, hi) for lo, hi in bounds[1:]]
    kernel(*args, *bounds[0])  # the calling thread takes the first slice
    for future in futures:
        future.result()


def _split(size: int, parts: int) -> list[tuple[int, int]]:
    step = -(-size // parts)
    return [(lo, min(lo + step, size)) for lo in range(0, size, step)]


def _stats(kernels, kind: str, xv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sum of squared deviations (float64) in one read of ``xv``."""
    c = xv.shape[1]
    if kind == "planes":
        mean, m2 = np.zeros(c), np.zeros(c)
        _run(lambda lo, hi: kernels.stats_planes(xv, lo, hi, mean, m2), (), c)
        return mean, m2
    bounds = _split(xv.shape[0], max(1, min(torch.get_num_threads(), xv.shape[0] // kernels.ROW_CHUNK + 1)))
    means, m2s = np.zeros((len(bounds), c)), np.zeros((len(bounds), c))
    _run(lambda i, _: kernels.stats_rows(xv, *bounds[i], means[i], m2s[i]), (), len(bounds), [(i, i + 1) for i in range(len(bounds))])
    # Chan's merge of the slices' results.
    counts = np.array([hi - lo for lo, hi in bounds], dtype=np.float64)[:, None]
    mean = (counts * means).sum(0) / counts.sum()
    m2 = (m2s + counts * (means - mean) ** 2).sum(0)
    return mean, m2


class FusedBatchNormFunction(BatchNormFunction):
    """:class:`BatchNormFunction` with its first-order passes in compiled loops.

    Same arguments, outputs, saved tensors, double backward and ``torch.func``
    support (inherited); only the plain forward and the first-order backward
    on contiguous or channels-last float32/float64 CPU tensors run the kernels.
    """

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        running_mean: Tensor | None = None,
        running_var: Tensor | None = None,
        momentum: float = 0.0,
    ):
        layout = _as_layout(x.detach()) if _fusable(x) else None
        if layout is None:
            return BatchNormFunction.forward(x, weight, bias, eps, running_mean, running_var, momentum)
        kernels = _load_kernels()
        kind, xv = layout
        c, m = x.shape[1], x.numel() // x.shape[1]
        mean64, m2 = _stats(kernels, kind, xv)
        mean = torch.from_numpy(mean64).to(x.dtype)
        var = torch.from_numpy(m2 / m).to(x.dtype)
        alpha = torch.rsqrt(var + eps)
        if weight is not None:
            alpha = alpha * weight.detach()
        shift = -mean * alpha
        if bias is not None:
            shift = shift + bias.detach()
        out = torch.empty_like(x)  # same strides: channels-last stays channels-last
        _, outv = _as_layout(out)
        args = (xv, alpha.numpy(), shift.numpy(), outv)
        if kind == "planes":
            _run(kernels.affine_planes, args, xv.shape[0] * c)
        else:
            _run(kernels.affine_rows, args, xv.shape[0])
        _update_running_buffers(running_mean, running_var, mean, var, m, momentum)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout: Tensor | None, _dmean: None, _dvar: None):
        x, weight, mean, inv_std = ctx.saved_tensors
        plain = dout is None or torch.is_grad_enabled() or not _fusable(x)
        layout = None if plain else _as_layout(x.detach())
        if layout is None:
            return BatchNormFunction.backward(ctx, dout, _dmean, _dvar)
        kind, xv = layout
        dout_layout = _as_layout(dout)
        if dout_layout is None or dout_layout[0] != kind or dout.stride() != x.stride():
            # e.g. an expanded gradient: one copy into x's layout
            dout = torch.empty_like(x).copy_(dout)
            dout_layout = _as_layout(dout)
        kernels = _load_kernels()
        c, m = x.shape[1], x.numel() // x.shape[1]
        dv, mean_x = dout_layout[1], mean.numpy()
        if kind == "planes":
            dbeta64, dot64 = np.zeros(c), np.zeros(c)
            _run(lambda lo, hi: kernels.grad_sums_planes(dv, xv, mean_x, lo, hi, dbeta64, dot64), (), c)
        else:
            bounds = _split(xv.shape[0], max(1, min(torch.get_num_threads(), xv.shape[0] // kernels.ROW_CHUNK + 1)))
            parts_d, parts_dx = np.zeros((len(bounds), c)), np.zeros((len(bounds), c))
            _run(
                lambda i, _: kernels.grad_sums_rows(dv, xv, mean_x, *bounds[i], parts_d[i], parts_dx[i]),
                (), len(bounds), [(i, i + 1) for i in range(len(bounds))],
            )
            dbeta64, dot64 = parts_d.sum(0), parts_dx.sum(0)
        dbeta = torch.from_numpy(dbeta64).to(x.dtype)
        dgamma = torch.from_numpy(dot64).to(x.dtype) * inv_std
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = None
        if need_x:
            # dx = k * dout + coef * x + const, as in BatchNormFunction's backward.
            k = inv_std if weight is None else weight.detach() * inv_std
            coef = -k * inv_std * dgamma / m
            const = -k * dbeta / m - coef * mean
            dx = torch.empty_like(x)
            args = (dv, xv, k.numpy(), coef.numpy(), const.numpy(), _as_layout(dx)[1])
            if kind == "planes":
                _run(kernels.grad_input_planes, args, xv.shape[0] * c)
            else:
                _run(kernels.grad_input_rows, args, xv.shape[0])
        return (dx, dgamma if need_w else None, dbeta if need_b else None) + (None,) * 4


def _fused_eval(x: Tensor, alpha: Tensor, shift: Tensor) -> Tensor | None:
    """The evaluation map ``x * alpha + shift`` in one compiled pass, or None where it does not apply.

    Not when autograd needs a graph (then torch's ops record it) or the kernels cannot run,
    nor for 2-D ``(N, C)`` input, where torch's broadcast multiply-add is already one
    vectorized pass and the hand-off to the kernels cost more than it saved (benchmark).
    """
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad or shift.requires_grad):
        return None
    if x.dim() == 2:
        return None
    layout = _as_layout(x) if _fusable(x) and alpha.dtype == x.dtype == shift.dtype else None
    if layout is None:
        return None
    kernels = _load_kernels()
    kind, xv = layout
    out = torch.empty_like(x)
    args = (xv, alpha.contiguous().numpy(), shift.contiguous().numpy(), _as_layout(out)[1])
    if kind == "planes":
        _run(kernels.affine_planes, args, xv.shape[0] * xv.shape[1])
    else:
        _run(kernels.affine_rows, args, xv.shape[0])
    return out


_TRAINING_FUNCTIONS[True] = FusedBatchNormFunction
_batchnorm_module._FUSED_EVAL = _fused_eval


def fused_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """:func:`bncourse.nn.batch_norm` with the fused training path."""
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, True)


class FusedBatchNorm1d(BatchNorm1d):
    """:class:`bncourse.nn.BatchNorm1d` whose training pass runs the fused kernels."""

    _fused = True


class FusedBatchNorm2d(BatchNorm2d):
    """:class:`bncourse.nn.BatchNorm2d` whose training pass runs the fused kernels."""

    _fused = True


class FusedBatchNorm3d(BatchNorm3d):
    """:class:`bncourse.nn.BatchNorm3d` whose training pass runs the fused kernels."""

    _fused = True
