"""Experiments behind the chapters that test what batch normalization really does.

The generic pieces (data, models, the training loop, curves) live in
``bncourse.data``, ``bncourse.models``, ``bncourse.training`` and ``bncourse.plots``.
This module holds what only these chapters need:

- *Internal covariate shift*: :class:`DistributionNoise` and :func:`add_noise_after_bn`
  (Santurkar et al.'s "noisy BN"), :class:`InputTracker` to watch the distribution a
  layer sees during training, :func:`distribution_drift` to summarize it.
- *Smoothness*: :func:`landscape_along_gradient` and :func:`train_tracking_landscape`
  measure how much the loss and the gradient change along the gradient direction.
- *Batch size and running statistics*: :func:`batch_size_sweep`,
  :func:`recalibrate_bn`, :func:`set_bn_momentum`, :class:`TrainEvalGap`.
- *Placement and pitfalls*: :func:`variance_shift`, :func:`train_mode_predictions`,
  :func:`train_mode_accuracy`, :func:`freeze_bn_statistics`, :func:`shifted_digits`, :func:`train_runs`,
  :func:`plot_normalization_axes`;
  figures: :func:`plot_band`, :func:`plot_grouped_bars`.

Everything runs on the CPU in float32 and is deterministic given its ``seed`` arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import DigitsSplit
from .models import mlp
from .training import History, evaluate, record_activations, train

__all__ = [
    "is_batchnorm",
    "batchnorm_modules",
    "DistributionNoise",
    "add_noise_after_bn",
    "InputTracker",
    "distribution_drift",
    "landscape_along_gradient",
    "train_tracking_landscape",
    "batch_size_sweep",
    "set_bn_momentum",
    "recalibrate_bn",
    "TrainEvalGap",
    "variance_shift",
    "train_mode_predictions",
    "train_mode_accuracy",
    "freeze_bn_statistics",
    "shifted_digits",
    "train_runs",
    "plot_normalization_axes",
    "plot_band",
    "plot_grouped_bars",
]

_BN_NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")


# -- Finding batch-norm layers ------------------------------------------------


def is_batchnorm(module: nn.Module) -> bool:
    """True for torch's ``BatchNorm1d/2d/3d`` and the course's ``bncourse.nn`` ones.

    The course's layers deliberately do not subclass torch's private ``_BatchNorm``
    (its forward would call torch's kernel), so they are recognized by class name.
    """
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module).__name__ in _BN_NAMES


def batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` in forward (registration) order."""
    return [m for m in model.modules() if is_batchnorm(m)]


def _require_batchnorm(model: nn.Module) -> list[nn.Module]:
    layers = batchnorm_modules(model)
    if not layers:
        raise ValueError(f"expected a model with batch-norm layers, got {type(model).__name__} with none")
    return layers


# -- "Noisy BN": batch norm followed by a distribution shift that changes every step --


class DistributionNoise(nn.Module):
    """Shift and rescale every unit by a random amount drawn afresh at each training step.

    In training mode, each forward call draws, per channel ``c``, a scale
    ``s_c ~ U(scale_range)`` and a shift ``m_c ~ U(-max_shift, max_shift)`` and returns
    ``s * x + m`` (broadcast over the batch and any spatial axes). Placed right after a
    batch-norm layer, it undoes what BN is said to guarantee: the next layer's input no
    longer has a stable mean and variance; they jump at every step, by an amount the
    next layer cannot predict. This is the "noisy BN" of Santurkar et al. (2018).

    In eval mode it is the identity (the expected scale is taken to be about 1 and the
    expected shift is 0), so test accuracy measures what the training found.

    Args:
        num_features: number of channels ``C`` on axis 1.
        max_shift: half-width of the uniform distribution of the shifts, >= 0.
        scale_range: ``(low, high)`` with ``0 < low <= high``.
        seed: seeds this layer's own generator, so the noise does not consume (or
            depend on) the global random state.

    Attributes:
        last_scale, last_shift: the ``(C,)`` draws of the latest training forward
            (None before the first), kept so that a test or a chapter can inspect them.
    """

    def __init__(
        self,
        num_features: int,
        max_shift: float = 1.0,
        scale_range: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"expected num_features to be a positive int, got {num_features!r}")
        if not max_shift >= 0:
            raise ValueError(f"expected max_shift >= 0, got {max_shift!r}")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"expected scale_range (low, high) with 0 < low <= high, got {scale_range!r}")
        self.num_features = num_features
        self.max_shift = float(max_shift)
        self.scale_range = (float(low), float(high))
        self.generator = torch.Generator().manual_seed(seed)
        self.last_scale: torch.Tensor | None = None
        self.last_shift: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, C, ...)``; returns the same shape."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input of shape (N, {self.num_features}, ...), got {tuple(x.shape)}"
            )
        if not self.training:
            return x
        low, high = self.scale_range
        c = self.num_features
        scale = low + (high - low) * torch.rand(c, generator=self.generator)
        shift = self.max_shift * (2 * torch.rand(c, generator=self.generator) - 1)
        self.last_scale, self.last_shift = scale, shift
        view = (1, c) + (1,) * (x.dim() - 2)
        return x * scale.to(x.dtype).view(view) + shift.to(x.dtype).view(view)

    def extra_repr(self) -> str:
        return f"{self.num_features}, max_shift={self.max_shift}, scale_range={self.scale_range}"


