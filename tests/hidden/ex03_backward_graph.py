"""Hidden cases for Exercise 3: batchnorm_backward_graph -> dict of node gradients."""

from __future__ import annotations

import numpy as np

from bncourse.grading.references import GRAPH_NODES, batchnorm_graph_gradients
from bncourse.grading.spec import Case, call, expect, item

from _common import affine, dims, sample


def _case(name, points, dout, x, gamma, beta, eps=1e-5):
    grads = batchnorm_graph_gradients(dout, x, gamma, beta, eps)
    steps = [call("batchnorm_backward_graph", dout, x, gamma, beta, eps, store="grads")]
    steps += [item("grads", node, f"d_{node}") for node in GRAPH_NODES]
    return Case(name, points, steps,
                {f"d_{node}": expect(grads[node], dtype=x.dtype, kind="grad") for node in GRAPH_NODES})


def _random(rng, n, d, dtype, **kw):
    x = sample(rng, (n, d), dtype, loc=rng.normal(size=d), scale=rng.uniform(0.5, 2.0, size=d))
    return sample(rng, (n, d), dtype), x, *affine(rng, (d,), dtype)


def cases(rng: np.random.Generator) -> list[Case]:
    n, d = dims(rng, 4, 24), dims(rng, 2, 8)
    out = [_case(f"float64, random shape N={n}, D={d}", 3, *_random(rng, n, d, np.float64))]
    n, d = dims(rng, 4, 24), dims(rng, 2, 8)
    out.append(_case(f"float32, random shape N={n}, D={d}", 2, *_random(rng, n, d, np.float32)))
    out.append(_case("a batch of two examples", 1, *_random(rng, 2, dims(rng, 2, 5), np.float64)))
    n, d = dims(rng, 4, 12), dims(rng, 2, 5)
    dout, x, gamma, beta = _random(rng, n, d, np.float64)
    out.append(_case("the same upstream gradient for every example", 1,
                     np.broadcast_to(dout[:1], dout.shape).copy(), x, gamma, beta))
    n, d = dims(rng, 4, 12), dims(rng, 2, 5)
    dout, x, gamma, beta = _random(rng, n, d, np.float64)
    x[:, 0] = 3.0
    out.append(_case("a constant feature and eps=0.01", 1, dout, x, gamma, beta, eps=0.01))
    n, d = dims(rng, 50, 120), dims(rng, 10, 20)
    out.append(_case(f"float64, larger batch N={n}, D={d}", 2, *_random(rng, n, d, np.float64)))
    return out
