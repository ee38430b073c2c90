"""Figures of activation statistics and small computational graphs (matplotlib).

Used by the chapters "Why normalize activations?" (percentile bands across
depth and over training, histogram grids) and "Deriving batch normalization"
(the graph drawing). Each function draws into axes it is given, or returns a
new figure, and labels what it knows; titles are left to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["plot_percentile_bands", "histogram_grid", "draw_graph"]


def plot_percentile_bands(
    ax: Axes,
    x: Sequence[float] | np.ndarray,
    percentiles: np.ndarray,
    q: Sequence[float],
    color: str | None = None,
    label: str | None = None,
) -> None:
    """Draw a median line with shaded bands between symmetric percentile pairs.

    ``q`` must be sorted and contain 50; the pairs ``(q[0], q[-1])``,
    ``(q[1], q[-2])``, ... each become a band, the inner ones darker, the way
    Ioffe and Szegedy drew the 15th/50th/85th percentiles of an input over
    training.

    Args:
        ax: axes to draw into.
        x: positions along the horizontal axis, shape ``(T,)`` (layer index,
            training step, ...).
        percentiles: values, shape ``(T, len(q))``; column ``k`` is percentile ``q[k]``.
        q: the percentile levels, e.g. ``(15, 50, 85)``.
        color: one matplotlib color for line and bands (default: next in cycle).
        label: legend label for the median line; the bands get
            ``"{lo}-{hi}th pct."`` labels only when ``label`` is None.
    """
    x = np.asarray(x, dtype=np.float64)
    p = np.asarray(percentiles, dtype=np.float64)
    q = [float(v) for v in q]
    if p.ndim != 2 or p.shape != (x.size, len(q)):
        raise ValueError(
            f"expected percentiles of shape ({x.size}, {len(q)}) for {x.size} positions "
            f"and {len(q)} levels, got shape {p.shape}"
        )
    if 50.0 not in q or q != sorted(q):
        raise ValueError(f"expected sorted percentile levels containing 50, got {q}")
    mid = q.index(50.0)
    if mid != len(q) - 1 - mid:
        raise ValueError(f"expected as many levels below 50 as above, got {q}")
    if color is None:
        color = f"C{len(ax.lines) % 10}"  # one color per median line drawn so far
    for k in range(mid):
        # Outer bands lighter, inner bands darker: alpha grows toward the median.
        alpha = 0.15 + 0.25 * (k + 1) / mid
        band_label = None if label is not None else f"{q[k]:g}-{q[-1 - k]:g}th pct."
        ax.fill_between(x, p[:, k], p[:, -1 - k], color=color, alpha=alpha,
                        linewidth=0, label=band_label)
    ax.plot(x, p[:, mid], color=color, lw=2, label=label if label is not None else "median")


def histogram_grid(
    values: Mapping[str, Mapping[str, np.ndarray]],
    bins: int = 50,
    value_range: tuple[float, float] | None = None,
    xlabel: str = "value",
    annotate: Mapping[str, Mapping[str, str]] | None = None,
    panel_size: tuple[float, float] = (2.6, 1.9),
) -> Figure:
    """A grid of histograms: one row per outer key, one column per inner key.

    Typical use: rows are weight scales, columns are layers, each cell holds
    the activations of that layer under that scale. Every row must have the
    same inner keys in the same order. Counts are shown as a fraction of the
    values in the panel, so panels with different sample sizes compare.

    Args:
        values: row label -> (column label -> array of any shape, flattened).
        bins: number of bins of each histogram.
        value_range: common ``(lo, hi)`` for all panels; default: each panel's own.
        xlabel: label under the bottom row.
        annotate: optional row label -> column label -> text written in the panel.
        panel_size: width, height of one panel in inches.

    Returns:
        the matplotlib ``Figure`` (axes in ``fig.axes``, row-major).
    """
    rows = list(values)
    if not rows:
        raise ValueError("expected at least one row of histograms, got an empty mapping")
    cols = list(values[rows[0]])
    for r in rows:
        if list(values[r]) != cols:
            raise ValueError(
                f"expected every row to have the columns {cols}, row {r!r} has {list(values[r])}"
            )
    if not cols:
        raise ValueError("expected at least one column of histograms, got none")
    fig, axes = plt.subplots(
        len(rows), len(cols), squeeze=False, sharex=value_range is not None,
        figsize=(panel_size[0] * len(cols), panel_size[1] * len(rows)), layout="constrained",
    )
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            v = np.asarray(values[r][c], dtype=np.float64).ravel()
            weights = np.full(v.size, 1.0 / max(v.size, 1))
            ax.hist(v, bins=bins, range=value_range, weights=weights, color=f"C{i}")
            if i == 0:
                ax.set_title(c)
            if j == 0:
                ax.set_ylabel(f"{r}\nfraction")
            if i == len(rows) - 1:
                ax.set_xlabel(xlabel)
            if annotate is not None and c in annotate.get(r, {}):
                ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # headroom so the note hides no bar
                ax.text(0.5, 0.95, annotate[r][c], transform=ax.transAxes,
                        ha="center", va="top", fontsize=8,
                        bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
    return fig


def draw_graph(
    ax: Axes,
    nodes: Mapping[str, tuple[float, float]],
    edges: Sequence[tuple[str, str]],
    labels: Mapping[str, str] | None = None,
    styles: Mapping[str, str] | None = None,
    edge_labels: Mapping[tuple[str, str], str] | None = None,
    box_size: tuple[float, float] = (1.0, 0.5),
    widths: Mapping[str, float] | None = None,
) -> None:
    """Draw a small computational graph: boxed nodes at given positions, arrows between them.

    Args:
        ax: axes to draw into; its limits are set to fit the nodes, axis lines hidden.
        nodes: node name -> ``(x, y)`` center in data coordinates.
        edges: ``(source, target)`` pairs; each becomes an arrow.
        labels: node name -> text in the box (math text allowed); default: the name.
        styles: node name -> ``"input"``, ``"param"``, ``"op"`` or ``"output"``,
            which picks the box color; default ``"op"``.
        edge_labels: ``(source, target)`` -> small text next to the arrow's middle.
        box_size: default width and the height of every box, in data units.
        widths: node name -> its own box width, for long labels.
    """
    colors = {"input": "#cfe2f3", "param": "#fce5cd", "op": "#eeeeee", "output": "#d9ead3"}
    labels = labels or {}
    styles = styles or {}
    edge_labels = edge_labels or {}
    widths = widths or {}
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise ValueError(f"expected edges between known nodes {sorted(nodes)}, got ({a!r}, {b!r})")
    for name, style in styles.items():
        if style not in colors:
            raise ValueError(f"expected node style in {sorted(colors)}, got {style!r} for {name!r}")
    h = box_size[1]
    boxes = {}
    for name, (x, y) in nodes.items():
        w = widths.get(name, box_size[0])
        box = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                             facecolor=colors[styles.get(name, "op")], edgecolor="#444444", zorder=3)
        ax.add_patch(box)
        boxes[name] = box
        ax.text(x, y, labels.get(name, name), ha="center", va="center", fontsize=12, zorder=4)
    for a, b in edges:
        # patchA/patchB clip the arrow at the box outlines, so it runs edge to edge.
        ax.add_patch(FancyArrowPatch(
            nodes[a], nodes[b], patchA=boxes[a], patchB=boxes[b],
            arrowstyle="-|>", mutation_scale=14, color="#444444", lw=1.2,
            shrinkA=1, shrinkB=1, zorder=2,
        ))
        if (a, b) in edge_labels:
            (xa, ya), (xb, yb) = nodes[a], nodes[b]
            ax.text((xa + xb) / 2, (ya + yb) / 2, edge_labels[(a, b)], fontsize=10,
                    ha="center", va="center", color="#333333", zorder=5,
                    bbox=dict(facecolor="white", edgecolor="none", pad=1.0))
    xs = [p[0] for p in nodes.values()]
    ys = [p[1] for p in nodes.values()]
    w = max([box_size[0], *widths.values()])
    ax.set_xlim(min(xs) - w / 2 - 0.1, max(xs) + w / 2 + 0.1)
    ax.set_ylim(min(ys) - h, max(ys) + h)
    ax.set_aspect("equal")
    ax.set_axis_off()