def add_noise_after_bn(
    model: nn.Module,
    max_shift: float = 1.0,
    scale_range: tuple[float, float] = (0.5, 2.0),
    seed: int = 0,
) -> list[DistributionNoise]:
    """Put a :class:`DistributionNoise` right after every batch-norm layer, in place.

    Each BN layer ``bn`` is replaced by ``nn.Sequential(bn, noise)`` at the same place
    in its parent, so the model's forward is unchanged except for the noise. The i-th
    noise layer is seeded with ``seed + i``.

    Returns:
        The inserted noise layers, in forward order.

    Raises:
        ValueError: the model has no batch-norm layer.
    """
    _require_batchnorm(model)
    # Collect (parent, attribute name, bn) first: replacing while iterating would
    # revisit the new Sequential containers.
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if is_batchnorm(child)
    ]
    noises = []
    for i, (parent, name, bn) in enumerate(targets):
        noise = DistributionNoise(bn.num_features, max_shift, scale_range, seed=seed + i)
        setattr(parent, name, nn.Sequential(bn, noise))
        noises.append(noise)
    return noises


# -- Watching the distribution a layer sees --------------------------------------


class InputTracker:
    """An ``on_step`` callback for ``bncourse.training.train``: records a layer's input.

    Every ``every`` steps it runs the fixed ``probe`` batch through the model in
    training mode (as the layer sees data during training: BN with batch statistics,
    noise layers drawing noise, which advances their generators), via
    ``bncourse.training.record_activations``, which restores BN's running statistics
    afterwards. It keeps, for the watched module's
    input ``a`` of shape ``(P, C)``:

    - ``means``: per-unit mean over the probe, one ``(C,)`` row per record;
    - ``stds``: per-unit standard deviation, likewise;
    - ``percentiles``: the 15th, 50th and 85th percentiles of unit ``unit`` (what the
      paper's Figure 2 draws), one ``(3,)`` row per record.

    Args:
        module: a submodule of the trained model (e.g. its 3rd activation: its input is
            the distribution that nonlinearity sees).
        probe: inputs ``(P, ...)``, fixed, so that changes come from the weights.
        every: record at steps divisible by this (including step 0).
        unit: the unit whose percentiles are kept.
    """

    def __init__(self, module: nn.Module, probe: torch.Tensor, every: int = 10, unit: int = 0) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"expected every to be a positive int, got {every!r}")
        if not isinstance(probe, torch.Tensor) or probe.dim() < 2 or len(probe) < 2:
            raise ValueError(f"expected a probe tensor (P, ...) with P >= 2, got {probe!r:.60}")
        self.module, self.probe, self.every, self.unit = module, probe, every, unit
        self.steps: list[int] = []
        self._means: list[np.ndarray] = []
        self._stds: list[np.ndarray] = []
        self._percentiles: list[np.ndarray] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        a = record_activations(model, self.module, self.probe, train_mode=True, what="input")
        a = a.reshape(len(a), -1).double()
        self.steps.append(step)
        self._means.append(a.mean(0).numpy())
        self._stds.append(a.std(0).numpy())
        self._percentiles.append(np.percentile(a[:, self.unit].numpy(), [15, 50, 85]))

    @property
    def means(self) -> np.ndarray:
        """``(T, C)`` per-unit means, one row per record."""
        return np.stack(self._means)

    @property
    def stds(self) -> np.ndarray:
        """``(T, C)`` per-unit standard deviations."""
        return np.stack(self._stds)

    @property
    def percentiles(self) -> np.ndarray:
        """``(T, 3)``: 15th, 50th, 85th percentile of the tracked unit."""
        return np.stack(self._percentiles)


