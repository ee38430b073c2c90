"""Residual networks for the digits, built from ``bncourse.nn`` layers.

``residual_mlp`` stacks fully connected residual blocks on the flat (N, 64) digits;
``small_resnet`` stacks 3x3 convolutional blocks on the (N, 1, 8, 8) images. Both choose:

- the block form: "post" activation (``relu(x + norm(W relu(norm(W x))))``, He et al., 2016a)
  or "pre" activation (``x + W relu(norm(W relu(norm(x))))``, He et al., 2016b);
- ``zero_init_gamma``: the last norm layer of each post-activation branch starts with
  gamma = 0 (Goyal et al., 2017), so every block starts as the identity map;
- the normalizer ("bn", "gn", or None) and, for the normalizer-free chapter, weight-standardized
  convolutions (``ws=True``) and SkipInit's learned scalar on each branch (``skipinit=True``).

Every builder is seeded and leaves the global RNG untouched.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .. import nn as bnn
from ..nn.residual import ResidualBlock
from ..nn.weight_standardization import WSConv2d
from .models import norm_layer

__all__ = ["BLOCKS", "residual_mlp", "small_resnet", "residual_blocks", "block_output_std"]

BLOCKS = ("post", "pre")


def _norm(kind: str | None, features: int, dims: int) -> nn.Module:
    return nn.Identity() if kind is None else norm_layer(kind, features, dims=dims)


def _branch(layer, norm, block: str, zero_init_gamma: bool) -> nn.Sequential:
    """Two weight layers with norms and ReLUs in the order of ``block``; ``layer()``/``norm()`` make new ones."""
    if block == "post":
        parts = [("fc1", layer()), ("norm1", norm()), ("act1", nn.ReLU()), ("fc2", layer()), ("norm2", norm())]
    else:
        parts = [("norm1", norm()), ("act1", nn.ReLU()), ("fc1", layer()),
                 ("norm2", norm()), ("act2", nn.ReLU()), ("fc2", layer())]
    branch = nn.Sequential(OrderedDict(parts))
    if zero_init_gamma:
        last_norm = branch.norm2
        if block != "post" or getattr(last_norm, "weight", None) is None:
            raise ValueError("zero_init_gamma needs post-activation blocks with a normalizer that has a weight")
        nn.init.zeros_(last_norm.weight)
    return branch


def _check(block: str, num_blocks: int) -> None:
    if block not in BLOCKS:
        raise ValueError(f"expected block in {list(BLOCKS)}, got {block!r}")
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"expected num_blocks a positive int, got {num_blocks!r}")


def residual_mlp(num_blocks: int, width: int = 64, norm: str | None = "bn", block: str = "post",
                 zero_init_gamma: bool = False, skipinit: bool = False, seed: int = 0) -> nn.Sequential:
    """Fully connected ResNet: (N, 64) -> (N, 10), ``2 * num_blocks`` Linear layers in the blocks.

    ``stem`` (Linear 64 -> width, norm, ReLU), ``num_blocks`` residual blocks (``block1``...),
    then for pre-activation a final norm and ReLU, then ``out`` (Linear width -> 10).
    Linear layers use He initialization (torch's default for ``nn.Linear`` shrinks ReLU signals).
    """
    _check(block, num_blocks)

    def linear() -> nn.Linear:
        fc = nn.Linear(width, width, bias=norm is None)
        nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
        return fc

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers["stem"] = nn.Sequential(nn.Linear(64, width, bias=norm is None), _norm(norm, width, 1), nn.ReLU())
        nn.init.kaiming_normal_(layers["stem"][0].weight, nonlinearity="relu")
        for i in range(1, num_blocks + 1):
            branch = _branch(linear, lambda: _norm(norm, width, 1), block, zero_init_gamma)
            layers[f"block{i}"] = ResidualBlock(branch, nn.ReLU() if block == "post" else None,
                                                gain=0.0 if skipinit else None)
        if block == "pre":
            layers["final"] = nn.Sequential(_norm(norm, width, 1), nn.ReLU())
        layers["out"] = nn.Linear(width, 10)
    return nn.Sequential(layers)


def small_resnet(num_blocks: int = 3, channels: int = 16, norm: str | None = "bn", block: str = "post",
                 zero_init_gamma: bool = False, skipinit: bool = False, ws: bool = False,
                 seed: int = 0) -> nn.Sequential:
    """Convolutional ResNet for (N, 1, 8, 8) digit images -> logits (N, 10).

    ``stem``: 3x3 conv 1 -> ``channels``, norm, ReLU; ``num_blocks`` residual blocks of two 3x3
    convolutions (padding 1, 8x8 kept); [pre-activation: a final norm and ReLU]; 2x2 average
    pooling to 4x4; ``out`` (Linear channels * 16 -> 10). ``norm``: "bn" (BatchNorm2d), "gn" (GroupNorm,
    at most 8 groups) or None. ``ws``: weight-standardized convolutions (``bncourse.nn.WSConv2d``).
    """
    _check(block, num_blocks)
    conv_cls = WSConv2d if ws else nn.Conv2d

    def conv(c_in: int = channels) -> nn.Conv2d:
        layer = conv_cls(c_in, channels, kernel_size=3, padding=1, bias=norm is None)
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        return layer

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers["stem"] = nn.Sequential(conv(1), _norm(norm, channels, 2), nn.ReLU())
        for i in range(1, num_blocks + 1):
            branch = _branch(conv, lambda: _norm(norm, channels, 2), block, zero_init_gamma)
            layers[f"block{i}"] = ResidualBlock(branch, nn.ReLU() if block == "post" else None,
                                                gain=0.0 if skipinit else None)
        if block == "pre":
            layers["final"] = nn.Sequential(_norm(norm, channels, 2), nn.ReLU())
        # 2x2 average pooling, not global: the digits' classes depend on *where* strokes are.
        layers["pool"] = nn.AvgPool2d(2)
        layers["flatten"] = nn.Flatten()
        layers["out"] = nn.Linear(channels * 4 * 4, 10)
    return nn.Sequential(layers)


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The ``ResidualBlock`` modules of ``model`` in forward order."""
    return [m for m in model.modules() if isinstance(m, ResidualBlock)]


@torch.no_grad()
def block_output_std(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Standard deviation of each residual block's output on ``x`` (training-mode forward).

    ``x``: a batch the model accepts. One entry per ``ResidualBlock`` in forward order: how the
    scale of the signal carried by the identity path changes from block to block. The model's
    mode and buffers are restored.
    """
    from ..nn.utils import run_in_mode

    stds: list[float] = []
    hooks = [b.register_forward_hook(lambda m, args, out: stds.append(out.std().item())) for b in residual_blocks(model)]
    try:
        with run_in_mode(model, train_mode=True):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return stds
