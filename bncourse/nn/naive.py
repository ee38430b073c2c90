"""Batch normalization as composed tensor ops, differentiated by autograd.

This is the version most people write first. It is correct, but autograd
knows nothing about the algebra: it stores the intermediates of every op it
records and walks back through the mean, the variance, the square root and
the division one node at a time. The performance chapter measures what that
costs against :class:`bncourse.nn.BatchNormFunction`.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["naive_batchnorm"]


def naive_batchnorm(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Training-mode batch norm of ``x`` (``(N, C, ...)``) from differentiable ops.

    ``weight``/``bias``: ``(C,)`` or ``None``. Returns the shape of ``x``.
    Autograd saves, among others, the centered input ``x - mean`` (for the
    square), the standard deviation, and ``x_hat`` (for ``* weight``): each
    big tensor is as large as ``x``.
    """
    dims = [0] + list(range(2, x.dim()))
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(dims, keepdim=True)
    x_hat = centered / (var + eps).sqrt()
    out = x_hat
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out
