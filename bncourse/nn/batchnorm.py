"""Batch normalization for PyTorch, written from scratch.

``BatchNormFunction`` is a ``torch.autograd.Function`` whose backward is the
compact formula derived in the course,

    dx = gamma * inv_std / M * (M * dout - sum(dout) - x_hat * sum(dout * x_hat)),

rather than autograd walking back through the mean, the variance and the
square root. ``BatchNorm1d``/``2d``/``3d`` take the constructor arguments of
``torch.nn.BatchNorm1d``/``2d``/``3d`` and keep the same parameters, buffers,
``state_dict`` keys and train/eval behaviour; the tests compare them with
torch's layers on values, gradients (second order included), mixed precision,
activation checkpointing and ``torch.func`` transforms. Nothing here calls
torch's own batch-norm kernels (``torch.batch_norm``, ``F.batch_norm``,
``torch.native_batch_norm`` and their backward ops); only elementwise ops and
sums.

Shapes: the input is ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or
``(N, C, D, H, W)``; statistics are per channel (axis 1) over every other axis.
``M = x.numel() // C`` values share each channel's mean and variance.
float16 and bfloat16 inputs are normalized with float32 statistics, as torch
does; the output keeps the input's dtype.

The arithmetic (the fast passes over memory and their differentiable
counterparts) is in :mod:`bncourse.nn._passes`; this module holds the
``autograd.Function``, the functional API and the layers. Where the compiled
C kernels of :mod:`bncourse.nn.fused` can run (CPU, float32/float64,
contiguous or channels-last, a C compiler at hand), the layers and
:func:`batch_norm` use them by default for the first-order training pass and
the evaluation forward; ``bncourse.nn.use_kernels(False)`` keeps everything
on the torch-ops path defined here.
"""

from __future__ import annotations

import inspect
import numbers

import torch
import torch.fx
from torch import Tensor, nn

from ..functional import check_layer_input
from ._passes import (
    _REDUCED,
    _affine,
    _backward_inplace,
    _backward_ops,
    _compute_dtype,
    _forward_inplace,
    _forward_ops,
    _layout,
)

__all__ = [
    "BatchNormFunction",
    "batch_norm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
]


def _functorch_active() -> bool:
    """True inside ``torch.func.grad``/``vmap``/``jvp``, where only out-of-place ops are safe."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active())


def _update_running(running: Tensor | None, stat: Tensor, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * stat``, in the statistic's dtype."""
    if running is None:
        return
    with torch.no_grad():
        if running.dtype == stat.dtype:
            running.lerp_(stat, momentum)
        else:  # float16 buffers: blend in float32, round once
            running.copy_(running.to(stat.dtype).lerp_(stat, momentum))


