"""Ghost batch normalization (Hoffer, Hubara & Soudry, 2017), written from scratch.

A large batch of ``N`` rows is cut into ``N / virtual_batch_size`` "ghost"
batches, and each is normalized with its own statistics, as if it had been a
small batch on its own device. Hoffer et al. proposed it to bring back, in
large-batch training, the noise of small-batch statistics that they linked to
generalization. It is also exactly what data-parallel training with per-device
batch norm computes (forward and gradients), with one device per ghost batch.

How: ``(G * V, C, *S)`` is viewed as ``(V, G * C, *S)`` (ghost batch ``g``'s
channel ``c`` becomes channel ``g * C + c``), so one ordinary batch norm over
``G * C`` channels normalizes every ghost batch separately; ``weight`` and
``bias`` are repeated ``G`` times, and autograd adds their gradients back.
The normalization is :func:`bncourse.nn.batch_norm`, the course's own.

Running statistics: the average over the ghost batches of their means and
unbiased variances (as Keras' ``virtual_batch_size`` does). Evaluation: the
plain batch norm with those running statistics. A batch that is not a multiple
of ``virtual_batch_size`` ends with one smaller ghost batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batchnorm import _BatchNorm, _layout, batch_norm

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "ghost_batch_norm"]


def _ghost_view(x: Tensor, virtual_batch_size: int) -> Tensor:
    """``(G * V, C, *S)`` -> ``(V, G * C, *S)``, ghost batch ``g`` in channels ``g*C .. g*C + C - 1``."""
    n, c = x.shape[:2]
    g, v = n // virtual_batch_size, virtual_batch_size
    return x.reshape(g, v, *x.shape[1:]).transpose(0, 1).reshape(v, g * c, *x.shape[2:])


def _unghost_view(y: Tensor, n: int, c: int) -> Tensor:
    v = y.shape[0]
    g = n // v
    return y.reshape(v, g, c, *y.shape[2:]).transpose(0, 1).reshape(n, c, *y.shape[2:])


def ghost_batch_norm(
    x: Tensor, virtual_batch_size: int, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode ghost batch norm of ``x`` ``(N, C, ...)``.

    The rows are cut in order into ghost batches of ``virtual_batch_size`` rows; if
    ``N`` is not a multiple of it, the last ``N mod virtual_batch_size`` rows form
    one smaller ghost batch of their own.

    Returns:
        ``(out, mean, var)``: ``out`` the shape of ``x``; ``mean`` and the
        unbiased ``var`` averaged over the ghost batches (each weighing the
        same), ``(C,)``, detached.
    """
    n, c = x.shape[:2]
    g = n // virtual_batch_size
    full = g * virtual_batch_size
    outs, means, variances = [], [], []
    if g:
        xg = _ghost_view(x[:full], virtual_batch_size)
        w = None if weight is None else weight.repeat(g)
        b = None if bias is None else bias.repeat(g)
        outs.append(_unghost_view(batch_norm(xg, None, None, w, b, training=True, eps=eps), full, c))
        with torch.no_grad():
            dims = _layout(xg)[0]
            means.append(xg.mean(dims).view(g, c))
            variances.append(xg.var(dims, unbiased=True).view(g, c))
    if full < n:  # the remainder, normalized on its own
        tail = x[full:]
        outs.append(batch_norm(tail, None, None, weight, bias, training=True, eps=eps))
        with torch.no_grad():
            dims = _layout(tail)[0]
            means.append(tail.mean(dims).view(1, c))
            variances.append(tail.var(dims, unbiased=True).view(1, c))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out, torch.cat(means).mean(0), torch.cat(variances).mean(0)


class _GhostBatchNorm(_BatchNorm):
    """``BatchNorm*d`` whose training mode normalizes each ghost batch of ``virtual_batch_size`` rows."""

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(virtual_batch_size, int) or virtual_batch_size < 2:
            raise ValueError(f"expected virtual_batch_size an int >= 2, got {virtual_batch_size!r}")
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.virtual_batch_size = virtual_batch_size

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if not self.training:
            return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                              training=False, eps=self.eps)
        out, mean, var = ghost_batch_norm(input, self.virtual_batch_size, self.weight, self.bias, self.eps)
        self._update_running_stats(mean, var)  # var: already the unbiased average
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost batch norm for ``(N, C)`` or ``(N, C, L)`` inputs."""

    _accepted_dims = (2, 3)


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost batch norm for ``(N, C, H, W)`` inputs."""

    _accepted_dims = (4,)
