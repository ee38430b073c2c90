"""Summarizing activation statistics inside a torch model.

The chapter "Why normalize activations?" looks at how the distribution of each
layer's pre-activations changes with depth (at initialization) and with time
(during training). This module holds what it measures with:

- :func:`layer_statistics`, :func:`saturation_fraction` summarize recordings,
  which come from :class:`ActivationRecorder` / :func:`record_layers`
  (:mod:`bncourse.lab.recording`, re-exported here for the chapter);
- :class:`PercentileTracker` is an ``on_step`` callback for
  :func:`bncourse.lab.training.train` that follows per-unit percentiles of one
  layer over training (a :class:`bncourse.lab.recording.PercentileRecorder` with
  this chapter's defaults), and :func:`drift_summary` condenses them per unit.

The models come from :mod:`bncourse.lab.models`, the training loop from
:mod:`bncourse.lab.training`; nothing here trains or builds a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .recording import ActivationRecorder, PercentileRecorder, record_layers

__all__ = [
    "ActivationRecorder",
    "record_layers",
    "layer_statistics",
    "saturation_fraction",
    "PercentileTracker",
    "drift_summary",
]


def layer_statistics(
    values: Mapping[str, torch.Tensor | np.ndarray], q: Sequence[float] = (15, 50, 85)
) -> dict[str, np.ndarray]:
    """Per-layer summary of recordings, pooling all units and examples of a layer.

    Args:
        values: layer name -> activations of any shape (e.g. ``(N, H)``).
        q: percentile levels in [0, 100].

    Returns:
        dict with ``"names"`` ``(L,)`` (the keys, in order), ``"percentiles"``
        ``(L, len(q))``, ``"std"`` ``(L,)`` and ``"mean"`` ``(L,)``, float64.
    """
    q_arr = _check_q(q)
    if not values:
        raise ValueError("expected at least one layer of activations, got an empty mapping")
    arrays = {name: _as_numpy(v).ravel() for name, v in values.items()}
    for name, a in arrays.items():
        if a.size == 0:
            raise ValueError(f"expected activations for {name!r}, got an empty tensor")
    return {
        "names": np.array(list(arrays)),
        "percentiles": np.stack([np.percentile(a, q_arr) for a in arrays.values()]),
        "std": np.array([a.std() for a in arrays.values()]),
        "mean": np.array([a.mean() for a in arrays.values()]),
    }


def saturation_fraction(
    pre_activation: torch.Tensor | np.ndarray, activation: str, tol: float = 0.01
) -> float:
    """Fraction of entries where ``activation`` is flat: its output within ``tol`` of a bound.

    For ``"tanh"`` that is ``|tanh(z)| > 1 - tol``; for ``"sigmoid"``,
    ``sigmoid(z) < tol`` or ``> 1 - tol``. There the derivative is below
    ``2 * tol`` (tanh) or ``tol`` (sigmoid), so almost no gradient flows back
    through the unit. ReLU has no bounded flat side and is not accepted.

    Args:
        pre_activation: the input ``z`` of the nonlinearity, any shape.
        activation: ``"tanh"`` or ``"sigmoid"``.
        tol: in (0, 1).

    Returns:
        a float in [0, 1].
    """
    if activation not in ("tanh", "sigmoid"):
        raise ValueError(f"expected activation 'tanh' or 'sigmoid', got {activation!r}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"expected tol in (0, 1), got {tol!r}")
    z = _as_numpy(pre_activation)
    if z.size == 0:
        raise ValueError("expected a non-empty tensor of pre-activations, got 0 entries")
    if activation == "tanh":
        flat = np.abs(np.tanh(z)) > 1.0 - tol
    else:
        s = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow in exp
        flat = (s < tol) | (s > 1.0 - tol)
    return float(flat.mean())


class PercentileTracker(PercentileRecorder):
    """``on_step`` callback for :func:`bncourse.lab.training.train`: per-unit percentiles of one layer.

    A :class:`bncourse.lab.recording.PercentileRecorder` with this chapter's defaults:
    every 10 updates (and at step 0), and in eval mode (the chapter's networks have
    neither BN nor dropout, so both modes give the same values). For each unit ``j``
    of ``module``'s input (or output) of shape ``(P, H)`` the percentiles ``q`` of the
    ``P`` values in column ``j`` are stored.

    Attributes:
        steps: list of the steps measured.
    """

    def __init__(
        self,
        module: nn.Module,
        probe: torch.Tensor,
        every: int = 10,
        q: Sequence[float] = (15, 50, 85),
        what: str = "input",
        train_mode: bool = False,
    ) -> None:
        super().__init__(module, probe, every, q, train_mode, what=what)

    def percentiles(self) -> np.ndarray:
        """All measurements stacked: shape ``(T, H, len(q))`` for ``T`` measured steps."""
        return self.values


def drift_summary(percentiles: np.ndarray, q: Sequence[float]) -> dict[str, np.ndarray]:
    """How far each unit's distribution moved between the first and the last measurement.

    Distances are in units of the unit's initial spread, the distance between
    its outermost percentiles ``q[0]`` and ``q[-1]`` at the first measurement,
    so "moved by 0.5" means half the width of its initial distribution.

    Args:
        percentiles: shape ``(T, H, len(q))``, as :meth:`PercentileTracker.percentiles`.
        q: sorted percentile levels containing 50.

    Returns:
        dict of ``(H,)`` arrays: ``"median_shift"`` = ``|median_T - median_0| /
        spread_0``, ``"spread_ratio"`` = ``spread_T / spread_0``, and
        ``"spread0"`` = ``spread_0``.
    """
    q_list = [float(v) for v in _check_q(q)]
    p = np.asarray(percentiles, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != len(q_list) or p.shape[0] < 2:
        raise ValueError(
            f"expected percentiles of shape (T >= 2, H, {len(q_list)}), got shape {p.shape}"
        )
    if 50.0 not in q_list or q_list != sorted(q_list):
        raise ValueError(f"expected sorted percentile levels containing 50, got {q_list}")
    mid = q_list.index(50.0)
    spread0 = p[0, :, -1] - p[0, :, 0]
    if np.any(spread0 <= 0):
        raise ValueError("expected every unit to have a positive initial spread, got a constant unit")
    return {
        "median_shift": np.abs(p[-1, :, mid] - p[0, :, mid]) / spread0,
        "spread_ratio": (p[-1, :, -1] - p[-1, :, 0]) / spread0,
        "spread0": spread0,
    }


def _check_q(q: Sequence[float]) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.any((q < 0) | (q > 100)):
        raise ValueError(f"expected a non-empty sequence of percentiles in [0, 100], got {q.tolist()}")
    return q


def _as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    if isinstance(a, np.ndarray):
        return a.astype(np.float64, copy=False)
    raise ValueError(f"expected a torch.Tensor or numpy array, got {type(a).__name__}")