def _update_running_buffers(
    running_mean: Tensor | None, running_var: Tensor | None, mean: Tensor, var: Tensor, m: int, momentum: float
) -> None:
    """Blend a batch's ``mean`` and biased ``var`` (over ``m`` values per channel) into the running buffers.

    The running variance takes the *unbiased* ``var * m / (m - 1)``, as torch's;
    a batch of one value per channel (or none) moves nothing.
    """
    if m > 1:
        _update_running(running_mean, mean, momentum)
        _update_running(running_var, var * (m / (m - 1)), momentum)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization with a hand-written backward.

    ``apply(x, weight, bias, eps, running_mean=None, running_var=None,
    momentum=0.0) -> (out, mean, var)``

    - ``x``: ``(N, C, ...)``; ``weight``/``bias``: ``(C,)`` or ``None``
      (``None`` means 1 and 0, as with ``affine=False``).
    - ``out``: shape and dtype of ``x``. ``mean`` and the *biased* ``var``:
      ``(C,)``, float32 for float16/bfloat16 input, not differentiable.
    - ``running_mean``/``running_var``, if given, are blended in place with
      the batch's mean and *unbiased* variance inside the forward, as torch's
      kernel does, so that re-running the forward (activation checkpointing)
      updates them exactly as often as torch's layer.

    Saved for backward: the input ``x`` (the previous layer's output, which
    is often kept alive anyway), ``weight``, and the per-channel ``mean`` and
    ``inv_std``; torch's native kernel keeps the same plus the running
    statistics. ``x_hat`` is *not* saved: it would be a second tensor as large
    as ``x``. The backward recomputes what it needs from ``x`` instead.

    The backward is itself differentiable: under ``create_graph=True`` it is
    computed in differentiable ops, with the statistics recomputed from ``x``
    (gradient penalties, MAML). ``setup_context``, ``generate_vmap_rule`` and
    ``jvp`` make it work under ``torch.func.grad``, ``vmap`` and ``jvp``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        running_mean: Tensor | None = None,
        running_var: Tensor | None = None,
        momentum: float = 0.0,
    ):
        m = _layout(x)[2]
        if m == 0:  # an empty batch: nothing to normalize, nothing learned
            c, dtype = x.shape[1], _compute_dtype(x)
            nan = torch.full((c,), float("nan"), dtype=dtype, device=x.device)
            return x.clone(), nan, nan.clone()
        if _functorch_active() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            # A traced graph (torch.export, torch.compile) replays this body
            # outside the Function, where out= arguments would meet autograd.
            out, mean, var = _forward_ops(x, weight, bias, eps)
        else:
            out, mean, var = _forward_inplace(x, weight, bias, eps)
        _update_running_buffers(running_mean, running_var, mean, var, m, momentum)
        return out, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, eps = inputs[:4]
        _, mean, var = output
        inv_std = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.save_for_forward(x, weight, mean, inv_std)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dout: Tensor | None, _dmean: None, _dvar: None):
        return BatchNormFunction._backward(ctx, dout, *ctx.saved_tensors)

    @staticmethod
    def _backward(ctx, dout: Tensor | None, x: Tensor, weight: Tensor | None, mean: Tensor, inv_std: Tensor):
        """The backward from the saved tensors, unpacked once by the caller (checkpointing allows one unpack)."""
        no_grads = (None,) * 7
        if dout is None:
            return no_grads
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if x.numel() == 0:
            zeros = torch.zeros(x.shape[1], dtype=mean.dtype, device=x.device)
            dx, dgamma, dbeta = torch.zeros_like(x), zeros, zeros.clone()
        elif torch.is_grad_enabled():
            # create_graph=True: the gradient will be differentiated again, so
            # the statistics must be functions of x in the graph, not constants.
            dims, shape, _ = _layout(x)
            xs = x.to(mean.dtype)
            mean = xs.mean(dims)
            var = (xs - mean.view(shape)).square().mean(dims)
            dx, dgamma, dbeta = _backward_ops(dout, x, weight, mean, torch.rsqrt(var + ctx.eps))
        elif _functorch_active():
            dx, dgamma, dbeta = _backward_ops(dout, x, weight, mean, inv_std)
        else:
            dx, dgamma, dbeta = _backward_inplace(dout, x, weight, mean, inv_std, need_x)
        if weight is not None:
            dgamma, dbeta = dgamma.to(weight.dtype), dbeta.to(weight.dtype)
        return (
            dx if need_x else None,
            dgamma if need_w else None,
            dbeta if need_b else None,
        ) + no_grads[3:]

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, *_):
        """Forward-mode derivative: with ``x_hat = (x - mean) * inv_std`` and ``y = gamma * x_hat + beta``,

        ``d x_hat = inv_std * (dx - mean(dx) - x_hat * mean(x_hat * dx))``,
        ``dy = dgamma * x_hat + gamma * d x_hat + dbeta``.
        """
        x, weight, mean, inv_std = ctx.saved_tensors
        dims, shape, _ = _layout(x)
        x_hat = (x.to(mean.dtype) - mean.view(shape)) * inv_std.view(shape)
        dy = torch.zeros_like(x_hat)
        if dx is not None:
            dx = dx.to(mean.dtype)
            centered = dx - dx.mean(dims).view(shape)
            dx_hat = inv_std.view(shape) * (centered - x_hat * (x_hat * dx).mean(dims).view(shape))
            dy = dy + (dx_hat if weight is None else weight.view(shape) * dx_hat)
        if dweight is not None:
            dy = dy + dweight.view(shape) * x_hat
        if dbias is not None:
            dy = dy + dbias.view(shape)
        return dy.to(x.dtype), None, None


@torch.fx.wrap
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
            not ``C`` or whose dtype torch would refuse, a non-floating input,
            evaluation without running statistics, exactly one value per
            channel in training, or ``eps <= 0`` in training (as torch).
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


