"""Internal covariate shift, tested: Santurkar et al.'s (2018) "noisy BN".

If batch norm helped by keeping each layer's input distribution fixed, then making that
distribution jump at every step should undo the help. :class:`DistributionNoise` does that
after every BN layer (:func:`add_noise_after_bn`); :class:`InputTracker` watches the
distribution a layer sees during training and :func:`distribution_drift` says how much
it moved.

Everything runs on the CPU in float32 and is deterministic given its ``seed`` arguments.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..nn.utils import batchnorm_modules, is_batchnorm
from .recording import ProbeRecorder

__all__ = ["DistributionNoise", "add_noise_after_bn", "InputTracker", "distribution_drift"]


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
    batchnorm_modules(model, required=True)
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


class InputTracker(ProbeRecorder):
    """An ``on_step`` callback for ``bncourse.lab.training.train``: records a layer's input.

    A :class:`bncourse.lab.recording.ProbeRecorder` in training mode: every ``every`` steps
    it runs the fixed ``probe`` batch through the model as the layer sees data during
    training (BN with batch statistics, noise layers drawing noise, which advances their
    generators), restoring BN's running statistics afterwards. It keeps, for the watched
    module's input ``a`` of shape ``(P, C)`` (any further axes are flattened into ``C``):

    - ``means``: per-unit mean over the probe, one ``(C,)`` row per record;
    - ``stds``: per-unit standard deviation, likewise;
    - ``percentiles``: the 15th, 50th and 85th percentiles of unit ``unit`` (what the
      paper's Figure 2 draws), one ``(3,)`` row per record.

    Args:
        module: a submodule of the trained model (e.g. its 3rd activation: its input is
            the distribution that nonlinearity sees).
        probe: inputs ``(P, ...)``, P >= 2, fixed, so that changes come from the weights.
        every: record at steps divisible by this (including step 0).
        unit: the unit whose percentiles are kept.
    """

    def __init__(self, module: nn.Module, probe: torch.Tensor, every: int = 10, unit: int = 0) -> None:
        super().__init__(module, probe, every, what="input", train_mode=True)
        self.unit = unit
        self._means: list[np.ndarray] = []
        self._stds: list[np.ndarray] = []
        self._percentiles: list[np.ndarray] = []

    def _keep(self, a: torch.Tensor) -> None:
        a = a.reshape(len(a), -1).double()
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


def distribution_drift(means: np.ndarray, stds: np.ndarray, *, relative: bool = False) -> float:
    """How much a layer's input distribution moves between consecutive records.

    For each unit and each pair of consecutive records, take the change of its mean
    plus the change of its standard deviation, in absolute value; average over units
    and records. It is in the units of the activation, so it compares models only when
    their layers' inputs have comparable scales (after BN, both have std about 1).
    ``relative=True`` divides each unit's changes by that unit's average standard
    deviation over the records (its spread), which makes networks whose activations
    have different scales comparable: a drift of 1 then means the distribution moves
    by one of its own widths between records.

    Args:
        means, stds: ``(T, C)`` arrays, e.g. ``InputTracker.means`` / ``.stds``, T >= 2.
        relative: measure each unit's drift in units of its own spread.

    Returns:
        A float >= 0.
    """
    means, stds = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    if means.ndim != 2 or means.shape != stds.shape or len(means) < 2:
        raise ValueError(
            f"expected means and stds of the same shape (T, C) with T >= 2, got {means.shape} and {stds.shape}"
        )
    change = np.abs(np.diff(means, axis=0)) + np.abs(np.diff(stds, axis=0))  # (T - 1, C)
    if relative:
        spread = stds.mean(axis=0)
        alive = spread > 0  # a unit that never varies (a dead ReLU's input can) has no spread to compare with
        if not alive.any():
            raise ValueError("expected at least one unit with a non-zero standard deviation for relative=True")
        change = change[:, alive] / spread[alive]
    return float(np.mean(change))
