"""What a layer sees during training: percentiles of its input, and how far they drift.

The paper's Figure 1(b, c) follows the 15th, 50th and 85th percentiles of one sigmoid's
input over training. ``PercentileRecorder`` is an ``on_step`` callback for
``bncourse.training.train`` that records those percentiles for every unit of a layer on a
fixed batch; ``median_drift`` and ``width_change`` turn the recorded bands into numbers a
chapter can compare between networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .training import record_activations

__all__ = ["PercentileRecorder", "median_drift", "width_change"]


class PercentileRecorder:
    """``on_step`` callback: percentiles of ``module``'s input on ``x``, every ``every`` steps.

    Each recording runs the model on the fixed batch ``x`` through
    ``record_activations`` (by default in training mode, so BN normalizes with the
    statistics of ``x`` as it does during training; running statistics are restored,
    so recording does not change the training).

    Attributes:
        steps: the steps recorded, a list of T ints (step 0 is the initial model).
        values: after training, an array (T, C, len(q)): for every step and unit (column
            of the module's (N, C) input), the percentiles ``q`` over the N rows of ``x``.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        every: int = 20,
        q: Sequence[float] = (15, 50, 85),
        train_mode: bool = True,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"expected every to be a positive int, got {every!r}")
        if not all(0 <= p <= 100 for p in q) or list(q) != sorted(q):
            raise ValueError(f"expected increasing percentiles in [0, 100], got {q!r}")
        self.module, self.x, self.every, self.q, self.train_mode = module, x, every, tuple(q), train_mode
        self.steps: list[int] = []
        self._values: list[np.ndarray] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        z = record_activations(model, self.module, self.x, train_mode=self.train_mode)
        if z.ndim != 2:
            raise ValueError(f"expected the module's input to be (N, C), got shape {tuple(z.shape)}")
        self.steps.append(step)
        self._values.append(np.percentile(z.numpy(), self.q, axis=0).T)  # (C, len(q))

    @property
    def values(self) -> np.ndarray:
        if not self._values:
            raise ValueError("expected at least one recording, got none (was the recorder passed as on_step?)")
        return np.stack(self._values)


def _check_bands(bands: np.ndarray) -> np.ndarray:
    bands = np.asarray(bands, dtype=float)
    if bands.ndim not in (2, 3) or bands.shape[-1] != 3 or bands.shape[0] < 2:
        raise ValueError(f"expected percentile bands of shape (T>=2, 3) or (T>=2, C, 3), got {bands.shape}")
    return bands


def median_drift(bands: np.ndarray) -> np.ndarray | float:
    """How far the median travels over training, in units of the band's width.

    ``sum_t |p50[t+1] - p50[t]| / mean_t (p85[t] - p15[t])``: the total path of the
    middle percentile divided by the typical distance between the outer two. A
    distribution that keeps its place relative to its own spread scores low.

    Args:
        bands: (T, 3) low/median/high percentiles of one unit over T recordings, or
            (T, C, 3) for C units.

    Returns:
        A float for (T, 3), an array (C,) for (T, C, 3).
    """
    bands = _check_bands(bands)
    path = np.abs(np.diff(bands[..., 1], axis=0)).sum(axis=0)
    width = (bands[..., 2] - bands[..., 0]).mean(axis=0)
    return path / width


def width_change(bands: np.ndarray) -> np.ndarray | float:
    """``|log(width at the end / width at the start)|``: how much the band widened or narrowed.

    Args and Returns: as ``median_drift`` (0 means the same width; log(10) means ten
    times wider or narrower).
    """
    bands = _check_bands(bands)
    width = bands[..., 2] - bands[..., 0]
    return np.abs(np.log(width[-1] / width[0]))
