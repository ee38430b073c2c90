import numpy as np
import pytest

from bncourse.gradcheck import numerical_gradient, relative_error


def test_numerical_gradient_of_known_function():
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    grad = numerical_gradient(lambda v: np.sum(v**3), x.copy())
    assert relative_error(grad, 3 * x**2) < 1e-9


def test_numerical_gradient_with_dout_and_restores_input():
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    before = x.copy()
    dout = np.arange(6.0).reshape(2, 3)
    grad = numerical_gradient(np.sin, x, dout)
    assert relative_error(grad, np.cos(before) * dout) < 1e-9
    np.testing.assert_array_equal(x, before)


def test_relative_error_detects_differences():
    a = np.ones(4)
    assert relative_error(a, a) == 0.0
    assert relative_error(a, 2 * a) == pytest.approx(1 / 3)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        relative_error(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="return a scalar"):
        numerical_gradient(lambda v: v, np.ones(3))
    with pytest.raises(ValueError, match="floating dtype"):
        numerical_gradient(np.sum, np.ones(3, dtype=np.int64))
