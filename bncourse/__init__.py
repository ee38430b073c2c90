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
from .layers import BatchNorm1d, BatchNorm2d, BatchNorm3d

__version__ = "0.1.0"

# Submodules that need torch, matplotlib or scikit-learn load on first use, so
# `import bncourse` stays light (the NumPy core needs only NumPy) while
# `bncourse.nn.BatchNorm1d` and friends still work after a plain `import bncourse`.
# `nn`: the from-scratch torch layers; `lab`: the experiment toolkit the chapters use.
_LAZY_SUBMODULES = {"nn", "fold", "lab", "grading", "cli"}


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batchnorm_backward",
    "batchnorm_forward",
    "functional",
    "groupnorm_backward",
    "groupnorm_forward",
    "layernorm_backward",
    "layernorm_forward",
    "gradcheck",
]
