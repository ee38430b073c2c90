"""``bncourse.nn``: normalization layers for PyTorch, written from scratch.

``BatchNorm1d/2d/3d`` that can replace ``torch.nn``'s (the tests compare them on
values, first- and second-order gradients, mixed precision, checkpointing,
``torch.func``, tracing, export and scripting), ``LayerNorm`` and ``GroupNorm``
with torch's arguments, all with the hand-derived compact backward
(``torch.autograd.Function``). On the CPU the batch-norm layers run short C
loops compiled at the first call (:mod:`bncourse.nn.fused`; ``use_kernels(False)``
or ``BNCOURSE_KERNELS=0`` selects the torch-ops path, which also runs wherever
no C compiler exists); a naive autograd version for comparison; and
:func:`replace_batchnorm` to put the course's layer into any torch model.
Across devices and batches: :class:`SyncBatchNorm` (global-batch statistics on
``torch.distributed``), :class:`BatchRenorm1d`/``2d`` (Ioffe, 2017) and
:class:`GhostBatchNorm1d`/``2d`` (Hoffer et al., 2017).
"""

from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormFunction,
    batch_norm,
)
from .convert import fuser_method_mapping, replace_batchnorm
from .fused import (
    FusedBatchNorm1d,
    FusedBatchNorm2d,
    FusedBatchNorm3d,
    fused_available,
    fused_batch_norm,
    use_kernels,
)
from . import utils
from .naive import naive_batchnorm
from .norms import GroupNorm, LayerNorm, RowNormFunction, group_norm, layer_norm
from .residual import ResidualBlock
from .rmsnorm import RMSNorm, RMSNormFunction, rms_norm
from .weight_standardization import WSConv2d, standardize_weight
from .utils import recalibrate_bn, run_in_mode
from .sync_batchnorm import SyncBatchNorm
from .batch_renorm import BatchRenorm1d, BatchRenorm2d, LinearRamp
from .ghost import GhostBatchNorm1d, GhostBatchNorm2d

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormFunction",
    "FusedBatchNorm1d",
    "FusedBatchNorm2d",
    "FusedBatchNorm3d",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
    "RMSNormFunction",
    "ResidualBlock",
    "RowNormFunction",
    "WSConv2d",
    "batch_norm",
    "fuser_method_mapping",
    "fused_available",
    "fused_batch_norm",
    "use_kernels",
    "group_norm",
    "layer_norm",
    "naive_batchnorm",
    "recalibrate_bn",
    "run_in_mode",
    "SyncBatchNorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "LinearRamp",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "standardize_weight",
    "replace_batchnorm",
    "rms_norm",
    "utils",
]
