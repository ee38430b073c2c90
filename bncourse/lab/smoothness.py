"""Smoothness of the loss along the gradient: Santurkar et al.'s (2018) landscape probes.

Their explanation of why batch norm helps: it makes the loss and its gradient change less
along the direction training actually steps in. :func:`landscape_along_gradient` measures
that at one point; :func:`train_tracking_landscape` measures it along a training run.

Three summaries decide different questions, and are kept apart on purpose:

- the *signed* loss change ``L(w - eta g) - L(w)`` (negative: the step descends), since a
  large max-minus-min of the loss can be fast descent as well as roughness;
- the largest probed step that still descends (:func:`largest_descending_step`);
- the *effective beta-smoothness* ``||grad L(w - eta g) - g|| / (eta ||g||)``, the change
  of the gradient divided by the distance moved (Santurkar et al.'s measure, a local
  Lipschitz constant of the gradient; :func:`effective_beta`).

Everything runs on the CPU in float32 and is deterministic given its ``seed`` arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import DigitsSplit
from .training import History, train

__all__ = [
    "Landscape",
    "landscape_along_gradient",
    "largest_descending_step",
    "effective_beta",
    "train_tracking_landscape",
]


class Landscape(NamedTuple):
    """What :func:`landscape_along_gradient` measured at one point ``w``.

    ``losses`` and ``grad_changes`` have shape ``(K,)``, one entry per step size;
    ``loss0`` is ``L(w)`` and ``grad_norm`` is ``||g||`` (over all parameters).
    """

    losses: np.ndarray
    grad_changes: np.ndarray
    loss0: float
    grad_norm: float


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), [g.detach() for g in grads]


def landscape_along_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, step_sizes: Sequence[float]
) -> Landscape:
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
        a :class:`Landscape` ``(losses, grad_changes, loss0, grad_norm)``; the arrays are
        float64 of shape ``(K,)``.
    """
    etas = np.asarray(step_sizes, dtype=float)
    if etas.ndim != 1 or etas.size == 0 or np.any(etas <= 0):
        raise ValueError(f"expected a non-empty 1-D sequence of positive step sizes, got {step_sizes!r}")
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"expected x and y of the same length >= 2, got {len(x)} and {len(y)}")
    probe = copy.deepcopy(model).train()
    params = [p for p in probe.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    loss0, g0 = _loss_and_grad(probe, x, y)
    grad_norm = torch.sqrt(sum((g**2).sum() for g in g0)).item()
    losses, changes = [], []
    for eta in etas:
        with torch.no_grad():
            for p, p0, g in zip(params, start, g0):
                p.copy_(p0 - eta * g)
        loss, g = _loss_and_grad(probe, x, y)
        losses.append(loss)
        changes.append(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(g, g0))).item())
    return Landscape(np.asarray(losses), np.asarray(changes), float(loss0), float(grad_norm))


def largest_descending_step(losses: np.ndarray, loss0: np.ndarray | float, step_sizes: Sequence[float]) -> np.ndarray:
    """The largest probed ``eta`` with ``L(w - eta g) < L(w)``; 0 where no step descends.

    Args:
        losses: ``(..., K)`` losses at the step sizes; loss0: ``(...)`` the loss at ``w``.
        step_sizes: ``(K,)``, increasing.

    Returns:
        ``(...)`` float64.
    """
    etas = np.asarray(step_sizes, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if losses.shape[-1:] != etas.shape or np.any(np.diff(etas) <= 0):
        raise ValueError(f"expected losses (..., {etas.size}) and increasing step sizes, got {losses.shape}, {etas}")
    descends = losses < np.asarray(loss0, dtype=float)[..., None]
    return np.where(descends, etas, 0.0).max(axis=-1)


def effective_beta(grad_changes: np.ndarray, grad_norm: np.ndarray | float, step_sizes: Sequence[float]) -> np.ndarray:
    """Effective beta-smoothness: ``max_k ||grad L(w - eta_k g) - g|| / (eta_k ||g||)``.

    The gradient change divided by the distance moved, ``eta_k ||g||``: a Lipschitz
    constant of the gradient measured along the step (Santurkar et al., 2018).

    Args:
        grad_changes: ``(..., K)``; grad_norm: ``(...)``, > 0; step_sizes: ``(K,)``.

    Returns:
        ``(...)`` float64.
    """
    etas = np.asarray(step_sizes, dtype=float)
    changes = np.asarray(grad_changes, dtype=float)
    if changes.shape[-1:] != etas.shape:
        raise ValueError(f"expected grad_changes (..., {etas.size}), got {changes.shape}")
    distance = etas * np.asarray(grad_norm, dtype=float)[..., None]
    return (changes / distance).max(axis=-1)


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
        dict with ``"step"`` ``(T,)``; the raw measures ``"losses"`` and
        ``"grad_changes"`` ``(T, K)``, ``"loss0"`` and ``"grad_norm"`` ``(T,)``; the
        summaries ``"loss_change"`` ``(T, K)`` (signed, ``L(w - eta g) - L(w)``),
        ``"descent_step"`` ``(T,)`` (:func:`largest_descending_step`), ``"beta"`` ``(T,)``
        (:func:`effective_beta`), ``"loss_range"`` ``(T,)`` (max - min of the loss over
        the step sizes), ``"grad_change"`` ``(T,)`` (max gradient change, not divided by
        the distance); and ``"history"`` (the training ``History``).
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"expected every to be a positive int, got {every!r}")
    gen = torch.Generator().manual_seed(seed + 10_000)
    rows: dict[str, list] = {"step": [], "losses": [], "grad_changes": [], "loss0": [], "grad_norm": []}

    def probe(step: int, m: nn.Module) -> None:
        if step % every:
            return
        idx = torch.randperm(len(data.x_train), generator=gen)[:batch_size]
        point = landscape_along_gradient(m, data.x_train[idx], data.y_train[idx], step_sizes)
        rows["step"].append(step)
        rows["losses"].append(point.losses)
        rows["grad_changes"].append(point.grad_changes)
        rows["loss0"].append(point.loss0)
        rows["grad_norm"].append(point.grad_norm)

    history = train(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                    eval_every=max(every, 1), on_step=probe)
    losses = np.stack(rows["losses"])
    changes = np.stack(rows["grad_changes"])
    loss0, grad_norm = np.asarray(rows["loss0"]), np.asarray(rows["grad_norm"])
    return {
        "step": np.asarray(rows["step"]),
        "loss0": loss0,
        "grad_norm": grad_norm,
        "loss_change": losses - loss0[:, None],
        "descent_step": largest_descending_step(losses, loss0, step_sizes),
        "beta": effective_beta(changes, grad_norm, step_sizes),
        "loss_range": losses.max(1) - losses.min(1),
        "grad_change": changes.max(1),
        "losses": losses,
        "grad_changes": changes,
        "history": history,
    }
