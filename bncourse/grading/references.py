"""NumPy references the hidden tests need beyond ``bncourse.functional``.

Everything here computes in float64 whatever the input dtype, so that the
grader compares a student's float32 answer with an accurate value rather than
with another float32 rounding. ``bncourse.functional`` and
``bncourse.layers`` provide the rest (forward, backward, running statistics).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GRAPH_NODES",
    "batchnorm_graph_gradients",
    "running_stats_update",
    "merge_moments",
]

#: The nodes of the training-mode graph, in forward order, whose gradients Exercise 3 returns.
GRAPH_NODES = ("x", "mu", "xc", "var", "std", "istd", "xhat", "gamma", "beta")


def batchnorm_graph_gradients(
    dout: np.ndarray, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> dict[str, np.ndarray]:
    """Gradient of ``L = sum(out * dout)`` with respect to every node of the BN graph.

    The graph, for ``x`` of shape ``(N, D)``::

        mu = mean(x, 0); xc = x - mu; var = mean(xc**2, 0); std = sqrt(var + eps)
        istd = 1 / std; xhat = xc * istd; out = gamma * xhat + beta

    Each gradient is the *total* derivative of ``L`` with respect to that node
    holding everything upstream of it fixed: ``"xc"`` sums its two uses (in
    ``var`` and in ``xhat``), ``"x"`` its two (in ``xc`` directly and via ``mu``).
    Returns a dict keyed by :data:`GRAPH_NODES`, each in float64 with the node's shape.
    """
    dout, x, gamma, beta = (np.asarray(a, dtype=np.float64) for a in (dout, x, gamma, beta))
    d = x.shape[1:] if x.ndim == 2 else None
    if d is None or dout.shape != x.shape or gamma.shape != d or beta.shape != d:
        raise ValueError(
            f"expected x and dout of shape (N, D) and gamma, beta of shape (D,), got "
            f"x {x.shape}, dout {dout.shape}, gamma {gamma.shape}, beta {beta.shape}"
        )
    n = x.shape[0]
    mu = x.mean(axis=0)
    xc = x - mu
    var = (xc * xc).mean(axis=0)
    std = np.sqrt(var + eps)
    istd = 1.0 / std
    xhat = xc * istd
    g = {"beta": dout.sum(axis=0), "gamma": (dout * xhat).sum(axis=0)}
    g["xhat"] = dout * gamma
    g["istd"] = (g["xhat"] * xc).sum(axis=0)
    g["std"] = -g["istd"] / (std * std)
    g["var"] = g["std"] * 0.5 / std
    g["xc"] = g["xhat"] * istd + g["var"] * 2.0 * xc / n
    g["mu"] = -g["xc"].sum(axis=0)
    g["x"] = g["xc"] + g["mu"] / n
    return {name: g[name] for name in GRAPH_NODES}


def running_stats_update(
    running_mean: np.ndarray, running_var: np.ndarray, x: np.ndarray, momentum: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's update of the running estimates from a batch ``x`` of shape ``(N, D)``.

    ``new = (1 - momentum) * old + momentum * batch_statistic``, where the batch
    variance is the *unbiased* one (divided by ``N - 1``), as ``torch.nn.BatchNorm1d``
    stores it. Returns float64 ``(new_mean, new_var)`` of shape ``(D,)``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected x of shape (N, D) with N >= 2, got shape {x.shape}")
    mean = x.mean(axis=0)
    unbiased = ((x - mean) ** 2).sum(axis=0) / (x.shape[0] - 1)
    m = float(momentum)
    new_mean = (1.0 - m) * np.asarray(running_mean, np.float64) + m * mean
    new_var = (1.0 - m) * np.asarray(running_var, np.float64) + m * unbiased
    return new_mean, new_var


def merge_moments(
    counts: np.ndarray, means: np.ndarray, m2s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Global mean and biased variance from per-device ``(count, mean, M2)`` triples.

    Device ``k`` saw ``counts[k]`` values per channel with mean ``means[k]`` and
    ``M2 = sum((x - means[k])**2)``. With ``N = sum(counts)`` and the global mean
    ``mu = sum(counts * means) / N``, the global ``M2`` is
    ``sum(m2s) + sum(counts * (means - mu)**2)`` (Chan, Golub and LeVeque's
    combination, all devices at once). Devices with count 0 contribute nothing.

    Args:
        counts: ``(K,)`` non-negative integers, not all zero.
        means, m2s: ``(K, C)``.

    Returns:
        float64 ``(mean, var)`` of shape ``(C,)``, ``var = M2 / N``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    means, m2s = (np.asarray(a, dtype=np.float64) for a in (means, m2s))
    if counts.ndim != 1 or means.shape != m2s.shape or means.shape[:1] != counts.shape:
        raise ValueError(f"expected counts (K,), means and m2s (K, C), got counts {counts.shape}, "
                         f"means {means.shape}, m2s {m2s.shape}")
    total = counts.sum()
    if total <= 0 or (counts < 0).any():
        raise ValueError(f"expected non-negative counts with a positive sum, got {counts}")
    mean = (counts[:, None] * means).sum(axis=0) / total
    m2 = m2s.sum(axis=0) + (counts[:, None] * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / total
