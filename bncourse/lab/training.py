"""One training loop for every experiment chapter, deterministic given a seed.

``train`` runs mini-batch SGD (or Adam) with cross-entropy on a ``DigitsSplit`` and
returns a ``History`` of the training loss and the test loss/accuracy, measured every
``eval_every`` updates on the full test set. A loss that turns NaN or infinite stops
the run and sets ``History.diverged``: a learning-rate sweep then shows the divergence
instead of crashing. ``on_step(step, model)`` lets a chapter record anything it likes
(activation percentiles, gradient norms) while the model trains; ``train_seeds``
repeats a run over seeds and measures the trained models on both sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import DigitsSplit
from ..nn.utils import run_in_mode

__all__ = ["History", "evaluate", "train", "train_seeds", "weight_grad_norms"]


@dataclass
class History:
    """What ``train`` measured; the lists are aligned, one entry per evaluation.

    Attributes:
        step: number of parameter updates done when the entry was measured (0 first).
        train_loss: mean mini-batch cross-entropy over the updates since the previous
            entry (for step 0: the loss of the first mini-batch, before any update).
        test_loss: cross-entropy on the whole test set (model in eval mode).
        test_accuracy: accuracy in [0, 1] on the whole test set (model in eval mode).
        diverged: True if a mini-batch loss became NaN/inf; training stopped there.
    """

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    diverged: bool = False

    @property
    def final_accuracy(self) -> float:
        """Test accuracy at the last evaluation (a diverged run keeps its last measure)."""
        return self.test_accuracy[-1]

    def steps_to(self, target: float, metric: str = "test_accuracy") -> int | None:
        """The first measured step at which ``metric`` >= ``target``; None if never reached.

        The answer is only as fine as ``eval_every``: the true crossing lies between the
        previous measurement and the returned step.
        """
        values = getattr(self, metric)
        for s, v in zip(self.step, values):
            if v >= target:
                return s
        return None


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy of ``model`` on (x, y) in one full-batch pass.

    The model is put in eval mode (BN uses its running statistics, dropout is off) and
    its previous mode is restored afterwards. Rows whose logits are not finite count
    as wrong (a diverged net classifies nothing), so accuracy is always a number.

    Args:
        x: inputs, shape (N, ...) as the model expects.
        y: int64 labels, shape (N,).

    Returns:
        (loss, accuracy): the mean cross-entropy (may be nan/inf) and accuracy in [0, 1].
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"expected x and y with the same non-zero length, got {len(x)} and {len(y)}")
    # Eval mode leaves the buffers alone: restore only the mode.
    with run_in_mode(model, train_mode=False, restore_buffers=False):
        logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    finite = torch.isfinite(logits).all(dim=1)
    correct = (logits.argmax(dim=1) == y) & finite
    return loss, correct.float().mean().item()


def weight_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The L2 norm of the cross-entropy gradient of each Linear/Conv weight, on one batch.

    The forward pass runs in training mode (BN normalizes with this batch's statistics,
    as in a training step); the model's mode, buffers and ``.grad`` fields are left as
    they were, so this can be called from ``on_step``.

    Args:
        x: a batch of inputs, shape (N, ...); y: int64 labels, shape (N,).

    Returns:
        Layer name -> gradient norm, in forward order (e.g. {"fc1": ..., "out": ...}).
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError(f"expected a model with Linear or Conv2d layers, got {type(model).__name__} without any")
    weights = [m.weight for _, m in layers]
    with run_in_mode(model, train_mode=True):
        loss = F.cross_entropy(model(x), y)
        # autograd.grad returns the gradients without accumulating into .grad.
        grads = torch.autograd.grad(loss, weights)
    return {name: g.norm().item() for (name, _), g in zip(layers, grads)}


def _make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"expected optimizer 'sgd' or 'adam', got {name!r}")


def train(
    model: nn.Module,
    data: DigitsSplit,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 60,
    lr: float = 0.1,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    eval_every: int = 20,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> History:
    """Train ``model`` in place with cross-entropy on ``data``; return what was measured.

    Mini-batches are drawn without replacement from a fresh permutation each epoch
    (shuffled by a ``torch.Generator`` seeded with ``seed``); the last incomplete batch
    of an epoch is dropped so every batch has ``batch_size`` rows (BN's statistics are
    then always over the same number of examples). Dropout draws from the global RNG,
    which is seeded with ``seed`` inside a forked RNG state, so the same call gives the
    same result and the caller's RNG is untouched.

    Args:
        model: maps ``data.x_train[i:j]`` (shape (B, ...)) to logits (B, 10).
        data: a ``DigitsSplit``; x with the shape the model expects.
        epochs, steps: the budget, exactly one of them (an epoch is
            ``len(x_train) // batch_size`` updates).
        batch_size: rows per mini-batch (the paper used 60).
        lr, momentum, weight_decay: optimizer settings; ``optimizer`` is "sgd" or "adam".
        eval_every: measure the test set every this many updates (and at step 0 and at
            the last step). Evaluation is a full-batch pass, cheap on the digits.
        on_step: called as ``on_step(step, model)`` with step=0 before the first update
            and after every update with the number of updates done; the model is in
            training mode and the callback must not change it (see
            ``bncourse.lab.recording.record_activations``, which restores what it touches).

    Returns:
        A ``History``; ``diverged`` is set if a loss became NaN/inf (training stops,
        and that step is recorded with the non-finite loss).
    """
    if (epochs is None) == (steps is None):
        raise ValueError(f"expected exactly one of epochs or steps, got epochs={epochs!r}, steps={steps!r}")
    n = len(data.x_train)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"expected batch_size an int in [1, {n}], got {batch_size!r}")
    per_epoch = n // batch_size
    total = per_epoch * epochs if epochs is not None else steps
    if not isinstance(total, int) or total < 1:
        raise ValueError(f"expected a positive int number of epochs or steps, got epochs={epochs!r}, steps={steps!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"expected eval_every a positive int, got {eval_every!r}")
    if not lr > 0:
        raise ValueError(f"expected lr > 0, got {lr!r}")
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)

    history = History()
    gen = torch.Generator().manual_seed(seed)

    def measure(step: int, train_loss: float) -> None:
        loss, acc = evaluate(model, data.x_test, data.y_test)
        history.step.append(step)
        history.train_loss.append(train_loss)
        history.test_loss.append(loss)
        history.test_accuracy.append(acc)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        measure(0, math.nan)  # train_loss filled in by the first update below
        if on_step is not None:
            on_step(0, model)
        losses: list[float] = []
        order = torch.randperm(n, generator=gen)
        for step in range(1, total + 1):
            k = (step - 1) % per_epoch
            if k == 0 and step > 1:
                order = torch.randperm(n, generator=gen)
            idx = order[k * batch_size : (k + 1) * batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            value = loss.item()
            if step == 1:
                history.train_loss[0] = value
            if not math.isfinite(value):
                history.diverged = True
                measure(step, value)
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(value)
            if on_step is not None:
                on_step(step, model)
            if step % eval_every == 0 or step == total:
                measure(step, sum(losses) / len(losses))
                losses = []
    return history


def train_seeds(
    build: Callable[[int], nn.Module],
    data: DigitsSplit | Callable[[int], DigitsSplit],
    seeds: Iterable[int] = (0, 1, 2),
    **train_kwargs,
) -> dict[str, np.ndarray | list]:
    """Train a fresh ``build(seed)`` model for each seed and measure it on both sets.

    The seed sets both the initial weights (through ``build``) and the mini-batch order
    (``train_kwargs`` go to ``train``), so the spread over seeds shows how much a result
    depends on luck. ``data`` may be a function ``seed -> DigitsSplit``, so that the
    train/test split varies with the seed too (for claims about generalization, which
    depend on the split as much as on the initial weights). After training, every
    model's loss and accuracy are measured on the whole training set and the whole
    test set (eval mode, via ``evaluate``), which is what a train/test gap needs.

    Example:
        ``train_seeds(lambda s: mlp(norm="bn", seed=s), data, steps=300, lr=0.1)["histories"]``

    Returns:
        dict with ``"models"`` and ``"histories"`` (lists, one per seed, the models
        trained in place) and the arrays ``(len(seeds),)`` ``"train_accuracy"``,
        ``"test_accuracy"``, ``"train_loss"``, ``"test_loss"``.
    """
    if not (isinstance(data, DigitsSplit) or callable(data)):
        raise ValueError(f"expected a DigitsSplit or a function seed -> DigitsSplit, got {type(data).__name__}")
    out: dict[str, list] = {k: [] for k in ("models", "histories", "train_accuracy", "test_accuracy",
                                            "train_loss", "test_loss")}
    for seed in seeds:
        model = build(seed)
        split_data = data(seed) if callable(data) else data
        if not isinstance(split_data, DigitsSplit):
            raise ValueError(f"expected data({seed}) to return a DigitsSplit, got {type(split_data).__name__}")
        out["histories"].append(train(model, split_data, seed=seed, **train_kwargs))
        out["models"].append(model)
        for split, x, y in (("train", split_data.x_train, split_data.y_train),
                            ("test", split_data.x_test, split_data.y_test)):
            loss, acc = evaluate(model, x, y)
            out[f"{split}_loss"].append(loss)
            out[f"{split}_accuracy"].append(acc)
    return {k: (v if k in ("models", "histories") else np.asarray(v)) for k, v in out.items()}
