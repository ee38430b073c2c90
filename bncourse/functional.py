"""Batch normalization as pure NumPy functions: no state, no framework.

Layout follows PyTorch: channels live on axis 1, so an input is ``(N, C)``,
``(N, C, L)``, ``(N, C, H, W)`` or more. Batch normalization computes one mean
and one variance per channel, over every axis except axis 1. We call the
number of values that share a channel's statistics ``M = x.size // C``.

Each forward returns ``(out, cache)``; the matching backward takes the upstream
gradient and that cache, in the style of CS231n's ``layers.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "BatchNormCache",
    "reduction_axes",
    "channel_shape",
    "batch_statistics",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_staged",
    "batchnorm_inference",
    "NormCache",
    "layernorm_forward",
    "layernorm_backward",
    "groupnorm_forward",
    "groupnorm_backward",
    "fold_batchnorm_arrays",
    "RMSNormCache",
    "rmsnorm_forward",
    "rmsnorm_backward",
]


class BatchNormCache(NamedTuple):
    """What the training-mode forward keeps for the backward pass, and why.

    - ``x_hat``: the normalized input, same shape as ``x``. The compact
      backward is written in terms of it, so we keep it instead of ``x``.
    - ``inv_std``: ``1 / sqrt(var + eps)``, shape ``(C,)``. Needed to scale
      the gradient; storing it avoids a second square root.
    - ``gamma``: the scale, shape ``(C,)``; ``dx`` is proportional to it.
    - ``mean``, ``var``: the batch mean and biased variance, shape ``(C,)``.
      The backward does not need them; a layer reads them to update its
      running statistics without a second pass over the input.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray | None = None
    var: np.ndarray | None = None


def reduction_axes(ndim: int) -> tuple[int, ...]:
    """Axes that batch normalization averages over: all but the channel axis 1."""
    return (0,) + tuple(range(2, ndim))


def channel_shape(ndim: int, num_channels: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector ``(C,)`` against an ``ndim`` input."""
    return (1, num_channels) + (1,) * (ndim - 2)


def _check_input(x: np.ndarray, name: str = "x") -> None:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"expected {name} to be a numpy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(
            f"expected {name} of shape (N, C, ...) with at least 2 dimensions, "
            f"got shape {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected {name} to have a floating dtype, got {x.dtype}")


# How each input rank a layer may accept reads in error messages.
_LAYOUTS = {2: "2-D (N, C)", 3: "3-D (N, C, L)", 4: "4-D (N, C, H, W)", 5: "5-D (N, C, D, H, W)"}


def check_layer_input(layer: str, shape: tuple[int, ...], accepted_ndims: tuple[int, ...], num_features: int) -> None:
    """The rank and channel checks every batch-norm layer makes, NumPy or torch alike.

    ``layer`` names the layer in the message; ``accepted_ndims`` are the ranks
    it takes, e.g. ``(2, 3)``, described in the message as
    ``"2-D (N, C) or 3-D (N, C, L)"``. Raises ``ValueError``.
    """
    if len(shape) not in accepted_ndims:
        layout = " or ".join(_LAYOUTS[n] for n in accepted_ndims)
        raise ValueError(f"{layer} expected {layout} input, got {len(shape)}-D input of shape {tuple(shape)}")
    if shape[1] != num_features:
        raise ValueError(
            f"{layer} expected {num_features} channels on axis 1, got {shape[1]} (input shape {tuple(shape)})"
        )


def _check_per_channel(v: np.ndarray, name: str, num_channels: int) -> np.ndarray:
    v = np.asarray(v)
    if v.shape != (num_channels,):
        raise ValueError(
            f"expected {name} of shape ({num_channels},) to match the {num_channels} "
            f"channels on axis 1 of the input, got shape {v.shape}"
        )
    return v


def batch_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x`` of shape ``(N, C, ...)``.

    Two passes: first the mean, then the mean of squared deviations from it.
    The one-pass formula ``E[x^2] - E[x]^2`` subtracts two nearly equal large
    numbers when ``|mean| >> std``, and in float32 the difference drowns in
    rounding error (it can even come out negative). Returns two ``(C,)`` arrays
    in the dtype of ``x``.
    """
    _check_input(x)
    axes = reduction_axes(x.ndim)
    mean = x.mean(axis=axes)
    centered = x - mean.reshape(channel_shape(x.ndim, x.shape[1]))
    var = np.mean(centered * centered, axis=axes)
    return mean, var


def batchnorm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, BatchNormCache]:
    """Training-mode batch normalization.

    ``out = gamma * (x - mean) / sqrt(var + eps) + beta`` with ``mean`` and the
    biased ``var`` taken per channel over every axis but axis 1.

    Args:
        x: input of shape ``(N, C, ...)``, float32 or float64.
        gamma: scale, shape ``(C,)``.
        beta: shift, shape ``(C,)``.
        eps: added to the variance before the square root.

    Returns:
        ``out`` with the shape and dtype of ``x``, and a :class:`BatchNormCache`
        holding ``x_hat`` (shape of ``x``), ``inv_std`` and ``gamma`` (``(C,)``).

    Raises:
        ValueError: ``x`` has fewer than 2 dimensions, ``gamma``/``beta`` do not
            have shape ``(C,)``, or there is only one value per channel (the
            variance of one number is 0 and the output would be just ``beta``).
    """
    _check_input(x)
    num_channels = x.shape[1]
    gamma = _check_per_channel(gamma, "gamma", num_channels)
    beta = _check_per_channel(beta, "beta", num_channels)
    values_per_channel = x.size // num_channels if num_channels else 0
    if values_per_channel <= 1:
        raise ValueError(
            "expected more than 1 value per channel when training, "
            f"got input of shape {x.shape}"
        )
    shape = channel_shape(x.ndim, num_channels)
    mean, var = batch_statistics(x)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    gamma = gamma.astype(x.dtype, copy=False)
    out = gamma.reshape(shape) * x_hat + beta.astype(x.dtype, copy=False).reshape(shape)
    return out, BatchNormCache(x_hat=x_hat, inv_std=inv_std, gamma=gamma, mean=mean, var=var)


