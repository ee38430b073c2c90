"""Tests for bncourse.experiments: the pieces behind the experiment chapters."""

import copy

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse import experiments as ex
from bncourse.data import load_digits_split
from bncourse.models import activation_modules, mlp

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- finding BN layers ------------------------------------------------------------


def test_is_batchnorm_recognizes_torch_and_course_layers():
    assert ex.is_batchnorm(nn.BatchNorm1d(3)) and ex.is_batchnorm(nn.BatchNorm2d(3))
    assert ex.is_batchnorm(bnn.BatchNorm1d(3)) and ex.is_batchnorm(bnn.BatchNorm2d(3))
    assert not ex.is_batchnorm(nn.LayerNorm(3)) and not ex.is_batchnorm(bnn.GroupNorm(1, 3))
    assert len(ex.batchnorm_modules(mlp(norm="bn"))) == 3
    assert ex.batchnorm_modules(mlp(norm="ln")) == []


# -- noisy BN -----------------------------------------------------------------------


def test_distribution_noise_applies_its_draws_in_training_and_nothing_in_eval():
    noise = ex.DistributionNoise(5, max_shift=0.5, scale_range=(0.5, 2.0), seed=3)
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
    a = ex.DistributionNoise(3, seed=1)(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, ex.DistributionNoise(3, seed=1)(x))
    assert not torch.equal(a, ex.DistributionNoise(3, seed=2)(x))


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_features=0), dict(num_features=3, max_shift=-1.0), dict(num_features=3, scale_range=(0.0, 1.0)),
     dict(num_features=3, scale_range=(2.0, 1.0))],
)
def test_distribution_noise_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ex.DistributionNoise(**kwargs)


def test_distribution_noise_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(N, 3, \.\.\.\)"):
        ex.DistributionNoise(3)(torch.randn(4, 5))


def test_add_noise_after_bn_wraps_every_bn_layer_and_is_identity_in_eval():
    model = mlp(norm="bn", seed=0)
    reference = copy.deepcopy(model).eval()
    noises = ex.add_noise_after_bn(model, seed=0)
    assert len(noises) == 3
    assert all(isinstance(m[1], ex.DistributionNoise) for m in model if isinstance(m, nn.Sequential))
    assert len(ex.batchnorm_modules(model)) == 3  # the BN layers are kept
    x = torch.randn(10, 64)
    model.eval()
    assert torch.allclose(model(x), reference(x))
    model.train()
    assert model(x).shape == (10, 10)
    with pytest.raises(ValueError, match="batch-norm"):
        ex.add_noise_after_bn(mlp(norm=None))


# -- watching distributions --------------------------------------------------------


def test_input_tracker_sees_standardized_inputs_behind_a_fresh_bn_layer(data):
    model = mlp(norm="bn", seed=0)
    tracker = ex.InputTracker(activation_modules(model)[0], data.x_train[:100], every=5, unit=2)
    before = _buffers(model)
    for step in range(11):
        tracker(step, model)
    assert tracker.steps == [0, 5, 10]
    assert tracker.means.shape == (3, 100) and tracker.stds.shape == (3, 100)
    assert tracker.percentiles.shape == (3, 3)
    # gamma = 1, beta = 0 at initialization: batch-normalized inputs have mean 0 and std ~1
    np.testing.assert_allclose(tracker.means, 0.0, atol=1e-5)
    np.testing.assert_allclose(tracker.stds, 1.0, atol=1e-2)
    assert _same(before, _buffers(model))  # recording leaves the running statistics alone


def test_input_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ex.InputTracker(nn.Identity(), torch.randn(5, 3), every=0)
    with pytest.raises(ValueError):
        ex.InputTracker(nn.Identity(), torch.randn(1, 3))


def test_distribution_drift_on_known_values():
    means = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    stds = np.ones((3, 2))
    # unit 0 moves by 1 then 2, unit 1 does not move: (1 + 2 + 0 + 0) / 4
    assert ex.distribution_drift(means, stds) == pytest.approx(0.75)
    assert ex.distribution_drift(np.zeros((4, 3)), np.ones((4, 3))) == 0.0
    with pytest.raises(ValueError):
        ex.distribution_drift(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError):
        ex.distribution_drift(np.zeros((3, 3)), np.zeros((3, 2)))


# -- landscape -------------------------------------------------------------------------


def test_landscape_along_gradient_matches_a_manual_step_and_changes_nothing(data):
    model = mlp(norm="bn", activation="relu", seed=0)
    x, y = data.x_train[:32], data.y_train[:32]
    params, buffers = copy.deepcopy(model.state_dict()), _buffers(model)
    losses, changes = ex.landscape_along_gradient(model, x, y, [0.1, 0.5])
    assert losses.shape == changes.shape == (2,)
    # the model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params.items())
    assert _same(buffers, _buffers(model))
    # by hand: step 0.5 along -g on a copy, training mode
    manual = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(manual(x), y)
    grads = torch.autograd.grad(loss, list(manual.parameters()))
    with torch.no_grad():
        for p, g in zip(manual.parameters(), grads):
            p -= 0.5 * g
    loss2 = nn.functional.cross_entropy(manual(x), y)
    grads2 = torch.autograd.grad(loss2, list(manual.parameters()))
    change = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grads2, grads))).item()
    assert losses[1] == pytest.approx(loss2.item(), rel=1e-5)
    assert changes[1] == pytest.approx(change, rel=1e-4)
    with pytest.raises(ValueError):
        ex.landscape_along_gradient(model, x, y, [0.0, 0.1])
    with pytest.raises(ValueError):
        ex.landscape_along_gradient(model, x, y[:10], [0.1])


