"""The data every experiment chapter trains on: scikit-learn's 8x8 digits.

The digits set (1797 images, 10 classes; Alpaydin & Kaynak, 1998) ships inside
scikit-learn, so nothing is downloaded. ``load_digits_split`` returns a stratified,
deterministic train/test split as float32 torch tensors, standardized per pixel with
the *training* mean and standard deviation only (the test set must not leak into them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = ["DigitsSplit", "load_digits_split"]


@dataclass(frozen=True)
class DigitsSplit:
    """A train/test split of the digits.

    Attributes:
        x_train: float32 tensor, shape (N_train, 64), or (N_train, 1, 8, 8) after
            ``as_images()``; standardized with the training statistics.
        y_train: int64 tensor of class labels in 0..9, shape (N_train,).
        x_test: float32 tensor, shape (N_test, 64) or (N_test, 1, 8, 8).
        y_test: int64 tensor, shape (N_test,).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self) -> int:
        return 10

    def as_images(self) -> "DigitsSplit":
        """A copy with inputs shaped (N, 1, 8, 8) for convolutional nets."""
        return replace(
            self,
            x_train=self.x_train.reshape(-1, 1, 8, 8).clone(),
            x_test=self.x_test.reshape(-1, 1, 8, 8).clone(),
        )

    def as_flat(self) -> "DigitsSplit":
        """A copy with inputs shaped (N, 64) (the inverse of ``as_images``)."""
        return replace(
            self,
            x_train=self.x_train.reshape(len(self.x_train), -1).clone(),
            x_test=self.x_test.reshape(len(self.x_test), -1).clone(),
        )


def _stratified_indices(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, put round(test_fraction * count) shuffled examples into the test set."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    # Shuffle across classes too, so that slicing the tensors gives a mix of labels.
    train_idx = rng.permutation(np.concatenate(train))
    test_idx = rng.permutation(np.concatenate(test))
    return train_idx, test_idx


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """Load scikit-learn's digits and split them, stratified by class.

    Args:
        test_fraction: share of each class held out for testing, in (0, 1).
        seed: seeds the split; the same seed gives the same split.

    Returns:
        A ``DigitsSplit`` with x of shape (N, 64) float32, standardized per pixel with the
        training mean and std (pixels constant in the training set keep std 1, so they
        become 0 rather than NaN), and y of shape (N,) int64.
    """
    if not isinstance(test_fraction, (float, int)) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"expected test_fraction in the open interval (0, 1), got {test_fraction!r}")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"expected an int seed, got {seed!r}")
    from sklearn.datasets import load_digits  # imported here: only this function needs sklearn

    bunch = load_digits()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = _stratified_indices(y, float(test_fraction), int(seed))
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0)
    std[std == 0] = 1.0  # a few border pixels are always 0 in the training set

    def prep(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xs = ((x[idx] - mean) / std).astype(np.float32)
        return torch.from_numpy(xs), torch.from_numpy(y[idx])

    x_train, y_train = prep(train_idx)
    x_test, y_test = prep(test_idx)
    return DigitsSplit(x_train, y_train, x_test, y_test)
