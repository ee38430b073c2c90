"""bncourse.lab.training: the loop learns, is deterministic, detects divergence; evaluate leaves no trace;
train_seeds repeats a run over seeds and measures both sets."""

import math

import numpy as np
import pytest
import torch

from bncourse.lab.data import load_digits_split
from bncourse.lab.models import mlp
from bncourse.lab.training import History, evaluate, train, train_seeds, weight_grad_norms


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


def test_train_reduces_loss_and_learns(data):
    model = mlp(hidden=(32,), activation="relu")
    h = train(model, data, steps=120, lr=0.1, eval_every=40)
    assert h.step == [0, 40, 80, 120]
    assert len(h.train_loss) == len(h.test_loss) == len(h.test_accuracy) == 4
    assert h.train_loss[-1] < 0.5 * h.train_loss[0]
    assert h.test_loss[-1] < h.test_loss[0]
    assert h.test_accuracy[0] < 0.3 < 0.8 < h.final_accuracy  # from about chance to well above it
    assert not h.diverged


def test_epochs_budget_and_callback(data):
    seen = []
    model = mlp(hidden=(8,), norm="bn")
    h = train(model, data, epochs=1, batch_size=100, eval_every=5, on_step=lambda s, m: seen.append((s, m.training)))
    per_epoch = len(data.x_train) // 100
    assert seen == [(s, True) for s in range(per_epoch + 1)]
    assert h.step[-1] == per_epoch and h.step[-2] == 10


def test_deterministic_given_seed(data):
    def run(seed):
        model = mlp(hidden=(16,), dropout=0.2, norm="bn")
        return train(model, data, steps=30, eval_every=10, seed=seed), model

    (h1, m1), (h2, m2), (h3, _) = run(0), run(0), run(1)
    assert h1.train_loss == h2.train_loss and h1.test_accuracy == h2.test_accuracy
    assert torch.equal(m1.fc1.weight, m2.fc1.weight)
    assert h1.train_loss != h3.train_loss


def test_divergence_stops_and_is_flagged(data):
    model = mlp(hidden=(32, 32), activation="relu", init_scale=5.0)
    h = train(model, data, steps=200, lr=100.0, eval_every=50)
    assert h.diverged
    assert h.step[-1] < 200 and not math.isfinite(h.train_loss[-1])
    assert 0.0 <= h.final_accuracy <= 0.2  # non-finite logits count as wrong


def test_steps_to():
    h = History(step=[0, 10, 20], train_loss=[2.0, 1.0, 0.5], test_loss=[2, 1, 0.5], test_accuracy=[0.1, 0.6, 0.9])
    assert h.steps_to(0.5) == 10 and h.steps_to(0.9) == 20 and h.steps_to(0.95) is None


def test_evaluate_restores_mode_and_uses_eval_mode(data):
    model = mlp(hidden=(8,), norm="bn")
    model.train()
    loss, acc = evaluate(model, data.x_test, data.y_test)
    assert model.training and 0.0 <= acc <= 1.0 and loss > 0
    # Fresh running stats are (0, 1), so eval mode differs from batch statistics: check evaluate used eval mode.
    with torch.no_grad():
        model.eval()
        expected = torch.nn.functional.cross_entropy(model(data.x_test), data.y_test).item()
        model.train()
    assert loss == pytest.approx(expected)
    with pytest.raises(ValueError):
        evaluate(model, data.x_test, data.y_test[:-1])


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({}, "exactly one"),
        ({"steps": 5, "epochs": 1}, "exactly one"),
        ({"steps": 0}, "positive"),
        ({"steps": 5, "optimizer": "rmsprop"}, "optimizer"),
        ({"steps": 5, "batch_size": 0}, "batch_size"),
        ({"steps": 5, "lr": -1.0}, "lr"),
        ({"steps": 5, "eval_every": 0}, "eval_every"),
    ],
)
def test_train_bad_arguments(data, kwargs, word):
    with pytest.raises(ValueError, match=word):
        train(mlp(hidden=(4,)), data, **kwargs)


def test_weight_grad_norms_and_no_trace(data):
    model = mlp(hidden=(8, 8), norm="bn")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = weight_grad_norms(model, data.x_train[:60], data.y_train[:60])
    assert list(norms) == ["fc1", "fc2", "out"] and all(v > 0 for v in norms.values())
    assert not model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Matches a plain backward pass on the same batch.
    model.train()
    torch.nn.functional.cross_entropy(model(data.x_train[:60]), data.y_train[:60]).backward()
    assert norms["fc2"] == pytest.approx(model.fc2.weight.grad.norm().item(), rel=1e-5)


def test_train_seeds_measures_both_sets(data):
    r = train_seeds(lambda s: mlp(hidden=(8,), norm="bn", seed=s), data, seeds=(0, 1), steps=10, eval_every=5)
    assert len(r["models"]) == len(r["histories"]) == 2
    assert r["histories"][0].step == [0, 5, 10]
    assert r["histories"][0].train_loss != r["histories"][1].train_loss  # the seed changes the run
    for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss"):
        assert r[key].shape == (2,)
    np.testing.assert_allclose(r["test_accuracy"], [h.final_accuracy for h in r["histories"]])
    np.testing.assert_allclose(r["test_loss"], [h.test_loss[-1] for h in r["histories"]])
    for model, acc, loss in zip(r["models"], r["train_accuracy"], r["train_loss"]):
        assert (loss, acc) == pytest.approx(evaluate(model, data.x_train, data.y_train))
    # the same histories as training each seed by hand
    alone = train(mlp(hidden=(8,), norm="bn", seed=1), data, seed=1, steps=10, eval_every=5)
    assert alone.test_loss == r["histories"][1].test_loss


def test_train_seeds_can_vary_the_split_with_the_seed():
    splits = {s: load_digits_split(seed=s) for s in (0, 1)}
    r = train_seeds(lambda s: mlp(seed=s), splits.__getitem__, [0, 1], steps=3, eval_every=3)
    for seed, model in zip((0, 1), r["models"]):
        x, y = splits[seed].x_test, splits[seed].y_test
        assert r["test_accuracy"][seed] == pytest.approx(evaluate(model, x, y)[1])
    with pytest.raises(ValueError, match="DigitsSplit"):
        train_seeds(lambda s: mlp(seed=s), {"x": 1}, [0], steps=3)
    with pytest.raises(ValueError, match="DigitsSplit"):
        train_seeds(lambda s: mlp(seed=s), lambda s: None, [0], steps=3)
