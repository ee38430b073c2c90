"""bncourse.lab.data: the digits split (shapes, dtypes, standardization, stratification, determinism)."""

import numpy as np
import pytest
import torch

from bncourse.lab.data import DigitsSplit, load_digits_split


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_digits_split()


def test_shapes_and_dtypes(split):
    assert split.x_train.shape[1] == 64 and split.x_test.shape[1] == 64
    assert len(split.x_train) + len(split.x_test) == 1797
    assert len(split.x_train) == len(split.y_train) and len(split.x_test) == len(split.y_test)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert 0.24 < len(split.x_test) / 1797 < 0.26


def test_standardized_with_train_statistics_only(split):
    # Train pixels have mean 0 and std 1 (or are constant 0); the test set is only close.
    mean = split.x_train.double().mean(0)
    std = split.x_train.double().std(0, unbiased=False)
    assert torch.allclose(mean, torch.zeros(64, dtype=torch.float64), atol=1e-5)
    assert torch.all((torch.abs(std - 1) < 1e-4) | (std < 1e-8))
    assert not torch.allclose(split.x_test.double().mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-5)
    assert torch.isfinite(split.x_test).all()


def test_stratified(split):
    train_counts = np.bincount(split.y_train.numpy(), minlength=10)
    test_counts = np.bincount(split.y_test.numpy(), minlength=10)
    share = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(share - 0.25) < 0.01)


def test_deterministic_and_seed_dependent(split):
    again = load_digits_split()
    assert torch.equal(again.x_train, split.x_train) and torch.equal(again.y_test, split.y_test)
    other = load_digits_split(seed=1)
    assert not torch.equal(other.y_train, split.y_train)


def test_as_images_is_a_copy(split):
    images = split.as_images()
    assert images.x_train.shape == (len(split.x_train), 1, 8, 8)
    assert images.x_test.shape == (len(split.x_test), 1, 8, 8)
    assert torch.equal(images.x_train.reshape(len(split.x_train), 64), split.x_train)
    images.x_train.zero_()
    assert split.x_train.abs().sum() > 0
    assert torch.equal(images.as_flat().x_test, split.x_test)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, "0.2"])
def test_bad_test_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=bad)