def batchnorm_backward(
    dout: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of :func:`batchnorm_forward`, in the compact closed form.

    With ``M`` values per channel and sums taken per channel:

        dbeta  = sum(dout)
        dgamma = sum(dout * x_hat)
        dx     = gamma * inv_std / M * (M * dout - dbeta - x_hat * dgamma)

    The formula is derived in the chapter "Deriving batch normalization". It
    reuses ``dbeta`` and ``dgamma``, so the whole backward costs two reductions
    and one elementwise pass.

    Args:
        dout: upstream gradient, same shape as the forward's input.
        cache: the cache returned by :func:`batchnorm_forward`.

    Returns:
        ``(dx, dgamma, dbeta)`` with shapes ``x.shape``, ``(C,)``, ``(C,)``.
    """
    x_hat, inv_std, gamma = _check_backward(dout, cache)
    axes = reduction_axes(dout.ndim)
    shape = channel_shape(dout.ndim, dout.shape[1])
    m = dout.size // dout.shape[1]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    scale = (gamma * inv_std / m).reshape(shape)
    dx = scale * (m * dout - dbeta.reshape(shape) - x_hat * dgamma.reshape(shape))
    return dx, dgamma, dbeta


def batchnorm_backward_staged(
    dout: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same gradients as :func:`batchnorm_backward`, by walking the graph.

    Goes backwards node by node through the computational graph
    ``x -> mu -> xc = x - mu -> var -> inv_std -> x_hat -> out``, exactly as
    autograd would. It is slower and keeps more intermediates; the book uses it
    to check the compact formula and to show why the compact one wins.
    Shapes as in :func:`batchnorm_backward`.
    """
    x_hat, inv_std, gamma = _check_backward(dout, cache)
    axes = reduction_axes(dout.ndim)
    shape = channel_shape(dout.ndim, dout.shape[1])
    m = dout.size // dout.shape[1]
    inv_std_b = inv_std.reshape(shape)
    xc = x_hat / inv_std_b  # x - mu, recovered from the cache

    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    dx_hat = dout * gamma.reshape(shape)
    # x_hat = xc * inv_std: two paths, one through xc and one through inv_std.
    dxc = dx_hat * inv_std_b
    dinv_std = (dx_hat * xc).sum(axis=axes)
    # inv_std = (var + eps) ** -1/2  =>  d inv_std / d var = -1/2 * inv_std ** 3
    dvar = -0.5 * inv_std**3 * dinv_std
    # var = mean(xc ** 2)  =>  d var / d xc = 2 * xc / M
    dxc = dxc + 2.0 * xc * dvar.reshape(shape) / m
    # xc = x - mu: one path straight to x, one through mu = mean(x).
    dmu = -dxc.sum(axis=axes)
    dx = dxc + dmu.reshape(shape) / m
    return dx, dgamma, dbeta


def batchnorm_inference(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-5,
) -> np.ndarray:
    """Evaluation-mode batch normalization with fixed (running) statistics.

    ``out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``: an
    affine map per channel, independent of the other examples in the batch.
    All per-channel arguments have shape ``(C,)``; ``out`` has the shape and
    dtype of ``x``. Nothing is cached: the gradient is ``dout * gamma / sqrt(running_var + eps)``.
    """
    _check_input(x)
    c = x.shape[1]
    shape = channel_shape(x.ndim, c)
    running_mean = _check_per_channel(running_mean, "running_mean", c)
    running_var = _check_per_channel(running_var, "running_var", c)
    gamma = _check_per_channel(gamma, "gamma", c)
    beta = _check_per_channel(beta, "beta", c)
    inv_std = (1.0 / np.sqrt(running_var + eps)).astype(x.dtype)
    x_hat = (x - running_mean.astype(x.dtype).reshape(shape)) * inv_std.reshape(shape)
    return gamma.astype(x.dtype).reshape(shape) * x_hat + beta.astype(x.dtype).reshape(shape)


def _check_backward(
    dout: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(cache, BatchNormCache):
        raise ValueError(
            "expected the cache returned by batchnorm_forward, "
            f"got {type(cache).__name__}"
        )
    _check_input(dout, "dout")
    if dout.shape != cache.x_hat.shape:
        raise ValueError(
            f"expected dout of shape {cache.x_hat.shape} (the forward input's shape), "
            f"got shape {dout.shape}"
        )
    return cache.x_hat, cache.inv_std, cache.gamma


# -- The same idea over other axes: layer norm and group norm ---------------
#
# Batch norm shares statistics across the batch, per channel. Layer norm
# shares them across all features of one example; group norm across a group
# of channels of one example. Both reshape the input so that each row of a
# 2-D view holds one set of values that share a mean and variance, and then
# the forward and the compact backward are the batch-norm ones along axis 1
# of that view.


class NormCache(NamedTuple):
    """What layer/group norm keep for the backward pass.

    - ``x_hat``: normalized input, shape of ``x``.
    - ``inv_std``: ``1 / sqrt(var + eps)`` per normalized set, shape ``(N, S)``
      with ``S = 1`` for layer norm and ``S = num_groups`` for group norm.
    - ``gamma``: the scale as given (``x.shape[1:]`` for layer norm, ``(C,)``
      for group norm); it multiplies the upstream gradient.
    - ``num_groups``: ``S`` again, to rebuild the 2-D view.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    num_groups: int


def _rows_forward(rows: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalize each row of ``rows`` (shape ``(R, M)``); returns ``x_hat`` and ``inv_std`` ``(R,)``."""
    mean = rows.mean(axis=1, keepdims=True)
    centered = rows - mean
    var = np.mean(centered * centered, axis=1, keepdims=True)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(rows.dtype)
    return centered * inv_std, inv_std[:, 0]


def _rows_backward(dx_hat: np.ndarray, x_hat: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """Compact backward through row-wise normalization (shapes ``(R, M)``, ``(R, M)``, ``(R,)``)."""
    m = dx_hat.shape[1]
    return (inv_std[:, None] / m) * (
        m * dx_hat
        - dx_hat.sum(axis=1, keepdims=True)
        - x_hat * (dx_hat * x_hat).sum(axis=1, keepdims=True)
    )


def layernorm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, NormCache]:
    """Layer normalization over all axes but the batch axis 0, like ``torch.nn.LayerNorm(x.shape[1:])``.

    Args:
        x: input of shape ``(N, D1, D2, ...)`` (at least 2-D).
        gamma, beta: elementwise scale and shift, shape ``x.shape[1:]``.

    Returns:
        ``out`` (shape of ``x``) and a :class:`NormCache` (``inv_std`` of shape ``(N, 1)``).
        Statistics are per example, so the output of one example does not
        depend on the rest of the batch, and a batch of one is fine.
    """
    _check_input(x)
    gamma = np.asarray(gamma)
    beta = np.asarray(beta)
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v.shape != x.shape[1:]:
            raise ValueError(
                f"expected {name} of shape {x.shape[1:]} (the input's shape without the batch axis), "
                f"got shape {v.shape}"
            )
    rows = x.reshape(x.shape[0], -1)
    x_hat_rows, inv_std = _rows_forward(rows, eps)
    x_hat = x_hat_rows.reshape(x.shape)
    out = gamma.astype(x.dtype) * x_hat + beta.astype(x.dtype)
    return out, NormCache(x_hat, inv_std.reshape(-1, 1), gamma.astype(x.dtype), 1)


def layernorm_backward(
    dout: np.ndarray, cache: NormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`layernorm_forward`: ``(dx, dgamma, dbeta)``, shapes ``x``, ``x.shape[1:]`` twice."""
    x_hat = _check_norm_backward(dout, cache)
    n = dout.shape[0]
    dx_hat = dout * cache.gamma
    dx = _rows_backward(dx_hat.reshape(n, -1), x_hat.reshape(n, -1), cache.inv_std[:, 0])
    return dx.reshape(dout.shape), (dout * x_hat).sum(axis=0), dout.sum(axis=0)


def groupnorm_forward(
    x: np.ndarray, num_groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, NormCache]:
    """Group normalization, like ``torch.nn.functional.group_norm``.

    The ``C`` channels are split into ``num_groups`` consecutive groups; each
    example's group (its ``C // num_groups`` channels times all positions) is
    normalized with its own mean and variance. ``num_groups=1`` is layer norm
    with a per-channel affine; ``num_groups=C`` is instance norm.

    Args:
        x: input of shape ``(N, C, ...)``; ``C`` divisible by ``num_groups``.
        gamma, beta: per-channel scale and shift, shape ``(C,)``.

    Returns:
        ``out`` (shape of ``x``) and a :class:`NormCache` with ``inv_std`` of
        shape ``(N, num_groups)``.
    """
    _check_input(x)
    c = x.shape[1]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or c % num_groups:
        raise ValueError(
            f"expected num_groups to be a positive int dividing the {c} channels, got {num_groups!r}"
        )
    gamma = _check_per_channel(gamma, "gamma", c).astype(x.dtype)
    beta = _check_per_channel(beta, "beta", c).astype(x.dtype)
    n = x.shape[0]
    x_hat_rows, inv_std = _rows_forward(x.reshape(n * num_groups, -1), eps)
    x_hat = x_hat_rows.reshape(x.shape)
    shape = channel_shape(x.ndim, c)
    out = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    return out, NormCache(x_hat, inv_std.reshape(n, num_groups), gamma, int(num_groups))


def groupnorm_backward(
    dout: np.ndarray, cache: NormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`groupnorm_forward`: ``(dx, dgamma, dbeta)``, shapes ``x``, ``(C,)``, ``(C,)``."""
    x_hat = _check_norm_backward(dout, cache)
    n, c = dout.shape[:2]
    g = cache.num_groups
    dx_hat = dout * cache.gamma.reshape(channel_shape(dout.ndim, c))
    dx = _rows_backward(
        dx_hat.reshape(n * g, -1), x_hat.reshape(n * g, -1), cache.inv_std.reshape(-1)
    )
    axes = reduction_axes(dout.ndim)
    return dx.reshape(dout.shape), (dout * x_hat).sum(axis=axes), dout.sum(axis=axes)


def _check_norm_backward(dout: np.ndarray, cache: NormCache) -> np.ndarray:
    if not isinstance(cache, NormCache):
        raise ValueError(
            f"expected the cache returned by layernorm_forward/groupnorm_forward, got {type(cache).__name__}"
        )
    _check_input(dout, "dout")
    if dout.shape != cache.x_hat.shape:
        raise ValueError(
            f"expected dout of shape {cache.x_hat.shape} (the forward input's shape), got shape {dout.shape}"
        )
    return cache.x_hat


# -- Inference: folding BN into the layer before it ------------------------


def fold_batchnorm_arrays(
    weight: np.ndarray,
    bias: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode batch norm into the weight and bias of the layer before it.

    Args:
        weight: the layer's weight, output channels first: ``(C, D)`` for a
            Linear layer, ``(C, C_in / groups, kH, kW)`` for a Conv2d, and so on.
        bias: the layer's bias ``(C,)``, or ``None`` for a layer without one.
        running_mean, running_var: the batch norm's statistics, ``(C,)``.
        gamma, beta: its scale and shift ``(C,)``; ``None`` means 1 and 0
            (``affine=False``).
        eps: its epsilon.

    Returns:
        ``(folded_weight, folded_bias)`` with the shapes of ``weight`` and ``(C,)``.
    """
    weight = np.asarray(weight)
    if weight.ndim < 2:
        raise ValueError(
            "expected a weight with output channels on axis 0 and >= 2 axes, "
            f"got shape {weight.shape}"
        )
    c = weight.shape[0]
    vectors = {
        "bias": bias,
        "running_mean": running_mean,
        "running_var": running_var,
        "gamma": gamma,
        "beta": beta,
    }
    for name, v in vectors.items():
        if v is not None and np.shape(v) != (c,):
            raise ValueError(
                f"expected {name} of shape ({c},) to match the {c} output channels of "
                f"weight {weight.shape}, got shape {np.shape(v)}"
            )
    scale = 1.0 / np.sqrt(np.asarray(running_var) + eps)
    if gamma is not None:
        scale = np.asarray(gamma) * scale
    b = np.zeros(c, weight.dtype) if bias is None else np.asarray(bias)
    shift = (
        -scale * np.asarray(running_mean)
        if beta is None
        else np.asarray(beta) - scale * running_mean
    )
    folded_w = weight * scale.reshape((c,) + (1,) * (weight.ndim - 1))
    folded_b = scale * b + shift
    return folded_w.astype(weight.dtype, copy=False), folded_b.astype(weight.dtype, copy=False)


# -- RMSNorm: scale by the root mean square, no centring -------------------


class RMSNormCache(NamedTuple):
    """What :func:`rmsnorm_forward` keeps for the backward pass.

    - ``x_hat``: ``x / rms``, shape of ``x``; ``dweight`` is ``dout * x_hat`` summed.
    - ``inv_rms``: ``1 / sqrt(mean(x**2) + eps)`` over the normalized axes, kept with
      those axes as size 1 so that it broadcasts against ``x``.
    - ``weight``: the elementwise scale, or ``None`` for none.
    """

    x_hat: np.ndarray
    inv_rms: np.ndarray
    weight: np.ndarray | None


def rmsnorm_forward(
    x: np.ndarray, weight: np.ndarray | None, eps: float = 1e-6
) -> tuple[np.ndarray, RMSNormCache]:
    """RMSNorm (Zhang & Sennrich, 2019), like ``torch.nn.functional.rms_norm(x, weight.shape, weight, eps)``.

    Each slice over the last ``weight.ndim`` axes is divided by its root mean
    square ``sqrt(mean(x**2) + eps)`` -- nothing is subtracted -- and multiplied
    elementwise by ``weight``.

    Args:
        x: input of shape ``(..., *normalized_shape)``.
        weight: scale of shape ``normalized_shape`` (at least 1-D), or ``None``
            to normalize over the last axis without a scale.
        eps: added to the mean square inside the square root.

    Returns:
        ``out`` (shape and dtype of ``x``) and an :class:`RMSNormCache`.
    """
    _check_input(x)
    if weight is not None:
        weight = np.asarray(weight)
        if weight.ndim < 1 or weight.ndim > x.ndim or x.shape[x.ndim - weight.ndim:] != weight.shape:
            raise ValueError(
                f"expected weight whose shape ends x's shape {x.shape} (torch's normalized_shape), "
                f"got shape {weight.shape}"
            )
    axes = tuple(range(x.ndim - (1 if weight is None else weight.ndim), x.ndim))
    inv_rms = (1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)).astype(x.dtype)
    x_hat = x * inv_rms
    out = x_hat if weight is None else x_hat * weight.astype(x.dtype)
    return out, RMSNormCache(x_hat, inv_rms, None if weight is None else weight.astype(x.dtype))


def rmsnorm_backward(
    dout: np.ndarray, cache: RMSNormCache
) -> tuple[np.ndarray, np.ndarray | None]:
    """Backward of :func:`rmsnorm_forward`: ``(dx, dweight)``, shapes ``x`` and ``weight`` (or ``None``).

    With ``g = dout * weight`` and ``M`` values per normalized slice,
    ``dx = inv_rms * (g - x_hat * mean(g * x_hat))``: the gradient loses its
    component along ``x_hat``, because scaling a slice does not change its output.
    """
    if not isinstance(cache, RMSNormCache):
        raise ValueError(f"expected the cache returned by rmsnorm_forward, got {type(cache).__name__}")
    _check_input(dout, "dout")
    if dout.shape != cache.x_hat.shape:
        raise ValueError(
            f"expected dout of shape {cache.x_hat.shape} (the forward input's shape), got shape {dout.shape}"
        )
    x_hat = cache.x_hat
    k = 1 if cache.weight is None else cache.weight.ndim
    axes = tuple(range(dout.ndim - k, dout.ndim))
    g = dout if cache.weight is None else dout * cache.weight
    dx = cache.inv_rms * (g - x_hat * np.mean(g * x_hat, axis=axes, keepdims=True))
    dweight = None if cache.weight is None else (dout * x_hat).sum(axis=tuple(range(dout.ndim - k)))
    return dx, dweight
