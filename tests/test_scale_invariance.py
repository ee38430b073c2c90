"""bncourse.lab.scale_invariance: scale response, weight recorder, selective weight decay."""

import numpy as np
import pytest
import torch

from bncourse.lab.data import load_digits_split
from bncourse.lab.models import mlp
from bncourse.lab.scale_invariance import (WeightDecay, WeightRecorder, norm_parameters, scale_response,
                                           weight_parameters)
from bncourse.lab.training import train


def test_scale_response_shows_invariance_behind_bn_and_restores_the_weight():
    torch.manual_seed(0)
    model = mlp(hidden=(20, 20), activation="relu", norm="bn", bias=False, seed=0)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    before = model.fc2.weight.detach().clone()
    r = scale_response(model, model.fc2, x, y, [0.5, 1.0, 3.0])
    assert np.allclose(r["loss"], r["loss"][1], rtol=1e-4)
    assert np.allclose(r["scale"] * r["grad_norm"], r["grad_norm"][1], rtol=1e-3)
    assert np.all(np.abs(r["cosine"]) < 1e-4)
    assert torch.equal(model.fc2.weight, before)


def test_scale_response_without_bn_is_not_invariant():
    model = mlp(hidden=(20, 20), activation="relu", seed=0)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    r = scale_response(model, model.fc2, x, y, [0.5, 1.0, 3.0])
    assert np.ptp(r["loss"]) > 1e-3


def test_parameter_split_covers_every_parameter_once():
    model = mlp(activation="relu", norm="bn", bias=False)
    weights, others = weight_parameters(model), norm_parameters(model)
    assert len(weights) == 4 and len(others) == 6 + 1  # gamma, beta of 3 BN layers; the output bias
    assert {id(p) for p in weights} | {id(p) for p in others} == {id(p) for p in model.parameters()}


def test_recorder_and_decay_during_training():
    data = load_digits_split()
    model = mlp(hidden=(16,), activation="relu", norm="bn", bias=False, seed=0)
    recorder = WeightRecorder({"fc1": model.fc1})
    gamma_before = model.norm1.weight.detach().clone()
    decay = WeightDecay([model.norm1.weight], 0.5)
    train(model, data, steps=3, lr=1e-9, eval_every=3, on_step=lambda s, m: (decay(s, m), recorder(s, m)))
    assert recorder.steps == [0, 1, 2, 3]
    assert len(recorder.norm["fc1"]) == 4 and len(recorder.update_ratio["fc1"]) == 3
    assert max(recorder.update_ratio["fc1"]) < 1e-6  # a tiny learning rate barely moves the weights
    assert torch.allclose(model.norm1.weight, gamma_before * 0.5 ** 3, rtol=1e-5)
    with pytest.raises(ValueError, match="decay rate"):
        WeightDecay([], 1.5)
