"""Numerical gradients by central differences, and the error measure we check them with."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["numerical_gradient", "relative_error"]


def numerical_gradient(
    f: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    dout: np.ndarray | None = None,
    h: float = 1e-5,
) -> np.ndarray:
    """Gradient of ``sum(f(x) * dout)`` with respect to ``x``, by central differences.

    Each entry of ``x`` is nudged by ``+h`` and ``-h`` in place (and restored),
    so ``f`` must read ``x`` afresh on every call. With ``dout=None``, ``f``
    must return a scalar. The truncation error is ``O(h^2)``; in float64,
    ``h=1e-5`` balances it against rounding error. Returns an array shaped like ``x``.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected x with a floating dtype, got {x.dtype}")
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    for _ in it:
        i = it.multi_index
        original = x[i].copy()
        x[i] = original + h
        plus = _objective(f(x), dout)
        x[i] = original - h
        minus = _objective(f(x), dout)
        x[i] = original
        grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / max(||a|| + ||b||, tiny)``: scale-free, 0 for identical arrays.

    A norm over the whole array rather than entry by entry, so entries that are
    almost zero in both arrays do not turn rounding noise into a large error.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"expected arrays of the same shape, got {a.shape} and {b.shape}")
    denom = max(np.linalg.norm(a) + np.linalg.norm(b), np.finfo(np.float64).tiny)
    return float(np.linalg.norm(a - b) / denom)


def _objective(y: np.ndarray, dout: np.ndarray | None) -> float:
    y = np.asarray(y, dtype=np.float64)
    if dout is None:
        if y.size != 1:
            raise ValueError(f"expected f to return a scalar when dout is None, got shape {y.shape}")
        return float(y)
    if np.shape(dout) != y.shape:
        raise ValueError(f"expected dout of shape {y.shape} (the shape of f(x)), got {np.shape(dout)}")
    return float(np.sum(y * dout))
