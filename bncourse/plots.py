"""Plotting helpers for the course's figures (matplotlib); every function returns its Axes.

Experiment curves: ``plot_curves`` (a metric over training, mean and band over seeds),
``plot_sweep`` (an outcome against a swept hyper-parameter) and ``plot_percentiles``
(low/median/high percentiles of a quantity over training, as in the paper's Figure 1).
A History is ``bncourse.training.History``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_curves", "plot_percentiles", "plot_sweep"]

_METRIC_LABELS = {
    "test_accuracy": "test accuracy",
    "test_loss": "test loss (cross-entropy)",
    "train_loss": "training loss (cross-entropy)",
}


def _axes(ax):
    return plt.subplots(figsize=(6, 4))[1] if ax is None else ax


def _band(values: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and lower/upper band over axis 0 of (n_runs, T) values ("minmax" or "std")."""
    mean = np.nanmean(values, axis=0)
    if band == "minmax":
        return mean, np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    if band == "std":
        std = np.nanstd(values, axis=0)
        return mean, mean - std, mean + std
    raise ValueError(f"expected band 'minmax' or 'std', got {band!r}")


def plot_curves(
    histories: Mapping[str, Sequence],
    metric: str = "test_accuracy",
    ax=None,
    title: str | None = None,
    band: str = "minmax",
    colors: Mapping[str, str] | None = None,
):
    """Plot ``metric`` over training steps: the mean over seeds and a shaded band.

    Args:
        histories: label -> list of ``History`` (one per seed) measured at the same steps
            (runs that stopped early are cut to the shortest run).
        metric: "test_accuracy", "test_loss" or "train_loss".
        band: "minmax" (the band spans the worst and best seed) or "std" (mean +- std).
        colors: optional label -> matplotlib color.

    Returns:
        The matplotlib Axes.
    """
    if metric not in _METRIC_LABELS:
        raise ValueError(f"expected metric in {list(_METRIC_LABELS)}, got {metric!r}")
    if not histories:
        raise ValueError("expected at least one label with histories, got an empty mapping")
    ax = _axes(ax)
    for label, runs in histories.items():
        runs = list(runs)
        if not runs:
            raise ValueError(f"expected at least one History for {label!r}, got none")
        length = min(len(h.step) for h in runs)
        steps = np.asarray(runs[0].step[:length])
        values = np.array([getattr(h, metric)[:length] for h in runs], dtype=float)
        mean, lo, hi = _band(values, band)
        color = None if colors is None else colors.get(label)
        n = len(runs)
        line = ax.plot(steps, mean, label=f"{label} (mean of {n})" if n > 1 else label, color=color)[0]
        if n > 1:
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("training step (mini-batch updates)")
    ax.set_ylabel(_METRIC_LABELS[metric])
    if title is not None:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_sweep(
    xs: Sequence[float],
    results: Mapping[str, np.ndarray],
    ax=None,
    *,
    xlabel: str,
    ylabel: str = "final test accuracy",
    title: str | None = None,
    logx: bool = True,
    band: str = "minmax",
    colors: Mapping[str, str] | None = None,
):
    """Plot a hyper-parameter sweep: mean over seeds with a band, one line per label.

    Args:
        xs: the swept values, shape (K,).
        results: label -> array (n_seeds, K) of the measured outcome.
        logx: log-scaled x axis (learning rates, init scales).

    Returns:
        The matplotlib Axes.
    """
    xs = np.asarray(xs, dtype=float)
    ax = _axes(ax)
    for label, values in results.items():
        values = np.atleast_2d(np.asarray(values, dtype=float))
        if values.shape[1] != len(xs):
            raise ValueError(f"expected results[{label!r}] of shape (n_seeds, {len(xs)}), got {values.shape}")
        mean, lo, hi = _band(values, band)
        color = None if colors is None else colors.get(label)
        n = len(values)
        line = ax.plot(xs, mean, marker="o", label=f"{label} (mean of {n})" if n > 1 else label, color=color)[0]
        if n > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_percentiles(steps: Sequence[int], percentiles: np.ndarray, label: str | None = None, ax=None, color=None):
    """Plot low/median/high percentiles of a quantity over training (the paper's Fig. 1b,c).

    Args:
        steps: training steps, shape (T,).
        percentiles: array (T, 3), e.g. the 15th, 50th and 85th percentiles at each step;
            the median is drawn solid and the other two dashed.
        label: legend label of the median line (the dashed lines are unlabelled).

    Returns:
        The matplotlib Axes (axis labels are left to the caller: only it knows the quantity).
    """
    steps = np.asarray(steps)
    p = np.asarray(percentiles, dtype=float)
    if p.ndim != 2 or p.shape != (len(steps), 3):
        raise ValueError(f"expected percentiles of shape ({len(steps)}, 3), got {p.shape}")
    ax = _axes(ax)
    line = ax.plot(steps, p[:, 1], color=color, label=label)[0]
    ax.plot(steps, p[:, 0], color=line.get_color(), linestyle="--", linewidth=1)
    ax.plot(steps, p[:, 2], color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_xlabel("training step (mini-batch updates)")
    ax.grid(alpha=0.3)
    return ax