# The training Function of each path: ``bncourse.nn.fused`` adds its own under True,
# and its evaluation map (which returns None where it does not apply).
_TRAINING_FUNCTIONS: dict[bool, type[torch.autograd.Function]] = {}
_FUSED_EVAL = None
# bncourse.nn.fused's shortcut for the layers' common case: (layer, input) -> output, or None.
_LAYER_FORWARD = None
# Whether layers and batch_norm run the compiled kernels where they apply (fused=None);
# bncourse.nn.use_kernels(False) turns them off, as torch.backends.cudnn.flags does for cuDNN.
_KERNELS_ENABLED = True


def _batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    fused: bool | None = None,
) -> Tensor:
    _check_batch_norm_args(input, running_mean, running_var, weight, bias)
    if fused is None:
        fused = _KERNELS_ENABLED
    dims, shape, m = _layout(input)
    if training:
        if m == 1:
            raise ValueError(
                "expected more than 1 value per channel when training, "
                f"got input of shape {tuple(input.shape)}"
            )
        if not eps > 0:
            raise ValueError(
                f"expected eps > 0 in training (a constant channel would divide 0 by 0), got {eps!r}"
            )
        if torch.compiler.is_compiling():
            # Dynamo cannot trace a Function with a custom jvp; it traces the
            # same math in plain ops, which autograd differentiates.
            out, mean, var = _forward_ops(input, weight, bias, eps)
            _update_running_buffers(running_mean, running_var, mean.detach(), var.detach(), m, momentum)
            return out
        function = _TRAINING_FUNCTIONS.get(fused, BatchNormFunction)
        out, _, _ = function.apply(input, weight, bias, eps, running_mean, running_var, momentum)
        return out
    if running_mean is None or running_var is None:
        raise ValueError(
            "expected running_mean and running_var in evaluation mode (training=False), got None"
        )
    if fused and _FUSED_EVAL is not None:
        out = _FUSED_EVAL(input, running_mean, running_var, weight, bias, eps)
        if out is not None:
            return out
    alpha = torch.rsqrt(running_var + eps)
    if weight is not None:
        alpha = alpha * weight
    shift = -running_mean * alpha
    if bias is not None:
        shift = shift + bias
    if input.dtype in _REDUCED and alpha.dtype != input.dtype:
        return _affine(input.to(alpha.dtype), alpha, shift).to(input.dtype)
    return _affine(input, alpha, shift)


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
    # As torch: per-channel tensors share the input's dtype, except that
    # float16/bfloat16 input may come with float32 ones (autocast, mixed precision).
    allowed = (x.dtype, torch.float32) if x.dtype in _REDUCED else (x.dtype,)
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
        if t.is_floating_point() and t.dtype not in allowed:
            expected = " or ".join(str(d) for d in allowed)
            raise ValueError(
                f"expected {name} of dtype {expected} for a {x.dtype} input, got {t.dtype}"
            )


def _check_layer_input(input: Tensor, layer: str, accepted_dims: tuple[int, ...], num_features: int) -> None:
    """A layer's input: a tensor of an accepted rank with ``num_features`` channels on axis 1."""
    if not isinstance(input, Tensor):
        raise ValueError(f"expected a torch.Tensor input, got {type(input).__name__}")
    check_layer_input(layer, tuple(input.shape), accepted_dims, num_features)


@torch.fx.wrap
def _module_forward(
    input: Tensor,
    layer: str,
    accepted_dims: tuple[int, ...],
    num_features: int,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    fused: bool | None = None,
) -> Tensor:
    """What ``_BatchNorm.forward`` does, as one function ``torch.fx`` records as a single call."""
    _check_layer_input(input, layer, accepted_dims, num_features)
    use_batch_stats = training or running_mean is None
    if use_batch_stats and input.numel() == input.shape[1]:
        raise ValueError(
            "expected more than 1 value per channel when training, "
            f"got input of shape {tuple(input.shape)}"
        )
    if use_batch_stats and not eps > 0:
        raise ValueError(
            f"expected eps > 0 when normalizing with batch statistics (as torch), got {eps!r}"
        )
    factor = 0.0 if momentum is None else momentum
    if training and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average
            factor = 1.0 / float(num_batches_tracked)
    update = not training or num_batches_tracked is not None
    return _batch_norm(
        input,
        running_mean if update else None,
        running_var if update else None,
        weight,
        bias,
        use_batch_stats,
        factor,
        eps,
        fused,
    )


