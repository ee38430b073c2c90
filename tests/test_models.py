"""bncourse.lab.models: layer order, shapes, seeding, init scaling and argument checks."""

import pytest
import torch
from torch import nn

from bncourse import nn as bnn
from bncourse.lab.models import activation_modules, mlp, norm_layer, small_cnn


def _kinds(model):
    return [type(m).__name__ for m in model]


def test_mlp_shapes_and_default_layout():
    model = mlp()
    assert _kinds(model) == ["Linear", "Sigmoid"] * 3 + ["Linear"]
    assert model(torch.randn(5, 64)).shape == (5, 10)


@pytest.mark.parametrize("norm, cls", [("bn", "BatchNorm1d"), ("ln", "LayerNorm"), ("gn", "GroupNorm")])
def test_norm_placement(norm, cls):
    before = mlp(hidden=(12, 12), norm=norm, activation="relu")
    after = mlp(hidden=(12, 12), norm=norm, activation="relu", placement="after")
    assert _kinds(before) == ["Linear", cls, "ReLU"] * 2 + ["Linear"]
    assert _kinds(after) == ["Linear", "ReLU", cls] * 2 + ["Linear"]
    assert before(torch.randn(4, 64)).shape == (4, 10)


def test_norm_layers_come_from_bncourse():
    # The experiments must run on the course's own layers, not torch's.
    assert isinstance(norm_layer("bn", 8), bnn.BatchNorm1d)
    assert isinstance(norm_layer("bn", 8, dims=2), bnn.BatchNorm2d)
    assert isinstance(norm_layer("ln", 8), bnn.LayerNorm)
    gn = norm_layer("gn", 12)
    assert isinstance(gn, bnn.GroupNorm) and gn.num_groups == 6


def test_dropout_bias_and_names():
    model = mlp(hidden=(7,), dropout=0.5, bias=False, activation="tanh")
    assert _kinds(model) == ["Linear", "Tanh", "Dropout", "Linear"]
    assert model.fc1.bias is None and model.out.bias is not None
    assert activation_modules(model) == [model.act1]


def test_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = mlp(seed=3), mlp(seed=3), mlp(seed=4)
    assert torch.rand(1) == expected
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_init_scale_multiplies_default_weights():
    base, scaled = mlp(seed=1), mlp(seed=1, init_scale=3.0)
    for name in ("fc1", "fc2", "fc3", "out"):
        assert torch.allclose(getattr(scaled, name).weight, 3.0 * getattr(base, name).weight)
        assert torch.equal(getattr(scaled, name).bias, getattr(base, name).bias)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"activation": "gelu"}, "activation"),
        ({"norm": "batch"}, "norm"),
        ({"placement": "middle"}, "placement"),
        ({"dropout": 1.0}, "dropout"),
        ({"init_scale": 0.0}, "init_scale"),
        ({"hidden": (10, 0)}, "hidden"),
        ({"in_features": 0}, "in_features"),
    ],
)
def test_mlp_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mlp(**kwargs)


def test_norm_layer_bad_arguments():
    with pytest.raises(ValueError, match="norm kind"):
        norm_layer("in", 8)
    with pytest.raises(ValueError, match="num_groups"):
        norm_layer("gn", 10, num_groups=3)
    with pytest.raises(ValueError, match="dims"):
        norm_layer("ln", 8, dims=2)


@pytest.mark.parametrize("norm", [None, "bn", "gn"])
def test_small_cnn(norm):
    model = small_cnn(norm=norm, channels=(4, 6))
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    has_bn = any(isinstance(m, nn.Module) and type(m).__name__ == "BatchNorm2d" for m in model)
    assert has_bn == (norm == "bn")
    assert torch.equal(small_cnn(norm=norm, seed=2).conv1.weight, small_cnn(norm=norm, seed=2).conv1.weight)


def test_small_cnn_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        small_cnn(norm="ln")
    with pytest.raises(ValueError, match="channel"):
        small_cnn(channels=(4, 4, 4, 4))


def test_norm_twins_share_initial_weights():
    # A with/without-BN comparison starts from the same Linear weights for the same seed.
    plain, bn = mlp(seed=5), mlp(seed=5, norm="bn")
    for name in ("fc1", "fc2", "fc3", "out"):
        assert torch.equal(getattr(plain, name).weight, getattr(bn, name).weight)
