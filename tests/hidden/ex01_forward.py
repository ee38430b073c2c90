"""Hidden cases for Exercise 1: batchnorm_forward(x, gamma, beta, eps) -> (out, cache)."""

from __future__ import annotations

import numpy as np

from bncourse.functional import batchnorm_forward
from bncourse.grading.judge import judge_value
from bncourse.grading.spec import Case, Expect, call, expect, expect_verdict

from _common import affine, dims, python_loops, sample


def _case(name, points, x, gamma, beta, eps=None, **kw):
    args = (x, gamma, beta) if eps is None else (x, gamma, beta, float(eps))
    ref, _ = batchnorm_forward(*(a.astype(np.float64) for a in (x, gamma, beta)),
                               eps=1e-5 if eps is None else eps)
    return Case(name, points, [call("batchnorm_forward", *args, store=("out", None))],
                {"out": expect(ref, dtype=x.dtype, **kw)})


def cases(rng: np.random.Generator) -> list[Case]:
    out = []
    n, d = dims(rng, 4, 32), dims(rng, 2, 10)
    x = sample(rng, (n, d), np.float64, loc=rng.normal(size=d), scale=rng.uniform(0.5, 3, size=d))
    out.append(_case(f"float64, random shape N={n}, D={d}", 2, x, *affine(rng, (d,), np.float64)))
    n, d = dims(rng, 4, 32), dims(rng, 2, 10)
    x = sample(rng, (n, d), np.float32, loc=rng.normal(size=d), scale=rng.uniform(0.5, 3, size=d))
    out.append(_case(f"float32, random shape N={n}, D={d}", 2, x, *affine(rng, (d,), np.float32)))
    d = dims(rng, 2, 6)
    out.append(_case(f"a batch of two examples (N=2, D={d})", 1,
                     sample(rng, (2, d), np.float64, scale=2.0), *affine(rng, (d,), np.float64)))
    n, d = dims(rng, 3, 10), dims(rng, 2, 5)
    x = sample(rng, (n, d), np.float64)
    x[:, rng.integers(d)] = rng.normal()
    out.append(_case("a feature that is constant across the batch (needs eps)", 1, x,
                     *affine(rng, (d,), np.float64)))
    n, d = dims(rng, 16, 64), dims(rng, 2, 5)
    x = sample(rng, (n, d), np.float32, loc=1000.0, scale=1.0)
    out.append(_case("float32 with a large offset (mean 1000, std 1): two-pass variance", 1, x,
                     *affine(rng, (d,), np.float32), rtol=1e-3, atol=2e-3))
    n, d = dims(rng, 4, 16), dims(rng, 2, 6)
    x = sample(rng, (n, d), np.float64, scale=0.5)
    out.append(_case("eps=0.3 passed explicitly", 1, x, *affine(rng, (d,), np.float64), eps=0.3))
    n, d = dims(rng, 64, 200), dims(rng, 8, 20)
    x = sample(rng, (n, d), np.float64, loc=-3.0, scale=rng.uniform(0.1, 5, size=d))
    out.append(_case(f"float64, larger batch N={n}, D={d}", 1, x, *affine(rng, (d,), np.float64)))
    # The text forbids Python loops. All or nothing: the output counts only if the answer's source
    # has no loop, read here in the trusted process (see _common.python_loops), the same loops the
    # public check (the set-up cell's uses_python_loops) finds in the bytecode.
    n, d = dims(rng, 4, 16), dims(rng, 2, 6)
    loops = _case("vectorized: no Python loop in batchnorm_forward", 1, sample(rng, (n, d), np.float64),
                  *affine(rng, (d,), np.float64))
    reference = loops.expected["out"]
    loops.expected["out"] = expect_verdict(_without_loops(reference), value=reference.value)
    out.append(loops)
    return out


def _without_loops(reference: Expect):
    def verdict(got: np.ndarray, setup: dict, answer: str) -> tuple[bool, str]:
        ok, message = judge_value(got, reference, "out")
        if not ok:
            return False, message
        where = python_loops(answer, "batchnorm_forward")
        if where:
            return False, f"batchnorm_forward runs a Python loop ({where}); the text asks for array operations only"
        return True, "passed"
    return verdict
