"""Hidden cases for Exercise 4: batchnorm_backward_compact(dout, x_hat, inv_std, gamma)."""

from __future__ import annotations

import numpy as np

from bncourse.functional import batchnorm_backward, batchnorm_forward
from bncourse.grading.spec import Case, call, expect

from _common import affine, dims, sample


DX_SHARE = 0.8


def _case(name, points, rng, n, d, dtype, x=None, dout=None, eps=1e-5):
    if x is None:
        x = sample(rng, (n, d), dtype, loc=rng.normal(size=d), scale=rng.uniform(0.3, 3, size=d))
    gamma, beta = affine(rng, (d,), dtype)
    dout = sample(rng, (n, d), dtype) if dout is None else dout
    # The cache the student receives is computed in the input dtype; the reference gradient in float64.
    _, cache = batchnorm_forward(x, gamma, beta, eps)
    _, cache64 = batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64),
                                   beta.astype(np.float64), eps)
    cache64 = cache64._replace(x_hat=cache.x_hat.astype(np.float64),
                               inv_std=cache.inv_std.astype(np.float64))
    dx, dgamma, dbeta = batchnorm_backward(dout.astype(np.float64), cache64)
    steps = [call("batchnorm_backward_compact", dout, cache.x_hat, cache.inv_std, gamma,
                  store=("dx", "dgamma", "dbeta"))]
    # dx is what the exercise derives; dgamma and dbeta are the two sums the text gives.
    main = round(points * DX_SHARE, 6)
    return [Case(f"{name}: dx", main, steps, {"dx": expect(dx, dtype=dtype, kind="grad")}),
            Case(f"{name}: dgamma and dbeta", round(points - main, 6), steps,
                 {"dgamma": expect(dgamma, dtype=dtype, kind="grad"),
                  "dbeta": expect(dbeta, dtype=dtype, kind="grad")})]


def cases(rng: np.random.Generator) -> list[Case]:
    n, d = dims(rng, 4, 32), dims(rng, 2, 8)
    out = _case(f"float64, random shape N={n}, D={d}", 3, rng, n, d, np.float64)
    n, d = dims(rng, 4, 32), dims(rng, 2, 8)
    out.extend(_case(f"float32, random shape N={n}, D={d}", 2, rng, n, d, np.float32))
    out.extend(_case("a batch of two examples", 1, rng, 2, dims(rng, 2, 5), np.float64))
    out.extend(_case("a single feature (D=1)", 1, rng, dims(rng, 5, 20), 1, np.float64))
    n, d = dims(rng, 5, 20), dims(rng, 2, 5)
    dout = np.broadcast_to(rng.normal(size=(1, d)), (n, d)).copy()
    out.extend(_case("the same upstream gradient for every example (dx = 0)", 1, rng, n, d,
                     np.float64, dout=dout))
    n, d = dims(rng, 5, 20), dims(rng, 2, 5)
    x = sample(rng, (n, d), np.float64)
    x[:, -1] = -2.0
    out.extend(_case("a constant feature (large inv_std)", 1, rng, n, d, np.float64, x=x))
    n, d = dims(rng, 100, 300), dims(rng, 3, 8)
    out.extend(_case(f"float64, larger batch N={n}, D={d}", 1, rng, n, d, np.float64))
    return out
