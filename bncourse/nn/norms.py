"""Layer normalization and group normalization for PyTorch, from scratch.

Both normalize *rows* of a 2-D view of the input, each row being one set of
values that share a mean and a variance:

- ``LayerNorm(normalized_shape)``: one row per example (per leading index),
  holding its last ``len(normalized_shape)`` axes; the affine ``weight`` and
  ``bias`` have shape ``normalized_shape`` (one value per element).
- ``GroupNorm(G, C)``: input ``(N, C, *)``; one row per example and group of
  ``C // G`` consecutive channels; the affine is per channel, ``(C,)``.

The backward is the batch-norm compact formula applied along each row, with
``g = dout * weight`` in place of ``dout`` (D values per row):

    dx = inv_std / D * (D * g - sum_row(g) - x_hat * sum_row(g * x_hat))

and the parameter gradients are ``sum(dout * x_hat)`` and ``sum(dout)`` over
every axis the parameter is broadcast along.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["RowNormFunction", "layer_norm", "group_norm", "LayerNorm", "GroupNorm"]


class RowNormFunction(torch.autograd.Function):
    """Normalize rows of a 2-D view of ``x``, then apply a broadcast affine.

    ``forward(x, weight, bias, num_rows, affine_view, param_view, eps) -> out``

    - ``x`` is viewed as ``(num_rows, D)`` to take statistics (biased
      variance), and as ``affine_view`` to apply ``weight``/``bias`` viewed as
      ``param_view`` (``None`` means 1 / 0). ``out`` has the shape of ``x``.
    - Saved for backward: ``x``, ``weight`` and the per-row ``mean`` and
      ``inv_std`` (shape ``(num_rows,)``), as torch's native kernels do;
      ``x_hat`` is recomputed rather than stored.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, num_rows, affine_view, param_view, eps):
        rows = x.reshape(num_rows, -1)
        mean = rows.mean(1)
        x_hat = rows - mean[:, None]
        inv_std = torch.rsqrt(x_hat.square().mean(1) + eps)
        x_hat.mul_(inv_std[:, None])
        out = x_hat.view(affine_view)
        if weight is not None:
            out = out * weight.view(param_view)
        if bias is not None:
            out = out + bias.view(param_view)
        ctx.save_for_backward(x, weight, mean, inv_std)
        # Shapes only (Python ints), not tensors: bias itself is not needed backward.
        ctx.shapes = (num_rows, affine_view, param_view, None if bias is None else bias.shape)
        return out.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, weight, mean, inv_std = ctx.saved_tensors
        num_rows, affine_view, param_view, bias_shape = ctx.shapes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x_hat = (x.reshape(num_rows, -1) - mean[:, None]).mul_(inv_std[:, None])
        dout_a = dout.reshape(affine_view)
        # Axes along which the parameters are broadcast: their gradients sum over them.
        param_dims = tuple(i for i, s in enumerate(param_view) if s == 1)
        dw = db = dx = None
        if need_w and weight is not None:
            dw = (dout_a * x_hat.view(affine_view)).sum(param_dims).view(weight.shape)
        if need_b:
            db = dout_a.sum(param_dims).view(bias_shape)
        if need_x:
            g = dout_a if weight is None else dout_a * weight.view(param_view)
            g = g.reshape(num_rows, -1)
            d = g.shape[1]
            sum_g = g.sum(1, keepdim=True)
            sum_g_xhat = (g * x_hat).sum(1, keepdim=True)
            dx = (inv_std[:, None] / d) * (d * g - sum_g - x_hat * sum_g_xhat)
            dx = dx.view(x.shape)
        return dx, dw, db, None, None, None, None


def layer_norm(
    input: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Same semantics as ``torch.nn.functional.layer_norm``.

    ``input``: ``(*, *normalized_shape)``; ``weight``/``bias``:
    ``normalized_shape`` or ``None``. Each example is normalized over its last
    ``len(normalized_shape)`` axes; the output has the shape of ``input``.
    """
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise ValueError(f"expected a floating-point torch.Tensor, got {_describe(input)}")
    if k == 0 or tuple(input.shape[input.dim() - k :]) != normalized_shape or input.dim() < k:
        raise ValueError(
            f"expected input whose last {k} axes are {normalized_shape}, "
            f"got shape {tuple(input.shape)}"
        )
    _check_param("weight", weight, normalized_shape, input)
    _check_param("bias", bias, normalized_shape, input)
    d = math.prod(normalized_shape)
    num_rows = input.numel() // d
    return RowNormFunction.apply(input, weight, bias, num_rows, (num_rows, d), (1, d), eps)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Same semantics as ``torch.nn.functional.group_norm``.

    ``input``: ``(N, C, *)`` with ``C`` divisible by ``num_groups``;
    ``weight``/``bias``: ``(C,)`` or ``None``. Each example's group of
    ``C // num_groups`` channels (times all positions) is normalized on its own.
    """
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise ValueError(f"expected a floating-point torch.Tensor, got {_describe(input)}")
    if input.dim() < 2:
        raise ValueError(f"expected input of shape (N, C, *), got shape {tuple(input.shape)}")
    n, c = input.shape[:2]
    if c % num_groups:
        raise ValueError(
            f"expected the {c} channels of the input (shape {tuple(input.shape)}) "
            f"to be divisible by num_groups={num_groups}"
        )
    _check_param("weight", weight, (c,), input)
    _check_param("bias", bias, (c,), input)
    rest = input.numel() // max(n * c, 1)
    return RowNormFunction.apply(input, weight, bias, n * num_groups, (n, c, rest), (1, c, 1), eps)


def _describe(x: object) -> str:
    return f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__


def _check_param(name: str, p: Tensor | None, shape: tuple[int, ...], x: Tensor) -> None:
    if p is None:
        return
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"expected {name} of shape {tuple(shape)}, got {tuple(p.shape)}")
    if p.dtype != x.dtype:
        raise ValueError(f"expected {name} of dtype {x.dtype} (the input's), got {p.dtype}")


class LayerNorm(nn.Module):
    """Drop-in for ``torch.nn.LayerNorm``: same arguments, parameters and ``state_dict``.

    Normalizes each input over its last ``len(normalized_shape)`` axes;
    ``weight`` (ones) and ``bias`` (zeros) have shape ``normalized_shape``.
    Statistics are per example, so train and eval modes behave the same.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        if not self.normalized_shape or any(int(s) < 1 for s in self.normalized_shape):
            raise ValueError(
                f"expected a non-empty shape of positive sizes, got {normalized_shape!r}"
            )
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        """``input``: ``(*, *normalized_shape)`` -> same shape."""
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(nn.Module):
    """Drop-in for ``torch.nn.GroupNorm``: same arguments, parameters and ``state_dict``.

    Input ``(N, C, *)``; ``weight`` (ones) and ``bias`` (zeros) are ``(C,)``.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(
                f"expected num_channels ({num_channels}) to be divisible by "
                f"a positive num_groups, got num_groups={num_groups}"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, **factory))
            self.bias = nn.Parameter(torch.zeros(num_channels, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        """``input``: ``(N, C, *)`` with ``C == num_channels`` -> same shape."""
        if isinstance(input, Tensor) and (input.dim() < 2 or input.shape[1] != self.num_channels):
            raise ValueError(
                f"GroupNorm expected input of shape (N, {self.num_channels}, *), "
                f"got shape {tuple(input.shape)}"
            )
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
