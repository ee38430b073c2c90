"""bncourse.lab.recording: the percentile recorder and the drift measures."""

import numpy as np
import pytest
import torch

from bncourse.lab.data import load_digits_split
from bncourse.lab.models import mlp
from bncourse.lab.recording import LayerPercentiles, PercentileRecorder, median_drift, width_change
from bncourse.lab.training import train


def test_recorder_shapes_and_values():
    data = load_digits_split()
    model = mlp(hidden=(6, 5), norm="bn")
    rec = PercentileRecorder(model.act2, data.x_test, every=4)
    train(model, data, steps=10, eval_every=5, on_step=rec)
    assert rec.steps == [0, 4, 8]
    assert rec.values.shape == (3, 5, 3)
    assert (np.diff(rec.values, axis=-1) >= 0).all()  # 15th <= 50th <= 85th
    # Step 0 is the untrained model: the recorded percentiles are those of BN's output on x_test.
    fresh = mlp(hidden=(6, 5), norm="bn")
    fresh.train()
    with torch.no_grad():
        z = fresh.norm2(fresh.fc2(fresh.act1(fresh.norm1(fresh.fc1(data.x_test)))))
    assert np.allclose(rec.values[0], np.percentile(z.numpy(), [15, 50, 85], axis=0).T, atol=1e-5)


def test_recorder_bad_arguments():
    model = mlp(hidden=(4,))
    with pytest.raises(ValueError, match="every"):
        PercentileRecorder(model.act1, torch.zeros(3, 64), every=0)
    with pytest.raises(ValueError, match="percentiles"):
        PercentileRecorder(model.act1, torch.zeros(3, 64), q=(85, 50, 15))
    with pytest.raises(ValueError, match="recording"):
        PercentileRecorder(model.act1, torch.zeros(3, 64)).values


def test_drift_measures():
    still = np.tile([-1.0, 0.0, 1.0], (5, 1))  # a band that never moves
    assert median_drift(still) == 0.0 and width_change(still) == 0.0
    moving = still + np.arange(5)[:, None]  # the median walks 4 units; width stays 2
    assert median_drift(moving) == pytest.approx(2.0)
    widening = still * np.array([1, 2, 3, 4, 10.0])[:, None]  # width 2 -> 20
    assert width_change(widening) == pytest.approx(np.log(10))
    both = np.stack([still, moving], axis=1)  # (T, C=2, 3)
    assert np.allclose(median_drift(both), [0.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        median_drift(np.zeros((1, 3)))


def test_layer_percentiles_match_one_percentile_recorder_per_layer():
    data = load_digits_split()
    model = mlp(norm="bn", seed=0)
    one = PercentileRecorder(model.act2, data.x_test, every=4)
    two = PercentileRecorder(model.norm2, data.x_test, every=4)
    both = LayerPercentiles({"sigmoid": model.act2, "bn": model.norm2, "again": model.act2}, data.x_test, every=4)
    train(model, data, steps=8, eval_every=8, on_step=lambda s, m: (one(s, m), two(s, m), both(s, m)))
    assert both.steps == one.steps == [0, 4, 8]
    np.testing.assert_array_equal(both.values["sigmoid"], one.values)
    np.testing.assert_array_equal(both.values["bn"], two.values)
    np.testing.assert_array_equal(both.values["again"], one.values)
    with pytest.raises(ValueError):
        LayerPercentiles({}, data.x_test)
    with pytest.raises(ValueError):
        LayerPercentiles({"a": model.act1}, data.x_test).values
