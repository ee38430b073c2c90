"""NumPy batch normalization layers with PyTorch's semantics.

``BatchNorm1d``, ``BatchNorm2d`` and ``BatchNorm3d`` take the same constructor
arguments as ``torch.nn.BatchNorm1d`` / ``2d`` / ``3d`` and keep the same state
under the same names, so a torch layer's ``state_dict()`` (also one saved
before ``num_batches_tracked`` existed) loads as-is and both layers then agree
step after step. Parameters are NumPy arrays; ``backward`` stores their
gradients in ``grad_weight`` and ``grad_bias``. As in torch, the input's dtype
must be the layer's, except that float16 input is accepted by a float32 layer;
float16 is always computed in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .functional import (
    BatchNormCache,
    batchnorm_backward,
    batchnorm_forward,
    channel_shape,
    check_layer_input,
    reduction_axes,
)

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm:
    """Shared machinery; subclasses only say which input ranks they accept."""

    _accepted_ndims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: Any = np.float32,
    ) -> None:
        if not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"expected num_features to be a positive int, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"expected momentum in [0, 1] or None, got {momentum!r}")
        if eps < 0:
            raise ValueError(f"expected eps >= 0, got {eps!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.dtype = np.dtype(dtype)
        self.training = True

        c = self.num_features
        self.weight = np.ones(c, self.dtype) if affine else None
        self.bias = np.zeros(c, self.dtype) if affine else None
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        if track_running_stats:
            self.running_mean = np.zeros(c, self.dtype)
            self.running_var = np.ones(c, self.dtype)
            self.num_batches_tracked = np.array(0, dtype=np.int64)
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None
        self._cache: BatchNormCache | None = None
        self._input_dtype = self.dtype
        self._cache_from_batch_stats = False

    # -- mode -------------------------------------------------------------
    def train(self, mode: bool = True) -> "_BatchNorm":
        self.training = bool(mode)
        return self

    def eval(self) -> "_BatchNorm":
        return self.train(False)

    # -- forward / backward ----------------------------------------------
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalize ``x`` of shape ``(N, C, ...)``; returns the same shape and dtype.

        Training mode (or no running statistics): normalize with the batch's
        mean and biased variance, and update the running estimates with the
        *unbiased* variance, as PyTorch does. Evaluation mode: normalize with
        the running estimates. Caches what ``backward`` needs.
        """
        self._check_input(x)
        in_dtype = x.dtype
        if in_dtype == np.float16:  # float16 sums overflow at 65,504: compute in float32, as torch
            x = x.astype(np.float32)
        use_batch_stats = self.training or not self.track_running_stats
        gamma, beta = self._affine_params(x.dtype)
        if use_batch_stats:
            out, cache = batchnorm_forward(x, gamma, beta, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(cache.mean, cache.var, x.size // self.num_features)
        else:
            shape = channel_shape(x.ndim, self.num_features)
            inv_std = (1.0 / np.sqrt(self.running_var.astype(x.dtype) + self.eps)).astype(x.dtype)
            x_hat = (x - self.running_mean.astype(x.dtype).reshape(shape)) * inv_std.reshape(shape)
            out = gamma.reshape(shape) * x_hat + beta.reshape(shape)
            cache = BatchNormCache(x_hat=x_hat, inv_std=inv_std, gamma=gamma)
        self._cache = cache
        self._cache_from_batch_stats = use_batch_stats
        self._input_dtype = in_dtype
        return out.astype(in_dtype, copy=False)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Gradient with respect to the last ``forward``'s input.

        Stores the gradients of ``weight`` and ``bias`` (shape ``(C,)``) in
        ``grad_weight`` and ``grad_bias`` when ``affine``. In evaluation mode the
        statistics are constants, so ``dx = dout * weight / sqrt(running_var + eps)``.
        """
        if self._cache is None:
            raise ValueError("backward called before forward: call forward(x) first")
        cache = self._cache
        if not isinstance(dout, np.ndarray) or dout.shape != cache.x_hat.shape:
            got = dout.shape if isinstance(dout, np.ndarray) else type(dout).__name__
            raise ValueError(
                f"expected dout of shape {cache.x_hat.shape} (the last forward input's shape), "
                f"got {got}"
            )
        dout = dout.astype(cache.x_hat.dtype, copy=False)
        if self._cache_from_batch_stats:
            dx, dgamma, dbeta = batchnorm_backward(dout, cache)
        else:
            axes = reduction_axes(dout.ndim)
            shape = channel_shape(dout.ndim, self.num_features)
            dx = dout * (cache.gamma * cache.inv_std).reshape(shape)
            dgamma = (dout * cache.x_hat).sum(axis=axes)
            dbeta = dout.sum(axis=axes)
        if self.affine:
            self.grad_weight = dgamma.astype(self.dtype)
            self.grad_bias = dbeta.astype(self.dtype)
        return dx.astype(self._input_dtype, copy=False)

    # -- state ------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The layer's state under torch's key names (copies)."""
        state: dict[str, np.ndarray] = {}
        if self.affine:
            state["weight"] = self.weight.copy()
            state["bias"] = self.bias.copy()
        if self.track_running_stats:
            state["running_mean"] = self.running_mean.copy()
            state["running_var"] = self.running_var.copy()
            state["num_batches_tracked"] = self.num_batches_tracked.copy()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state saved by this class or by ``torch.nn.BatchNorm*``.

        Values may be NumPy arrays or torch tensors. Keys must match exactly
        (as torch's ``strict=True``), except that a state without
        ``num_batches_tracked`` (saved by torch before version 2 of its batch
        norm) loads and keeps the current count, as torch does. Values are
        copied into the existing arrays' dtypes, as torch copies into existing
        parameters.
        """
        expected = set(self.state_dict())
        given = set(state_dict)
        if self.track_running_stats and "num_batches_tracked" not in given:
            given.add("num_batches_tracked")
            state_dict = {**state_dict, "num_batches_tracked": self.num_batches_tracked}
        if given != expected:
            raise ValueError(
                f"expected state_dict keys {sorted(expected)}, got {sorted(given)} "
                f"(missing {sorted(expected - given)}, unexpected {sorted(given - expected)})"
            )
        for key in sorted(expected):
            value = _to_numpy(state_dict[key])
            current = getattr(self, key)
            if value.shape != current.shape:
                raise ValueError(
                    f"expected {key} of shape {current.shape}, got shape {value.shape}"
                )
            setattr(self, key, value.astype(current.dtype, copy=True))

    # -- helpers ----------------------------------------------------------
    def _affine_params(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        if self.affine:
            return self.weight.astype(dtype), self.bias.astype(dtype)
        return np.ones(self.num_features, dtype), np.zeros(self.num_features, dtype)

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, m: int) -> None:
        """Blend the batch's ``mean`` and biased ``var`` (``(C,)``, over ``m`` values) into the running estimates."""
        self.num_batches_tracked = np.asarray(self.num_batches_tracked + 1, dtype=np.int64)
        if self.momentum is None:  # cumulative moving average over all batches seen
            factor = 1.0 / float(self.num_batches_tracked)
        else:  # exponential moving average, weight `momentum` on the new value
            factor = self.momentum
        unbiased_var = var * (m / (m - 1))
        self.running_mean = ((1 - factor) * self.running_mean + factor * mean).astype(self.dtype)
        self.running_var = ((1 - factor) * self.running_var + factor * unbiased_var).astype(
            self.dtype
        )

    def _check_input(self, x: np.ndarray) -> None:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"expected a numpy array, got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{type(self).__name__} expected a floating-point input, got dtype {x.dtype}")
        if x.dtype != self.dtype and not (x.dtype == np.float16 and self.dtype == np.float32):
            # torch: "mixed dtype (CPU): all inputs must share same datatype"
            raise ValueError(
                f"{type(self).__name__} expected input of dtype {self.dtype} (the layer's"
                f"{' or float16' if self.dtype == np.float32 else ''}), got dtype {x.dtype}: "
                f"convert the input with x.astype(np.{self.dtype}) or build the layer with dtype=np.{x.dtype}"
            )
        check_layer_input(type(self).__name__, x.shape, self._accepted_ndims, self.num_features)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats})"
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization over ``(N, C)`` or ``(N, C, L)`` inputs, like ``torch.nn.BatchNorm1d``."""

    _accepted_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over ``(N, C, H, W)`` inputs, like ``torch.nn.BatchNorm2d``."""

    _accepted_ndims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over ``(N, C, D, H, W)`` inputs, like ``torch.nn.BatchNorm3d``."""

    _accepted_ndims = (5,)


def _to_numpy(value: Any) -> np.ndarray:
    """Accept NumPy arrays and torch tensors without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
