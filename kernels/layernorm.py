"""LayerNorm over the last (channel) axis of rows x[N, C] (any leading shape flattened to N).

    mean = (1/C) sum_c x_c,   rstd = 1 / sqrt((1/C) sum_c (x_c - mean)^2 + eps)
    xhat = (x - mean) * rstd, y = xhat * w + b

The forward keeps mean and rstd per row. With g = dy * w the backward is

    dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  dw = sum_rows dy * xhat,  db = sum_rows dy

Statistics are accumulated in float64 whatever the storage dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import prange_only
from kernels.reduce import sum_leading

# The weight/bias reductions are split into a fixed number of row chunks (not one per thread),
# so results are bit-identical whatever the thread count.
_CHUNKS = 64


@njit(cache=True, parallel=prange_only())
def layernorm_forward(x, w, b, eps):
    """x [N, C], w [C], b [C] -> y [N, C], mean [N], rstd [N]."""
    N, C = x.shape
    y = np.empty_like(x)
    mean = np.empty(N, dtype=x.dtype)
    rstd = np.empty(N, dtype=x.dtype)
    for n in prange(N):
        mean[n], rstd[n] = _normalize_row(x[n], w, b, eps, y[n])
    return y, mean, rstd


@njit(cache=True)
def layernorm_forward_serial(x, w, b, eps):
    """`layernorm_forward` in one thread, for few rows (no OpenMP fork/join); same results."""
    N, C = x.shape
    y = np.empty_like(x)
    mean = np.empty(N, dtype=x.dtype)
    rstd = np.empty(N, dtype=x.dtype)
    for n in range(N):
        mean[n], rstd[n] = _normalize_row(x[n], w, b, eps, y[n])
    return y, mean, rstd


@njit(cache=True, parallel=prange_only())
def layernorm_backward(dy, x, w, mean, rstd):
    """dy, x [N, C], w [C], mean, rstd [N] -> dx [N, C], dw [C], db [C]."""
    N, C = x.shape
    dx = np.empty_like(x)
    chunks = min(_CHUNKS, N)
    partial = np.zeros((chunks, 2, C), dtype=np.float64)
    for chunk in prange(chunks):
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            _layernorm_backward_row(dy[n], x[n], w, mean[n], rstd[n], dx[n], partial[chunk])
    total = sum_leading(partial.reshape((chunks, 2 * C))).reshape((2, C))
    return dx, total[0].astype(x.dtype), total[1].astype(x.dtype)


@njit(cache=True, inline="always")
def _normalize_row(x, w, b, eps, out):
    """Write LayerNorm(x) of one row into out; return (mean, rstd)."""
    C = x.shape[0]
    s = 0.0
    for c in range(C):
        s += x[c]
    mu = s / C
    ss = 0.0
    for c in range(C):
        d = x[c] - mu
        ss += d * d
    r = 1.0 / np.sqrt(ss / C + eps)
    for c in range(C):
        out[c] = (x[c] - mu) * r * w[c] + b[c]
    return mu, r


@njit(cache=True, inline="always")
def _layernorm_backward_row(dy, x, w, mu, r, dx, acc):
    """Row backward: write dx, add dy*xhat into acc[0] and dy into acc[1]."""
    C = x.shape[0]
    g_mean = 0.0
    gx_mean = 0.0
    for c in range(C):
        xhat = (x[c] - mu) * r
        g = dy[c] * w[c]
        g_mean += g
        gx_mean += g * xhat
        acc[0, c] += dy[c] * xhat
        acc[1, c] += dy[c]
    g_mean /= C
    gx_mean /= C
    for c in range(C):
        xhat = (x[c] - mu) * r
        dx[c] = r * (dy[c] * w[c] - g_mean - xhat * gx_mean)
