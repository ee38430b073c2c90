"""Hidden cases for Exercise 12: rmsnorm_forward and rmsnorm_backward (torch's rms_norm semantics)."""

from __future__ import annotations

import numpy as np

from bncourse.functional import rmsnorm_backward, rmsnorm_forward
from bncourse.grading.spec import Case, call, expect

from _common import dims, sample


def _weight(rng, shape, dtype):
    return (rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


def _x(rng, shape, dtype, special=False):
    x = sample(rng, shape, np.float64, loc=rng.normal(size=shape[-1:]), scale=rng.uniform(0.5, 3.0))
    if special:  # a constant vector, a vector of zeros, and one whose mean square is about eps
        flat = x.reshape(-1, shape[-1])
        flat[0] = rng.normal() * 3
        flat[1] = 0.0
        flat[2] = rng.choice([-1.0, 1.0], size=shape[-1]) * 1e-3
    return x.astype(dtype)


def _refs(x, weight, dout, eps):
    out, cache = rmsnorm_forward(x.astype(np.float64), weight.astype(np.float64), eps)
    dx, dweight = rmsnorm_backward(dout.astype(np.float64), cache)
    return out, dx, dweight


def _forward(name, points, rng, shape, weight_ndim, dtype, eps=1e-6, special=False):
    x = _x(rng, shape, dtype, special)
    weight = _weight(rng, shape[len(shape) - weight_ndim:], dtype)
    out, _, _ = _refs(x, weight, x, eps)
    return Case(f"forward, {name}", points, [call("rmsnorm_forward", x, weight, float(eps), store="out")],
                {"out": expect(out, dtype=dtype)})


def _backward(name, dx_points, dweight_points, rng, shape, weight_ndim, dtype, eps=1e-6, special=False):
    x = _x(rng, shape, dtype, special)
    weight = _weight(rng, shape[len(shape) - weight_ndim:], dtype)
    dout = sample(rng, shape, dtype)
    _, dx, dweight = _refs(x, weight, dout, eps)
    args = (dout, x, weight, float(eps))
    out = [Case(f"backward, {name}: dx", dx_points, [call("rmsnorm_backward", *args, store=("dx", None))],
                {"dx": expect(dx, dtype=dtype, kind="grad")})]
    if dweight_points:
        out.append(Case(f"backward, {name}: dweight", dweight_points,
                        [call("rmsnorm_backward", *args, store=(None, "dweight"))],
                        {"dweight": expect(dweight, dtype=dtype, kind="grad")}))
    return out


def cases(rng: np.random.Generator) -> list[Case]:
    nd = (dims(rng, 3, 12), dims(rng, 3, 10))
    ntd = (dims(rng, 2, 4), dims(rng, 2, 5), dims(rng, 3, 8))
    return [
        _forward("float64, (N, D)", 1, rng, nd, 1, np.float64),
        _forward("float32, (N, T, D) with weight (D,)", 1, rng, ntd, 1, np.float32),
        _forward("weight (T, D): one statistic per example", 0.5, rng, ntd, 2, np.float64),
        _forward("a constant vector, a vector of zeros, one with mean square near eps", 1, rng,
                 (dims(rng, 3, 6), dims(rng, 3, 8)), 1, np.float64, special=True),
        _forward("eps=1e-4 passed explicitly", 0.5, rng, (dims(rng, 3, 6), 4), 1, np.float64, eps=1e-4,
                 special=True),
        *_backward("float64, (N, D)", 1.5, 0.5, rng, (dims(rng, 3, 12), dims(rng, 3, 10)), 1, np.float64),
        *_backward("float32, (N, T, D) with weight (D,)", 1, 0.5, rng,
                   (dims(rng, 2, 4), dims(rng, 2, 5), dims(rng, 3, 8)), 1, np.float32),
        *_backward("weight (T, D)", 1, 0.5, rng, (dims(rng, 2, 4), dims(rng, 2, 5), dims(rng, 3, 8)), 2,
                   np.float64),
        *_backward("a constant vector, a vector of zeros, one with mean square near eps", 1, 0, rng,
                   (dims(rng, 3, 6), dims(rng, 3, 8)), 1, np.float64, special=True),
    ]
