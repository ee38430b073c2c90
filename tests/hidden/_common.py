"""Helpers shared by the hidden-case generators (loaded by path, not as a package)."""

from __future__ import annotations

import numpy as np


def sample(rng: np.random.Generator, shape: tuple[int, ...], dtype, loc: float = 0.0,
           scale: float = 1.0) -> np.ndarray:
    """Normal samples with a per-column offset and spread, cast to ``dtype``."""
    return (loc + scale * rng.normal(size=shape)).astype(dtype)


def affine(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray]:
    """A random ``(gamma, beta)`` pair; gamma kept away from 0 so every output matters."""
    gamma = (rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)
    beta = rng.normal(size=shape).astype(dtype)
    return gamma, beta


def dims(rng: np.random.Generator, low: int, high: int) -> int:
    return int(rng.integers(low, high + 1))
