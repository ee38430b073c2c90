"""Keras 3 (torch backend) against torch: the parameter mapping and the side-by-side fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.lab import keras_compat as kc
from bncourse.lab.data import load_digits_split

keras = kc.import_keras()

# Keras' own fit() converts torch tensors with np.array(), which NumPy 2 flags as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


_np = kc.to_numpy


def test_keras_defaults_and_biased_moving_variance():
    layer = keras.layers.BatchNormalization()
    assert (layer.momentum, layer.epsilon, layer.axis) == (0.99, 1e-3, -1)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4)).astype(np.float32)
    layer(x, training=True)
    np.testing.assert_allclose(_np(layer.moving_mean), 0.01 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(_np(layer.moving_variance), 0.99 + 0.01 * x.var(0), rtol=1e-6)
    assert not np.allclose(_np(layer.moving_variance), 0.99 + 0.01 * x.var(0, ddof=1), rtol=1e-4)


@pytest.mark.parametrize("momentum, eps", [(0.1, 1e-5), (0.3, 1e-3)])
def test_mapped_layers_agree_step_by_step(momentum, eps):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5, momentum=momentum, eps=eps)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    layer = keras.layers.BatchNormalization(**kc.keras_bn_kwargs_from_torch(bn))
    layer.build((None, 5))
    kc.copy_bn_torch_to_keras(bn, layer)
    assert kc.torch_bn_kwargs_from_keras(layer) == pytest.approx(
        {"momentum": momentum, "eps": eps, "affine": True}
    )
    rng = np.random.default_rng(1)
    m, keep = 16, 1 - momentum
    for step in range(1, 5):
        x = rng.normal(1.0, 2.0, size=(m, 5)).astype(np.float32)
        out_t = bn(torch.from_numpy(x)).detach().numpy()
        out_k = _np(layer(x, training=True))
        np.testing.assert_allclose(out_k, out_t, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            _np(layer.moving_mean), bn.running_mean.numpy(), rtol=1e-5, atol=1e-6
        )
        # Both start at 1; torch averages var * M / (M - 1), Keras var itself.
        start = keep**step
        np.testing.assert_allclose(
            bn.running_var.numpy() - start,
            (_np(layer.moving_variance) - start) * m / (m - 1),
            rtol=1e-5,
        )
    kc.copy_bn_keras_to_torch(layer, bn)
    bn.eval()
    x = rng.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(
        _np(layer(x, training=False)),
        bn(torch.from_numpy(x)).detach().numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_mapping_rejects_cumulative_momentum_and_bad_shapes():
    with pytest.raises(ValueError, match="momentum=None"):
        kc.keras_bn_kwargs_from_torch(nn.BatchNorm1d(3, momentum=None))
    layer = keras.layers.BatchNormalization()
    layer.build((None, 4))
    with pytest.raises(ValueError, match="shape"):
        kc.copy_bn_keras_to_torch(layer, nn.BatchNorm1d(3))


def test_three_frameworks_train_the_same_model():
    data = load_digits_split()
    orders = kc.epoch_orders(len(data.x_train), epochs=2, seed=0)
    keras_model = kc.keras_digits_mlp(seed=0)
    torch_model = kc.torch_digits_mlp(nn.BatchNorm1d)
    kc.copy_keras_mlp_to_torch(keras_model, torch_model)
    ours = bnn.replace_batchnorm(copy.deepcopy(torch_model))
    assert isinstance(ours[1], bnn.BatchNorm1d)
    x = data.x_test[:5]
    np.testing.assert_allclose(
        _np(keras_model(x.numpy(), training=False)),
        torch.softmax(torch_model.eval()(x), 1).detach().numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    h_keras = kc.fit_keras(keras_model, data, orders)
    h_torch = kc.fit_torch(torch_model, data, orders)
    h_ours = kc.fit_torch(ours, data, orders)
    for h in (h_keras, h_torch, h_ours):
        assert len(h["loss"]) == len(h["test_accuracy"]) == 2
        assert h["loss"][1] < h["loss"][0]
    np.testing.assert_allclose(h_ours["loss"], h_torch["loss"], rtol=1e-5)
    np.testing.assert_allclose(h_keras["loss"], h_torch["loss"], rtol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        kc.fit_torch(torch_model, data, orders, batch_size=1)


def test_epoch_orders_are_permutations():
    orders = kc.epoch_orders(10, 3, seed=1)
    assert len(orders) == 3 and all(sorted(o) == list(range(10)) for o in orders)
    assert not np.array_equal(orders[0], orders[1])


def test_keras_model_is_built_from_the_article_config_as_data():
    model = kc.keras_digits_mlp(hidden=16, seed=0)
    names = [type(layer).__name__ for layer in model.layers]
    assert names == [name for name, _ in kc.ARTICLE_MODEL["layers"]]
    assert model.layers[0].units == 16 and kc.ARTICLE_MODEL["layers"][0][1]["units"] == 64  # config untouched
    assert model.loss == kc.ARTICLE_MODEL["training"]["loss"]
    with pytest.raises(ValueError, match="Dense"):
        kc.keras_digits_mlp(config={"layers": [("BatchNormalization", {})], "training": {}})
