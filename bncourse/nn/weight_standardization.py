"""Weight standardization (Qiao et al., 2019): a convolution whose kernel is standardized on use.

Each output channel's kernel, a row of ``fan_in = C_in * kH * kW`` values, is replaced by
``(w - mean(w)) / sqrt(var(w) + eps)`` before the convolution (biased variance over the row).
That is layer normalization of the ``(C_out, fan_in)`` weight matrix without an affine, so the
forward and the hand-derived backward are ``bncourse.nn.layer_norm``'s (``RowNormFunction``).
The stored ``weight`` is the raw parameter; the loss depends only on its standardized form, so
it is invariant to a per-channel scale and shift of ``weight``, as BN makes the loss of the
weights before it.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .norms import layer_norm

__all__ = ["WSConv2d", "standardize_weight"]


def standardize_weight(weight: Tensor, eps: float = 1e-5) -> Tensor:
    """``weight``: ``(C_out, *)`` -> same shape, each ``weight[c]`` with mean 0 and variance ~1."""
    if weight.dim() < 2:
        raise ValueError(f"expected a weight of shape (C_out, *) with at least 2 axes, got {tuple(weight.shape)}")
    rows = weight.reshape(weight.shape[0], -1)
    return layer_norm(rows, (rows.shape[1],), None, None, eps).view(weight.shape)


class WSConv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` (same arguments) that convolves with ``standardize_weight(self.weight)``.

    Input ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``. ``ws_eps`` (keyword) is the eps of the
    standardization.
    """

    def __init__(self, *args, ws_eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps

    def forward(self, input: Tensor) -> Tensor:
        w = standardize_weight(self.weight, self.ws_eps)
        return F.conv2d(input, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
