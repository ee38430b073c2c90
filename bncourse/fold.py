"""Folding batch normalization into the preceding Linear or convolution layer.

In evaluation mode batch norm is a fixed per-channel affine map,

    bn(z) = gamma * (z - running_mean) / sqrt(running_var + eps) + beta = s * z + t,

with ``s = gamma / sqrt(running_var + eps)`` and ``t = beta - s * running_mean``.
If ``z = W x + b`` comes from a linear layer, then ``bn(z) = (s W) x + (s b + t)``:
one layer with weight ``s W`` (row ``c`` of ``W`` scaled by ``s[c]``) and bias
``s * b + t`` computes both, saving a whole pass over the activations at
inference. The same holds for a convolution, whose output channel ``c`` is
produced by filter ``W[c]``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .functional import fold_batchnorm_arrays

__all__ = ["fold_batchnorm", "fold_batchnorm_arrays"]


_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new layer equal to ``bn(layer(x))`` with ``bn`` in evaluation mode.

    Args:
        layer: ``torch.nn.Linear`` or ``Conv1d/2d/3d`` (not transposed
            convolutions, whose output channels are on weight axis 1).
        bn: a batch-norm module with running statistics, from ``torch.nn`` or
            ``bncourse.nn``, with ``num_features`` equal to the layer's output
            channels.

    Returns:
        A copy of ``layer`` (always with a bias) whose weight and bias absorb
        the normalization, in the layer's dtype and device, in eval mode.
        ``layer`` and ``bn`` are not modified. The result matches
        ``nn.Sequential(layer, bn).eval()`` up to rounding; it does not match
        training mode, where batch norm uses the batch's own statistics.
    """
    if not isinstance(layer, _FOLDABLE):
        raise ValueError(
            "expected a torch.nn.Linear or Conv1d/2d/3d layer to fold into, "
            f"got {type(layer).__name__}"
        )
    running_mean = getattr(bn, "running_mean", None)
    running_var = getattr(bn, "running_var", None)
    if running_mean is None or running_var is None:
        raise ValueError(
            f"expected a batch-norm module with running statistics, got {type(bn).__name__}"
            " without running_mean/running_var (track_running_stats=False cannot be folded)"
        )
    out_channels = layer.weight.shape[0]
    if running_mean.shape != (out_channels,):
        raise ValueError(
            f"expected a batch norm over {out_channels} channels (the layer's outputs), "
            f"got one over {running_mean.shape[0]}"
        )
    with torch.no_grad():
        scale = torch.rsqrt(running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -scale * running_mean
        if bn.bias is not None:
            shift = shift + bn.bias
        bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
        folded = copy.deepcopy(layer)
        shape = (out_channels,) + (1,) * (layer.weight.dim() - 1)
        folded.weight = nn.Parameter(layer.weight * scale.reshape(shape).to(layer.weight.dtype))
        folded.bias = nn.Parameter((scale * bias + shift).to(layer.weight.dtype))
    return folded.eval()
