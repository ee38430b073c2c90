"""bncourse.lab.plots: every helper draws what it says, labels its axes and validates its input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bncourse.lab import plots
from bncourse.lab.training import History


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_curves_sweep_and_percentiles_return_labelled_axes():
    h = History(step=[0, 10], train_loss=[2.0, 1.0], test_loss=[2.0, 1.0], test_accuracy=[0.1, 0.5])
    h2 = History(step=[0, 10], train_loss=[2.0, 1.2], test_loss=[2.0, 1.1], test_accuracy=[0.1, 0.7])
    ax = plots.plot_curves({"BN": [h, h2]}, title="t")
    assert ax.get_xlabel() and ax.get_ylabel() == "test accuracy" and ax.get_title() == "t"
    assert np.allclose(ax.lines[0].get_ydata(), [0.1, 0.6])
    assert ax.get_legend_handles_labels()[1] == ["BN (mean of 2)"]
    ax = plots.plot_sweep([0.1, 1.0], {"a": np.array([[0.5, 0.6], [0.7, 0.8]])}, xlabel="lr")
    assert ax.get_xscale() == "log" and np.allclose(ax.lines[0].get_ydata(), [0.6, 0.7])
    assert ax.lines[0].get_marker() == "o" and len(ax.collections) == 1  # the band
    ax = plots.plot_sweep([0.1, 1.0], {"a": np.array([0.5, 0.6])}, xlabel="lr", band="std")
    assert len(ax.collections) == 0  # one run: no band
    ax = plots.plot_percentiles([0, 1], np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0]]), label="x")
    assert len(ax.lines) == 3
    with pytest.raises(ValueError, match="shape"):
        plots.plot_percentiles([0, 1, 2], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="metric"):
        plots.plot_curves({"a": [h]}, metric="accuracy")
    with pytest.raises(ValueError, match="band"):
        plots.plot_sweep([1.0], {"a": np.zeros((2, 1))}, xlabel="x", band="iqr")


def test_plot_band_median_or_mean_with_a_min_max_band():
    values = np.array([[1.0, 2, 3], [2, 3, 4], [6, 7, 8]])
    ax = plots.plot_band([0, 1, 2], values[:2], label="a")
    assert ax.lines[0].get_ydata().tolist() == [1.5, 2.5, 3.5]
    ax = plots.plot_band([0, 1, 2], values, label="median")
    assert ax.lines[0].get_ydata().tolist() == [2.0, 3.0, 4.0]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == 1.0 and band.max() == 8.0  # lowest and highest seed
    ax = plots.plot_band([0, 1, 2], values, center="mean")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), values.mean(0))
    with pytest.raises(ValueError, match="shape"):
        plots.plot_band([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="center"):
        plots.plot_band([0, 1, 2], values, center="mode")


def test_grouped_bars_and_normalization_axes():
    ax = plots.plot_grouped_bars({"g1": {"a": [1, 2], "b": [3]}, "g2": {"a": [2], "b": [4, 4]}}, ylabel="y",
                                 title="t")
    assert len(ax.patches) == 4 and ax.get_ylabel() == "y" and ax.get_title() == "t"
    assert sorted(p.get_height() for p in ax.patches) == [1.5, 2.0, 3.0, 4.0]  # means over seeds
    with pytest.raises(ValueError, match="bars"):
        plots.plot_grouped_bars({"g1": {"a": [1]}, "g2": {"b": [1]}}, ylabel="y")
    with pytest.raises(ValueError, match="at least one group"):
        plots.plot_grouped_bars({}, ylabel="y")
    axes = plots.plot_normalization_axes(num_examples=3, num_channels=4, num_groups=2)
    assert len(axes) == 3 and all(len(ax.patches) == 12 for ax in axes)
    # the opaque cells are set 0: a column (BN), a row (LN), half a row (GN)
    opaque = [sum(p.get_alpha() == 1.0 for p in ax.patches) for ax in axes]
    assert opaque == [3, 4, 2]
    with pytest.raises(ValueError):
        plots.plot_normalization_axes(num_channels=5, num_groups=2)
