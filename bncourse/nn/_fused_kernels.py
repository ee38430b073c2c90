"""Numba kernels for the fused batch norm: Welford statistics, one output pass, a two-pass backward.

Imported only by :mod:`bncourse.nn.fused` at the first fused call, never by
``import bncourse``. Each kernel sees one of two layouts of a ``(N, C, ...)``
tensor, as a view that costs no copy:

- *planes* ``(A, C, B)``: contiguous ``(N, C, H, W)`` with ``A = N`` and
  ``B = H * W``; each channel is ``A`` contiguous runs of ``B`` values.
- *rows* ``(R, C)``: ``(N, C)`` or channels-last ``(N, H, W, C)`` in memory
  with ``R = N * H * W``; a row holds one value of every channel.

Each kernel does one slice of the work (a range of channels, of
``(a, c)`` planes or of rows) and releases the GIL, so :mod:`bncourse.nn.fused`
runs one slice per thread. Plain serial loops compile in about a second each
(``parallel=True`` would take far longer and launch nested parallel regions).

Statistics are merged chunk by chunk with Chan et al.'s pairwise form of
Welford's update: a chunk small enough to stay in cache gets its own mean and
sum of squared deviations (two loops over the chunk, which the compiler
vectorizes; the second reads from cache, not memory), then
``M2 += M2_chunk + delta**2 * n * n_chunk / (n + n_chunk)``. Memory is read
once, and no sum grows with the number of values the way ``sum(x**2)``
does. Chunk sums are in the input's dtype over at most a few thousand
values; the merges are in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = dict(fastmath=True, cache=True, nogil=True)
ROW_CHUNK = 64  # rows merged at once in the rows layout: 64 * C values stay in cache


@njit(**_OPTS)
def stats_planes(x, c0, c1, mean, m2):
    """Channels ``c0:c1`` of ``x`` (``(A, C, B)``): mean and sum of squared deviations into ``mean``, ``m2`` (float64)."""
    a_size, _, b_size = x.shape
    scratch = np.zeros(1, x.dtype)  # rounds the chunk mean to x's dtype, so the loops stay in it
    zero = scratch[0]
    for c in range(c0, c1):
        count, mu, acc = 0.0, 0.0, 0.0
        for a in range(a_size):
            plane = x[a, c]  # a contiguous run: both loops vectorize
            s = zero
            for b in range(b_size):
                s += plane[b]
            scratch[0] = s / b_size
            chunk_mean = scratch[0]
            q = zero
            for b in range(b_size):
                d = plane[b] - chunk_mean
                q += d * d
            delta = chunk_mean - mu
            total = count + b_size
            mu += delta * b_size / total
            acc += q + delta * delta * count * b_size / total
            count = total
        mean[c] = mu
        m2[c] = acc


@njit(**_OPTS)
def stats_rows(x, r0, r1, mean, m2):
    """Rows ``r0:r1`` of ``x`` (``(R, C)``): per-channel mean and sum of squared deviations (float64)."""
    c_size = x.shape[1]
    s = np.zeros(c_size, x.dtype)
    q = np.zeros(c_size, x.dtype)
    count = 0.0
    for lo in range(r0, r1, ROW_CHUNK):
        hi = min(lo + ROW_CHUNK, r1)
        n = hi - lo
        s[:] = 0
        q[:] = 0
        for r in range(lo, hi):
            for c in range(c_size):
                s[c] += x[r, c]
        for c in range(c_size):
            s[c] /= n
        for r in range(lo, hi):
            for c in range(c_size):
                d = x[r, c] - s[c]
                q[c] += d * d
        total = count + n
        for c in range(c_size):
            delta = s[c] - mean[c]
            mean[c] += delta * n / total
            m2[c] += q[c] + delta * delta * count * n / total
        count = total


@njit(**_OPTS)
def affine_planes(x, alpha, shift, out, p0, p1):
    """Planes ``p0:p1`` (flat index ``a * C + c``): ``out = x * alpha[c] + shift[c]``."""
    c_size, b_size = x.shape[1], x.shape[2]
    for p in range(p0, p1):
        a, c = p // c_size, p % c_size
        al, sh = alpha[c], shift[c]
        src, dst = x[a, c], out[a, c]
        for b in range(b_size):
            dst[b] = src[b] * al + sh


@njit(**_OPTS)
def affine_rows(x, alpha, shift, out, r0, r1):
    c_size = x.shape[1]
    for r in range(r0, r1):
        for c in range(c_size):
            out[r, c] = x[r, c] * alpha[c] + shift[c]


@njit(**_OPTS)
def grad_sums_planes(dout, x, mean, c0, c1, dbeta, dot):
    """Backward pass 1, channels ``c0:c1``: ``dbeta = sum(dout)``, ``dot = sum(dout * (x - mean))`` (float64).

    ``mean`` comes in ``x``'s dtype, so the inner loops stay in that dtype and vectorize.
    """
    a_size, b_size = x.shape[0], x.shape[2]
    zero = np.zeros(1, x.dtype)[0]  # the sums stay in x's dtype and vectorize
    for c in range(c0, c1):
        mu = mean[c]
        total_d, total_dx = 0.0, 0.0
        for a in range(a_size):
            g, v = dout[a, c], x[a, c]
            sd = zero
            sdx = zero
            for b in range(b_size):
                sd += g[b]
                sdx += g[b] * (v[b] - mu)
            total_d += sd
            total_dx += sdx
        dbeta[c] = total_d
        dot[c] = total_dx


@njit(**_OPTS)
def grad_sums_rows(dout, x, mean, r0, r1, dbeta, dot):
    """Rows ``r0:r1``: the same sums, added into ``dbeta`` and ``dot`` (float64, ``(C,)``)."""
    c_size = x.shape[1]
    sd = np.zeros(c_size, x.dtype)
    sdx = np.zeros(c_size, x.dtype)
    for lo in range(r0, r1, ROW_CHUNK):
        sd[:] = 0
        sdx[:] = 0
        for r in range(lo, min(lo + ROW_CHUNK, r1)):
            for c in range(c_size):
                g = dout[r, c]
                sd[c] += g
                sdx[c] += g * (x[r, c] - mean[c])
        for c in range(c_size):
            dbeta[c] += sd[c]
            dot[c] += sdx[c]


@njit(**_OPTS)
def grad_input_planes(dout, x, k, coef, const, dx, p0, p1):
    """Backward pass 2, planes ``p0:p1``: ``dx = k * dout + coef * x + const``, per-channel coefficients."""
    c_size, b_size = x.shape[1], x.shape[2]
    for p in range(p0, p1):
        a, c = p // c_size, p % c_size
        kc, cc, sc = k[c], coef[c], const[c]
        g, v, dst = dout[a, c], x[a, c], dx[a, c]
        for b in range(b_size):
            dst[b] = kc * g[b] + cc * v[b] + sc


@njit(**_OPTS)
def grad_input_rows(dout, x, k, coef, const, dx, r0, r1):
    c_size = x.shape[1]
    for r in range(r0, r1):
        for c in range(c_size):
            dx[r, c] = k[c] * dout[r, c] + coef[c] * x[r, c] + const[c]
