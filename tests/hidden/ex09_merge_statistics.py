"""Hidden cases for Exercise 9: merge_statistics(counts, means, m2s) -> (mean, var)."""

from __future__ import annotations

import numpy as np

from bncourse.grading.references import merge_moments
from bncourse.grading.spec import Case, call, expect

from _common import dims


def _triples(chunks, dtype):
    """What each device reports for its chunk (n_k, C): computed in float64, sent in ``dtype``."""
    counts = np.array([len(c) for c in chunks], dtype=np.int64)
    means = np.array([c.mean(axis=0) if len(c) else np.zeros(c.shape[1]) for c in chunks])
    m2s = np.array([((c - m) ** 2).sum(axis=0) for c, m in zip(chunks, means)])
    return counts, means.astype(dtype), m2s.astype(dtype)


def _case(name, points, chunks, dtype, var_rtol=None):
    counts, means, m2s = _triples(chunks, dtype)
    mean, var = merge_moments(counts, means, m2s)  # exact merge of exactly what was sent
    return Case(name, points, [call("merge_statistics", counts, means, m2s, store=("mean", "var"))],
                {"mean": expect(mean.astype(dtype), dtype=dtype),
                 "var": expect(var.astype(dtype), dtype=dtype, rtol=var_rtol)})


def _chunks(rng, sizes, c, locs=None, scale=1.0, offset=0.0):
    locs = np.zeros(len(sizes)) if locs is None else locs
    return [offset + loc + scale * rng.normal(size=(n, c)) for n, loc in zip(sizes, locs)]


def cases(rng: np.random.Generator) -> list[Case]:
    out = []
    k, c = dims(rng, 2, 8), dims(rng, 1, 6)
    out.append(_case(f"float64, {k} devices with equal counts", 1,
                     _chunks(rng, [dims(rng, 4, 16)] * k, c, locs=rng.normal(size=k)), np.float64))
    c = dims(rng, 1, 5)
    sizes = [1, dims(rng, 1000, 3000), dims(rng, 2, 5), dims(rng, 10, 50)]
    out.append(_case("very unequal counts (1 to thousands), devices with different means", 2,
                     _chunks(rng, sizes, c, locs=rng.uniform(-10, 10, size=4)), np.float64))
    c = dims(rng, 1, 5)
    sizes = [0, dims(rng, 3, 20), 0, dims(rng, 3, 20), 0]
    out.append(_case("empty devices (count 0), the first one included", 2,
                     _chunks(rng, sizes, c, locs=rng.normal(size=5) * 3), np.float64))
    c = dims(rng, 1, 4)
    sizes = [dims(rng, 200, 800) for _ in range(dims(rng, 4, 8))]
    # A correct float32 merge keeps the variance to ~1e-4 here; E[x^2] - mean^2 is off by O(1).
    out.append(_case("float32, mean 10^4 and spread 1 on every device", 2,
                     _chunks(rng, sizes, c, locs=rng.normal(size=len(sizes)) * 0.5, offset=1e4),
                     np.float32, var_rtol=1e-3))
    c = dims(rng, 1, 6)
    out.append(_case("a single device", 1, _chunks(rng, [dims(rng, 2, 30)], c, scale=2.0), np.float64))
    k, c = dims(rng, 32, 64), dims(rng, 1, 4)
    out.append(_case(f"{k} devices that saw one value each", 1,
                     _chunks(rng, [1] * k, c, locs=rng.normal(size=k) * 2), np.float64))
    k, c = dims(rng, 2, 6), dims(rng, 2, 6)
    out.append(_case("float32, unequal counts", 1,
                     _chunks(rng, [dims(rng, 1, 100) for _ in range(k)], c, locs=rng.normal(size=k)),
                     np.float32))
    return out
