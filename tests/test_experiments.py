"""Tests for bncourse.lab.experiments: batch size, running statistics, placement and pitfalls."""

import numpy as np
import pytest
import torch

from torch import nn

import bncourse.nn as bnn
from bncourse.lab import experiments as ex
from bncourse.lab.data import load_digits_split
from bncourse.lab.models import mlp
from bncourse.nn.utils import recalibrate_bn

from model_state import buffers, same  # the helper sits next to this file

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


# -- batch size and running statistics ------------------------------------------------


def test_batch_size_sweep_shape(data):
    out = ex.batch_size_sweep(data, [None, "bn"], [4, 8], [0, 1], steps=3)
    assert set(out) == {None, "bn"}
    assert all(v.shape == (2, 2) and np.all((v >= 0) & (v <= 1)) for v in out.values())


def test_train_eval_gap_small_when_running_stats_match_the_probe(data):
    model = mlp(norm="bn", activation="relu", seed=0)
    probe = data.x_test[:200]
    fresh = ex.TrainEvalGap(probe, every=1)
    fresh(0, model)
    recalibrate_bn(model, probe, batch_size=200)
    matched = ex.TrainEvalGap(probe, every=1)
    before = buffers(model)
    matched(0, model)
    assert same(before, buffers(model))
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
    recalibrate_bn(plain, x, batch_size=400)
    # exactly 1 for the first layer; later layers see the earlier ones normalize with the unbiased
    # running variance (factor 400/399) instead of the biased batch variance, hence the slack
    shift = ex.variance_shift(plain, x)
    assert shift[0] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(shift, 1.0, atol=0.01)
    dropped = mlp(norm="bn", activation="relu", dropout=0.5, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        recalibrate_bn(dropped, x, batch_size=400)  # dropout is on during recalibration
    shift = ex.variance_shift(dropped, x)
    assert shift[0] == pytest.approx(1.0, abs=1e-4)  # no dropout in front of the first BN layer
    assert np.all(shift[1:] > 1.1)


def test_train_mode_predictions_restore_or_keep_the_running_stats(data):
    model = mlp(norm="bn", seed=0).eval()
    x = data.x_test[:21]
    before = buffers(model)
    pred = ex.train_mode_predictions(model, x, 4)
    assert pred.shape == (21,) and not model.training
    assert same(before, buffers(model))
    assert int((pred == -1).sum()) == 1  # 21 = 5 * 4 + 1: the final batch of one is skipped
    ex.train_mode_predictions(model, x, 4, keep_running_stats=False)
    assert not same(before, buffers(model))
    with pytest.raises(ValueError):
        ex.train_mode_predictions(model, x, 1)
    with pytest.raises(ValueError, match="permutation"):
        ex.train_mode_predictions(model, x, 4, order=torch.zeros(21, dtype=torch.int64))


def test_train_mode_accuracy_equals_eval_accuracy_without_bn(data):
    from bncourse.lab.training import evaluate

    model = mlp(norm=None, seed=0)
    acc = ex.train_mode_accuracy(model, data.x_test, data.y_test, 10)
    assert acc == pytest.approx(evaluate(model, data.x_test, data.y_test)[1])
    assert ex.train_mode_accuracy(model, data.x_test, data.y_test, 10, by_class=True) == pytest.approx(acc)


def test_shifted_digits(data):
    new = ex.shifted_digits(data, scale=0.5, offset=1.0, n_train=50)
    assert new.x_train.shape == (50, 64) and new.y_train.shape == (50,)
    torch.testing.assert_close(new.x_train, data.x_train[:50] * 0.5 + 1.0)
    torch.testing.assert_close(new.x_test, data.x_test * 0.5 + 1.0)
    assert torch.equal(new.y_test, data.y_test)
    with pytest.raises(ValueError):
        ex.shifted_digits(data, n_train=0)


def test_eval_and_no_grad_switch_different_things(data):
    model = mlp(norm="bn", activation="relu", dropout=0.5, seed=0)
    x, y = data.x_test[:64], data.y_test[:64]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    r = ex.eval_and_no_grad(model, x, y)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())  # untouched
    for grad in ("grad", "no_grad"):
        # the mode decides statistics and dropout, whatever no_grad says
        assert r[("train", grad)]["stats_updated"] and not r[("train", grad)]["repeatable"]
        assert not r[("eval", grad)]["stats_updated"] and r[("eval", grad)]["repeatable"]
    for mode in ("train", "eval"):
        # no_grad decides only the graph
        assert r[(mode, "grad")]["graph"] and not r[(mode, "no_grad")]["graph"]
    with pytest.raises(ValueError):
        ex.eval_and_no_grad(mlp(norm=None), x, y)


def test_eval_normalized_rms_shows_the_unbiased_variance_factor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), bnn.BatchNorm1d(8))
    x = torch.randn(4, 5) * 3
    recalibrate_bn(model, x, batch_size=4)  # running stats from this batch: unbiased variance
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    rms = ex.eval_normalized_rms(model, x)
    assert rms.shape == (1,) and rms[0] == pytest.approx(np.sqrt(3 / 4), rel=1e-3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    with pytest.raises(ValueError):
        ex.eval_normalized_rms(nn.Linear(5, 8), x)
