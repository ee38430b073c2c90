"""Hidden cases for Exercise 8: fold_batchnorm(weight, bias, running_mean, running_var, gamma, beta, eps)."""

from __future__ import annotations

import numpy as np

from bncourse.functional import fold_batchnorm_arrays
from bncourse.grading.spec import Case, Var, call, expect

from _common import affine, dims


def _case(name, points, rng, out_f, in_f, dtype, bias=True, eps=None):
    weight = rng.normal(size=(out_f, in_f)).astype(dtype)
    b = rng.normal(size=out_f).astype(dtype) if bias else None
    mean = (rng.normal(size=out_f) * 2).astype(dtype)
    var = rng.uniform(0.1, 4.0, size=out_f).astype(dtype)
    gamma, beta = affine(rng, (out_f,), dtype)
    args = [weight, b, mean, var, gamma, beta] + ([float(eps)] if eps is not None else [])
    # The reference is computed in float64, so a float32 answer is judged against an accurate value.
    as64 = [None if a is None else np.asarray(a, np.float64) for a in (weight, b, mean, var, gamma, beta)]
    ref_w, ref_b = fold_batchnorm_arrays(*as64, eps=1e-5 if eps is None else eps)
    return Case(name, points, [call("fold_batchnorm", *args, store=("weight", "bias"))],
                {"weight": expect(ref_w, dtype=dtype), "bias": expect(ref_b, dtype=dtype)})


def _twice(name, points, rng, out_f, in_f):
    """Fold, then fold the result again: the first result is judged after the second call, so an
    answer that modifies its arguments (the text forbids it) loses points."""
    weight, bias = rng.normal(size=(out_f, in_f)), rng.normal(size=out_f)
    layers = [(rng.normal(size=out_f), rng.uniform(0.1, 4.0, size=out_f), *affine(rng, (out_f,), np.float64))
              for _ in range(2)]
    ref_w1, ref_b1 = fold_batchnorm_arrays(weight, bias, *layers[0])
    ref_w2, ref_b2 = fold_batchnorm_arrays(ref_w1, ref_b1, *layers[1])
    steps = [call("fold_batchnorm", weight, bias, *layers[0], store=("weight1", "bias1")),
             call("fold_batchnorm", Var("weight1"), Var("bias1"), *layers[1], store=("weight2", "bias2"))]
    return Case(name, points, steps, {"weight1": expect(ref_w1), "bias1": expect(ref_b1),
                                      "weight2": expect(ref_w2), "bias2": expect(ref_b2)})


def cases(rng: np.random.Generator) -> list[Case]:
    return [
        _case("float64, random sizes", 2, rng, dims(rng, 2, 12), dims(rng, 2, 12), np.float64),
        _twice("folding twice (the arguments must stay unchanged)", 1, rng, dims(rng, 2, 8), dims(rng, 2, 8)),
        _case("float32, random sizes", 2, rng, dims(rng, 2, 12), dims(rng, 2, 12), np.float32),
        _case("a linear layer without bias (bias=None)", 2, rng, dims(rng, 2, 8), dims(rng, 2, 8),
              np.float64, bias=False),
        _case("eps=0.5 passed explicitly", 1, rng, dims(rng, 2, 8), dims(rng, 2, 8), np.float64, eps=0.5),
        _case("a single output feature", 1, rng, 1, dims(rng, 3, 8), np.float64),
        _case("a single input feature", 1, rng, dims(rng, 3, 8), 1, np.float64),
    ]
