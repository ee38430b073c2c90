"""Tests for bncourse.nn.utils: finding BN layers, their running statistics, run_in_mode."""

import copy

import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.lab.data import load_digits_split
from bncourse.lab.models import mlp
from bncourse.nn.utils import (
    batchnorm_modules,
    freeze_bn_statistics,
    is_batchnorm,
    recalibrate_bn,
    run_in_mode,
    set_bn_momentum,
)

from model_state import buffers, same  # the helper sits next to this file

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


def test_is_batchnorm_recognizes_torch_and_course_layers():
    assert is_batchnorm(nn.BatchNorm1d(3)) and is_batchnorm(nn.BatchNorm2d(3))
    assert is_batchnorm(bnn.BatchNorm1d(3)) and is_batchnorm(bnn.BatchNorm2d(3))
    assert not is_batchnorm(nn.LayerNorm(3)) and not is_batchnorm(bnn.GroupNorm(1, 3))
    assert len(batchnorm_modules(mlp(norm="bn"))) == 3
    assert batchnorm_modules(mlp(norm="ln")) == []


def test_set_bn_momentum():
    model = mlp(norm="bn")
    assert set_bn_momentum(model, 0.01) == 3
    assert all(bn.momentum == 0.01 for bn in batchnorm_modules(model))
    set_bn_momentum(model, None)
    assert all(bn.momentum is None for bn in batchnorm_modules(model))
    with pytest.raises(ValueError):
        set_bn_momentum(model, 1.5)
    with pytest.raises(ValueError):
        set_bn_momentum(mlp(norm=None), 0.1)


@pytest.mark.parametrize("layer", [bnn.BatchNorm1d, nn.BatchNorm1d])
def test_recalibrate_bn_gives_the_exact_statistics_of_the_data(layer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), layer(4, momentum=0.9))
    model[1].running_mean.fill_(7.0)  # garbage to be replaced
    x = torch.randn(40, 6) * 3 + 1
    weights = copy.deepcopy(model[0].state_dict())
    model.eval()
    recalibrate_bn(model, x, batch_size=10)
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
    recalibrate_bn(model, x, batch_size=40)
    torch.testing.assert_close(bn.running_var, z.var(0), rtol=1e-5, atol=1e-5)


def test_recalibrate_bn_can_switch_dropout_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), bnn.BatchNorm1d(4))
    x = torch.randn(40, 6) * 3 + 1
    with torch.no_grad():
        z = model[0](x)
    recalibrate_bn(model, x, batch_size=40, dropout=False)
    # dropout off: the statistics are exactly those of the Linear layer's output
    torch.testing.assert_close(model[2].running_mean, z.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[2].running_var, z.var(0), rtol=1e-5, atol=1e-5)
    assert model.training and model[1].training  # modes restored
    recalibrate_bn(model, x.repeat(10, 1), batch_size=400)  # default: dropout on, the variance is inflated
    assert torch.all(model[2].running_var > 1.2 * z.var(0))


def test_recalibrate_bn_rejects_bad_input():
    with pytest.raises(ValueError):
        recalibrate_bn(mlp(norm="bn"), torch.randn(10, 64), batch_size=1)
    with pytest.raises(ValueError):
        recalibrate_bn(mlp(norm=None), torch.randn(10, 64))


def test_freeze_bn_statistics_runs_bn_in_eval_mode_while_training(data):
    model = mlp(norm="bn", seed=0)
    set_bn_momentum(model, 0.5)
    recalibrate_bn(model, data.x_train[:200], batch_size=100)
    x = data.x_train[:30]
    expected = model.eval()(x)
    before = buffers(model)
    handles = freeze_bn_statistics(model)
    model.train()
    out = model(x)
    torch.testing.assert_close(out, expected)
    assert same(before, buffers(model))
    out.sum().backward()  # gamma and beta still receive gradients
    assert all(bn.weight.grad is not None for bn in batchnorm_modules(model))
    for h in handles:
        h.remove()
    model.train()
    model(x)
    assert not same(before, buffers(model))


@pytest.mark.parametrize("train_mode", [True, False])
def test_run_in_mode_restores_mode_and_buffers(train_mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    before = buffers(model)
    with run_in_mode(model, train_mode):
        assert model.training == train_mode and model[1].training == train_mode
        model(torch.randn(8, 3) * 5 + 2)
    assert not model.training and not model[1].training
    assert same(before, buffers(model))
    # an exception inside the block still restores both
    with pytest.raises(RuntimeError), run_in_mode(model, True):
        model(torch.randn(8, 3) + 1)
        raise RuntimeError("boom")
    assert not model.training and same(before, buffers(model))


def test_run_in_mode_can_keep_the_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = buffers(model)
    with run_in_mode(model, True, restore_buffers=False):
        model(torch.randn(8, 3) + 1)
    assert model.training and not same(before, buffers(model))
    assert int(model[1].num_batches_tracked) == 1
