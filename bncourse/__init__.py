"""bncourse: batch normalization from scratch, the code behind the course."""

from . import functional, gradcheck
from .functional import (
    batchnorm_backward,
    batchnorm_forward,
    groupnorm_backward,
    groupnorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from .layers import BatchNorm1d, BatchNorm2d

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "batchnorm_backward",
    "batchnorm_forward",
    "functional",
    "groupnorm_backward",
    "groupnorm_forward",
    "layernorm_backward",
    "layernorm_forward",
    "gradcheck",
]
