"""What batch norm's dependence on the batch does: batch size, running statistics, placement.

The generic pieces live elsewhere: data, models, the training loop and the plots in
``bncourse.lab.data``, ``bncourse.lab.models``, ``bncourse.lab.training`` and ``bncourse.lab.plots``; the
BN utilities (finding BN layers, momentum, recalibration, freezing) in
``bncourse.nn.utils``; Santurkar et al.'s experiments in ``bncourse.lab.covariate_shift`` and
``bncourse.lab.smoothness``. This module holds what only the chapters on batch size,
placement and pitfalls need:

- :func:`batch_size_sweep`: the final accuracy of each normalization at each batch size;
- :class:`TrainEvalGap`: how far training-mode outputs are from eval-mode ones, over training;
- :func:`variance_shift`: dropout before BN makes the running variance wrong at test time;
- :func:`eval_normalized_rms`: the size of each BN layer's normalized values in eval mode
  (1 would match training; the unbiased running variance makes it about sqrt((M-1)/M));
- :func:`train_mode_predictions`, :func:`train_mode_accuracy`: a model evaluated in
  training mode, where every prediction depends on the rest of its batch;
- :func:`eval_and_no_grad`: what ``model.eval()`` and ``torch.no_grad()`` each switch,
  measured for the four combinations;
- :func:`shifted_digits`: a brightness/contrast-shifted (and optionally smaller) copy
  of the digits, for fine-tuning on new data.

Everything runs on the CPU in float32 and is deterministic given its ``seed`` arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .data import DigitsSplit
from .models import mlp
from ..nn.utils import batchnorm_modules, run_in_mode
from .recording import record_activations, record_layers
from .training import train

__all__ = [
    "batch_size_sweep",
    "TrainEvalGap",
    "variance_shift",
    "eval_normalized_rms",
    "train_mode_predictions",
    "train_mode_accuracy",
    "eval_and_no_grad",
    "shifted_digits",
]


# -- Batch size and running statistics ---------------------------------------------


def batch_size_sweep(
    data: DigitsSplit,
    norms: Iterable[str | None],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    steps: int,
    lr: float = 0.1,
    activation: str = "relu",
    hidden: Sequence[int] = (100, 100, 100),
) -> dict[str | None, np.ndarray]:
    """Final test accuracy (eval mode) of ``mlp(norm=...)`` trained at each batch size.

    Every run takes the same number of updates ``steps`` at the same learning rate, so
    a small batch sees fewer examples; the comparison that matters is between norms at
    the same batch size.

    Returns:
        norm -> array ``(len(seeds), len(batch_sizes))`` of test accuracies in [0, 1].
    """
    out: dict[str | None, np.ndarray] = {}
    for norm in norms:
        acc = np.empty((len(seeds), len(batch_sizes)))
        for i, seed in enumerate(seeds):
            for j, bs in enumerate(batch_sizes):
                model = mlp(hidden=hidden, activation=activation, norm=norm, seed=seed)
                history = train(model, data, steps=steps, batch_size=bs, lr=lr, seed=seed, eval_every=steps)
                acc[i, j] = history.final_accuracy
        out[norm] = acc
    return out


class TrainEvalGap:
    """An ``on_step`` callback: how far train-mode outputs are from eval-mode outputs.

    Every ``every`` steps, the fixed ``probe`` batch goes through the model twice:
    in training mode (BN normalizes with the probe's own statistics; the running
    statistics are restored afterwards) and in eval mode (BN uses its running
    statistics). It records the relative difference of the logits,
    ``||z_train - z_eval|| / ||z_train||``, and the share of probe examples whose
    predicted class differs. Early in training, or with a running average that reacts
    slowly (small ``momentum``), the running statistics lag behind the weights and the
    two modes disagree.

    Attributes:
        steps, relative_difference, disagreement: lists, one entry per record.
    """

    def __init__(self, probe: torch.Tensor, every: int = 5) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"expected every to be a positive int, got {every!r}")
        if not isinstance(probe, torch.Tensor) or len(probe) < 2:
            raise ValueError("expected a probe tensor with at least 2 rows")
        self.probe, self.every = probe, every
        self.steps: list[int] = []
        self.relative_difference: list[float] = []
        self.disagreement: list[float] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        with torch.no_grad():
            with run_in_mode(model, train_mode=True):  # restores the running statistics
                z_train = model(self.probe)
            with run_in_mode(model, train_mode=False):
                z_eval = model(self.probe)
        self.steps.append(step)
        self.relative_difference.append(((z_train - z_eval).norm() / z_train.norm()).item())
        self.disagreement.append((z_train.argmax(1) != z_eval.argmax(1)).float().mean().item())


# -- Placement and pitfalls --------------------------------------------------------


@torch.no_grad()
def variance_shift(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per BN layer, how the running variance compares with the variance at test time.

    For each batch-norm layer, take its input when ``model`` runs on ``x`` in eval mode
    (dropout off), its per-channel variance ``v_test``, and return the median over
    channels of ``running_var / v_test``. A ratio of 1 means the layer normalizes test
    inputs as it did training inputs. Dropout before a BN layer makes the training-time
    variance larger than the test-time one (Li et al., 2019), so the ratio exceeds 1
    and test activations come out shrunk: the "variance shift".

    Args:
        x: inputs ``(N, ...)``, N >= 2 (e.g. the test set).

    Returns:
        float64 array ``(number of BN layers,)``.
    """
    ratios = []
    for bn in batchnorm_modules(model, required=True):
        a = record_activations(model, bn, x, train_mode=False, what="input")
        dims = (0,) + tuple(range(2, a.dim()))
        ratios.append(float(torch.median(bn.running_var / a.var(dim=dims))))
    return np.asarray(ratios)


