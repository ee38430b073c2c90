"""Scale invariance of the weights in front of BN, and what it means for the optimizer.

If a weight ``w`` feeds a BN layer, the loss ``L(c w) = L(w)`` for every ``c > 0`` (BN divides
the scale out). Two consequences (van Laarhoven, 2017): the gradient is orthogonal to ``w`` and
scales as ``1 / c``, so an SGD step of size ``lr`` on ``w`` changes its *direction* as much as
a step of ``lr / ||w||^2`` on a unit-norm weight: the effective learning rate.

- ``scale_response``: loss and gradient norm of one layer's weight as it is scaled by ``c``.
- ``WeightRecorder``: an ``on_step`` callback of ``bncourse.lab.training.train`` recording, per
  layer and step, the weight norm and the update-to-data ratio ``||w_t - w_{t-1}|| / ||w_{t-1}||``.
- ``WeightDecay``: an ``on_step`` callback applying decoupled weight decay to a chosen set of
  parameters (e.g. the weights but not BN's gamma and beta).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..nn.utils import run_in_mode

__all__ = ["scale_response", "WeightRecorder", "WeightDecay", "norm_parameters", "weight_parameters"]


def scale_response(model: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   scales: Sequence[float]) -> dict[str, np.ndarray]:
    """Scale ``layer.weight`` by each ``c`` in ``scales``; measure the loss and that weight's gradient.

    Training-mode forward (batch statistics) of the cross-entropy on (x: (N, ...), y: (N,)).
    The weight is restored afterwards; the model's mode and buffers too.

    Returns:
        ``{"scale": (K,), "loss": (K,), "grad_norm": (K,), "cosine": (K,)}``, where ``cosine`` is
        the cosine between the weight and its gradient (0 when the gradient is orthogonal to it).
    """
    weight = layer.weight
    original = weight.detach().clone()
    out = {"scale": np.asarray(scales, dtype=float), "loss": [], "grad_norm": [], "cosine": []}
    try:
        for c in scales:
            with torch.no_grad():
                weight.copy_(c * original)
            with run_in_mode(model, train_mode=True):
                loss = F.cross_entropy(model(x), y)
                (grad,) = torch.autograd.grad(loss, [weight])
            out["loss"].append(loss.item())
            out["grad_norm"].append(grad.norm().item())
            out["cosine"].append(F.cosine_similarity(grad.flatten(), weight.detach().flatten(), dim=0).item())
    finally:
        with torch.no_grad():
            weight.copy_(original)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``weight`` of every Linear/Conv2d layer of ``model`` (not the norms' gamma/beta)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the model that are not Linear/Conv2d weights: gamma, beta and biases."""
    weights = {id(p) for p in weight_parameters(model)}
    return [p for p in model.parameters() if id(p) not in weights]


class WeightRecorder:
    """``on_step`` callback: per named layer, the weight norm and the update-to-data ratio.

    Args:
        layers: name -> module with a ``weight`` (e.g. ``{"fc1": model.fc1}``).

    After training: ``steps`` (T,), ``norm[name]`` (T,) the Frobenius norm of the weight after
    each step (the first entry at step 0), and ``update_ratio[name]`` (T - 1,) the norm of each
    step's change divided by the norm before it. Caches one copy of every recorded weight.
    """

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        if not layers:
            raise ValueError("expected at least one layer to record, got none")
        self.layers = dict(layers)
        self.steps: list[int] = []
        self.norm: dict[str, list[float]] = {k: [] for k in self.layers}
        self.update_ratio: dict[str, list[float]] = {k: [] for k in self.layers}
        self._previous: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, step: int, model: nn.Module) -> None:
        self.steps.append(step)
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            if name in self._previous:
                prev = self._previous[name]
                self.update_ratio[name].append(((w - prev).norm() / prev.norm()).item())
            self.norm[name].append(w.norm().item())
            self._previous[name] = w.clone()


class WeightDecay:
    """``on_step`` callback: multiply each of ``params`` by ``1 - rate`` after every update.

    With plain SGD at learning rate ``lr``, ``rate = lr * weight_decay`` is the decay that
    ``torch.optim.SGD(weight_decay=...)`` applies, up to a term of order ``lr**2``; doing it in a
    callback lets a chapter choose *which* parameters decay (decoupled weight decay).
    """

    def __init__(self, params: Iterable[nn.Parameter], rate: float) -> None:
        self.params = list(params)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"expected a decay rate in [0, 1), got {rate!r}")
        self.rate = rate

    @torch.no_grad()
    def __call__(self, step: int, model: nn.Module) -> None:
        if step > 0:
            for p in self.params:
                p.mul_(1.0 - self.rate)
