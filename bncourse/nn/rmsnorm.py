"""RMS normalization (Zhang & Sennrich, 2019) for PyTorch, from scratch.

Each row (an example's last ``len(normalized_shape)`` axes, D values) is divided by its root
mean square; no mean is subtracted and there is no shift:

    r = 1 / sqrt(mean(x**2) + eps),   x_hat = x * r,   out = x_hat * weight

Backward, with ``g = dout * weight`` (the gradient reaching ``x_hat``), per row:

    dx = r * (g - x_hat * mean(g * x_hat))

(the layer-norm formula without the ``mean(g)`` term, because no mean was subtracted), and
``dweight = sum(dout * x_hat)`` over the leading axes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["RMSNormFunction", "rms_norm", "RMSNorm"]


class RMSNormFunction(torch.autograd.Function):
    """``forward(x, weight, num_rows, eps) -> out``: ``x`` viewed as ``(num_rows, D)``.

    ``weight`` has D elements or is None. Saved for backward: ``x``, ``weight`` and the
    per-row ``r = 1 / rms`` (shape ``(num_rows,)``); ``x_hat`` is recomputed.
    """

    @staticmethod
    def forward(ctx, x, weight, num_rows, eps):
        rows = x.reshape(num_rows, -1)
        r = torch.rsqrt(rows.square().mean(1) + eps)
        out = rows * r[:, None]
        if weight is not None:
            out = out * weight.reshape(1, -1)
        ctx.save_for_backward(x, weight, r)
        ctx.num_rows = num_rows
        return out.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, weight, r = ctx.saved_tensors
        rows = x.reshape(ctx.num_rows, -1)
        dout = dout.reshape(ctx.num_rows, -1)
        x_hat = rows * r[:, None]
        dx = dw = None
        if ctx.needs_input_grad[1] and weight is not None:
            dw = (dout * x_hat).sum(0).view(weight.shape)
        if ctx.needs_input_grad[0]:
            g = dout if weight is None else dout * weight.reshape(1, -1)
            dx = r[:, None] * (g - x_hat * (g * x_hat).mean(1, keepdim=True))
            dx = dx.view(x.shape)
        return dx, dw, None, None


def rms_norm(input: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """Same semantics as ``torch.nn.functional.rms_norm``.

    ``input``: ``(*, *normalized_shape)``; ``weight``: ``normalized_shape`` or None; ``eps``
    None means ``torch.finfo(input.dtype).eps``, as in torch. Output: the shape of ``input``.
    """
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if not isinstance(input, Tensor) or not input.is_floating_point():
        got = f"dtype {input.dtype}" if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"expected a floating-point torch.Tensor, got {got}")
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k:]) != normalized_shape:
        raise ValueError(f"expected input whose last {k} axes are {normalized_shape}, got shape {tuple(input.shape)}")
    if weight is not None and (tuple(weight.shape) != normalized_shape or weight.dtype != input.dtype):
        raise ValueError(f"expected weight of shape {normalized_shape} and dtype {input.dtype}, "
                         f"got shape {tuple(weight.shape)} and dtype {weight.dtype}")
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    d = math.prod(normalized_shape)
    return RMSNormFunction.apply(input, weight, input.numel() // d, eps)


class RMSNorm(nn.Module):
    """Drop-in for ``torch.nn.RMSNorm``: same arguments, parameter and ``state_dict``.

    Normalizes each input over its last ``len(normalized_shape)`` axes by their root mean
    square; ``weight`` (ones, shape ``normalized_shape``) when ``elementwise_affine``.
    Statistics are per example: train and eval modes behave the same.
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float | None = None,
                 elementwise_affine: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        if not self.normalized_shape or any(int(s) < 1 for s in self.normalized_shape):
            raise ValueError(f"expected a non-empty shape of positive sizes, got {normalized_shape!r}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            nn.init.ones_(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        """``input``: ``(*, *normalized_shape)`` -> same shape."""
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
