"""Synchronized batch normalization on ``torch.distributed``, written from scratch.

In data-parallel training each process ("rank") holds a slice of the global
batch. Plain batch norm normalizes every slice with its own statistics;
``SyncBatchNorm`` normalizes all of them with the statistics of the *global*
batch, so that W ranks holding ``N_r`` rows each compute exactly what one
process would compute on the concatenation (``N = sum_r N_r`` rows).

Communication is one ``all_reduce`` in the forward pass and one in the
backward pass, through ``torch.distributed`` (gloo on CPU, NCCL on GPU):

- forward: each rank sums ``[n_r, bad_r, n_r * mean_r, M2_r + n_r * mean_r**2]``
  (``2C + 2`` float64 values; ``n_r`` values per channel on rank r, ``M2_r`` the
  sum of squared deviations from the rank's own mean, ``bad_r`` 1 if its input
  was invalid) and every rank derives the global ``N``, mean and ``M2``;
- backward: each rank sums ``[sum(dout), sum(dout * (x - mean))]`` (``2C`` values)
  and applies the compact formula with the global sums and ``N``.

Torch's own ``SyncBatchNorm`` gathers every rank's ``(n, mean, inv_std)`` with an
``all_gather`` (``W * (2C + 1)`` values) and refuses CPU tensors; this one is a
single all-reduce of fixed size and runs on gloo/CPU too.

Numerics of the combine (why float64 sums of *centered* moments). With
``S1 = sum_r n_r mean_r`` and ``S2 = sum_r (M2_r + n_r mean_r**2)`` the global
``mean = S1 / N`` and ``M2 = S2 - N mean**2 = sum_r M2_r + sum_r n_r (mean_r - mean)**2``,
which is Chan et al.'s parallel-variance formula written as sums, so one
all-reduce suffices. Each ``M2_r`` is computed locally in two passes (no
cancellation); the only subtraction of nearly equal numbers left is in the
between-rank term, done in float64. Its relative error is about
``eps64 * (mean / std)**2 ~ 1e-16 * K**2``: below float32's resolution
(``6e-8``) for offsets up to ``K ~ 1e4`` standard deviations, where the naive
``E[x^2] - E[x]^2`` in float32 would already have lost every digit. The exact
pairwise combine (all-gather of ``(n, mean, M2)``) would remove even that, at
the price of a payload growing with W.

Reduced precision: for float16/bfloat16 inputs (e.g. under ``torch.autocast``)
every reduction and the normalization run in float32 and the running buffers
keep their own dtype (float32); only the output is cast back to the input's
dtype. float64 inputs are computed in float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm, _layout

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "local_moments"]


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def local_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """``(n, mean, M2)`` of one rank's input ``(N, C, ...)``, per channel.

    ``n = x.numel() // C`` values per channel; ``mean`` and ``M2`` (the sum of
    squared deviations from ``mean``) are ``(C,)`` in the statistics dtype,
    computed in two passes. An empty input gives ``n = 0`` and zeros.
    """
    dims, shape, n = _layout(x)
    c = x.shape[1]
    sd = _stat_dtype(x.dtype)
    if n == 0:
        zeros = torch.zeros(c, dtype=sd, device=x.device)
        return 0, zeros, zeros.clone()
    xs = x.to(sd)
    mean = xs.sum(dims) / n
    m2 = (xs - mean.view(shape)).square().sum(dims)
    return n, mean, m2


def _global_moments(
    x: Tensor | None, num_features: int, problem: str | None, group: Any, device: torch.device
) -> tuple[int, Tensor, Tensor]:
    """The one forward all-reduce: global ``(N, mean, M2)`` in float64.

    A rank with an invalid input (``problem`` says why) still takes part, with
    zeros and its "bad" flag set, so that every rank raises the same way
    instead of leaving the others waiting in the collective.
    """
    c = num_features
    payload = torch.zeros(2 * c + 2, dtype=torch.float64, device=device)
    if problem is not None:
        payload[1] = 1.0
    else:
        n, mean, m2 = local_moments(x)
        mean, m2 = mean.double(), m2.double()
        payload[0] = n
        payload[2 : 2 + c] = n * mean
        payload[2 + c :] = m2 + n * mean.square()
    dist.all_reduce(payload, op=dist.ReduceOp.SUM, group=group)
    n_bad = int(payload[1].item())
    if n_bad:
        if problem is not None:
            raise ValueError(problem)
        raise ValueError(
            f"SyncBatchNorm expected valid input with {c} channels on every rank, "
            f"but {n_bad} rank(s) of the group got invalid input (see the error on those ranks)"
        )
    total = int(payload[0].item())
    if total == 0:
        raise ValueError("SyncBatchNorm expected a non-empty global batch, got 0 values per channel on every rank")
    if total == 1:
        raise ValueError(
            "SyncBatchNorm expected more than 1 value per channel in the global batch when training, got 1"
        )
    s1, s2 = payload[2 : 2 + c], payload[2 + c :]
    mean = s1 / total
    m2 = (s2 - s1 * mean).clamp_(min=0.0)  # = sum_r M2_r + sum_r n_r (mean_r - mean)^2
    return total, mean, m2


class SyncBatchNormFunction(torch.autograd.Function):
    """Normalize with given (global) statistics; backward with all-reduced sums.

    ``forward(x, weight, bias, mean, inv_std, count, group) -> out``

    - ``x``: this rank's ``(N_r, C, ...)`` (``N_r`` may be 0); ``weight``/``bias``:
      ``(C,)`` or ``None``; ``mean``, ``inv_std``: ``(C,)`` statistics of the
      global batch in the statistics dtype; ``count``: ``N``, values per channel
      in the global batch; ``group``: the process group, or ``None`` for a
      single process (then nothing is communicated).
    - Saved for backward: ``x``, ``weight``, ``mean``, ``inv_std``.

    Backward, with ``x_hat = (x - mean) * inv_std`` and the *global* sums
    ``sum_dy = sum(dout)``, ``sum_dy_xmu = sum(dout * (x - mean))`` (one all-reduce)::

        dx = weight * inv_std * (dout - sum_dy / N - x_hat * inv_std * sum_dy_xmu / N)

    which is the gradient of the sum of every rank's loss with respect to this
    rank's slice. ``dweight = inv_std * sum_dy_xmu`` and ``dbias = sum_dy`` are
    returned with this rank's *local* sums only: DDP's gradient all-reduce adds
    the ranks' parts, as with ``torch.nn.SyncBatchNorm``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, inv_std, count, group):
        _, shape, _ = _layout(x)
        sd = mean.dtype
        alpha = inv_std if weight is None else inv_std * weight.to(sd)
        shift = -mean * alpha
        if bias is not None:
            shift = shift + bias.to(sd)
        out = (x.to(sd) * alpha.view(shape) + shift.view(shape)).to(x.dtype)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.count, ctx.group = count, group
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, mean, inv_std = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dims, shape, _ = _layout(x)
        sd = mean.dtype
        dy = dout.to(sd)
        xmu = x.to(sd) - mean.view(shape)
        local = torch.cat([dy.sum(dims), (dy * xmu).sum(dims)])  # zeros for an empty slice
        c = mean.numel()
        dweight = (local[c:] * inv_std).to(weight.dtype) if need_w else None
        dbias = local[:c].to(weight.dtype if weight is not None else x.dtype) if need_b else None
        dx = None
        if need_x:
            total = local.clone()
            if ctx.group is not None:
                dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
            sum_dy, sum_dy_xmu = total[:c], total[c:]
            k = inv_std if weight is None else inv_std * weight.to(sd)
            n = ctx.count
            dx = k.view(shape) * (
                dy - (sum_dy / n).view(shape) - xmu * (inv_std.square() * sum_dy_xmu / n).view(shape)
            )
            dx = dx.to(x.dtype)
        return dx, dweight, dbias, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """Batch normalization over the global batch of a process group.

    Same constructor, parameters, buffers and ``state_dict`` keys as
    ``torch.nn.SyncBatchNorm``. Input ``(N, C, ...)`` with at least 2
    dimensions; output of the same shape and dtype.

    - Training, with a process group of more than one rank: statistics of the
      global batch (ranks may hold different ``N``, even 0), one all-reduce in
      the forward and one in the backward (see the module docstring); the
      running variance is the unbiased ``M2 / (N - 1)`` with the global ``N``;
      ``num_batches_tracked`` counts steps as in torch; ``momentum=None`` is
      the cumulative average. Every rank ends with the same running statistics.
    - Evaluation (with running statistics), or no initialized process group, or
      a group of one rank: the plain batch norm of this rank's input, with no
      communication at all.
    - Weight and bias gradients are this rank's share; DDP sums them.

    Raises:
        ValueError: as torch's messages say: input with fewer than 2 dimensions,
            a channel count other than ``num_features`` (on any rank: all ranks
            raise), an empty global batch, or a single value per channel.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group

    def _input_problem(self, x: Any) -> str | None:
        """What is wrong with this rank's input, or None."""
        if not isinstance(x, Tensor):
            return f"SyncBatchNorm expected a torch.Tensor input, got {type(x).__name__}"
        if x.dim() < 2:
            return f"expected at least 2D input (got {x.dim()}D input)"
        if x.shape[1] != self.num_features:
            return (
                f"SyncBatchNorm expected {self.num_features} channels (num_features) on axis 1 on every rank, "
                f"got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            return f"SyncBatchNorm expected a floating-point input, got dtype {x.dtype}"
        return None

    def _sync_group(self, use_batch_stats: bool) -> Any | None:
        """The process group to synchronize over, or None when there is nothing to sync."""
        if not (use_batch_stats and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        use_batch_stats = self.training or self.running_mean is None
        group = self._sync_group(use_batch_stats)
        problem = self._input_problem(input)
        with torch.autocast(device_type=_device_type(input), enabled=False):
            if group is None:
                if problem is not None:
                    raise ValueError(problem)
                if not use_batch_stats:
                    return self._eval_forward(input)
            # The statistics are constants to autograd: the Function's backward accounts for them.
            with torch.no_grad():
                if group is not None:
                    # Collective: every rank must reach the all-reduce, even with bad input.
                    device = input.device if isinstance(input, Tensor) else self._device()
                    x = input.detach() if isinstance(input, Tensor) else None
                    count, mean64, m2 = _global_moments(x, self.num_features, problem, group, device)
                else:
                    count, mean64, m2 = local_moments(input.detach())
                    if count <= 1:
                        raise ValueError(
                            "expected more than 1 value per channel when training, "
                            f"got input of shape {tuple(input.shape)}"
                        )
                sd = _stat_dtype(input.dtype)
                var = m2 / count  # biased: what normalizes the batch
                inv_std = (var + self.eps).rsqrt().to(sd)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean64, m2 / (count - 1))
            return SyncBatchNormFunction.apply(
                input, self.weight, self.bias, mean64.to(sd), inv_std, count, group
            )

    def _eval_forward(self, x: Tensor) -> Tensor:
        """``x * alpha + (bias - running_mean * alpha)``, ``alpha = weight / sqrt(running_var + eps)``."""
        _, shape, _ = _layout(x)
        sd = _stat_dtype(x.dtype)
        alpha = torch.rsqrt(self.running_var.to(sd) + self.eps)
        if self.weight is not None:
            alpha = alpha * self.weight.to(sd)
        shift = -self.running_mean.to(sd) * alpha
        if self.bias is not None:
            shift = shift + self.bias.to(sd)
        return (x.to(sd) * alpha.view(shape) + shift.view(shape)).to(x.dtype)

    def _device(self) -> torch.device:
        for t in (self.weight, self.running_mean):
            if t is not None:
                return t.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.process_group is None else ", process_group=<group>")

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any | None = None) -> nn.Module:
        """Replace every BatchNorm*d in ``module`` by a ``SyncBatchNorm``, keeping its state.

        Converts ``torch.nn.BatchNorm1d/2d/3d`` (and torch's other ``_BatchNorm``
        subclasses, e.g. its ``SyncBatchNorm``) and ``bncourse.nn.BatchNorm1d/2d/3d``.
        The new layer takes over the old one's *tensors* (the same ``weight`` and
        ``bias`` Parameters, the same running buffers and ``num_batches_tracked``),
        its hyper-parameters and its train/eval mode, so the state is kept exactly
        and an optimizer built before the conversion still holds the right
        parameters. As torch: returns ``module`` changed in place, or the new layer
        if ``module`` itself is a batch-norm layer.

        Raises:
            ValueError: a lazy batch-norm module that has not seen an input yet.
        """
        if not isinstance(module, nn.Module):
            raise ValueError(f"expected a torch.nn.Module, got {type(module).__name__}")
        out = module
        if isinstance(module, _CONVERTIBLE):
            if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
                raise ValueError(
                    f"expected an initialized batch-norm module, got an uninitialized "
                    f"{type(module).__name__}: run one forward pass before converting it"
                )
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
            )
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


_CONVERTIBLE = (nn.modules.batchnorm._BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm)


def _device_type(x: Any) -> str:
    return x.device.type if isinstance(x, Tensor) else "cpu"