def distribution_drift(means: np.ndarray, stds: np.ndarray) -> float:
    """How much a layer's input distribution moves between consecutive records.

    For each unit and each pair of consecutive records, take the change of its mean
    plus the change of its standard deviation, in absolute value; average over units
    and records. It is in the units of the activation, so it compares models only when
    their layers' inputs have comparable scales (after BN, both have std about 1).

    Args:
        means, stds: ``(T, C)`` arrays, e.g. ``InputTracker.means`` / ``.stds``, T >= 2.

    Returns:
        A float >= 0.
    """
    means, stds = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    if means.ndim != 2 or means.shape != stds.shape or len(means) < 2:
        raise ValueError(
            f"expected means and stds of the same shape (T, C) with T >= 2, got {means.shape} and {stds.shape}"
        )
    return float(np.mean(np.abs(np.diff(means, axis=0)) + np.abs(np.diff(stds, axis=0))))


# -- Smoothness of the loss along the gradient ------------------------------------


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
    """Train with ``bncourse.training.train`` and probe the landscape as it goes.

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


# -- Batch size, running statistics ------------------------------------------------


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


def set_bn_momentum(model: nn.Module, momentum: float | None) -> int:
    """Set ``momentum`` of every batch-norm layer (PyTorch's convention: the weight of
    the *new* batch statistic in the running average; None = cumulative average).

    Returns the number of layers changed.
    """
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"expected momentum in [0, 1] or None, got {momentum!r}")
    layers = _require_batchnorm(model)
    for bn in layers:
        bn.momentum = momentum
    return len(layers)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BN layer's running statistics from the data ``x``, in place.

    The recipe: reset the running statistics, switch ``momentum`` to None (so they
    become the plain average over the batches that follow instead of an exponential
    average dominated by the last few), run ``x`` through the model in training mode in
    batches of ``batch_size`` without gradients, then restore each layer's momentum and
    the model's train/eval mode. Only the BN buffers change; the weights do not.

    With equal batches the running mean is then exactly the mean over ``x`` of the
    layer's input, and the running variance the average of the batches' unbiased
    variances (close to the variance over ``x`` when batches are large).

    Args:
        model: a model with batch-norm layers (torch's or ``bncourse.nn``'s).
        x: inputs ``(N, ...)``, e.g. the training set; the last batch is dropped if
            it is smaller than ``batch_size`` (unless it is the only one), so every
            batch weighs the same.
        batch_size: rows per forward pass, >= 2.

    Returns:
        ``model``, for chaining.
    """
    layers = _require_batchnorm(model)
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"expected batch_size an int >= 2, got {batch_size!r}")
    if len(x) < 2:
        raise ValueError(f"expected at least 2 inputs to estimate statistics from, got {len(x)}")
    was_training = model.training
    momenta = [bn.momentum for bn in layers]
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        n_full = max(len(x) // batch_size, 1)
        for k in range(n_full):
            model(x[k * batch_size : (k + 1) * batch_size])
    finally:
        for bn, m in zip(layers, momenta):
            bn.momentum = m
        model.train(was_training)
    return model


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
        z_train = record_activations(model, model, self.probe, train_mode=True, what="output")
        z_eval = record_activations(model, model, self.probe, train_mode=False, what="output")
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
    for bn in _require_batchnorm(model):
        a = record_activations(model, bn, x, train_mode=False, what="input")
        dims = (0,) + tuple(range(2, a.dim()))
        ratios.append(float(torch.median(bn.running_var / a.var(dim=dims))))
    return np.asarray(ratios)


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
    saved = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    pred = torch.full((n,), -1, dtype=torch.int64)
    try:
        model.train()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2:
                    break
                pred[idx] = model(x[idx]).argmax(1)
    finally:
        model.train(was_training)
        if keep_running_stats:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(saved[name])
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


def freeze_bn_statistics(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Make every BN layer run in eval mode even while the model trains.

    A forward pre-hook sets the layer's ``training`` flag to False just before each
    call, whatever ``model.train()`` did: the layer then normalizes with its running
    statistics and never updates them, while its ``weight`` and ``bias`` (and the
    other layers) keep training. This is what "freezing BN" means when fine-tuning
    (Keras does it for a ``BatchNormalization`` layer with ``trainable = False``,
    which also freezes its weight and bias).

    Returns:
        The hook handles; call ``h.remove()`` on each to undo.
    """

    def force_eval(module: nn.Module, _inputs: tuple) -> None:
        module.training = False

    return [bn.register_forward_pre_hook(force_eval) for bn in _require_batchnorm(model)]


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


def train_runs(
    build: Callable[[int], nn.Module],
    data: DigitsSplit | Callable[[int], DigitsSplit],
    seeds: Sequence[int],
    **train_kwargs,
) -> dict[str, np.ndarray | list]:
    """Train a fresh ``build(seed)`` for each seed and measure it on both sets.

    Like ``bncourse.training.train_seeds`` (``train_kwargs`` go to ``train``), but it
    also keeps the trained models and measures the final loss and accuracy on the
    whole training set as well as the test set (eval mode, via ``evaluate``), which is
    what a train/test gap needs. ``data`` may be a function ``seed -> DigitsSplit``, so
    that the train/test split varies with the seed too (for claims about
    generalization, which depend on the split as much as on the initial weights).

    Returns:
        dict with ``"models"`` and ``"histories"`` (lists, one per seed) and the arrays
        ``(len(seeds),)`` ``"train_accuracy"``, ``"test_accuracy"``, ``"train_loss"``,
        ``"test_loss"``.
    """
    out: dict[str, list] = {k: [] for k in ("models", "histories", "train_accuracy", "test_accuracy",
                                            "train_loss", "test_loss")}
    for seed in seeds:
        model = build(seed)
        split_data = data(seed) if callable(data) else data
        out["histories"].append(train(model, split_data, seed=seed, **train_kwargs))
        out["models"].append(model)
        for split, x, y in (("train", split_data.x_train, split_data.y_train),
                            ("test", split_data.x_test, split_data.y_test)):
            loss, acc = evaluate(model, x, y)
            out[f"{split}_loss"].append(loss)
            out[f"{split}_accuracy"].append(acc)
    return {k: (v if k in ("models", "histories") else np.asarray(v)) for k, v in out.items()}


# -- A picture of the normalization axes ---------------------------------------------


def plot_normalization_axes(
    num_examples: int = 6, num_channels: int = 8, num_groups: int = 2, axes: Sequence | None = None
):
    """Draw which values share one mean and variance in BN, LN and GN.

    Each panel is a grid of examples (rows, axis N) by channels (columns, axis C);
    every cell stands for all the H x W positions of one channel of one example. The
    cells of one colour are normalized together: a column in batch norm (one channel
    across the batch and positions), a row in layer norm (one example, all channels
    and positions), a block of ``C / G`` channels of one example in group norm.

    Returns:
        The three matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if num_channels % num_groups:
        raise ValueError(f"expected num_groups dividing num_channels={num_channels}, got {num_groups}")
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    cmap = plt.get_cmap("tab20")
    per_group = num_channels // num_groups
    panels = [
        ("Batch norm\none set per channel, over (N, H, W)", lambda n, c: c),
        ("Layer norm\none set per example, over (C, H, W)", lambda n, c: n),
        (f"Group norm (G={num_groups})\none set per example and group",
         lambda n, c: n * num_groups + c // per_group),
    ]
    for ax, (title, set_of) in zip(axes, panels):
        for n in range(num_examples):
            for c in range(num_channels):
                s = set_of(n, c)
                # set 0 is drawn opaque so that one set stands out in each panel
                ax.add_patch(Rectangle((c, num_examples - 1 - n), 1, 1, facecolor=cmap(s % 20),
                                       alpha=1.0 if s == 0 else 0.35, edgecolor="white", linewidth=1.5))
        ax.set_xlim(0, num_channels)
        ax.set_ylim(0, num_examples)
        ax.set_aspect("equal")
        ax.set_xticks(np.arange(num_channels) + 0.5, [str(c) for c in range(num_channels)])
        ax.set_yticks(np.arange(num_examples) + 0.5, [str(n) for n in reversed(range(num_examples))])
        ax.set_xlabel("channel c (each cell: its H x W positions)")
        ax.set_ylabel("example n in the batch")
        ax.set_title(title, fontsize=10)
    return axes


def plot_band(steps: Sequence[float], values: np.ndarray, label: str | None = None, ax=None,
              color=None, center: str = "median"):
    """One line over training with a band across seeds.

    Args:
        steps: x values, shape ``(T,)``.
        values: ``(n_seeds, T)``; the line is the median (or mean) over seeds and the
            shaded band spans the lowest and highest seed.
        center: "median" or "mean".

    Returns:
        The matplotlib Axes (axis labels are left to the caller).
    """
    import matplotlib.pyplot as plt

    values = np.atleast_2d(np.asarray(values, dtype=float))
    steps = np.asarray(steps, dtype=float)
    if values.shape[1] != len(steps):
        raise ValueError(f"expected values of shape (n_seeds, {len(steps)}), got {values.shape}")
    if center not in ("median", "mean"):
        raise ValueError(f"expected center 'median' or 'mean', got {center!r}")
    ax = plt.subplots(figsize=(6, 4))[1] if ax is None else ax
    mid = np.median(values, axis=0) if center == "median" else values.mean(axis=0)
    line = ax.plot(steps, mid, label=label, color=color)[0]
    if len(values) > 1:
        ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    ax.grid(alpha=0.3)
    return ax


def plot_grouped_bars(groups: Mapping[str, Mapping[str, Sequence[float]]], ax=None, *,
                      ylabel: str, xlabel: str | None = None, title: str | None = None,
                      ylim: tuple[float, float] | None = None):
    """Bars of the mean over seeds, with every seed drawn as a dot.

    Args:
        groups: x-axis group -> (bar label -> values over seeds). Every group must have
            the same bar labels, which go in the legend.
        ylabel, xlabel: axis labels (the groups' names are the x tick labels).
        ylim: optional y limits.

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if not groups:
        raise ValueError("expected at least one group, got none")
    labels = list(next(iter(groups.values())))
    for name, bars in groups.items():
        if list(bars) != labels:
            raise ValueError(f"expected every group to have bars {labels}, group {name!r} has {list(bars)}")
    ax = plt.subplots(figsize=(6, 4))[1] if ax is None else ax
    width = 0.8 / len(labels)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, label in enumerate(labels):
        xs = np.arange(len(groups)) + (j - (len(labels) - 1) / 2) * width
        values = [np.asarray(bars[label], dtype=float) for bars in groups.values()]
        color = colors[j % len(colors)]
        ax.bar(xs, [v.mean() for v in values], width * 0.9, label=label, color=color, alpha=0.75)
        for x, v in zip(xs, values):
            ax.scatter(np.full(len(v), x), v, color="black", s=10, zorder=3)
    ax.set_xticks(np.arange(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title is not None:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return ax
