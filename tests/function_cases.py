"""Test helper: the inputs on which ``bncourse.nn.BatchNormFunction`` is gradient-checked
(first and second order), for every layout the layers accept."""

import torch

import bncourse.nn as bnn

# (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W): three channels each.
SHAPES = [(5, 3), (4, 3, 2), (2, 3, 2, 2), (2, 3, 1, 2, 2)]


def inputs(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 ``x`` of ``shape``, ``weight`` and ``bias`` of shape (3,), all requiring grad (seed 0)."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    return x, w, b


def normalized(x: torch.Tensor, w: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
    """The function's output alone (no affine parameters when ``w`` and ``b`` are left out), eps 1e-5."""
    return bnn.BatchNormFunction.apply(x, w, b, 1e-5)[0]
