"""Fused batch norm: the same layers, with the training pass in compiled C loops.

Training-mode batch norm is memory-bound: a few arithmetic operations per
value, so its time is set by how many times the big tensors travel between
memory and the cores. Built from torch's generic ops, every step is its own
pass. Here the forward is two passes and the backward two, and the second
pass of each finds its data still in cache:

1. statistics of one channel: one read of its values, mean and variance by
   Chan's merge of cache-sized chunks (:file:`bncourse/nn/_kernels.c`);
2. at once, that channel's output ``out = x * alpha + shift``: its values are
   read again from the core's cache, not from memory;
3. backward, per channel: ``sum(dout)`` and ``sum(dout * (x - mean))``;
4. at once, ``dx = k * dout + coef * x + const`` from cache.

So memory sees each of ``x``, ``dout`` read about once per direction, and
``out``, ``dx`` written once. That works channel by channel for contiguous
``(N, C, ...)`` input (a channel of a ``(64, 64, 32, 32)`` float32 batch is
256 KiB) and column block by column block for ``(N, C)`` input with few rows.
Channels-last input with many rows holds every channel in every row, so its
statistics need the whole tensor first: two passes from memory there.

Why C with OpenMP: the kernels are short loops (readable next to the
formulas) that gcc compiles in about a second, and by linking to torch's own
OpenMP runtime they run on torch's threads (see :mod:`bncourse.nn._compile`).
A C++ extension built with torch's headers takes a minute per environment,
``torch.compile`` compiles again per shape, and Numba brings its own thread
pool, which waited on torch's spinning threads and lost the gain. Without a
C compiler, on other systems, for GPU tensors, float16/bfloat16, layouts
other than contiguous and channels-last, ``torch.func`` transforms or a
backward that will be differentiated again, ``FusedBatchNorm*d`` computes
exactly what ``BatchNorm*d`` computes. Nothing is compiled at import.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import _compile
from . import batchnorm as _batchnorm_module
from ._passes import _layout as _passes_layout
from .batchnorm import (
    _TRAINING_FUNCTIONS,
    _BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormFunction,
    _batch_norm,
    _functorch_active,
    _update_running_buffers,
)

__all__ = [
    "FusedBatchNormFunction",
    "FusedBatchNorm1d",
    "FusedBatchNorm2d",
    "FusedBatchNorm3d",
    "fused_batch_norm",
    "fused_available",
    "use_kernels",
]

# One column block of a few-row (R, C) tensor is processed whole, statistics then output,
# when R * block values fit in this much of a core's cache. Wider blocks read longer runs of
# each row (512 float32 columns: 2 KiB), narrower ones leave more blocks to share out.
COL_BLOCKS = (512, 256)
_CACHE_BLOCK_BYTES = 512 * 1024
_BLOCKS_PER_CALL = 4


def fused_available() -> bool:
    """Whether the compiled kernels run here (builds them at the first call, about a second)."""
    return _compile.load() is not None


@contextlib.contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Inside the block, ``BatchNorm*d`` and ``batch_norm`` run the compiled kernels (True) or the torch-ops path.

    Like ``torch.backends.cudnn.flags(enabled=...)``: the kernels are on by
    default where they can run; ``use_kernels(False)`` shows what the plain
    path of :mod:`bncourse.nn.batchnorm` computes and how fast. The environment
    variable ``BNCOURSE_KERNELS=0`` turns them off for a whole process.
    ``FusedBatchNorm*d`` ask for the kernels whatever this says.
    """
    previous = _batchnorm_module._KERNELS_ENABLED
    _batchnorm_module._KERNELS_ENABLED = bool(enabled)
    try:
        yield
    finally:
        _batchnorm_module._KERNELS_ENABLED = previous


