"""Deep plain networks at initialization: how gradients change from the last layer to the first.

``deep_mlp`` builds ``depth`` hidden layers of ``Linear -> [BN] -> activation`` (the course's
``mlp``) and re-initializes every Linear weight with a named scheme ("he", "xavier" or torch's
"default"). ``gradient_ratio`` measures, on one batch in training mode, the gradient norm of
the first layer's weight divided by the output layer's: about 1 when gradients
keep their size on the way down, far above 1 when they explode (Yang et al., 2019 prove that
BN makes them explode in deep plain networks), far below 1 when they vanish.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .models import mlp
from .training import weight_grad_norms

__all__ = ["INITS", "init_linear_", "deep_mlp", "gradient_ratio", "gradient_ratios"]

INITS = ("default", "he", "xavier")


def init_linear_(model: nn.Module, scheme: str) -> nn.Module:
    """Re-draw every Linear weight of ``model`` in place (biases set to 0); returns ``model``.

    "he": N(0, 2 / fan_in), which keeps the second moment of ReLU activations constant with
    depth (He et al., 2015); "xavier": N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio, 2010),
    meant for tanh; "default": leave torch's initialization (uniform, variance 1 / (3 fan_in)).
    Draws from the global RNG: seed it (``deep_mlp`` does, in a forked RNG state).
    """
    if scheme not in INITS:
        raise ValueError(f"expected init scheme in {list(INITS)}, got {scheme!r}")
    if scheme == "default":
        return model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                var = 2.0 / fan_in if scheme == "he" else 2.0 / (fan_in + fan_out)
                m.weight.normal_(0.0, math.sqrt(var))
                if m.bias is not None:
                    m.bias.zero_()
    return model


def deep_mlp(depth: int, width: int = 64, activation: str = "relu", norm: str | None = None,
             init: str = "he", seed: int = 0) -> nn.Sequential:
    """``depth`` hidden layers ``Linear -> [BN] -> activation`` of ``width`` units: (N, 64) -> (N, 10).

    Hidden Linear layers have no bias when a norm follows (BN cancels it). Weights are drawn
    with ``init`` from ``seed``; the global RNG is left untouched. Layers are named ``fc1``
    ... ``fc{depth}``, ``out``, as in ``mlp``.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"expected depth a positive int, got {depth!r}")
    model = mlp(hidden=(width,) * depth, activation=activation, norm=norm, bias=norm is None, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 10_000)  # a stream of its own, distinct from mlp's default init
        init_linear_(model, init)
    return model


def gradient_ratio(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """‖∂L/∂W_first‖ / ‖∂L/∂W_last‖ for the first and the last Linear/Conv layer of ``model``.

    One forward/backward of the cross-entropy on the batch (x: (N, 64), y: (N,)) in training
    mode; the model's mode, buffers and grads are left as they were (``weight_grad_norms``).
    The last layer is the output layer, whose input has the same scale in every network
    here (a ReLU of normalized or He-initialized units), so the ratio compares like with like.
    """
    norms = list(weight_grad_norms(model, x, y).values())
    if len(norms) < 2:
        raise ValueError(f"expected at least two Linear/Conv layers, got {len(norms)}")
    return norms[0] / norms[-1]


def gradient_ratios(build: Callable[[int, int], nn.Module], depths: Sequence[int], seeds: Sequence[int],
                    x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``gradient_ratio`` of a fresh ``build(depth, seed)`` for every seed and depth.

    Example: ``gradient_ratios(lambda d, s: deep_mlp(d, norm="bn", seed=s), [10, 30], [0, 1], x, y)``.

    Returns:
        Array of shape ``(len(seeds), len(depths))``.
    """
    return np.array([[gradient_ratio(build(d, s), x, y) for d in depths] for s in seeds])
