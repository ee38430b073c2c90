"""Plotting helpers for the course's figures (matplotlib); every function returns its Axes.

Experiment curves, each a line over seeds with a band from the lowest to the highest
seed: ``plot_curves`` (a metric of ``bncourse.lab.training.History`` over training),
``plot_sweep`` (an outcome against a swept hyper-parameter) and ``plot_band`` (any
quantity, the caller labels the axes). ``plot_percentiles`` draws low/median/high
percentiles of a quantity over training, as in the paper's Figure 1;
``plot_grouped_bars`` compares final numbers (a bar per setting, a dot per seed), and
``plot_normalization_axes`` is the diagram of which values BN, LN and GN normalize together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

__all__ = [
    "plot_curves",
    "plot_sweep",
    "plot_band",
    "plot_percentiles",
    "plot_grouped_bars",
    "plot_normalization_axes",
]

_METRIC_LABELS = {
    "test_accuracy": "test accuracy",
    "test_loss": "test loss (cross-entropy)",
    "train_loss": "training loss (cross-entropy)",
}


def _axes(ax):
    return plt.subplots(figsize=(6, 4))[1] if ax is None else ax


def _band(values: np.ndarray, band: str, center: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Center and lower/upper band over axis 0 of (n_runs, T) values.

    ``center`` is "mean" or "median"; ``band`` is "minmax" (lowest to highest run) or
    "std" (mean +- std). NaNs (a diverged run) are left out.
    """
    if center not in ("median", "mean"):
        raise ValueError(f"expected center 'median' or 'mean', got {center!r}")
    mid = np.nanmean(values, axis=0) if center == "mean" else np.nanmedian(values, axis=0)
    if band == "minmax":
        return mid, np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    if band == "std":
        std = np.nanstd(values, axis=0)
        return mid, mid - std, mid + std
    raise ValueError(f"expected band 'minmax' or 'std', got {band!r}")


def _line_with_band(ax, xs: np.ndarray, values: np.ndarray, label: str | None, color, band: str = "minmax",
                    center: str = "mean", **line_kw):
    """Draw the center line of (n_runs, len(xs)) ``values`` and, for several runs, a shaded band."""
    mid, lo, hi = _band(values, band, center)
    line = ax.plot(xs, mid, label=label, color=color, **line_kw)[0]
    if len(values) > 1:
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


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
        color = None if colors is None else colors.get(label)
        n = len(runs)
        _line_with_band(ax, steps, values, f"{label} (mean of {n})" if n > 1 else label, color, band)
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
        color = None if colors is None else colors.get(label)
        n = len(values)
        _line_with_band(ax, xs, values, f"{label} (mean of {n})" if n > 1 else label, color, band, marker="o")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


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
    values = np.atleast_2d(np.asarray(values, dtype=float))
    steps = np.asarray(steps, dtype=float)
    if values.shape[1] != len(steps):
        raise ValueError(f"expected values of shape (n_seeds, {len(steps)}), got {values.shape}")
    ax = _axes(ax)
    _line_with_band(ax, steps, values, label, color, "minmax", center)
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
    if not groups:
        raise ValueError("expected at least one group, got none")
    labels = list(next(iter(groups.values())))
    for name, bars in groups.items():
        if list(bars) != labels:
            raise ValueError(f"expected every group to have bars {labels}, group {name!r} has {list(bars)}")
    ax = _axes(ax)
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
