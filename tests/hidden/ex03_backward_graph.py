"""Hidden cases for Exercise 3: batchnorm_backward_graph -> dict of node gradients."""

from __future__ import annotations

import numpy as np

from bncourse.grading.references import GRAPH_NODES, batchnorm_graph_gradients
from bncourse.grading.spec import Case, call, expect, item

from _common import affine, dims, sample


# The gradients the exercise is about: the nodes reached by two paths, and x at the end of them.
TWO_PATHS = ("x", "xc", "mu")
SHARE = 0.75


def _case(name, points, dout, x, gamma, beta, eps=1e-5):
    """Two cases on the same inputs: x, xc, mu (three quarters of the points); the other six
    nodes and the number of keys (the text asks for exactly the nine)."""
    grads = batchnorm_graph_gradients(dout, x, gamma, beta, eps)
    steps = [call("batchnorm_backward_graph", dout, x, gamma, beta, eps, store="grads")]
    others = [node for node in GRAPH_NODES if node not in TWO_PATHS]
    share = round(points * SHARE, 6)
    main = Case(f"{name}: dx and the two-path nodes xc, mu", share,
                steps + [item("grads", node, f"d_{node}") for node in TWO_PATHS],
                {f"d_{node}": expect(grads[node], dtype=x.dtype, kind="grad") for node in TWO_PATHS})
    rest = Case(f"{name}: the other six nodes, and exactly nine keys", round(points - share, 6),
                steps + [item("grads", node, f"d_{node}") for node in others]
                + [call("grads.__len__", store="n_keys")],
                {**{f"d_{node}": expect(grads[node], dtype=x.dtype, kind="grad") for node in others},
                 "n_keys": expect(np.array(len(GRAPH_NODES)), exact=True)})
    return [main, rest]


def _random(rng, n, d, dtype, **kw):
    x = sample(rng, (n, d), dtype, loc=rng.normal(size=d), scale=rng.uniform(0.5, 2.0, size=d))
    return sample(rng, (n, d), dtype), x, *affine(rng, (d,), dtype)


def cases(rng: np.random.Generator) -> list[Case]:
    n, d = dims(rng, 4, 24), dims(rng, 2, 8)
    out = _case(f"float64, random shape N={n}, D={d}", 3, *_random(rng, n, d, np.float64))
    n, d = dims(rng, 4, 24), dims(rng, 2, 8)
    out.extend(_case(f"float32, random shape N={n}, D={d}", 2, *_random(rng, n, d, np.float32)))
    out.extend(_case("a batch of two examples", 1, *_random(rng, 2, dims(rng, 2, 5), np.float64)))
    n, d = dims(rng, 4, 12), dims(rng, 2, 5)
    dout, x, gamma, beta = _random(rng, n, d, np.float64)
    out.extend(_case("the same upstream gradient for every example", 1,
                     np.broadcast_to(dout[:1], dout.shape).copy(), x, gamma, beta))
    n, d = dims(rng, 4, 12), dims(rng, 2, 5)
    dout, x, gamma, beta = _random(rng, n, d, np.float64)
    x[:, 0] = 3.0
    out.extend(_case("a constant feature and eps=0.01", 1, dout, x, gamma, beta, eps=0.01))
    n, d = dims(rng, 50, 120), dims(rng, 10, 20)
    out.extend(_case(f"float64, larger batch N={n}, D={d}", 2, *_random(rng, n, d, np.float64)))
    return out
