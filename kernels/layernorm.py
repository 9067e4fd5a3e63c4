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
from kernels.simd import (
    vadd,
    veight,
    veight_splat,
    vlane,
    vmul,
    voctet,
    voctet_splat,
    vsub,
    vwiden,
)

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
    mu = _sum_row(x, 0.0, False) / C
    r = 1.0 / np.sqrt(_sum_row(x, mu, True) / C + eps)
    for c in range(C):
        out[c] = (x[c] - mu) * r * w[c] + b[c]
    return mu, r


@njit(cache=True, inline="always")
def _sum_row(x, shift, squares):
    """sum_c (x[c] - shift)^2 if squares, else sum_c x[c], in float64.

    Eight running sums (c mod 8) in the lanes of one float64 vector (`voctet`, whatever the
    ISA), the rest added to the first, then the eight added pairwise: a fixed order, so the
    same bits on every machine, and eight additions per step instead of one chain that waits
    for each add (1.1-1.4x per LayerNorm as eight scalar sums; in one vector, the same bits,
    another 1.45-2.2x for the forward and 1.6-2.5x for the backward: bench/NOTES.md round 12)."""
    C = x.shape[0]
    full = C - C % 8
    sums = voctet_splat(0.0)
    if not squares:
        for c in range(0, full, 8):
            sums = vadd(sums, voctet(x, c))
    else:
        center = voctet_splat(shift)
        for c in range(0, full, 8):
            d = vsub(voctet(x, c), center)
            sums = vadd(sums, vmul(d, d))
    s0 = vlane(sums, 0)
    for c in range(full, C):
        s0 += _square(x[c] - shift) if squares else x[c]
    return _pairwise(s0, sums)


@njit(cache=True, inline="always")
def _square(d):
    return d * d


@njit(cache=True, inline="always")
def _layernorm_backward_row(dy, x, w, mu, r, dx, acc):
    """Row backward: write dx, add dy*xhat into acc[0] and dy into acc[1].

    The two row means first (eight running sums each in the lanes of a float64 vector, as in
    `_sum_row`), then one loop with no reduction in it, which the compiler vectorises."""
    C = x.shape[0]
    full = C - C % 8
    g_sums = voctet_splat(0.0)  # sums of g = dy * w
    h_sums = voctet_splat(0.0)  # sums of g * xhat
    # g and xhat in the rows' dtype (mu and r are stored in it), as `_add_grad` rounds them
    center, scale = veight_splat(x, mu), veight_splat(x, r)
    for c in range(0, full, 8):
        g = vmul(veight(dy, c), veight(w, c))
        g_sums = vadd(g_sums, vwiden(g))
        h_sums = vadd(h_sums, vwiden(vmul(g, vmul(vsub(veight(x, c), center), scale))))
    g0, h0 = vlane(g_sums, 0), vlane(h_sums, 0)
    for c in range(full, C):
        g0, h0 = _add_grad(g0, h0, dy[c], x[c], w[c], mu, r)
    g_mean = _pairwise(g0, g_sums) / C
    gx_mean = _pairwise(h0, h_sums) / C
    dw = acc[0]
    db = acc[1]
    for c in range(C):
        xhat = (x[c] - mu) * r
        dw[c] += dy[c] * xhat
        db[c] += dy[c]
        dx[c] = r * (dy[c] * w[c] - g_mean - xhat * gx_mean)


@njit(cache=True, inline="always")
def _pairwise(first, sums):
    """((first + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) of the lanes s of sums."""
    return ((first + vlane(sums, 1)) + (vlane(sums, 2) + vlane(sums, 3))) + (
        (vlane(sums, 4) + vlane(sums, 5)) + (vlane(sums, 6) + vlane(sums, 7)))


@njit(cache=True, inline="always")
def _add_grad(g_sum, gx_sum, dy, x, w, mu, r):
    g = dy * w
    return g_sum + g, gx_sum + g * ((x - mu) * r)
