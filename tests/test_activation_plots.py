"""Tests of bncourse.lab.activation_plots: what gets drawn, and bad input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from bncourse.lab.activation_plots import draw_graph, histogram_grid, plot_percentile_bands  # noqa: E402


def test_percentile_bands_draw_median_and_nested_bands():
    fig, ax = plt.subplots()
    x = np.arange(4)
    p = np.array([[-2, -1, 0, 1, 2]] * 4, dtype=float) * np.arange(1, 5)[:, None]
    plot_percentile_bands(ax, x, p, (1, 15, 50, 85, 99))
    (line,) = ax.lines
    np.testing.assert_array_equal(line.get_ydata(), p[:, 2])
    assert len(ax.collections) == 2  # the 1-99 and the 15-85 band
    labels = [h.get_label() for h in ax.get_legend_handles_labels()[0]]
    assert labels == ["1-99th pct.", "15-85th pct.", "median"]
    # The outer band spans the outermost percentiles.
    outer = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert outer.min() == pytest.approx(p[:, 0].min()) and outer.max() == pytest.approx(p[:, -1].max())
    plt.close(fig)


def test_percentile_bands_reject_bad_input():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="shape"):
        plot_percentile_bands(ax, np.arange(3), np.zeros((4, 3)), (15, 50, 85))
    with pytest.raises(ValueError, match="containing 50"):
        plot_percentile_bands(ax, np.arange(3), np.zeros((3, 3)), (15, 40, 85))
    with pytest.raises(ValueError, match="as many levels"):
        plot_percentile_bands(ax, np.arange(3), np.zeros((3, 3)), (10, 15, 50))
    plt.close(fig)


def test_histogram_grid_layout_and_fractions():
    rng = np.random.default_rng(0)
    values = {"row a": {"c1": rng.normal(size=100), "c2": rng.normal(size=50)},
              "row b": {"c1": rng.normal(size=10), "c2": rng.normal(size=(5, 4))}}
    fig = histogram_grid(values, bins=10, value_range=(-5, 5), annotate={"row b": {"c2": "note"}})
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:2]] == ["c1", "c2"]
    for ax in fig.axes:
        heights = [patch.get_height() for patch in ax.patches]
        assert sum(heights) == pytest.approx(1.0)  # fractions of the panel's values
    assert any(t.get_text() == "note" for t in fig.axes[3].texts)
    plt.close(fig)


def test_histogram_grid_rejects_ragged_rows():
    with pytest.raises(ValueError, match="columns"):
        histogram_grid({"a": {"x": [1.0]}, "b": {"y": [1.0]}})
    with pytest.raises(ValueError, match="at least one row"):
        histogram_grid({})


def test_draw_graph_boxes_and_arrows():
    fig, ax = plt.subplots()
    nodes = {"x": (0, 0), "mu": (1, 1), "y": (2, 0)}
    draw_graph(ax, nodes, [("x", "mu"), ("mu", "y"), ("x", "y")], labels={"mu": r"$\mu$"},
               styles={"x": "input", "y": "output"}, edge_labels={("x", "y"): "skip"})
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(boxes) == 3 and len(arrows) == 3
    texts = {t.get_text() for t in ax.texts}
    assert {"x", r"$\mu$", "y", "skip"} <= texts
    fig.canvas.draw()  # renders without error
    plt.close(fig)


def test_draw_graph_rejects_unknown_nodes_and_styles():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="known nodes"):
        draw_graph(ax, {"a": (0, 0)}, [("a", "b")])
    with pytest.raises(ValueError, match="node style"):
        draw_graph(ax, {"a": (0, 0)}, [], styles={"a": "fancy"})
    plt.close(fig)
