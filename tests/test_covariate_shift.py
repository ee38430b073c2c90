"""Tests for bncourse.lab.covariate_shift: noisy BN, the input tracker and the drift measure."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.lab import covariate_shift as cs
from bncourse.lab.data import load_digits_split
from bncourse.lab.models import activation_modules, mlp
from bncourse.nn.utils import batchnorm_modules

from model_state import buffers, same  # the helper sits next to this file

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


def test_distribution_noise_applies_its_draws_in_training_and_nothing_in_eval():
    noise = cs.DistributionNoise(5, max_shift=0.5, scale_range=(0.5, 2.0), seed=3)
    x = torch.randn(7, 5, 2)
    y = noise(x)
    s, m = noise.last_scale, noise.last_shift
    assert torch.allclose(y, x * s.view(1, 5, 1) + m.view(1, 5, 1))
    assert torch.all((s >= 0.5) & (s <= 2.0)) and torch.all(m.abs() <= 0.5)
    noise(x)
    assert not torch.equal(noise.last_scale, s)  # a fresh draw every call
    noise.eval()
    assert torch.equal(noise(x), x)


def test_distribution_noise_is_seeded_and_leaves_the_global_rng_alone():
    x = torch.randn(4, 3)
    state = torch.get_rng_state()
    a = cs.DistributionNoise(3, seed=1)(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, cs.DistributionNoise(3, seed=1)(x))
    assert not torch.equal(a, cs.DistributionNoise(3, seed=2)(x))


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_features=0), dict(num_features=3, max_shift=-1.0), dict(num_features=3, scale_range=(0.0, 1.0)),
     dict(num_features=3, scale_range=(2.0, 1.0))],
)
def test_distribution_noise_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cs.DistributionNoise(**kwargs)


def test_distribution_noise_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(N, 3, \.\.\.\)"):
        cs.DistributionNoise(3)(torch.randn(4, 5))


def test_add_noise_after_bn_wraps_every_bn_layer_and_is_identity_in_eval():
    model = mlp(norm="bn", seed=0)
    reference = copy.deepcopy(model).eval()
    noises = cs.add_noise_after_bn(model, seed=0)
    assert len(noises) == 3
    assert all(isinstance(m[1], cs.DistributionNoise) for m in model if isinstance(m, nn.Sequential))
    assert len(batchnorm_modules(model)) == 3  # the BN layers are kept
    x = torch.randn(10, 64)
    model.eval()
    assert torch.allclose(model(x), reference(x))
    model.train()
    assert model(x).shape == (10, 10)
    with pytest.raises(ValueError, match="batch-norm"):
        cs.add_noise_after_bn(mlp(norm=None))


def test_input_tracker_sees_standardized_inputs_behind_a_fresh_bn_layer(data):
    model = mlp(norm="bn", seed=0)
    tracker = cs.InputTracker(activation_modules(model)[0], data.x_train[:100], every=5, unit=2)
    before = buffers(model)
    for step in range(11):
        tracker(step, model)
    assert tracker.steps == [0, 5, 10]
    assert tracker.means.shape == (3, 100) and tracker.stds.shape == (3, 100)
    assert tracker.percentiles.shape == (3, 3)
    # gamma = 1, beta = 0 at initialization: batch-normalized inputs have mean 0 and std ~1
    np.testing.assert_allclose(tracker.means, 0.0, atol=1e-5)
    np.testing.assert_allclose(tracker.stds, 1.0, atol=1e-2)
    assert same(before, buffers(model))  # recording leaves the running statistics alone


def test_input_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError):
        cs.InputTracker(nn.Identity(), torch.randn(5, 3), every=0)
    with pytest.raises(ValueError):
        cs.InputTracker(nn.Identity(), torch.randn(1, 3))


def test_distribution_drift_on_known_values():
    means = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    stds = np.ones((3, 2))
    # unit 0 moves by 1 then 2, unit 1 does not move: (1 + 2 + 0 + 0) / 4
    assert cs.distribution_drift(means, stds) == pytest.approx(0.75)
    assert cs.distribution_drift(np.zeros((4, 3)), np.ones((4, 3))) == 0.0
    # relative: each unit's change divided by its mean std; scaling a network's activations changes nothing
    m, s = np.array([[0.0, 0.0], [1.0, 4.0]]), np.array([[1.0, 2.0], [1.0, 2.0]])
    assert cs.distribution_drift(m, s, relative=True) == pytest.approx((1.0 + 2.0) / 2)
    assert cs.distribution_drift(10 * m, 10 * s, relative=True) == pytest.approx(1.5)
    assert cs.distribution_drift(m, np.concatenate([s[:, :1], np.zeros((2, 1))], 1), relative=True) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cs.distribution_drift(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError):
        cs.distribution_drift(np.zeros((3, 3)), np.zeros((3, 2)))
