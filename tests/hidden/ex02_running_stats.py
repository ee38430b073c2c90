"""Hidden cases for Exercise 2: update_running_stats and batchnorm_eval."""

from __future__ import annotations

import numpy as np

from bncourse.functional import batchnorm_inference
from bncourse.grading.references import running_stats_update
from bncourse.grading.spec import Case, Var, call, expect

from _common import affine, dims, sample


def _update_case(name, points, rng, dtype, momenta, n_range=(2, 16)):
    d = dims(rng, 2, 8)
    mean = rng.normal(size=d).astype(dtype)
    var = rng.uniform(0.5, 2.0, size=d).astype(dtype)
    steps, ref_mean, ref_var = [], mean.astype(np.float64), var.astype(np.float64)
    prev, expected = (mean, var), {}
    for k, m in enumerate(momenta):
        x = sample(rng, (dims(rng, *n_range), d), dtype, loc=rng.normal(size=d), scale=2.0)
        steps.append(call("update_running_stats", *prev, x, momentum=float(m),
                          store=(f"mean{k}", f"var{k}")))
        prev = (Var(f"mean{k}"), Var(f"var{k}"))
        ref_mean, ref_var = running_stats_update(ref_mean, ref_var, x, m)
        expected[f"mean{k}"] = expect(ref_mean, dtype=dtype)
        expected[f"var{k}"] = expect(ref_var, dtype=dtype)
    # Every intermediate result is judged after the last update: an update that modifies the
    # running statistics it was given (the text forbids it) changes them after the fact.
    return Case(name, points, steps, expected)


def _eval_case(name, points, rng, dtype, n):
    d = dims(rng, 2, 8)
    x = sample(rng, (n, d), dtype, loc=1.0, scale=2.0)
    mean = rng.normal(size=d).astype(dtype)
    var = rng.uniform(0.2, 3.0, size=d).astype(dtype)
    gamma, beta = affine(rng, (d,), dtype)
    ref = batchnorm_inference(*(a.astype(np.float64) for a in (x, mean, var, gamma, beta)))
    return Case(name, points, [call("batchnorm_eval", x, mean, var, gamma, beta, store="out")],
                {"out": expect(ref, dtype=dtype)})


def cases(rng: np.random.Generator) -> list[Case]:
    return [
        _update_case("update, float64, momentum 0.1", 2, rng, np.float64, [0.1]),
        _update_case("update, float32, momentum 0.1", 1, rng, np.float32, [0.1]),
        _update_case("three chained updates, momentum 0.05, 0.3, 0.9", 2, rng, np.float64,
                     [0.05, 0.3, 0.9]),
        _update_case("update with momentum 1 and N=2", 1, rng, np.float64, [1.0], n_range=(2, 2)),
        _eval_case("evaluation, float64", 2, rng, np.float64, dims(rng, 3, 20)),
        _eval_case("evaluation, float32", 1, rng, np.float32, dims(rng, 3, 20)),
        _eval_case("evaluation of a single example", 1, rng, np.float64, 1),
    ]