# Function.apply binds the arguments to forward's signature on every call (inspect.signature,
# tens of microseconds); a signature stored on the function is returned at once.
BatchNormFunction.forward.__signature__ = inspect.signature(BatchNormFunction.forward)
_TRAINING_FUNCTIONS[False] = BatchNormFunction


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
    # Fixed at construction; TorchScript bakes them into a scripted module, as torch's.
    __constants__ = ["num_features", "eps", "momentum", "affine", "track_running_stats"]
    _accepted_dims: tuple[int, ...] = ()
    _fused: bool | None = None  # None: the kernels where enabled (use_kernels); True in FusedBatchNorm*d

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
        if (
            not isinstance(num_features, numbers.Integral)
            or isinstance(num_features, bool)
            or num_features < 1
        ):
            raise ValueError(f"expected num_features to be a positive int, got {num_features!r}")
        num_features = int(num_features)  # e.g. numpy.int64, as torch accepts
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
        An empty batch (``N = 0``) returns an empty output and, as in torch,
        counts in ``num_batches_tracked`` without moving the statistics.
        """
        if torch.jit.is_scripting():
            return self._forward_scripted(input)
        if _LAYER_FORWARD is not None and (_KERNELS_ENABLED if self._fused is None else self._fused):
            output = _LAYER_FORWARD(self, input)
            if output is not None:
                return output
        return _module_forward(
            input,
            type(self).__name__,
            self._accepted_dims,
            self.num_features,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked if self.track_running_stats else None,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
            self._fused,
        )

    def _check_input(self, input: Tensor) -> None:
        """Raise ``ValueError`` unless ``input`` is a tensor this layer accepts (rank, channels)."""
        _check_layer_input(input, type(self).__name__, self._accepted_dims, self.num_features)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """Count one training step and blend ``mean`` and ``unbiased_var`` (``(C,)``) into the buffers.

        For the subclasses that compute their own statistics (Batch Renorm,
        ghost batches, synchronized batches): weight ``momentum`` on the new
        value, or ``1 / num_batches_tracked`` (the cumulative average) when
        ``momentum=None``, as torch.
        """
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)

    def _forward_scripted(self, input: Tensor) -> Tensor:
        """What ``torch.jit.script`` compiles: TorchScript cannot call an
        ``autograd.Function``, so a scripted layer computes the same function
        from plain ops, which autograd differentiates."""
        if input.dim() < 2 or input.size(1) != self.num_features:
            raise ValueError("expected input of shape (N, num_features, ...)")
        dims = [0] + [d for d in range(2, input.dim())]
        shape = [1, self.num_features] + [1 for _ in range(2, input.dim())]
        running_mean, running_var = self.running_mean, self.running_var
        num_batches_tracked = self.num_batches_tracked
        stats_dtype = torch.float32 if input.dtype in [torch.float16, torch.bfloat16] else input.dtype
        xs = input.to(stats_dtype)
        if self.training or running_mean is None or running_var is None:
            mean = xs.mean(dims)
            var = (xs - mean.view(shape)).square().mean(dims)
            m = input.numel() // self.num_features
            if self.training and num_batches_tracked is not None and running_mean is not None and running_var is not None:
                num_batches_tracked.add_(1)
                momentum = self.momentum
                factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
                with torch.no_grad():
                    running_mean.copy_(running_mean.lerp(mean.detach().to(running_mean.dtype), factor))
                    unbiased = var.detach() * (m / max(m - 1, 1))
                    running_var.copy_(running_var.lerp(unbiased.to(running_var.dtype), factor))
        else:
            mean, var = running_mean.to(stats_dtype), running_var.to(stats_dtype)
        out = (xs - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        weight, bias = self.weight, self.bias
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        return out.to(input.dtype)

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
    """Batch norm with ``torch.nn.BatchNorm1d``'s interface: inputs ``(N, C)`` or ``(N, C, L)``."""

    _accepted_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm with ``torch.nn.BatchNorm2d``'s interface: inputs ``(N, C, H, W)``."""

    _accepted_dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch norm with ``torch.nn.BatchNorm3d``'s interface: inputs ``(N, C, D, H, W)``."""

    _accepted_dims = (5,)