def test_train_tracking_landscape_shapes(data):
    r = ex.train_tracking_landscape(mlp(norm="bn", seed=0), data, steps=10, step_sizes=[0.1, 0.2, 0.4], every=5)
    assert list(r["step"]) == [0, 5, 10]
    assert r["losses"].shape == r["grad_changes"].shape == (3, 3)
    np.testing.assert_allclose(r["loss_range"], r["losses"].max(1) - r["losses"].min(1))
    np.testing.assert_allclose(r["grad_change"], r["grad_changes"].max(1))
    assert np.all(r["loss_range"] >= 0) and r["history"].step[-1] == 10


# -- batch size and running statistics ------------------------------------------------


def test_batch_size_sweep_shape(data):
    out = ex.batch_size_sweep(data, [None, "bn"], [4, 8], [0, 1], steps=3)
    assert set(out) == {None, "bn"}
    assert all(v.shape == (2, 2) and np.all((v >= 0) & (v <= 1)) for v in out.values())


def test_set_bn_momentum():
    model = mlp(norm="bn")
    assert ex.set_bn_momentum(model, 0.01) == 3
    assert all(bn.momentum == 0.01 for bn in ex.batchnorm_modules(model))
    ex.set_bn_momentum(model, None)
    assert all(bn.momentum is None for bn in ex.batchnorm_modules(model))
    with pytest.raises(ValueError):
        ex.set_bn_momentum(model, 1.5)
    with pytest.raises(ValueError):
        ex.set_bn_momentum(mlp(norm=None), 0.1)


