"""Depthwise conv1d with 'same' zero padding, channels-last, and its fusion with LayerNorm.

    y[b, t, c] = bias[c] + sum_k w[k, c] * x[b, t + k - P, c],    P = (K - 1) / 2, K odd

x [B, T, C] and y [B, T, C] are C-contiguous; the weight is tap-major `w[K, C]` so the innermost
loop runs over contiguous channels (PyTorch stores it as [C, 1, K]; the layer transposes).
The backward is the same conv with the taps flipped, plus two reductions:

    dx[b, t, c] = sum_k w[k, c] * dy[b, t - k + P, c]
    dw[k, c]    = sum_{b,t} dy[b, t, c] * x[b, t + k - P, c],    db[c] = sum_{b,t} dy[b, t, c]
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import prange_only
from kernels.layernorm import _normalize_row
from kernels.reduce import sum_leading
from kernels.simd import lanes, vfma, vload, vload_head, vstore, vstore_head, vzero


@njit(cache=True, parallel=prange_only())
def dwconv_forward(x, w, b):
    """x [B, T, C], w [K, C], b [C] -> y [B, T, C] (see module docstring)."""
    B, T, C = x.shape
    y = np.empty_like(x)
    for row in prange(B * T):
        _conv_row(x, w, b, row // T, row % T, y[row // T, row % T])
    return y


@njit(cache=True, parallel=prange_only())
def dwconv_backward(dy, x, w):
    """dy, x [B, T, C], w [K, C] -> dx [B, T, C], dw [K, C], db [C].

    Per row t and per vector of channels (explicit SIMD, kernels/simd.py): dx summed over the
    taps in a register and stored once, each tap's dw partial updated in place (vector fused
    multiply-adds; 2.2-2.9x the plain loops, whose short channel loops spent their time in
    set-up and alias checks)."""
    B, T, C = x.shape
    K = w.shape[0]
    dx = np.empty_like(x)
    # per-sample partial sums of dw (rows 0..K-1) and db (row K), reduced after the loop
    partial = np.zeros((B, K + 1, C), dtype=x.dtype)
    L = lanes(x)
    full = C - C % L
    for bi in prange(B):
        part = partial[bi]
        for t in range(T):
            for c in range(0, full, L):
                _dwconv_backward_lanes(dy, x, w, bi, t, c, L, dx[bi, t], part)
            if full < C:
                _dwconv_backward_lanes(dy, x, w, bi, t, full, C - full, dx[bi, t], part)
            g = dy[bi, t]
            db = part[K]
            for c in range(C):
                db[c] += g[c]
    total = sum_leading(partial.reshape((B, (K + 1) * C))).reshape((K + 1, C))
    return dx, total[:K].copy(), total[K].copy()


@njit(cache=True, inline="always")
def _load(row, i, count):
    """count (<= lanes) elements of row from i as a vector: a plain load when it is full."""
    if count == lanes(row):
        return vload(row, i)
    return vload_head(row, i, count)


@njit(cache=True, inline="always")
def _store(row, i, count, v):
    if count == lanes(row):
        vstore(row, i, v)
    else:
        vstore_head(row, i, count, v)


@njit(cache=True, inline="always")
def _dwconv_backward_lanes(dy, x, w, bi, t, c, count, dx_row, part):
    """Channels c .. c+count-1 of row t: dx_row = sum_k w[k] * dy[t - k + P], and
    part[k] += dy[t] * x[t + k - P] for every tap whose row exists."""
    T = x.shape[1]
    K = w.shape[0]
    P = (K - 1) // 2
    acc = vzero(dx_row)
    for k in range(max(0, t + P - T + 1), min(K, t + P + 1)):
        acc = vfma(acc, _load(w[k], c, count), _load(dy[bi, t - k + P], c, count))
    _store(dx_row, c, count, acc)
    g = _load(dy[bi, t], c, count)
    for k in range(max(0, P - t), min(K, T + P - t)):
        row = part[k]
        _store(row, c, count, vfma(_load(row, c, count), g, _load(x[bi, t + k - P], c, count)))


@njit(cache=True, parallel=prange_only())
def dwconv_layernorm_forward(x, w, b, norm_w, norm_b, eps):
    """Fused y = dwconv(x); z = LayerNorm(y) over C. Returns (y, z, mean, rstd).

    One pass over each row while it is in cache; y, mean and rstd are what the backward needs.
    """
    B, T, C = x.shape
    y = np.empty_like(x)
    z = np.empty_like(x)
    mean = np.empty((B, T), dtype=x.dtype)
    rstd = np.empty((B, T), dtype=x.dtype)
    # the loop of dwconv_layernorm_forward_into, not a call to it: a function without its own
    # parallel loop gets a NumbaPerformanceWarning with parallel=True, and without parallel=True
    # it crashes (SIGSEGV) when loaded from the cache, since nothing then starts the threads
    for row in prange(B * T):
        bi = row // T
        t = row % T
        _conv_row(x, w, b, bi, t, y[bi, t])
        mean[bi, t], rstd[bi, t] = _normalize_row(y[bi, t], norm_w, norm_b, eps, z[bi, t])
    return y, z, mean, rstd


@njit(cache=True, parallel=prange_only())
def dwconv_layernorm_forward_into(x, w, b, norm_w, norm_b, eps, y, z, mean, rstd):
    """As `dwconv_layernorm_forward`, writing into the caller's y, z [B, T, C], mean, rstd [B, T]."""
    B, T, C = x.shape
    for row in prange(B * T):
        bi = row // T
        t = row % T
        _conv_row(x, w, b, bi, t, y[bi, t])
        mean[bi, t], rstd[bi, t] = _normalize_row(y[bi, t], norm_w, norm_b, eps, z[bi, t])
    return y, z, mean, rstd


@njit(cache=True, parallel=prange_only())
def dwconv_layernorm_inference_into(x, w, b, norm_w, norm_b, eps, z):
    """z [B, T, C] = LayerNorm(dwconv(x)) for inference: each row convolved into z and normalised
    there, nothing kept for a backward (one stream written instead of y, z, mean and rstd; the
    same values as `dwconv_layernorm_forward_into`'s z). Returns z."""
    B, T, C = x.shape
    for row in prange(B * T):
        bi = row // T
        t = row % T
        out = z[bi, t]
        _conv_row(x, w, b, bi, t, out)
        _normalize_row(out, norm_w, norm_b, eps, out)  # in place: reads x[c] before out[c]
    return z


@njit(cache=True, inline="always")
def _conv_row(x, w, b, bi, t, out):
    """out [C] = the conv at row (bi, t): per vector of channels, bias + taps summed in a register
    by fused multiply-adds and stored once (1.1-1.8x the plain loop, which went back to memory
    for every tap)."""
    C = x.shape[2]
    L = lanes(out)
    full = C - C % L
    for c in range(0, full, L):
        _conv_lanes(x, w, b, bi, t, c, L, out)
    if full < C:
        _conv_lanes(x, w, b, bi, t, full, C - full, out)


@njit(cache=True, inline="always")
def _conv_lanes(x, w, b, bi, t, c, count, out):
    T = x.shape[1]
    K = w.shape[0]
    P = (K - 1) // 2
    acc = _load(b, c, count)
    for k in range(max(0, P - t), min(K, T + P - t)):
        acc = vfma(acc, _load(w[k], c, count), _load(x[bi, t + k - P], c, count))
    _store(out, c, count, acc)