def _layout(t: Tensor) -> tuple[str, tuple[int, ...]] | None:
    """The kernels' view of ``t``: ``("planes", (A, C, B))``, ``("rows", (R, C))``, or None (see ``_kernels.c``)."""
    c = t.shape[1]
    if t.dim() == 2 and t.is_contiguous():
        return "rows", (t.shape[0], c)
    if t.is_contiguous():
        return "planes", (t.shape[0], c, t.numel() // (t.shape[0] * c))
    if t.movedim(1, -1).is_contiguous():  # channels-last: the channel axis has stride 1
        return "rows", (t.numel() // c, c)
    return None


def _fusable(x: Tensor, *per_channel: Tensor | None) -> bool:
    """Whether the kernels take ``x`` and its ``(C,)`` tensors here."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.numel() > 0
        and _same_kind(x, *per_channel)
        and not _functorch_active()
        and not torch.compiler.is_compiling()
        and _compile.load() is not None
    )


def _same_kind(x: Tensor, *per_channel: Tensor | None) -> bool:
    """Whether each given ``(C,)`` tensor has ``x``'s dtype and device and is contiguous (the kernels read it raw)."""
    return all(t is None or (t.dtype == x.dtype and t.device == x.device and t.is_contiguous()) for t in per_channel)


_KERNELS: dict[tuple[str, torch.dtype], object] = {}  # (name, dtype) -> the loaded C function


def _kernel(name: str, dtype: torch.dtype):
    function = _KERNELS.get((name, dtype))
    if function is None:
        function = getattr(_compile.load(), f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")
        _KERNELS[name, dtype] = function
    return function


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _column_block(rows: int, channels: int, itemsize: int) -> int:
    """Columns per block for the rows kernels, or 0 where a block of every row would not stay in cache.

    The widest of :data:`COL_BLOCKS` that fits and still cuts the columns
    into a few blocks for the threads to share; the narrowest if none does.
    """
    for block in COL_BLOCKS:
        fits = rows * min(channels, block) * itemsize <= _CACHE_BLOCK_BYTES
        if fits and (-(-channels // block) >= _BLOCKS_PER_CALL or block == COL_BLOCKS[-1]):
            return block
    return 0


def _train_forward(
    x: Tensor,
    layout: tuple[str, tuple[int, ...]],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    want_inv_std: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The training forward's kernel: ``(out, mean, biased var, inv_std or None)``.

    The running buffers, where given, must be of ``x``'s kind (see
    :func:`_same_kind`): the kernel blends them in place.
    """
    kind, dims = layout
    c = x.shape[1]
    out = torch.empty_like(x)  # same strides: channels-last stays channels-last
    mean, var = torch.empty(c, dtype=x.dtype), torch.empty(c, dtype=x.dtype)
    inv_std = torch.empty(c, dtype=x.dtype) if want_inv_std else None
    common = (
        _pointer(weight), _pointer(bias), eps, mean.data_ptr(), var.data_ptr(), _pointer(inv_std),
        _pointer(running_mean), _pointer(running_var), momentum,
    )
    if kind == "planes":
        _kernel("forward_planes", x.dtype)(x.data_ptr(), out.data_ptr(), *dims, *common, torch.get_num_threads())
    else:
        block = _column_block(dims[0], c, x.element_size())
        _kernel("forward_rows", x.dtype)(x.data_ptr(), out.data_ptr(), *dims, *common, block, torch.get_num_threads())
    for buffer in (running_mean, running_var):
        if buffer is not None:  # written through a pointer: tell autograd they changed, as an in-place op would
            torch.autograd.graph.increment_version(buffer)
    return out, mean, var, inv_std


def _kernel_backward(
    dout: Tensor,
    x: Tensor,
    layout: tuple[str, tuple[int, ...]],
    weight: Tensor | None,
    mean: Tensor,
    inv_std: Tensor,
    frozen: bool,
    need_x: bool,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """The backward's kernel: ``(dx or None, dgamma, dbeta)``.

    ``frozen``: ``mean`` and ``inv_std`` were constants (the running statistics
    of an evaluation forward), so ``dx = weight * inv_std * dout``; else they
    were the batch's, and ``dx`` carries their derivative.
    """
    kind, dims = layout
    if dout.stride() != x.stride() or dout.dtype != x.dtype:  # e.g. an expanded gradient
        dout = torch.empty_like(x).copy_(dout)
    c = x.shape[1]
    dx = torch.empty_like(x) if need_x else None
    dgamma, dbeta = torch.empty(c, dtype=x.dtype), torch.empty(c, dtype=x.dtype)
    common = (_pointer(weight), mean.data_ptr(), inv_std.data_ptr(), frozen, dgamma.data_ptr(), dbeta.data_ptr())
    if kind == "planes":
        _kernel("backward_planes", x.dtype)(
            dout.data_ptr(), x.data_ptr(), _pointer(dx), *dims, *common, torch.get_num_threads()
        )
    else:
        block = _column_block(dims[0], c, x.element_size())
        _kernel("backward_rows", x.dtype)(
            dout.data_ptr(), x.data_ptr(), _pointer(dx), *dims, *common, block, torch.get_num_threads()
        )
    return dx, dgamma, dbeta


class FusedBatchNormFunction(BatchNormFunction):
    """:class:`BatchNormFunction` with its first-order passes in compiled loops.

    Same arguments, outputs, saved tensors, double backward and ``torch.func``
    support (inherited); only the plain forward and the first-order backward
    on contiguous or channels-last float32/float64 CPU tensors run the kernels.
    The kernels get bare pointers: every tensor they touch is kept in a local
    variable until they return.
    """

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
        layout = _layout(x) if _fusable(x, weight, bias) else None
        if layout is None:
            return BatchNormFunction.forward(x, weight, bias, eps, running_mean, running_var, momentum)
        x = x.detach()
        # The running buffers are blended inside the kernel where it can write them, else below.
        in_kernel = _same_kind(x, running_mean, running_var)
        blended = (running_mean, running_var, momentum) if in_kernel else (None, None, 0.0)
        out, mean, var, _ = _train_forward(x, layout, weight, bias, eps, *blended)
        if not in_kernel:
            _update_running_buffers(running_mean, running_var, mean, var, x.numel() // x.shape[1], momentum)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout: Tensor | None, _dmean: None, _dvar: None):
        x, weight, mean, inv_std = ctx.saved_tensors
        plain = dout is None or torch.is_grad_enabled() or not _fusable(x, weight, mean, inv_std)
        layout = None if plain else _layout(x)
        if layout is None:
            return BatchNormFunction._backward(ctx, dout, x, weight, mean, inv_std)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx, dgamma, dbeta = _kernel_backward(dout, x.detach(), layout, weight, mean, inv_std, False, need_x)
        return (dx, dgamma if need_w else None, dbeta if need_b else None) + (None,) * 4


class _LayerTraining(torch.autograd.Function):
    """The layers' training step where the kernels apply (see :func:`_layer_forward`).

    :class:`FusedBatchNormFunction` in fewer Python steps: the statistics stay
    inside (only ``out`` is returned), ``inv_std`` comes from the kernel, and
    there is no ``setup_context``, so ``apply`` binds no signature. Its caller
    has ruled out ``torch.func`` transforms, forward-mode AD and tracing,
    which need the full Function. A backward that will be differentiated
    again (``create_graph=True``) runs the full Function's differentiable one.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, running_mean, running_var, momentum, layout):
        out, mean, _, inv_std = _train_forward(
            x, layout, weight, bias, eps, running_mean, running_var, momentum, want_inv_std=True
        )
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.eps, ctx.layout = eps, layout
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, weight, mean, inv_std = ctx.saved_tensors
        if torch.is_grad_enabled():
            return BatchNormFunction._backward(ctx, dout, x, weight, mean, inv_std) + (None,)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx, dgamma, dbeta = _kernel_backward(dout, x, ctx.layout, weight, mean, inv_std, False, need_x)
        return (dx, dgamma if need_w else None, dbeta if need_b else None) + (None,) * 5


class _LayerEvaluation(torch.autograd.Function):
    """An evaluation forward that autograd records (``model.eval()`` with gradients on), in kernels.

    ``out = x * alpha + shift`` from the running statistics, which are
    constants here: ``dx = weight * inv_std * dout``, ``dweight =
    inv_std * sum(dout * (x - running_mean))``, ``dbias = sum(dout)``, all in
    the backward kernels with ``frozen`` set. Saves ``running_mean`` itself,
    as torch's kernel does: a training step between this forward and its
    backward makes the backward raise, as with torch's layer.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, running_mean, running_var, layout):
        out = _evaluate(x, layout, running_mean, running_var, weight, bias, eps)
        inv_std = torch.rsqrt(running_var + eps)
        ctx.save_for_backward(x, weight, running_mean, inv_std)
        ctx.layout = layout
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, weight, running_mean, inv_std = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: differentiable ops
            dims, shape, _ = _passes_layout(x)
            alpha = inv_std if weight is None else weight * inv_std
            dx = dout * alpha.view(shape) if need_x else None
            dgamma = (dout * (x - running_mean.view(shape))).sum(dims) * inv_std if need_w else None
            dbeta = dout.sum(dims) if need_b else None
        else:
            dx, dgamma, dbeta = _kernel_backward(dout, x, ctx.layout, weight, running_mean, inv_std, True, need_x)
        return (dx, dgamma if need_w else None, dbeta if need_b else None) + (None,) * 4


def _evaluate(
    x: Tensor,
    layout: tuple[str, tuple[int, ...]],
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """The evaluation kernel: ``out = x * alpha + shift`` from the running statistics, one pass."""
    kind, dims = layout
    out = torch.empty_like(x)
    _kernel("evaluate", x.dtype)(
        x.data_ptr(), out.data_ptr(), dims[0], dims[1], dims[2] if kind == "planes" else 0,
        running_mean.data_ptr(), running_var.data_ptr(),
        _pointer(weight), _pointer(bias),
        eps, torch.get_num_threads(),
    )
    return out


def _fused_eval(
    x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor | None:
    """Evaluation from the running statistics in one compiled pass, or None where it does not apply.

    Not when autograd needs a graph (then torch's ops record it), when the
    kernels cannot run, or when a per-channel tensor is not a contiguous
    ``(C,)`` of ``x``'s dtype.
    """
    per_channel = [t for t in (running_mean, running_var, weight, bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in [x, *per_channel]):
        return None
    if not _fusable(x, *per_channel):
        return None
    layout = _layout(x)
    if layout is None:
        return None
    return _evaluate(x, layout, running_mean, running_var, weight, bias, eps)


_KERNEL_DTYPES = (torch.float32, torch.float64)


def _layer_forward(layer: _BatchNorm, x: Tensor) -> Tensor | None:
    """A layer's forward where the kernels apply, in few Python steps; None for the general path.

    The layers call this first. It takes the common case only: a plain CPU
    float32/float64 tensor, contiguous or channels-last, of the layer's rank
    and channels, with parameters and buffers of its dtype, at least two
    values per channel, and no ``torch.func`` transform, forward-mode AD,
    ``torch.compile`` or export running. Everything else, and every input
    that must be refused with a message, goes the general way
    (:func:`bncourse.nn.batchnorm._module_forward`), which computes the same.
    Why bother: the Python around the kernels was most of what kept a
    training step of a ``(256, 4096)`` batch from beating torch's.
    """
    if (
        type(x) is not Tensor
        or not x.is_cpu
        or x.dtype not in _KERNEL_DTYPES
        or x.dim() not in layer._accepted_dims
        or x.shape[1] != layer.num_features
        or x.numel() == 0
        or _functorch_active()
        or torch.compiler.is_compiling()
        or _forward_ad._current_level >= 0
        or _compile.load() is None
    ):
        return None
    weight, bias, running_mean, running_var = layer.weight, layer.bias, layer.running_mean, layer.running_var
    if (running_mean is None) != (running_var is None):
        return None
    for t in (weight, bias, running_mean, running_var):  # _same_kind, knowing x is on the CPU
        if t is not None and not (t.dtype == x.dtype and t.is_cpu and t.is_contiguous()):
            return None
    layout = _layout(x)
    if layout is None:
        return None
    eps, training = layer.eps, layer.training
    needs_graph = torch.is_grad_enabled() and (
        x.requires_grad or (weight is not None and weight.requires_grad) or (bias is not None and bias.requires_grad)
    )
    if not training and running_mean is not None:
        if needs_graph:
            return _LayerEvaluation.apply(x, weight, bias, eps, running_mean, running_var, layout)
        return _evaluate(x, layout, running_mean, running_var, weight, bias, eps)
    # Batch statistics; the general path words the refusals (one value per channel, eps <= 0).
    if x.numel() <= x.shape[1] or not eps > 0:
        return None
    momentum, counter = 0.0, layer.num_batches_tracked if layer.track_running_stats else None
    if not training or counter is None:  # nothing to blend (as _module_forward)
        running_mean = running_var = None
    else:
        counter.add_(1)
        momentum = layer.momentum
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(counter)
    if needs_graph:
        return _LayerTraining.apply(x, weight, bias, eps, running_mean, running_var, momentum, layout)
    return _train_forward(x, layout, weight, bias, eps, running_mean, running_var, momentum)[0]


# Function.apply binds the arguments to forward's signature on every call (inspect.signature,
# tens of microseconds); a signature stored on the function is returned at once.
FusedBatchNormFunction.forward.__signature__ = inspect.signature(FusedBatchNormFunction.forward)
_TRAINING_FUNCTIONS[True] = FusedBatchNormFunction
_batchnorm_module._FUSED_EVAL = _fused_eval
_batchnorm_module._LAYER_FORWARD = _layer_forward


def fused_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """:func:`bncourse.nn.batch_norm` with the fused training path."""
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, True)


class FusedBatchNorm1d(BatchNorm1d):
    """:class:`bncourse.nn.BatchNorm1d` whose training pass runs the fused kernels."""

    _fused = True


class FusedBatchNorm2d(BatchNorm2d):
    """:class:`bncourse.nn.BatchNorm2d` whose training pass runs the fused kernels."""

    _fused = True


class FusedBatchNorm3d(BatchNorm3d):
    """:class:`bncourse.nn.BatchNorm3d` whose training pass runs the fused kernels."""

    _fused = True
