"""Batch normalization for PyTorch, written from scratch.

``BatchNormFunction`` is a ``torch.autograd.Function`` whose backward is the
compact formula derived in the course,

    dx = gamma * inv_std / M * (M * dout - sum(dout) - x_hat * sum(dout * x_hat)),

rather than autograd walking back through the mean, the variance and the
square root. ``BatchNorm1d``/``2d``/``3d`` are drop-in replacements for
``torch.nn.BatchNorm1d``/``2d``/``3d``: same constructor, parameters, buffers,
``state_dict`` keys and train/eval behaviour. Nothing here calls torch's own
batch-norm kernels (``torch.batch_norm``, ``F.batch_norm``,
``torch.native_batch_norm`` and their backward ops); only elementwise ops and
sums.

Shapes: the input is ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or
``(N, C, D, H, W)``; statistics are per channel (axis 1) over every other axis.
``M = x.numel() // C`` values share each channel's mean and variance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..functional import check_layer_input

__all__ = [
    "BatchNormFunction",
    "batch_norm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
]


def _layout(x: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Reduction axes, the broadcast shape of a ``(C,)`` vector, and ``M``."""
    c = x.shape[1]
    dims = (0,) + tuple(range(2, x.dim()))
    shape = (1, c) + (1,) * (x.dim() - 2)
    return dims, shape, x.numel() // c


def _channel_sum(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Sum over every axis but 1, returning ``(C,)``.

    For inputs with spatial axes, summing the contiguous inner block first
    (``(N, C, L) -> (N, C) -> (C,)``) reads memory in order and adds each
    ``L``-long run in a cascade, which is a little more accurate in float32
    than one reduction over the strided axes ``(0, 2, 3)``.
    """
    if t.dim() > 2 and t.is_contiguous():
        return t.view(t.shape[0], t.shape[1], -1).sum(2).sum(0)
    return t.sum(dims)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization with a hand-written backward.

    ``forward(x, weight, bias, eps) -> (out, mean, var)``

    - ``x``: ``(N, C, ...)``; ``weight``/``bias``: ``(C,)`` or ``None``
      (``None`` means 1 and 0, as with ``affine=False``).
    - ``out``: shape of ``x``. ``mean`` and the *biased* ``var``: ``(C,)``,
      returned (not differentiable) so the caller can update running
      statistics without computing them again.

    Saved for backward: the input ``x`` (the previous layer's output, which
    is often kept alive anyway), ``weight``, and the per-channel ``mean`` and
    ``inv_std``; torch's native kernel keeps the same plus the running
    statistics. ``x_hat`` is *not* saved: it would be a second tensor as large
    as ``x``. The backward recomputes what it needs from ``x`` instead.

    The backward is first-order only (``once_differentiable``): asking for a
    gradient of the gradient raises an error rather than returning a wrong one.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        dims, shape, m = _layout(x)
        # Per-channel (C,) results are scaled in place, sparing tiny allocations.
        mean = _channel_sum(x, dims).mul_(1.0 / m)
        # `out` starts as the centered input, then holds its squares (for the
        # variance), and finally the output: one big allocation instead of three.
        out = x - mean.view(shape)
        var = _channel_sum(out.square_(), dims).mul_(1.0 / m)
        inv_std = var.add(eps).rsqrt_()
        # out = gamma * (x - mean) * inv_std + beta = x * alpha + shift, per channel.
        alpha = inv_std if weight is None else inv_std * weight
        if bias is None:
            shift = alpha.mul(mean).neg_()
        else:
            shift = torch.addcmul(bias, mean, alpha, value=-1)  # beta - mean * alpha
        torch.addcmul(shift.view(shape), x, alpha.view(shape), out=out)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor | None, _dmean: None, _dvar: None):
        x, weight, mean, inv_std = ctx.saved_tensors
        if dout is None:
            return None, None, None, None
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        dims, shape, m = _layout(x)
        # dbeta = sum(dout); dgamma = sum(dout * x_hat) = inv_std * sum(dout * (x - mean)).
        dbeta = _channel_sum(dout, dims)
        buf = x - mean.view(shape)
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
            dx = torch.addcmul(const.view(shape), x, coef.view(shape), out=buf)
            dx.addcmul_(dout, k.view(shape))
        return (
            dx,
            dgamma if need_w else None,
            dbeta if need_b else None,
            None,
        )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Same signature and semantics as ``torch.nn.functional.batch_norm``.

    Training: normalize with the batch's mean and biased variance (through
    :class:`BatchNormFunction`) and, if running buffers are given, update them
    in place: ``r = (1 - momentum) * r + momentum * stat``, with the
    *unbiased* variance ``var * M / (M - 1)`` for ``running_var``.
    Evaluation: ``out = x * alpha + (bias - running_mean * alpha)`` with
    ``alpha = weight / sqrt(running_var + eps)``, a per-channel affine map
    built from ordinary differentiable ops.

    Raises:
        ValueError: fewer than 2 dimensions, per-channel tensors whose size is
            not ``C``, a non-floating input, evaluation without running
            statistics, or a single value per channel in training.
    """
    _check_batch_norm_args(input, running_mean, running_var, weight, bias)
    dims, shape, m = _layout(input)
    if training:
        if m <= 1:
            raise ValueError(
                "expected more than 1 value per channel when training, "
                f"got input of shape {tuple(input.shape)}"
            )
        out, mean, var = BatchNormFunction.apply(input, weight, bias, eps)
        with torch.no_grad():
            # r + momentum * (s - r) = (1 - momentum) * r + momentum * s, in one op.
            if running_mean is not None:
                running_mean.lerp_(mean, momentum)
            if running_var is not None:
                running_var.lerp_(var * (m / (m - 1)), momentum)
        return out
    if running_mean is None or running_var is None:
        raise ValueError(
            "expected running_mean and running_var in evaluation mode (training=False), got None"
        )
    alpha = torch.rsqrt(running_var + eps)
    if weight is not None:
        alpha = alpha * weight
    shift = -running_mean * alpha
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift.view(shape), input, alpha.view(shape))


