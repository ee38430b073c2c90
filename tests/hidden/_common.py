"""Helpers shared by the hidden-case generators (loaded by path, not as a package)."""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The course's digits split (``bncourse.lab.data``, seed 0, 20 % held out) as NumPy arrays.

    ``(x_train, y_train, x_test, y_test)``: float64 inputs standardized with the training
    statistics, int64 labels. Loaded once per grading process; callers must not modify them
    (copy before handing them to a case).
    """
    try:
        from bncourse.lab.data import load_digits_split

        split = load_digits_split(test_fraction=0.2, seed=0)
    except ImportError as err:
        raise ValueError("the hidden cases of Exercises 13 and 14 train on scikit-learn's digits: install "
                         f"scikit-learn and torch in the grader's environment ({err})") from None
    return (split.x_train.numpy().astype(np.float64), split.y_train.numpy().astype(np.int64),
            split.x_test.numpy().astype(np.float64), split.y_test.numpy().astype(np.int64))