@torch.no_grad()
def eval_normalized_rms(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per BN layer, the root mean square of its normalized values in eval mode.

    For each BN layer with input ``z`` (recorded in eval mode on ``x``), the normalized
    value is ``(z - running_mean) / sqrt(running_var + eps)``; its root mean square over
    ``x`` and the channels is returned. In training mode it is ``sqrt(var / (var + eps))``,
    just under 1, by construction; in eval mode it is smaller when the running variance
    is larger than the batch variances the layer trained with, e.g. by the factor
    ``M / (M - 1)`` of the unbiased running variance at batch size ``M``, and the shrink
    compounds from layer to layer. The model is left as it was.

    Args:
        model: a model with BN layers over ``(N, C)`` or ``(N, C, ...)`` inputs.
        x: inputs ``(N, ...)``.

    Returns:
        ``(L,)`` float64, one value per BN layer in forward order.
    """
    layers = batchnorm_modules(model, required=True)
    inputs = record_layers(model, x, {str(i): bn for i, bn in enumerate(layers)})
    out = []
    for bn, z in zip(layers, inputs.values()):
        view = (1, -1) + (1,) * (z.dim() - 2)
        x_hat = (z - bn.running_mean.view(view)) / torch.sqrt(bn.running_var.view(view) + bn.eps)
        out.append(float(torch.sqrt((x_hat.double() ** 2).mean())))
    return np.asarray(out)


def train_mode_predictions(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int,
    *,
    order: torch.Tensor | None = None,
    seed: int = 0,
    keep_running_stats: bool = True,
) -> torch.Tensor:
    """Predicted classes when the model is (wrongly) run in training mode, batch by batch.

    In training mode BN normalizes each batch with that batch's own statistics, so an
    example's prediction depends on which other examples share its batch.

    Args:
        x: inputs ``(N, ...)``.
        batch_size: rows per batch, >= 2 (a batch of 1 cannot be batch-normalized).
        order: a permutation of ``range(N)``; consecutive runs of ``batch_size`` of its
            entries form the batches. None: a random permutation drawn with ``seed``.
        keep_running_stats: if True (default), every buffer (BN's running statistics)
            is restored afterwards, so the measurement leaves no trace; if False, they
            keep the updates the training-mode passes made, as in a buggy evaluation loop.

    Returns:
        int64 tensor ``(N,)`` of predicted classes in the original order of ``x``; -1 for
        the examples of a final batch of one, which are skipped.
    """
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"expected batch_size an int >= 2, got {batch_size!r}")
    n = len(x)
    if order is None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    elif sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"expected order to be a permutation of range({n})")
    pred = torch.full((n,), -1, dtype=torch.int64)
    with torch.no_grad(), run_in_mode(model, train_mode=True, restore_buffers=keep_running_stats):
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                break
            pred[idx] = model(x[idx]).argmax(1)
    return pred


def train_mode_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    by_class: bool = False,
    seed: int = 0,
    keep_running_stats: bool = True,
) -> float:
    """Accuracy of :func:`train_mode_predictions` (the model evaluated in training mode).

    Args:
        x, y: inputs ``(N, ...)`` and labels ``(N,)``.
        batch_size: rows per batch, >= 2.
        by_class: if True, batches are formed from examples sorted by label (each batch
            holds mostly one digit: a skewed batch); otherwise shuffled with ``seed``.
        keep_running_stats: see :func:`train_mode_predictions`.

    Returns:
        accuracy in [0, 1] over the examples evaluated (a final batch of one is skipped).
    """
    order = torch.argsort(y, stable=True) if by_class else None
    pred = train_mode_predictions(model, x, batch_size, order=order, seed=seed,
                                  keep_running_stats=keep_running_stats)
    done = pred >= 0
    return (pred[done] == y[done]).float().mean().item()


def eval_and_no_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[tuple[str, str], dict[str, float | bool]]:
    """Run ``model`` on ``(x, y)`` in the four combinations of mode and gradient tracking.

    ``model.eval()`` / ``model.train()`` switch what the layers compute (BN: running or
    batch statistics, and whether the running statistics are updated; dropout: off or
    on); ``torch.no_grad()`` switches only whether autograd records the graph. For each
    combination, on a deep copy of ``model`` (so the model is left untouched and every
    combination starts from the same state), two forward passes of ``x`` measure:

    - ``"accuracy"``: accuracy of the first pass's predictions on ``y``;
    - ``"repeatable"``: the two passes give the same output (dropout off);
    - ``"stats_updated"``: the forward passes changed a BN running statistic;
    - ``"graph"``: the output has a ``grad_fn`` (a backward pass is possible, and the
      tensors it needs are kept in memory).

    Args:
        model: a classifier with BN (and possibly dropout) layers; x: ``(N, ...)``, N >= 2;
            y: labels ``(N,)``.

    Returns:
        ``{(mode, grad): measurements}`` with mode ``"train"``/``"eval"`` and grad
        ``"grad"``/``"no_grad"``.
    """
    batchnorm_modules(model, required=True)
    if len(x) < 2 or len(x) != len(y):
        raise ValueError(f"expected x and y of the same length >= 2, got {len(x)} and {len(y)}")
    out: dict[tuple[str, str], dict[str, float | bool]] = {}
    for mode in ("train", "eval"):
        for grad in ("grad", "no_grad"):
            m = copy.deepcopy(model).train(mode == "train")
            before = [b.clone() for b in m.buffers()]
            with torch.set_grad_enabled(grad == "grad"):
                first, second = m(x), m(x)
            out[(mode, grad)] = {
                "accuracy": (first.argmax(1) == y).float().mean().item(),
                "repeatable": bool(torch.equal(first, second)),
                "stats_updated": any(not torch.equal(a, b) for a, b in zip(before, m.buffers())),
                "graph": first.grad_fn is not None,
            }
    return out


def shifted_digits(
    data: DigitsSplit, scale: float = 1.0, offset: float = 0.0, n_train: int | None = None
) -> DigitsSplit:
    """A copy of ``data`` with inputs ``scale * x + offset`` (a contrast and brightness
    change of the standardized pixels), and optionally only the first ``n_train``
    training examples (the split is already shuffled, so that is a random subset).
    """
    if n_train is not None and not (isinstance(n_train, int) and 1 <= n_train <= len(data.x_train)):
        raise ValueError(f"expected n_train an int in [1, {len(data.x_train)}] or None, got {n_train!r}")
    k = len(data.x_train) if n_train is None else n_train
    return replace(
        data,
        x_train=data.x_train[:k] * scale + offset,
        y_train=data.y_train[:k].clone(),
        x_test=data.x_test * scale + offset,
        y_test=data.y_test.clone(),
    )
