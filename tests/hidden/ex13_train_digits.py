"""Hidden cases for Exercise 13: a BatchNorm class, and train_digits trained in the sandbox.

The digits reach the sandbox as input arrays (the sandbox has no scikit-learn): the stratified,
standardized split of ``bncourse.lab.data`` (seed 0). ``train_digits`` runs once, with a seed drawn
here, and its ``predict`` is scored on the held-out digits by accuracy (at least 95 %), alone and with
rows of noise mixed into the batch (labels -1: not scored), which an evaluation-mode network ignores.
"""

from __future__ import annotations

import numpy as np

from bncourse.functional import batchnorm_backward, batchnorm_forward
from bncourse.grading.references import running_stats_update
from bncourse.grading.spec import Case, call, expect, expect_labels, get, put

from _common import affine, digits, dims, sample

TARGET = 0.93
NOISE_ROWS = 120


def _layer(rng, c):
    gamma, beta = affine(rng, (c,), np.float64)
    return [call("BatchNorm", c, store="layer"), put("layer", "gamma", gamma), put("layer", "beta", beta)], \
        gamma, beta


def _forward_case(rng):
    c, n = dims(rng, 2, 8), dims(rng, 4, 32)
    steps, gamma, beta = _layer(rng, c)
    x = sample(rng, (n, c), np.float64, loc=rng.normal(size=c) * 2, scale=rng.uniform(0.5, 3, size=c))
    ref, _ = batchnorm_forward(x, gamma, beta)
    return Case("BatchNorm.forward in training mode", 1, steps + [call("layer.forward", x, True, store="out")],
                {"out": expect(ref, dtype=None)})


def _backward_cases(rng):
    c, n = dims(rng, 2, 8), dims(rng, 4, 32)
    steps, gamma, beta = _layer(rng, c)
    x = sample(rng, (n, c), np.float64, loc=rng.normal(size=c), scale=2.0)
    dout = sample(rng, (n, c), np.float64)
    _, cache = batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    steps += [call("layer.forward", x, True, store="out"), call("layer.backward", dout, store="dx")]
    return [Case("BatchNorm.backward: dx", 1, steps, {"dx": expect(dx, dtype=None, kind="grad")}),
            Case("BatchNorm.backward: dgamma and dbeta", 0.5,
                 steps + [get("layer", "dgamma", "dgamma"), get("layer", "dbeta", "dbeta")],
                 {"dgamma": expect(dgamma, dtype=None, kind="grad"),
                  "dbeta": expect(dbeta, dtype=None, kind="grad")})]


def _eval_case(rng):
    c = dims(rng, 2, 8)
    steps, gamma, beta = _layer(rng, c)
    mean, var = np.zeros(c), np.ones(c)
    loc, scale = rng.normal(size=c) * 2, rng.uniform(0.5, 3, size=c)
    for k in range(3):
        x = sample(rng, (dims(rng, 4, 16), c), np.float64, loc=loc, scale=scale)
        steps.append(call("layer.forward", x, True, store=f"train{k}"))
        mean, var = running_stats_update(mean, var, x, 0.1)
    x = sample(rng, (dims(rng, 1, 5), c), np.float64, loc=loc, scale=scale)
    steps.append(call("layer.forward", x, False, store="out"))
    ref = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
    return Case("BatchNorm.forward in evaluation mode after three training steps", 1, steps,
                {"out": expect(ref, dtype=None)})


def _training_case(rng):
    x_train, y_train, x_test, y_test = (a.copy() for a in digits())
    noise = rng.normal(size=(NOISE_ROWS, x_test.shape[1])) * 30.0 + rng.normal(size=x_test.shape[1]) * 30.0
    order = rng.permutation(len(x_test) + NOISE_ROWS)
    mixed = np.concatenate([x_test, noise])[order]
    mixed_labels = np.concatenate([y_test, np.full(NOISE_ROWS, -1)])[order]
    steps = [call("train_digits", x_train, y_train, int(rng.integers(0, 2**31 - 1)), store="model"),
             call("model.predict", x_test, store="test_labels"),
             call("model.predict", mixed, store="mixed_labels")]
    return Case(f"train_digits: at least {TARGET:.0%} accuracy on {len(x_test)} held-out digits, alone "
                f"and with {NOISE_ROWS} rows of noise in the batch", 6.5, steps,
                {"test_labels": expect_labels(y_test, TARGET),
                 "mixed_labels": expect_labels(mixed_labels, TARGET)})


def cases(rng: np.random.Generator) -> list[Case]:
    return [_forward_case(rng), *_backward_cases(rng), _eval_case(rng), _training_case(rng)]
