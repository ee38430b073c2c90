"""Hidden cases for Exercise 10: layernorm_backward and groupnorm_backward.

Each configuration is graded twice: ``dx`` (the point of the exercise) in one case, and
``dgamma``/``dbeta`` (two sums) in a case worth less, so the easy part cannot carry the grade.
"""

from __future__ import annotations

import numpy as np

from bncourse.functional import groupnorm_backward, groupnorm_forward, layernorm_backward, layernorm_forward
from bncourse.grading.spec import Case, call, expect

from _common import affine, dims, sample


def _cases(name, dx_points, param_points, target, args, grads, dtype):
    """One case for dx and, when ``param_points``, one for (dgamma, dbeta)."""
    dx, dgamma, dbeta = grads
    out = [Case(f"{name}: dx", dx_points, [call(target, *args, store=("dx", None, None))],
                {"dx": expect(dx, dtype=dtype, kind="grad")})]
    if param_points:
        out.append(Case(f"{name}: dgamma and dbeta", param_points,
                        [call(target, *args, store=(None, "dgamma", "dbeta"))],
                        {"dgamma": expect(dgamma, dtype=dtype, kind="grad"),
                         "dbeta": expect(dbeta, dtype=dtype, kind="grad")}))
    return out


def _ln(name, dx_points, param_points, rng, shape, dtype):
    x = sample(rng, shape, dtype, loc=rng.normal(size=(shape[0],) + (1,) * (len(shape) - 1)) * 3, scale=2.0)
    gamma, beta = affine(rng, shape[1:], dtype)
    dout = sample(rng, shape, dtype)
    _, cache = layernorm_forward(*(a.astype(np.float64) for a in (x, gamma, beta)))
    grads = layernorm_backward(dout.astype(np.float64), cache)
    return _cases(name, dx_points, param_points, "layernorm_backward", (dout, x, gamma), grads, dtype)


def _gn(name, dx_points, param_points, rng, groups, per_group, dtype):
    c = groups * per_group
    shape = (dims(rng, 2, 4), c, dims(rng, 1, 4), dims(rng, 2, 5))
    x = sample(rng, shape, dtype, loc=rng.normal(size=(1, c, 1, 1)) * 2,
               scale=rng.uniform(0.5, 3, size=(1, c, 1, 1)))
    gamma, beta = affine(rng, (c,), dtype)
    dout = sample(rng, shape, dtype)
    _, cache = groupnorm_forward(x.astype(np.float64), groups, gamma.astype(np.float64), beta.astype(np.float64))
    grads = groupnorm_backward(dout.astype(np.float64), cache)
    return _cases(name, dx_points, param_points, "groupnorm_backward", (dout, x, groups, gamma), grads, dtype)


def cases(rng: np.random.Generator) -> list[Case]:
    return [
        *_ln("layer norm, float64, (N, D)", 1.5, 0.5, rng, (dims(rng, 2, 10), dims(rng, 3, 12)), np.float64),
        *_ln("layer norm, float32, (N, D)", 1, 0, rng, (dims(rng, 2, 10), dims(rng, 3, 12)), np.float32),
        *_ln("layer norm, (N, C, L) with elementwise gamma", 1, 0.5, rng,
             (dims(rng, 2, 6), dims(rng, 2, 4), dims(rng, 2, 5)), np.float64),
        *_ln("layer norm, a batch of one", 0.5, 0, rng, (1, dims(rng, 3, 12)), np.float64),
        *_gn("group norm, float64, 3 groups of 2 channels", 1.5, 0.5, rng, 3, 2, np.float64),
        *_gn("group norm, float32, 2 groups of 3 channels", 1, 0, rng, 2, 3, np.float32),
        *_gn("group norm with one group", 0.5, 0.5, rng, 1, 4, np.float64),
        *_gn("group norm with one group per channel (instance norm)", 1, 0, rng, 4, 1, np.float64),
    ]