def _check_batch_norm_args(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a torch.Tensor input, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"expected input of shape (N, C, ...) with at least 2 dimensions, "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point input, got dtype {x.dtype}")
    c = x.shape[1]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is None:
            continue
        if t.shape != (c,):
            raise ValueError(
                f"expected {name} of shape ({c},) for an input with {c} channels on "
                f"axis 1 (input shape {tuple(x.shape)}), got shape {tuple(t.shape)}"
            )
        if t.dtype != x.dtype and t.is_floating_point():
            raise ValueError(f"expected {name} of dtype {x.dtype} (the input's), got {t.dtype}")


class _BatchNorm(nn.Module):
    """What ``BatchNorm1d``/``2d``/``3d`` share; they differ only in accepted ranks.

    Registers exactly the parameters (``weight``, ``bias``) and buffers
    (``running_mean``, ``running_var``, ``num_batches_tracked``) of
    ``torch.nn.BatchNorm*``, under the same names, with the same initial
    values, so ``state_dict`` keys match and a torch layer's state loads with
    ``strict=True``. It deliberately does not subclass torch's ``_BatchNorm``,
    whose ``forward`` would call torch's kernel.
    """

    _version = 2  # as torch: state dicts of version < 2 lack num_batches_tracked
    _accepted_dims: tuple[int, ...] = ()
    _layout_name = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"expected num_features to be a positive int, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"expected momentum in [0, 1] or None, got {momentum!r}")
        if eps < 0:
            raise ValueError(f"expected eps >= 0, got {eps!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset; ``weight`` 1 and ``bias`` 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` (``(N, C, ...)``); returns the same shape and dtype.

        Training mode uses the batch's statistics and (if tracked) updates the
        running ones: exponential average with weight ``momentum`` on the new
        value, or the plain average over all batches seen when
        ``momentum=None``. Evaluation mode uses the running statistics, or the
        batch's if ``track_running_stats=False``. Inputs are validated before
        any state changes, so a rejected call leaves the buffers untouched.
        """
        self._check_input(input)
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats and input.numel() // input.shape[1] <= 1:
            raise ValueError(
                "expected more than 1 value per channel when training, "
                f"got input of shape {tuple(input.shape)}"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        update = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor input, got {type(x).__name__}")
        check_layer_input(type(self).__name__, tuple(x.shape), self._accepted_dims, self._layout_name, self.num_features)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # As torch: states saved before num_batches_tracked existed (version < 2)
        # still load, keeping the current count.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = self.num_batches_tracked
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class BatchNorm1d(_BatchNorm):
    """Drop-in for ``torch.nn.BatchNorm1d``: inputs ``(N, C)`` or ``(N, C, L)``."""

    _accepted_dims = (2, 3)
    _layout_name = "2-D (N, C) or 3-D (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Drop-in for ``torch.nn.BatchNorm2d``: inputs ``(N, C, H, W)``."""

    _accepted_dims = (4,)
    _layout_name = "4-D (N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Drop-in for ``torch.nn.BatchNorm3d``: inputs ``(N, C, D, H, W)``."""

    _accepted_dims = (5,)
    _layout_name = "5-D (N, C, D, H, W)"
