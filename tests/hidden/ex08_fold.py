"""Hidden cases for Exercise 8: fold_batchnorm(weight, bias, running_mean, running_var, gamma, beta, eps)."""

from __future__ import annotations

import numpy as np

from bncourse.functional import fold_batchnorm_arrays
from bncourse.grading.spec import Case, call, expect

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


def cases(rng: np.random.Generator) -> list[Case]:
    return [
        _case("float64, random sizes", 3, rng, dims(rng, 2, 12), dims(rng, 2, 12), np.float64),
        _case("float32, random sizes", 2, rng, dims(rng, 2, 12), dims(rng, 2, 12), np.float32),
        _case("a linear layer without bias (bias=None)", 2, rng, dims(rng, 2, 8), dims(rng, 2, 8),
              np.float64, bias=False),
        _case("eps=0.5 passed explicitly", 1, rng, dims(rng, 2, 8), dims(rng, 2, 8), np.float64, eps=0.5),
        _case("a single output feature", 1, rng, 1, dims(rng, 3, 8), np.float64),
        _case("a single input feature", 1, rng, dims(rng, 3, 8), 1, np.float64),
    ]
