"""The arithmetic of :mod:`bncourse.nn.batchnorm`, from torch's elementwise ops and sums.

Two forms of the same training forward and backward:

- ``_forward_inplace`` / ``_backward_inplace``: the fast path, a handful of
  passes over memory, writing into buffers it allocates once (``out=``
  arguments, in-place scaling). First order only.
- ``_forward_ops`` / ``_backward_ops``: out-of-place, differentiable ops, for
  ``torch.func`` transforms, traced graphs and a backward that will itself be
  differentiated.

Shapes: ``x`` is ``(N, C, ...)``; statistics are per channel (axis 1), ``(C,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

_REDUCED = (torch.float16, torch.bfloat16)


def _layout(x: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Reduction axes, the broadcast shape of a ``(C,)`` vector, and ``M``."""
    c = x.shape[1]
    dims = (0,) + tuple(range(2, x.dim()))
    shape = (1, c) + (1,) * (x.dim() - 2)
    return dims, shape, x.numel() // c if c else 0


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for float16/bfloat16 inputs (their sums overflow or round away), else the input's."""
    return torch.float32 if x.dtype in _REDUCED else x.dtype


def _channel_sum(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Sum over every axis but 1, returning ``(C,)``, reading memory in order.

    Contiguous ``(N, C, ...)``: view as ``(N, C, L)`` and sum the contiguous
    ``L`` axis first, then ``N``. Channels-last (the channel axis has stride
    1): view as ``(rows, C)`` and sum the rows, so each row is one contiguous
    load of all channels. Any other layout: one strided reduction.
    """
    c = t.shape[1]
    if t.dim() > 2:
        if t.is_contiguous():
            return t.view(t.shape[0], c, -1).sum(2).sum(0)
        rows = t.movedim(1, -1)
        if rows.is_contiguous():
            return rows.view(-1, c).sum(0)
    return t.sum(dims)


def _per_plane(v: Tensor, x: Tensor) -> Tensor:
    """A ``(C,)`` vector as one value per contiguous ``(n, c)`` plane of ``x``: ``(N * C, 1)``."""
    n, c = x.shape[:2]
    return v.view(1, c).expand(n, c).reshape(n * c, 1)


def _affine(x: Tensor, alpha: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``x * alpha + shift`` with ``(C,)`` coefficients broadcast along axis 1.

    A contiguous ``(N, C, ...)`` input is viewed as ``N * C`` rows, each scaled
    by one number: torch's kernels run that faster than a broadcast over axis 1.
    """
    if x.dim() > 2 and x.is_contiguous() and (out is None or out.is_contiguous()):
        # Two passes, a multiply and an in-place add, each with one per-row number: torch
        # vectorizes those, but not an addcmul with two broadcast operands (twice as slow).
        rows = x.view(x.shape[0] * x.shape[1], -1)
        target = None if out is None else out.view(rows.shape)
        result = torch.mul(rows, _per_plane(alpha, x), out=target).add_(_per_plane(shift, x))
        return result.view(x.shape)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(shape), x, alpha.view(shape), out=out)


