"""Tests for bncourse.lab.smoothness: the loss and gradient along the gradient direction."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.lab import smoothness as sm
from bncourse.lab.data import load_digits_split
from bncourse.lab.models import mlp

from model_state import buffers, same  # the helper sits next to this file

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


def test_landscape_along_gradient_matches_a_manual_step_and_changes_nothing(data):
    model = mlp(norm="bn", activation="relu", seed=0)
    x, y = data.x_train[:32], data.y_train[:32]
    params, saved = copy.deepcopy(model.state_dict()), buffers(model)
    losses, changes, loss0, grad_norm = sm.landscape_along_gradient(model, x, y, [0.1, 0.5])
    assert losses.shape == changes.shape == (2,)
    # the model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params.items())
    assert same(saved, buffers(model))
    # by hand: step 0.5 along -g on a copy, training mode
    manual = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(manual(x), y)
    grads = torch.autograd.grad(loss, list(manual.parameters()))
    with torch.no_grad():
        for p, g in zip(manual.parameters(), grads):
            p -= 0.5 * g
    assert loss0 == pytest.approx(loss.item(), rel=1e-6)
    assert grad_norm == pytest.approx(torch.sqrt(sum((g**2).sum() for g in grads)).item(), rel=1e-5)
    loss2 = nn.functional.cross_entropy(manual(x), y)
    grads2 = torch.autograd.grad(loss2, list(manual.parameters()))
    change = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grads2, grads))).item()
    assert losses[1] == pytest.approx(loss2.item(), rel=1e-5)
    assert changes[1] == pytest.approx(change, rel=1e-4)
    with pytest.raises(ValueError):
        sm.landscape_along_gradient(model, x, y, [0.0, 0.1])
    with pytest.raises(ValueError):
        sm.landscape_along_gradient(model, x, y[:10], [0.1])


def test_train_tracking_landscape_shapes(data):
    r = sm.train_tracking_landscape(mlp(norm="bn", seed=0), data, steps=10, step_sizes=[0.1, 0.2, 0.4], every=5)
    assert list(r["step"]) == [0, 5, 10]
    assert r["losses"].shape == r["grad_changes"].shape == (3, 3)
    np.testing.assert_allclose(r["loss_range"], r["losses"].max(1) - r["losses"].min(1))
    np.testing.assert_allclose(r["grad_change"], r["grad_changes"].max(1))
    assert np.all(r["loss_range"] >= 0) and r["history"].step[-1] == 10
    np.testing.assert_allclose(r["loss_change"], r["losses"] - r["loss0"][:, None])
    np.testing.assert_allclose(r["beta"], (r["grad_changes"] / (np.array([0.1, 0.2, 0.4]) * r["grad_norm"][:, None])).max(1))


def test_largest_descending_step_and_effective_beta_on_known_values():
    etas = [0.1, 0.2, 0.4]
    losses = np.array([[0.9, 0.8, 1.2], [1.1, 1.2, 1.3], [0.5, 0.6, 0.7]])
    # row 0 descends up to 0.2; row 1 never; row 2 at every step (not monotonically: still 0.4)
    np.testing.assert_array_equal(sm.largest_descending_step(losses, np.array([1.0, 1.0, 1.0]), etas), [0.2, 0.0, 0.4])
    # beta: change / (eta * ||g||); the largest of 1/(0.1*2)=5, 1/(0.2*2)=2.5, 4/(0.4*2)=5 -> 5
    assert sm.effective_beta(np.array([1.0, 1.0, 4.0]), 2.0, etas) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        sm.largest_descending_step(losses, np.ones(3), [0.1, 0.2])
    with pytest.raises(ValueError):
        sm.largest_descending_step(losses, np.ones(3), [0.4, 0.2, 0.1])
    with pytest.raises(ValueError):
        sm.effective_beta(np.ones(2), 1.0, etas)