@pytest.mark.parametrize("layer", [bnn.BatchNorm1d, nn.BatchNorm1d])
def test_recalibrate_bn_gives_the_exact_statistics_of_the_data(layer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), layer(4, momentum=0.9))
    model[1].running_mean.fill_(7.0)  # garbage to be replaced
    x = torch.randn(40, 6) * 3 + 1
    weights = copy.deepcopy(model[0].state_dict())
    model.eval()
    ex.recalibrate_bn(model, x, batch_size=10)
    with torch.no_grad():
        z = model[0](x)
    bn = model[1]
    # equal batches: the average of the batch means is the mean over x
    torch.testing.assert_close(bn.running_mean, z.mean(0), rtol=1e-5, atol=1e-5)
    # the running variance is the average of the four batches' unbiased variances
    torch.testing.assert_close(bn.running_var, z.reshape(4, 10, 4).var(1).mean(0), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.9 and not model.training  # restored
    assert all(torch.equal(v, model[0].state_dict()[k]) for k, v in weights.items())
    # one batch of everything: the running variance is the unbiased variance over x
    ex.recalibrate_bn(model, x, batch_size=40)
    torch.testing.assert_close(bn.running_var, z.var(0), rtol=1e-5, atol=1e-5)


def test_recalibrate_bn_rejects_bad_input():
    with pytest.raises(ValueError):
        ex.recalibrate_bn(mlp(norm="bn"), torch.randn(10, 64), batch_size=1)
    with pytest.raises(ValueError):
        ex.recalibrate_bn(mlp(norm=None), torch.randn(10, 64))


def test_train_eval_gap_small_when_running_stats_match_the_probe(data):
    model = mlp(norm="bn", activation="relu", seed=0)
    probe = data.x_test[:200]
    fresh = ex.TrainEvalGap(probe, every=1)
    fresh(0, model)
    ex.recalibrate_bn(model, probe, batch_size=200)
    matched = ex.TrainEvalGap(probe, every=1)
    before = _buffers(model)
    matched(0, model)
    assert _same(before, _buffers(model))
    # running statistics from the probe itself: the modes differ only by the unbiased-variance factor
    assert matched.relative_difference[0] < 0.01
    assert fresh.relative_difference[0] > 10 * matched.relative_difference[0]
    assert matched.disagreement[0] <= fresh.disagreement[0]
    with pytest.raises(ValueError):
        ex.TrainEvalGap(probe, every=0)


# -- placement and pitfalls ----------------------------------------------------------------


def test_variance_shift_is_one_without_dropout_and_above_one_after_dropout(data):
    x = data.x_train[:400]
    plain = mlp(norm="bn", activation="relu", seed=0)
    ex.recalibrate_bn(plain, x, batch_size=400)
    # exactly 1 for the first layer; later layers see the earlier ones normalize with the unbiased
    # running variance (factor 400/399) instead of the biased batch variance, hence the slack
    shift = ex.variance_shift(plain, x)
    assert shift[0] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(shift, 1.0, atol=0.01)
    dropped = mlp(norm="bn", activation="relu", dropout=0.5, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ex.recalibrate_bn(dropped, x, batch_size=400)  # dropout is on during recalibration
    shift = ex.variance_shift(dropped, x)
    assert shift[0] == pytest.approx(1.0, abs=1e-4)  # no dropout in front of the first BN layer
    assert np.all(shift[1:] > 1.1)


def test_train_mode_predictions_restore_or_keep_the_running_stats(data):
    model = mlp(norm="bn", seed=0).eval()
    x = data.x_test[:21]
    before = _buffers(model)
    pred = ex.train_mode_predictions(model, x, 4)
    assert pred.shape == (21,) and not model.training
    assert _same(before, _buffers(model))
    assert int((pred == -1).sum()) == 1  # 21 = 5 * 4 + 1: the final batch of one is skipped
    ex.train_mode_predictions(model, x, 4, keep_running_stats=False)
    assert not _same(before, _buffers(model))
    with pytest.raises(ValueError):
        ex.train_mode_predictions(model, x, 1)
    with pytest.raises(ValueError, match="permutation"):
        ex.train_mode_predictions(model, x, 4, order=torch.zeros(21, dtype=torch.int64))


def test_train_mode_accuracy_equals_eval_accuracy_without_bn(data):
    from bncourse.training import evaluate

    model = mlp(norm=None, seed=0)
    acc = ex.train_mode_accuracy(model, data.x_test, data.y_test, 10)
    assert acc == pytest.approx(evaluate(model, data.x_test, data.y_test)[1])
    assert ex.train_mode_accuracy(model, data.x_test, data.y_test, 10, by_class=True) == pytest.approx(acc)


def test_freeze_bn_statistics_runs_bn_in_eval_mode_while_training(data):
    model = mlp(norm="bn", seed=0)
    ex.set_bn_momentum(model, 0.5)
    ex.recalibrate_bn(model, data.x_train[:200], batch_size=100)
    x = data.x_train[:30]
    expected = model.eval()(x)
    before = _buffers(model)
    handles = ex.freeze_bn_statistics(model)
    model.train()
    out = model(x)
    torch.testing.assert_close(out, expected)
    assert _same(before, _buffers(model))
    out.sum().backward()  # gamma and beta still receive gradients
    assert all(bn.weight.grad is not None for bn in ex.batchnorm_modules(model))
    for h in handles:
        h.remove()
    model.train()
    model(x)
    assert not _same(before, _buffers(model))


def test_shifted_digits(data):
    new = ex.shifted_digits(data, scale=0.5, offset=1.0, n_train=50)
    assert new.x_train.shape == (50, 64) and new.y_train.shape == (50,)
    torch.testing.assert_close(new.x_train, data.x_train[:50] * 0.5 + 1.0)
    torch.testing.assert_close(new.x_test, data.x_test * 0.5 + 1.0)
    assert torch.equal(new.y_test, data.y_test)
    with pytest.raises(ValueError):
        ex.shifted_digits(data, n_train=0)


def test_train_runs_measures_both_sets(data):
    r = ex.train_runs(lambda s: mlp(norm="bn", seed=s), data, [0, 1], steps=5, eval_every=5)
    assert len(r["models"]) == len(r["histories"]) == 2
    for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss"):
        assert r[key].shape == (2,)
    np.testing.assert_allclose(r["test_accuracy"], [h.final_accuracy for h in r["histories"]])


def test_train_runs_can_vary_the_split_with_the_seed(data):
    from bncourse.training import evaluate

    splits = {s: load_digits_split(seed=s) for s in (0, 1)}
    r = ex.train_runs(lambda s: mlp(seed=s), splits.__getitem__, [0, 1], steps=3, eval_every=3)
    for seed, model in zip((0, 1), r["models"]):
        x, y = splits[seed].x_test, splits[seed].y_test
        assert r["test_accuracy"][seed] == pytest.approx(evaluate(model, x, y)[1])


# -- figures ---------------------------------------------------------------------------------


def test_plot_helpers_draw_and_validate():
    axes = ex.plot_normalization_axes(num_examples=3, num_channels=4, num_groups=2)
    assert len(axes) == 3 and all(len(ax.patches) == 12 for ax in axes)
    ax = ex.plot_band([0, 1, 2], np.array([[1.0, 2, 3], [2, 3, 4]]), label="a")
    assert ax.lines[0].get_ydata().tolist() == [1.5, 2.5, 3.5]
    ax = ex.plot_grouped_bars({"g1": {"a": [1, 2], "b": [3]}, "g2": {"a": [2], "b": [4, 4]}}, ylabel="y")
    assert len(ax.patches) == 4
    with pytest.raises(ValueError):
        ex.plot_normalization_axes(num_channels=5, num_groups=2)
    with pytest.raises(ValueError):
        ex.plot_band([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError):
        ex.plot_grouped_bars({"g1": {"a": [1]}, "g2": {"b": [1]}}, ylabel="y")
    plt.close("all")
