"""Hidden cases for Exercise 5: spatial_batchnorm_forward / spatial_batchnorm_backward."""

from __future__ import annotations

import numpy as np

from bncourse.functional import batchnorm_backward, batchnorm_forward
from bncourse.grading.spec import Case, call, expect

from _common import affine, dims, sample


def _data(rng, shape, dtype):
    c = shape[1]
    loc = rng.normal(size=(1, c, 1, 1))
    scale = rng.uniform(0.5, 3.0, size=(1, c, 1, 1))
    return sample(rng, shape, dtype, loc=loc, scale=scale), *affine(rng, (c,), dtype)


def _forward(name, points, rng, shape, dtype):
    x, gamma, beta = _data(rng, shape, dtype)
    ref, _ = batchnorm_forward(*(a.astype(np.float64) for a in (x, gamma, beta)))
    return Case(name, points, [call("spatial_batchnorm_forward", x, gamma, beta, store="out")],
                {"out": expect(ref, dtype=dtype)})


def _backward(name, points, rng, shape, dtype):
    x, gamma, _ = _data(rng, shape, dtype)
    dout = sample(rng, shape, dtype)
    _, cache = batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64), np.zeros(shape[1]))
    dx, dgamma, dbeta = batchnorm_backward(dout.astype(np.float64), cache)
    return Case(name, points, [call("spatial_batchnorm_backward", dout, x, gamma,
                                    store=("dx", "dgamma", "dbeta"))],
                {"dx": expect(dx, dtype=dtype, kind="grad"),
                 "dgamma": expect(dgamma, dtype=dtype, kind="grad"),
                 "dbeta": expect(dbeta, dtype=dtype, kind="grad")})


def _shape(rng, n=None):
    n = dims(rng, 2, 6) if n is None else n
    return (n, dims(rng, 2, 5), dims(rng, 2, 6), dims(rng, 2, 6))


def cases(rng: np.random.Generator) -> list[Case]:
    s64, s32 = _shape(rng), _shape(rng)
    b64, b32 = _shape(rng), _shape(rng)
    h, w = dims(rng, 2, 4), dims(rng, 5, 8)
    return [
        _forward(f"forward, float64, shape {s64}", 2, rng, s64, np.float64),
        _forward(f"forward, float32, shape {s32}", 1, rng, s32, np.float32),
        _forward("forward, a batch of one image", 1, rng, _shape(rng, n=1), np.float64),
        _forward(f"forward, non-square images {h}x{w}", 1, rng, (3, 4, h, w), np.float64),
        _backward(f"backward, float64, shape {b64}", 2, rng, b64, np.float64),
        _backward(f"backward, float32, shape {b32}", 1, rng, b32, np.float32),
        _backward("backward, a batch of one image", 1, rng, _shape(rng, n=1), np.float64),
        _backward("backward, 1x1 images", 1, rng, (dims(rng, 4, 10), 3, 1, 1), np.float64),
    ]
