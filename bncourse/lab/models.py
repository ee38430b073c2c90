"""Small PyTorch models for the experiment chapters, with or without normalization.

``mlp`` builds the fully connected nets of the paper's MNIST experiment (by default
3 hidden layers of 100 sigmoid units) and lets a chapter switch one thing at a time:
the normalization layer, where it sits relative to the nonlinearity, dropout, biases
and the scale of the initial weights. ``small_cnn`` is a two-block conv net for the
digits as (N, 1, 8, 8) images. Both build deterministically from ``seed`` without
touching the global torch random state.

Layers are named (``fc1``, ``norm1``, ``act1``, ``drop1``, ..., ``out``), so a chapter
can pick one with ``model.act3`` or ``activation_modules(model)[-1]``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .. import nn as bnn  # the course's from-scratch torch layers (torch.nn's signatures)

__all__ = ["NORMS", "ACTIVATIONS", "activation_modules", "mlp", "norm_layer", "small_cnn"]

NORMS = (None, "bn", "ln", "gn")
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def _default_groups(num_features: int) -> int:
    """The largest divisor of ``num_features`` that is at most 8 (GroupNorm needs a divisor)."""
    return max(g for g in range(1, 9) if num_features % g == 0)


def norm_layer(kind: str, num_features: int, *, dims: int = 1, num_groups: int | None = None) -> nn.Module:
    """One normalization layer over ``num_features`` channels, from the course's own code.

    Args:
        kind: "bn" (batch norm), "ln" (layer norm over the features) or "gn" (group norm).
        num_features: number of channels C of the input (N, C) or (N, C, H, W).
        dims: 1 for (N, C) inputs, 2 for (N, C, H, W) images ("bn" picks BatchNorm1d/2d;
            "ln" is only offered for dims=1, where it normalizes over the C features).
        num_groups: groups for "gn"; default the largest divisor of C that is <= 8.

    Returns:
        A module from ``bncourse.nn`` (the from-scratch torch layers, with torch's
        constructor signatures).
    """
    if dims not in (1, 2):
        raise ValueError(f"expected dims 1 (N, C) or 2 (N, C, H, W), got {dims!r}")
    if not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"expected num_features to be a positive int, got {num_features!r}")
    if kind == "bn":
        return bnn.BatchNorm1d(num_features) if dims == 1 else bnn.BatchNorm2d(num_features)
    if kind == "ln":
        if dims != 1:
            raise ValueError("expected dims=1 for 'ln' (layer norm over (N, C) features), got dims=2")
        return bnn.LayerNorm(num_features)
    if kind == "gn":
        groups = _default_groups(num_features) if num_groups is None else num_groups
        if not isinstance(groups, int) or groups < 1 or num_features % groups:
            raise ValueError(f"expected num_groups dividing {num_features}, got {groups!r}")
        return bnn.GroupNorm(groups, num_features)
    raise ValueError(f"expected norm kind 'bn', 'ln' or 'gn', got {kind!r}")


def _check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"expected {name} in {list(allowed)!r}, got {value!r}")


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (100, 100, 100),
    num_classes: int = 10,
    activation: str = "sigmoid",
    norm: str | None = None,
    placement: str = "before",
    dropout: float = 0.0,
    bias: bool = True,
    init_scale: float | None = None,
    seed: int = 0,
) -> nn.Sequential:
    """A fully connected classifier: (N, in_features) -> logits (N, num_classes).

    Each hidden layer is ``Linear -> Norm -> Act`` (placement "before", the paper's
    choice: normalize the input of the nonlinearity) or ``Linear -> Act -> Norm``
    ("after"), followed by ``Dropout`` if ``dropout > 0``. The output layer is a plain
    Linear with a bias (softmax is left to the loss).

    Args:
        hidden: widths of the hidden layers (may be empty: a linear model).
        activation: "sigmoid", "tanh" or "relu".
        norm: None, "bn", "ln" or "gn" (see ``norm_layer``).
        placement: "before" or "after" the activation (ignored when norm is None).
        dropout: drop probability in [0, 1) after each hidden block.
        bias: whether the hidden Linear layers have biases (a bias right before BN is
            redundant: BN subtracts the mean, and its own shift beta takes the role).
        init_scale: multiplies PyTorch's default initial weights of every Linear
            layer (None leaves them as they are); must be > 0.
        seed: seeds the initial weights; the global RNG is left untouched.
    """
    if not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"expected in_features to be a positive int, got {in_features!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"expected num_classes to be a positive int, got {num_classes!r}")
    hidden = tuple(hidden)
    if not all(isinstance(h, int) and h >= 1 for h in hidden):
        raise ValueError(f"expected hidden to be positive ints, got {hidden!r}")
    _check_choice("activation", activation, list(ACTIVATIONS))
    _check_choice("norm", norm, NORMS)
    _check_choice("placement", placement, ["before", "after"])
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"expected dropout in [0, 1), got {dropout!r}")
    if init_scale is not None and not init_scale > 0:
        raise ValueError(f"expected init_scale > 0 or None, got {init_scale!r}")

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):  # build from `seed` without moving the global RNG
        torch.manual_seed(seed)
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h, bias=bias)
            block = [("act", ACTIVATIONS[activation]())]
            if norm is not None:
                block.insert(0 if placement == "before" else 1, ("norm", norm_layer(norm, h)))
            for name, module in block:
                layers[f"{name}{i}"] = module
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        layers["out"] = nn.Linear(width, num_classes)
        if init_scale is not None:
            with torch.no_grad():
                for module in layers.values():
                    if isinstance(module, nn.Linear):
                        module.weight.mul_(init_scale)
    return nn.Sequential(layers)


def small_cnn(norm: str | None = None, seed: int = 0, channels: Sequence[int] = (16, 32)) -> nn.Sequential:
    """A small conv net for digits images: (N, 1, 8, 8) -> logits (N, 10).

    Each block is ``Conv3x3(pad 1) -> [Norm] -> ReLU -> MaxPool2``, so 8x8 becomes 4x4
    then 2x2; a Linear layer maps the flattened features to 10 classes.

    Args:
        norm: None, "bn" (BatchNorm2d: per-channel statistics over N, H, W) or "gn".
        seed: seeds the initial weights; the global RNG is left untouched.
        channels: output channels of the conv blocks (at most 3 blocks: 8 -> 4 -> 2 -> 1).
    """
    _check_choice("norm", norm, [None, "bn", "gn"])
    channels = tuple(channels)
    if not 1 <= len(channels) <= 3 or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ValueError(f"expected 1 to 3 positive channel counts, got {channels!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        width, side = 1, 8
        for i, c in enumerate(channels, start=1):
            # No conv bias when a norm follows: its mean subtraction would cancel it.
            layers[f"conv{i}"] = nn.Conv2d(width, c, kernel_size=3, padding=1, bias=norm is None)
            if norm is not None:
                layers[f"norm{i}"] = norm_layer(norm, c, dims=2)
            layers[f"act{i}"] = nn.ReLU()
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            width, side = c, side // 2
        layers["flatten"] = nn.Flatten()
        layers["out"] = nn.Linear(width * side * side, 10)
    return nn.Sequential(layers)


def activation_modules(model: nn.Module) -> list[nn.Module]:
    """The nonlinearity modules of ``model`` in forward order (e.g. to hook their inputs)."""
    kinds = tuple(ACTIVATIONS.values())
    return [m for m in model.modules() if isinstance(m, kinds)]
