"""Batch Renormalization (Ioffe, 2017), written from scratch.

Batch norm trains with the batch's statistics and predicts with the running
ones; with small or non-i.i.d. batches the two differ, and the model learns to
rely on the batch's noise. Batch Renorm corrects the training-time output
towards what the running statistics would give, per channel::

    x_hat = (x - mean_B) / sigma_B * r + d,        sigma_B = sqrt(var_B + eps)
    r = clip(sigma_B / sigma, 1 / r_max, r_max)    sigma = sqrt(running_var + eps)
    d = clip((mean_B - mean) / sigma, -d_max, d_max)
    out = weight * x_hat + bias

``r`` and ``d`` are treated as constants in the backward pass (the paper's
stop-gradient). With ``r = sigma_B / sigma`` and ``d = (mean_B - mean) / sigma``
unclipped, ``x_hat = (x - mean) / sigma``: exactly the inference-time output.
With ``r_max = 1, d_max = 0`` it is plain batch norm. The paper starts there and
relaxes the limits during training (``r_max`` 1 -> 3, ``d_max`` 0 -> 5), once the
running statistics are worth trusting: :class:`LinearRamp` is that schedule.

Conventions that differ from the paper, to match torch's batch norm: ``momentum``
is the weight of the *new* value; the running variance (not the standard
deviation) is averaged, with the unbiased batch variance; ``sigma`` includes
``eps`` so evaluation is exactly ``torch.nn.BatchNorm``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

from .batchnorm import _BatchNorm, _layout

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenormFunction", "LinearRamp"]


@dataclass(frozen=True)
class LinearRamp:
    """``start`` until step ``begin``, then linear to ``end`` at step ``finish``, then ``end``.

    Called with the number of training batches seen (``num_batches_tracked``).
    The paper's schedules for ImageNet were ``LinearRamp(1, 3, 5000, 40000)`` for
    ``r_max`` and ``LinearRamp(0, 5, 5000, 25000)`` for ``d_max``.
    """

    start: float
    end: float
    begin: int
    finish: int

    def __post_init__(self) -> None:
        if not 0 <= self.begin <= self.finish:
            raise ValueError(f"expected 0 <= begin <= finish, got begin={self.begin}, finish={self.finish}")

    def __call__(self, step: int) -> float:
        if step <= self.begin:
            return float(self.start)
        if step >= self.finish:
            return float(self.end)
        t = (step - self.begin) / (self.finish - self.begin)
        return float(self.start + t * (self.end - self.start))


Limit = Union[float, Callable[[int], float]]


class BatchRenormFunction(torch.autograd.Function):
    """Training-mode batch renormalization with a hand-written backward.

    ``forward(x, weight, bias, r, d, eps) -> (out, mean, var)``

    - ``x``: ``(N, C, ...)``; ``weight``, ``bias``: ``(C,)`` or ``None``;
      ``r``, ``d``: ``(C,)`` corrections, constants for the backward.
    - ``mean`` and the biased ``var`` of the batch, ``(C,)``, returned (not
      differentiable) for the running averages.
    - Saved: ``x``, ``weight``, ``r``, ``mean``, ``inv_std``.

    Backward: the batch-norm formula applied to ``g = r * weight * dout``, the
    gradient with respect to the standardized input::

        dx = inv_std / M * (M * g - sum(g) - x_std * sum(g * x_std)),  x_std = (x - mean) * inv_std
        dweight = sum(dout * (r * x_std + d)),  dbias = sum(dout)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, r, d, eps):
        dims, shape, m = _layout(x)
        mean = x.mean(dims)
        xmu = x - mean.view(shape)
        var = xmu.square().mean(dims)
        inv_std = (var + eps).rsqrt()
        x_hat = xmu * (inv_std * r).view(shape) + d.view(shape)
        out = x_hat
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        ctx.save_for_backward(x, weight, r, d, mean, inv_std)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar):
        x, weight, r, d, mean, inv_std = ctx.saved_tensors
        dims, shape, m = _layout(x)
        x_std = (x - mean.view(shape)) * inv_std.view(shape)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            k = r if weight is None else r * weight
            g = dout * k.view(shape)
            dx = (inv_std / m).view(shape) * (
                m * g - g.sum(dims).view(shape) - x_std * (g * x_std).sum(dims).view(shape)
            )
        if ctx.needs_input_grad[1]:
            dweight = (dout * (x_std * r.view(shape) + d.view(shape))).sum(dims)
        if ctx.needs_input_grad[2]:
            dbias = dout.sum(dims)
        return dx, dweight, dbias, None, None, None


class _BatchRenorm(_BatchNorm):
    """What ``BatchRenorm1d``/``2d`` share. Parameters and buffers as ``torch.nn.BatchNorm*d``.

    Args (besides batch norm's; ``track_running_stats`` is always on: the
    corrections need running statistics):
        r_max: the limit of ``r`` (>= 1), a number or a function of the number of
            training batches seen (e.g. :class:`LinearRamp`).
        d_max: the limit of ``d`` (>= 0), likewise.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        r_max: Limit = 3.0,
        d_max: Limit = 5.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.r_max = r_max
        self.d_max = d_max

    def limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` at the current step (``num_batches_tracked``)."""
        step = int(self.num_batches_tracked)
        r_max = self.r_max(step) if callable(self.r_max) else float(self.r_max)
        d_max = self.d_max(step) if callable(self.d_max) else float(self.d_max)
        if not r_max >= 1.0 or not d_max >= 0.0:
            raise ValueError(f"expected r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        return r_max, d_max

    def forward(self, input: Tensor) -> Tensor:
        """Training: renormalized batch statistics, running ones updated. Eval: batch norm's output."""
        self._check_input(input)
        dims, shape, m = _layout(input)
        if not self.training:
            inv_sigma = (self.running_var + self.eps).rsqrt()
            alpha = inv_sigma if self.weight is None else inv_sigma * self.weight
            out = (input - self.running_mean.view(shape)) * alpha.view(shape)
            return out if self.bias is None else out + self.bias.view(shape)
        if m <= 1:
            raise ValueError(
                f"expected more than 1 value per channel when training, got input of shape {tuple(input.shape)}"
            )
        r_max, d_max = self.limits()
        with torch.no_grad():
            mean_b = input.mean(dims)
            sigma_b = (input.var(dims, unbiased=False) + self.eps).sqrt()
            sigma = (self.running_var + self.eps).sqrt()
            r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
            d = ((mean_b - self.running_mean) / sigma).clamp(-d_max, d_max)
        out, mean, var = BatchRenormFunction.apply(input, self.weight, self.bias, r, d, self.eps)
        self._update_running_stats(mean, var * (m / (m - 1)))
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"


class BatchRenorm1d(_BatchRenorm):
    """Batch Renorm for ``(N, C)`` or ``(N, C, L)`` inputs."""

    _accepted_dims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch Renorm for ``(N, C, H, W)`` inputs."""

    _accepted_dims = (4,)
