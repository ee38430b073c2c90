"""Smoothness of the loss along the gradient: Santurkar et al.'s (2018) landscape probes.

Their explanation of why batch norm helps: it makes the loss and its gradient change less
along the direction training actually steps in. :func:`landscape_along_gradient` measures
that at one point; :func:`train_tracking_landscape` measures it along a training run.

Everything runs on the CPU in float32 and is deterministic given its ``seed`` arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import DigitsSplit
from .training import History, train

__all__ = ["landscape_along_gradient", "train_tracking_landscape"]


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), [g.detach() for g in grads]


def landscape_along_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, step_sizes: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The loss and the gradient change at points along the gradient direction.

    With ``w`` the current parameters and ``g`` the gradient of the cross-entropy on
    the batch ``(x, y)`` at ``w``, for each step size ``eta`` it evaluates, on the same
    batch and in training mode (as an SGD step would see them):

    - ``loss[k] = L(w - eta_k * g)``,
    - ``grad_change[k] = ||grad L(w - eta_k * g) - g||`` (over all parameters).

    Santurkar et al. (2018) summarize the first as its range ``max - min`` ("how much
    the loss varies if we step further or less far") and the second as its maximum
    ("how well the gradient here predicts the gradient there").

    The model is not changed: the probing runs on a deep copy (so BN's running
    statistics and the parameters stay as they were). The model should not contain
    dropout, whose fresh masks at every evaluation would add noise to the measures.

    Args:
        model: maps ``x`` to logits ``(B, K)``.
        x: a batch ``(B, ...)``; y: labels ``(B,)`` int64.
        step_sizes: the ``eta_k``, positive, shape ``(K,)``.

    Returns:
        ``(loss, grad_change)``, two float64 arrays of shape ``(K,)``.
    """
    etas = np.asarray(step_sizes, dtype=float)
    if etas.ndim != 1 or etas.size == 0 or np.any(etas <= 0):
        raise ValueError(f"expected a non-empty 1-D sequence of positive step sizes, got {step_sizes!r}")
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"expected x and y of the same length >= 2, got {len(x)} and {len(y)}")
    probe = copy.deepcopy(model).train()
    params = [p for p in probe.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    _, g0 = _loss_and_grad(probe, x, y)
    losses, changes = [], []
    for eta in etas:
        with torch.no_grad():
            for p, p0, g in zip(params, start, g0):
                p.copy_(p0 - eta * g)
        loss, g = _loss_and_grad(probe, x, y)
        losses.append(loss)
        changes.append(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(g, g0))).item())
    return np.asarray(losses), np.asarray(changes)


def train_tracking_landscape(
    model: nn.Module,
    data: DigitsSplit,
    *,
    steps: int,
    step_sizes: Sequence[float],
    every: int = 20,
    batch_size: int = 60,
    lr: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray | History]:
    """Train with ``bncourse.lab.training.train`` and probe the landscape as it goes.

    Every ``every`` steps (from step 0), a mini-batch of ``batch_size`` training
    examples is drawn (from a generator seeded with ``seed``, separate from the
    training's) and :func:`landscape_along_gradient` is measured there.

    Returns:
        dict with ``"step"`` ``(T,)``, ``"loss_range"`` ``(T,)`` (max - min of the loss
        over the step sizes), ``"grad_change"`` ``(T,)`` (max gradient change),
        ``"losses"`` and ``"grad_changes"`` ``(T, K)`` (the raw measures) and
        ``"history"`` (the training ``History``).
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"expected every to be a positive int, got {every!r}")
    gen = torch.Generator().manual_seed(seed + 10_000)
    rows: dict[str, list] = {"step": [], "losses": [], "grad_changes": []}

    def probe(step: int, m: nn.Module) -> None:
        if step % every:
            return
        idx = torch.randperm(len(data.x_train), generator=gen)[:batch_size]
        losses, changes = landscape_along_gradient(m, data.x_train[idx], data.y_train[idx], step_sizes)
        rows["step"].append(step)
        rows["losses"].append(losses)
        rows["grad_changes"].append(changes)

    history = train(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                    eval_every=max(every, 1), on_step=probe)
    losses = np.stack(rows["losses"])
    changes = np.stack(rows["grad_changes"])
    return {
        "step": np.asarray(rows["step"]),
        "loss_range": losses.max(1) - losses.min(1),
        "grad_change": changes.max(1),
        "losses": losses,
        "grad_changes": changes,
        "history": history,
    }