def _channel_sum_of_squares(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``(t ** 2)`` summed over every axis but 1, ``(C,)``.

    For contiguous layouts ``torch.linalg.vector_norm`` squares and adds in one
    read, with no ``t ** 2`` tensor in memory; channels-last rows reduce faster
    as an in-place square and a row sum.
    """
    if t.dim() > 2 and t.is_contiguous():
        return torch.linalg.vector_norm(t.view(t.shape[0], t.shape[1], -1), dim=2).square_().sum(0)
    if t.dim() == 2 and t.is_contiguous():
        return torch.linalg.vector_norm(t, dim=0).square_()
    return _channel_sum(t.square_(), dims)


def _forward_inplace(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """The fast training forward: two-pass statistics, the output written once.

    Returns ``(out, mean, var)``; ``mean`` and the biased ``var`` are ``(C,)``
    in the compute dtype (float32 for reduced-precision input).
    """
    dims, shape, m = _layout(x)
    xs = x.to(_compute_dtype(x))
    # Per-channel (C,) results are scaled in place, sparing tiny allocations.
    mean = _channel_sum(xs, dims).mul_(1.0 / m)
    # `out` starts as the centered input (for the variance), then holds the
    # output: one big allocation instead of two.
    out = xs - mean.view(shape)
    var = _channel_sum_of_squares(out, dims).mul_(1.0 / m)
    inv_std = var.add(eps).rsqrt_()
    # out = gamma * (x - mean) * inv_std + beta = x * alpha + shift, per channel.
    alpha = inv_std if weight is None else inv_std * weight
    if bias is None:
        shift = alpha.mul(mean).neg_()
    else:
        shift = torch.addcmul(bias.to(alpha.dtype), mean, alpha, value=-1)  # beta - mean * alpha
    _affine(xs, alpha, shift, out=out)
    return out.to(x.dtype), mean, var


def _forward_ops(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """The same forward in out-of-place, differentiable ops (for ``torch.func`` transforms)."""
    dims, shape, _ = _layout(x)
    xs = x.to(_compute_dtype(x))
    mean = xs.mean(dims)
    centered = xs - mean.view(shape)
    var = centered.square().mean(dims)
    alpha = torch.rsqrt(var + eps)
    if weight is not None:
        alpha = alpha * weight
    out = centered * alpha.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out.to(x.dtype), mean, var


def _backward_inplace(dout: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, inv_std: Tensor, need_x: bool):
    """The compact backward, first order only, in a handful of passes over memory."""
    dims, shape, m = _layout(x)
    xs, dout = x.to(mean.dtype), dout.to(mean.dtype)
    # dbeta = sum(dout); dgamma = sum(dout * x_hat) = inv_std * sum(dout * (x - mean)).
    dbeta = _channel_sum(dout, dims)
    buf = xs - mean.view(shape)
    dgamma = _channel_sum(buf.mul_(dout), dims).mul_(inv_std)
    dx = None
    if need_x:
        # The compact formula, with x_hat = (x - mean) * inv_std written
        # out so that no x_hat tensor is ever built:
        #   dx = k * dout - k * dbeta / M - (k * inv_std * dgamma / M) * (x - mean)
        #      = k * dout + coef * x + const,          k = gamma * inv_std
        # two fused multiply-adds over memory already reserved in `buf`.
        k = inv_std if weight is None else weight * inv_std
        coef = (k * inv_std).mul_(dgamma).mul_(-1.0 / m)
        const = torch.addcmul(k.mul(dbeta).mul_(-1.0 / m), coef, mean, value=-1)
        dx = _affine(xs, coef, const, out=buf)
        if dx.is_contiguous() and dout.is_contiguous() and dx.dim() > 2:
            rows = dx.view(dx.shape[0] * dx.shape[1], -1)
            rows.addcmul_(dout.view(rows.shape), _per_plane(k, dx))
        else:
            dx.addcmul_(dout, k.view(shape))
        dx = dx.to(x.dtype)
    return dx, dgamma, dbeta


def _backward_ops(dout: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, inv_std: Tensor):
    """The compact backward in differentiable ops.

    Used when the backward itself is differentiated (``create_graph=True``),
    in which case ``mean`` and ``inv_std`` are recomputed from ``x`` by the
    caller so that autograd sees how they depend on ``x``.
    """
    dims, shape, m = _layout(x)
    xs, dout = x.to(mean.dtype), dout.to(mean.dtype)
    x_hat = (xs - mean.view(shape)) * inv_std.view(shape)
    dbeta = dout.sum(dims)
    dgamma = (dout * x_hat).sum(dims)
    k = inv_std if weight is None else weight * inv_std
    dx = k.view(shape) * (dout - (dbeta / m).view(shape) - x_hat * (dgamma / m).view(shape))
    return dx.to(x.dtype), dgamma, dbeta
