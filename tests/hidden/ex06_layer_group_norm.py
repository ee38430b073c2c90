"""Hidden cases for Exercise 6: layernorm_forward and groupnorm_forward."""

from __future__ import annotations

import numpy as np

from bncourse.functional import groupnorm_forward, layernorm_forward
from bncourse.grading.spec import Case, call, expect

from _common import affine, dims, sample


def _ln(name, points, rng, shape, dtype):
    x = sample(rng, shape, dtype, loc=rng.normal(size=(shape[0],) + (1,) * (len(shape) - 1)) * 3,
               scale=2.0)
    gamma, beta = affine(rng, shape[1:], dtype)
    ref, _ = layernorm_forward(*(a.astype(np.float64) for a in (x, gamma, beta)))
    return Case(name, points, [call("layernorm_forward", x, gamma, beta, store="out")],
                {"out": expect(ref, dtype=dtype)})


def _gn(name, points, rng, n, groups, per_group, dtype):
    c = groups * per_group
    shape = (n, c, dims(rng, 2, 4), dims(rng, 2, 4))
    x = sample(rng, shape, dtype, loc=rng.normal(size=(1, c, 1, 1)) * 2,
               scale=rng.uniform(0.5, 3, size=(1, c, 1, 1)))
    gamma, beta = affine(rng, (c,), dtype)
    ref, _ = groupnorm_forward(*(a.astype(np.float64) if isinstance(a, np.ndarray) else a
                                 for a in (x, groups, gamma, beta)))
    return Case(name, points, [call("groupnorm_forward", x, groups, gamma, beta, store="out")],
                {"out": expect(ref, dtype=dtype)})


def cases(rng: np.random.Generator) -> list[Case]:
    return [
        _ln("layer norm, float64, (N, D)", 2, rng, (dims(rng, 2, 10), dims(rng, 3, 12)), np.float64),
        _ln("layer norm, float32, (N, D)", 1, rng, (dims(rng, 2, 10), dims(rng, 3, 12)), np.float32),
        _ln("layer norm, (N, C, L) with elementwise gamma", 1, rng,
            (dims(rng, 2, 6), dims(rng, 2, 4), dims(rng, 2, 5)), np.float64),
        _ln("layer norm, a batch of one", 1, rng, (1, dims(rng, 3, 12)), np.float64),
        _gn("group norm, float64, 3 groups of 2 channels", 2, rng, dims(rng, 2, 4), 3, 2, np.float64),
        _gn("group norm, float32, 2 groups of 3 channels", 1, rng, dims(rng, 2, 4), 2, 3, np.float32),
        _gn("group norm with one group", 1, rng, dims(rng, 2, 4), 1, 4, np.float64),
        _gn("group norm with one group per channel (instance norm)", 1, rng, dims(rng, 2, 4), 4, 1,
            np.float64),
    ]
