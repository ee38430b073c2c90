"""Test helper: snapshots of a model's buffers (BN's running statistics), to check that a
measurement leaves no trace or that an update really happened."""

import torch
from torch import nn


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every buffer of ``model``, by name."""
    return {k: v.clone() for k, v in model.named_buffers()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True if two snapshots have the same names and exactly equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
