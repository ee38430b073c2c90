"""Residual blocks: ``x -> x + branch(x)``, optionally scaled, optionally followed by an activation.

One module covers the variants the course compares:

- post-activation (He et al., 2016a): ``relu(x + bn(conv(relu(bn(conv(x))))))``, built as
  ``ResidualBlock(branch, activation=nn.ReLU())``;
- pre-activation (He et al., 2016b, "identity mappings"): ``x + conv(relu(bn(conv(relu(bn(x))))))``,
  built as ``ResidualBlock(branch)``: nothing is applied after the sum, so the identity path
  from the input to the output of a stack of blocks is untouched;
- scaled residuals (SkipInit, De & Smith 2020): ``x + alpha * branch(x)`` with a learned scalar
  ``alpha`` initialized at ``gain`` (0 for SkipInit: every block starts as the identity).

The branch is any module whose output has the input's shape.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ResidualBlock"]


class ResidualBlock(nn.Module):
    """``out = activation(x + gain * branch(x))``.

    Args:
        branch: module mapping ``x`` of shape ``(N, *)`` to the same shape.
        activation: module applied after the sum (post-activation block), or None
            (pre-activation block: the sum is the output).
        gain: None for no scalar; else the initial value of a learned scalar ``gain``
            multiplying the branch (SkipInit uses 0.0).

    Caches nothing beyond what autograd keeps for the branch.
    """

    def __init__(self, branch: nn.Module, activation: nn.Module | None = None, gain: float | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.activation = activation
        if gain is None:
            self.register_parameter("gain", None)
        else:
            self.gain = nn.Parameter(torch.tensor(float(gain)))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, *)`` -> same shape."""
        y = self.branch(x)
        if y.shape != x.shape:
            raise ValueError(f"expected the branch to keep the shape {tuple(x.shape)}, got {tuple(y.shape)}")
        if self.gain is not None:
            y = self.gain * y
        out = x + y
        return out if self.activation is None else self.activation(out)

    def extra_repr(self) -> str:
        return "gain=None" if self.gain is None else f"gain={self.gain.item():g} (learned)"
