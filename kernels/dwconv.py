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
from kernels.simd import lanes, vadd, vfma, vload, vload_head, vstore, vstore_head, vzero


@njit(cache=True, parallel=prange_only())
def dwconv_forward(x, w, b):
    """x [B, T, C], w [K, C], b [C] -> y [B, T, C] (see module docstring)."""
    B, T, C = x.shape
    y = np.empty_like(x)
    for row in prange(B * T):
        _conv_row(x, w, b, row // T, row % T, y[row // T, row % T])
    return y


@njit(cache=True, parallel=prange_only())
def dwconv_backward(dy, x, w, dskip=None):
    """dy, x [B, T, C], w [K, C] -> dx [B, T, C], dw [K, C], db [C]. With dskip [B, T, C] (a
    gradient that bypasses the conv: the block's residual), dx = that conv's dx + dskip, added
    as each row is stored (the same bits as adding it afterwards, one pass less).

    Per sample and per vector of channels (explicit SIMD, kernels/simd.py): each dx row summed
    over the taps in a register and stored once; then each tap's dw, and db, summed over the
    rows in a register (the fused multiply-adds of a plain loop in the same order, t
    ascending, so the same bits), instead of updated in memory at every row."""
    B, T, C = x.shape
    K = w.shape[0]
    dx = np.empty_like(x)
    # per-sample partial sums of dw (rows 0..K-1) and db (row K), reduced after the loop
    partial = np.zeros((B, K + 1, C), dtype=x.dtype)
    L = lanes(x)
    for bi in prange(B):
        part = partial[bi]
        for c in range(0, C, L):
            _dwconv_backward_lanes(dy, x, w, bi, c, min(L, C - c), dx[bi], part, dskip)
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
def _dwconv_backward_lanes(dy, x, w, bi, c, count, dx_rows, part, dskip):
    """Channels c .. c+count-1 of sample bi: dx_rows[t] = sum_k w[k] * dy[t - k + P] (+
    dskip[bi, t] unless dskip is None), then
    part[k] = sum_t dy[t] * x[t + k - P] over the rows t where row t + k - P exists, and
    part[K] = sum_t dy[t]."""
    T = x.shape[1]
    K = w.shape[0]
    P = (K - 1) // 2
    for t in range(T):
        acc = vzero(x[bi, t])
        for k in range(max(0, t + P - T + 1), min(K, t + P + 1)):
            acc = vfma(acc, _load(w[k], c, count), _load(dy[bi, t - k + P], c, count))
        if dskip is not None:
            acc = vadd(acc, _load(dskip[bi, t], c, count))
        _store(dx_rows[t], c, count, acc)
    # four taps at a time: four independent chains of fused multiply-adds (one chain waits
    # ~4 cycles per row for the last); db with the first four. A tap past the last (K not a
    # multiple of 4) starts from row K, is never added to and never stored
    for k0 in range(0, K, 4):
        a0 = _load(part[k0], c, count)
        a1 = _load(part[min(k0 + 1, K)], c, count)
        a2 = _load(part[min(k0 + 2, K)], c, count)
        a3 = _load(part[min(k0 + 3, K)], c, count)
        db = _load(part[K], c, count)
        for t in range(T):
            g = _load(dy[bi, t], c, count)
            if k0 == 0:
                db = vadd(db, g)
            if 0 <= t + k0 - P < T:
                a0 = vfma(a0, g, _load(x[bi, t + k0 - P], c, count))
            if k0 + 1 < K and 0 <= t + k0 + 1 - P < T:
                a1 = vfma(a1, g, _load(x[bi, t + k0 + 1 - P], c, count))
            if k0 + 2 < K and 0 <= t + k0 + 2 - P < T:
                a2 = vfma(a2, g, _load(x[bi, t + k0 + 2 - P], c, count))
            if k0 + 3 < K and 0 <= t + k0 + 3 - P < T:
                a3 = vfma(a3, g, _load(x[bi, t + k0 + 3 - P], c, count))
        _store(part[k0], c, count, a0)
        if k0 + 1 < K:
            _store(part[k0 + 1], c, count, a1)
        if k0 + 2 < K:
            _store(part[k0 + 2], c, count, a2)
        if k0 + 3 < K:
            _store(part[k0 + 3], c, count, a3)
        if k0 == 0:
            _store(part[K], c, count, db)


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
