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
from kernels.simd import lanes, vadd, vfma, vload, vload_head, vstore, vstore_head, vzero


@njit(cache=True, parallel=prange_only())
def dwconv_forward(x, w, b):
    """x [B, T, C], w [K, C], b [C] -> y [B, T, C] (see module docstring)."""
    B, T, C = x.shape
    y = np.empty_like(x)
    x_flat, w_flat, K = x.reshape(-1), w.reshape(-1), w.shape[0]
    for row in prange(B * T):
        _conv_row(x_flat, w_flat, b, T, K, row // T, row % T, y[row // T, row % T])
    return y


@njit(cache=True, parallel=prange_only())
def dwconv_backward(dy, x, w, dskip=None):
    """dy, x [B, T, C], w [K, C] -> dx [B, T, C], dw [K, C], db [C]. With dskip [B, T, C] (a
    gradient that bypasses the conv: the block's residual), dx = that conv's dx + dskip, added
    as each row is stored (the same bits as adding it afterwards, one pass less).

    Per sample (explicit SIMD, kernels/simd.py): each dx row summed over the taps in registers,
    four vectors of channels at a time, and stored once; then per vector of channels each
    tap's dw, and db, summed over the rows in a register (the fused multiply-adds of a plain
    loop in the same order, t ascending, so the same bits), instead of updated in memory at
    every row. The per-sample sums are added in sample order, each column by one thread."""
    B, T, C = x.shape
    K = w.shape[0]
    dx = np.empty_like(x)
    # per-sample partial sums of dw (rows 0..K-1) and db (row K), reduced after the loop
    partial = np.empty((B, (K + 1) * C), dtype=x.dtype)
    L = lanes(x)
    dy_flat, x_flat, w_flat, dx_flat = dy.reshape(-1), x.reshape(-1), w.reshape(-1), dx.reshape(-1)
    skip = dskip is not None
    skip_flat = dskip.reshape(-1) if dskip is not None else dx_flat  # never read without dskip
    for bi in prange(B):
        start = bi * T * C
        for t in range(T):
            _conv_row_flipped(dy_flat, w_flat, start, t, T, C, K, dx_flat, skip, skip_flat)
        for c in range(0, C, L):
            _dw_db_lanes(dy_flat, x_flat, start, T, C, K, c, min(L, C - c), partial[bi])
    total = np.zeros((K + 1) * C, dtype=x.dtype)
    span = (K + 1) * C
    for part in prange(4):  # columns in four runs; each adds the samples in order, from zero
        j0, j1 = part * span // 4, (part + 1) * span // 4
        for bi in range(B):
            row = partial[bi]
            for j in range(j0, j1):
                total[j] += row[j]
    return dx, total[:K * C].reshape((K, C)).copy(), total[K * C:].copy()


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
def _conv_row_flipped(dy, w, start, t, T, C, K, dx, skip, dskip):
    """dx[start + t*C + c] = sum_k w[k*C + c] * dy[start + (t - k + P)*C + c] over the taps k
    whose row exists, k ascending, from zero (+ dskip[start + t*C + c] if skip): one row of
    the backward's conv with the taps flipped, on flat arrays, four vectors of channels at a
    time (four chains of fused multiply-adds; one waited ~4 cycles per tap for the last)."""
    P = (K - 1) // 2
    k0 = max(0, t + P - T + 1)
    taps = min(K, t + P + 1) - k0
    L = lanes(dx)
    o = start + t * C
    c = 0
    while c + 4 * L <= C:  # the taps walk dy's rows backwards: a step of -C
        zero = vzero(dx)
        a0, a1, a2, a3 = _taps_four(dy, start + (t - k0 + P) * C + c, -C, w, k0 * C + c, C, taps,
                                    zero, zero, zero, zero)
        if skip:
            a0 = vadd(a0, vload(dskip, o + c))
            a1 = vadd(a1, vload(dskip, o + c + L))
            a2 = vadd(a2, vload(dskip, o + c + 2 * L))
            a3 = vadd(a3, vload(dskip, o + c + 3 * L))
        vstore(dx, o + c, a0)
        vstore(dx, o + c + L, a1)
        vstore(dx, o + c + 2 * L, a2)
        vstore(dx, o + c + 3 * L, a3)
        c += 4 * L
    while c + L <= C:
        _flipped_one(dy, start + (t - k0 + P) * C + c, w, k0 * C + c, C, taps, L, dx, o + c,
                     skip, dskip)
        c += L
    if c < C:  # the last channels, fewer than a vector: masked loads and stores
        _flipped_one(dy, start + (t - k0 + P) * C + c, w, k0 * C + c, C, taps, C - c, dx, o + c,
                     skip, dskip)


@njit(cache=True, inline="always")
def _flipped_one(dy, i, w, k, C, taps, count, dx, o, skip, dskip):
    """`_conv_row_flipped` for one vector of `count` (<= lanes) channels: dx[o ..] from the
    first tap's offsets i (dy) and k (w)."""
    a0 = _taps_one(dy, i, -C, w, k, C, taps, count, vzero(dx))
    if skip:
        a0 = vadd(a0, _load(dskip, o, count))
    _store(dx, o, count, a0)


@njit(cache=True, inline="always")
def _taps_four(x, i, step, w, k, C, taps, a0, a1, a2, a3):
    """Four vectors of sums over `taps` taps: a_j += w[k + jL ..] * x[i + jL ..] by fused
    multiply-adds, then i += step and k += C for the next tap (flat arrays; four independent
    chains)."""
    L = lanes(x)
    for _ in range(taps):
        a0 = vfma(a0, vload(w, k), vload(x, i))
        a1 = vfma(a1, vload(w, k + L), vload(x, i + L))
        a2 = vfma(a2, vload(w, k + 2 * L), vload(x, i + 2 * L))
        a3 = vfma(a3, vload(w, k + 3 * L), vload(x, i + 3 * L))
        i += step
        k += C
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _taps_one(x, i, step, w, k, C, taps, count, a0):
    """`_taps_four` for one vector of `count` (<= lanes) channels (masked when short)."""
    for _ in range(taps):
        a0 = vfma(a0, _load(w, k, count), _load(x, i, count))
        i += step
        k += C
    return a0


@njit(cache=True, inline="always")
def _dw_db_lanes(dy, x, start, T, C, K, c, count, part):
    """Channels c .. c+count-1 of the sample at flat offset start:
    part[k*C + c] = sum_t dy[t] * x[t + k - P] over the rows t where row t + k - P exists, and
    part[K*C + c] = sum_t dy[t], t ascending from zero. Four taps at a time: four independent
    chains of fused multiply-adds; db with the first four. A tap past the last (K not a
    multiple of 4) is never added to and never stored."""
    P = (K - 1) // 2
    for k0 in range(0, K, 4):
        a0 = vzero(x)
        a1, a2, a3, db = a0, a0, a0, a0
        for t in range(T):
            g = _load(dy, start + t * C + c, count)
            if k0 == 0:
                db = vadd(db, g)
            s = t + k0 - P  # tap k0's row of x
            i = start + s * C + c
            if 0 <= s < T:
                a0 = vfma(a0, g, _load(x, i, count))
            if k0 + 1 < K and 0 <= s + 1 < T:
                a1 = vfma(a1, g, _load(x, i + C, count))
            if k0 + 2 < K and 0 <= s + 2 < T:
                a2 = vfma(a2, g, _load(x, i + 2 * C, count))
            if k0 + 3 < K and 0 <= s + 3 < T:
                a3 = vfma(a3, g, _load(x, i + 3 * C, count))
        _store(part, k0 * C + c, count, a0)
        if k0 + 1 < K:
            _store(part, (k0 + 1) * C + c, count, a1)
        if k0 + 2 < K:
            _store(part, (k0 + 2) * C + c, count, a2)
        if k0 + 3 < K:
            _store(part, (k0 + 3) * C + c, count, a3)
        if k0 == 0:
            _store(part, K * C + c, count, db)


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
    x_flat, w_flat, K = x.reshape(-1), w.reshape(-1), w.shape[0]
    for row in prange(B * T):
        bi = row // T
        t = row % T
        _conv_row(x_flat, w_flat, b, T, K, bi, t, y[bi, t])
        mean[bi, t], rstd[bi, t] = _normalize_row(y[bi, t], norm_w, norm_b, eps, z[bi, t])
    return y, z, mean, rstd


@njit(cache=True, parallel=prange_only())
def dwconv_layernorm_forward_into(x, w, b, norm_w, norm_b, eps, y, z, mean, rstd):
    """As `dwconv_layernorm_forward`, writing into the caller's y, z [B, T, C], mean, rstd [B, T]."""
    B, T, C = x.shape
    x_flat, w_flat, K = x.reshape(-1), w.reshape(-1), w.shape[0]
    for row in prange(B * T):
        bi = row // T
        t = row % T
        _conv_row(x_flat, w_flat, b, T, K, bi, t, y[bi, t])
        mean[bi, t], rstd[bi, t] = _normalize_row(y[bi, t], norm_w, norm_b, eps, z[bi, t])
    return y, z, mean, rstd


@njit(cache=True, parallel=prange_only())
def dwconv_layernorm_inference_into(x, w, b, norm_w, norm_b, eps, z):
    """z [B, T, C] = LayerNorm(dwconv(x)) for inference: each row convolved into z and normalised
    there, nothing kept for a backward (one stream written instead of y, z, mean and rstd; the
    same values as `dwconv_layernorm_forward_into`'s z). Returns z."""
    B, T, C = x.shape
    x_flat, w_flat, K = x.reshape(-1), w.reshape(-1), w.shape[0]
    for row in prange(B * T):
        bi = row // T
        t = row % T
        out = z[bi, t]
        _conv_row(x_flat, w_flat, b, T, K, bi, t, out)
        _normalize_row(out, norm_w, norm_b, eps, out)  # in place: reads x[c] before out[c]
    return z


@njit(cache=True, inline="always")
def _conv_row(x_flat, w_flat, b, T, K, bi, t, out):
    """out [C] = the conv at row (bi, t) of x [B, T, C] with w [K, C] and bias b [C], given x
    and w flattened (`x.reshape(-1)`, once per call of the kernel, not per row): bias + taps,
    k ascending, summed in registers by fused multiply-adds and stored once, four vectors of
    channels at a time (four independent chains; flat offsets, no index checks). 1.5-2.1x the
    one vector at a time with 2-D indexing of round 22 (one chain waited ~4 cycles per tap;
    bench/NOTES.md round 23); that was 1.1-1.8x the plain loop, which went back to memory for
    every tap."""
    C = out.shape[0]
    P = (K - 1) // 2
    k0 = max(0, P - t)
    taps = min(K, T + P - t) - k0
    L = lanes(out)
    first = (bi * T + t + k0 - P) * C  # the first tap's row of x
    c = 0
    while c + 4 * L <= C:
        a0, a1, a2, a3 = _taps_four(x_flat, first + c, C, w_flat, k0 * C + c, C, taps,
                                    vload(b, c), vload(b, c + L), vload(b, c + 2 * L),
                                    vload(b, c + 3 * L))
        vstore(out, c, a0)
        vstore(out, c + L, a1)
        vstore(out, c + 2 * L, a2)
        vstore(out, c + 3 * L, a3)
        c += 4 * L
    while c + L <= C:
        vstore(out, c, _taps_one(x_flat, first + c, C, w_flat, k0 * C + c, C, taps, L,
                                 vload(b, c)))
        c += L
    if c < C:  # the last channels, fewer than a vector: masked loads and stores
        _store(out, c, C - c, _taps_one(x_flat, first + c, C, w_flat, k0 * C + c, C, taps, C - c,
                                        _load(b, c, C - c)))
