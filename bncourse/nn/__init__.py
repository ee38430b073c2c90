"""``bncourse.nn``: normalization layers for PyTorch, written from scratch.

Drop-in replacements for ``torch.nn.BatchNorm1d/2d/3d``, ``LayerNorm`` and
``GroupNorm`` whose backward passes are the hand-derived compact formulas
(``torch.autograd.Function``), a naive autograd version for comparison, and
:func:`replace_batchnorm` to put the course's layer into any torch model.
"""

from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormFunction,
    batch_norm,
)
from .convert import fuser_method_mapping, replace_batchnorm
from .fused import FusedBatchNorm1d, FusedBatchNorm2d, FusedBatchNorm3d, fused_available, fused_batch_norm
from . import utils
from .naive import naive_batchnorm
from .norms import GroupNorm, LayerNorm, RowNormFunction, group_norm, layer_norm
from .utils import recalibrate_bn, run_in_mode

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
    "RowNormFunction",
    "batch_norm",
    "fuser_method_mapping",
    "fused_available",
    "fused_batch_norm",
    "group_norm",
    "layer_norm",
    "naive_batchnorm",
    "recalibrate_bn",
    "run_in_mode",
    "replace_batchnorm",
    "utils",
]
