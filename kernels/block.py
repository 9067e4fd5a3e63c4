"""Few-row paths for inference at small batch: a register-blocked matmul and a whole ConvNeXt
block in one call (serial, or with its big matmuls split by output columns over threads).

At batch 1 a block has B*T = 8..64 rows. There BLAS is far from its peak (OpenBLAS packs
panels sized for large M: [8, 512] @ [512, 2048] ran at ~35 GFLOP/s on this machine) and each
parallel Numba kernel pays an OpenMP fork/join for a few microseconds of work. These kernels
read each weight row once for several rows of x:

    matmul_rows:          out[m, n] = sum_k x[m, k] w[n, k]          (x @ w.T, PyTorch layout)
    block_forward_rows:   out = x + keep * gamma * (GELU(LN(dwconv(x)) W1^T + b1) W2^T + b2)

The dot products are reassociated (per-lane partial sums of explicit SIMD vectors, fused
multiply-adds, a fixed pairwise lane sum; no fastmath flags), so results match BLAS to rounding,
not bit for bit.

The block calls its matmul, and the batch-1 network its blocks, through their addresses
(`matmul_cols_address`, `block_rows_address`, kernels/pointer.py), so that each compiles on
its own (in two processes at once on an empty cache, numpyconvnext/precompile.py) instead of
again inside its caller.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange, types

from kernels import prange_only
from kernels.dwconv import _conv_row
from kernels.gelu import gelu_scalar
from kernels.layernorm import _normalize_row
from kernels.pointer import call_matmul_cols, native_address
from kernels.simd import lanes, vfma, vload, vload_head, vprefetch, vstore_sums, vsum, vzero

# rows at or below which `linear_forward` (stem, downsample, head) takes `matmul_rows`
SMALL_ROWS = 32
# rows (B*T) at or below which a block's inference takes `block_forward_rows` (and its eval-mode
# forward `matmul_rows`, for the same bits): at 64 rows the one-call block still beats BLAS plus
# three parallel kernels (measured atto/pico/tiny stage 0: 74/135/229 us vs 89/143/243, 1 thread)
BLOCK_ROWS = 64
# multiply-adds of one pwconv (rows * 4C * C) from which `block_forward_rows` splits its matmuls
# over the threads: each split costs two fork/joins of the pool (10-40 us on a 2-vCPU VM).
# Measured at batch 1, 2 threads vs 1: Xeon 0.5x at C=80, 0.85x at 160, 1.07x at C=320 with 8
# rows (3.3M), 1.16x at C=256 with 16 rows (4.2M), 2-2.4x at C=512/768 (the weights stream from
# DRAM); AMD EPYC (Zen 5) 0.93x for atto's stage 3 (C=320, 8 rows), 1.13x for pico's stage 2
# (C=256, 16 rows), even for tiny's stage 1 (C=192, 32 rows; 4.7M); bench/NOTES.md round 9
SPLIT_WORK = 1 << 22


def block_parts(rows: int, channels: int, threads: int, min_work: int = SPLIT_WORK) -> int:
    """Threads for `block_forward_rows`'s matmuls: `threads` from `min_work` multiply-adds per
    pwconv on (numpyconvnext.threads.split_work: 0 when the pool's threads stay awake between
    parallel loops), else 1."""
    return threads if rows * 4 * channels * channels >= min_work else 1


@njit(cache=True)
def _matmul_cols(x, w, out, n0, n1):
    """out[:, n0:n1] = x[M, K] @ w[n0:n1, K].T, as dot products of explicit SIMD vectors
    (kernels/simd.py): tiles of 4 output columns by 4 rows with 64-byte vectors (16 vector
    accumulators, 8 vector loads per 16 FMAs; AVX-512 has 32 registers) or by 2 rows with
    32-byte ones (8 accumulators: AVX2's 16 registers do not hold 16 sums and 4 weight vectors;
    whole batch-1 predict 1.06-1.26x faster compiled for AVX2, bench/NOTES.md round 14); the
    rows past a multiple of that one at a time against 4 columns, the n1 - n0 % 4 tail columns
    one by one. Every out[m, n] is the same sequence of operations whichever tile computes it
    (lane-wise FMAs over the full vectors of K, then the partial vector by a masked load, then
    the fixed pairwise `vsum`; a tile's sums are reduced together by `vstore_sums`, in the same
    order), so the bits do not depend on M, on the split of the columns, on the thread count or
    on the tile.

    A tile's 4 weight rows are one contiguous run of 4K elements, read once from memory and
    then from L1 by the other row tiles. So that the memory does not idle while those compute,
    each step of K prefetches two cache lines of the next tile's run: with M >= 8 the whole
    run is on its way before the tile is done (1.3-1.7x on the stage 2-3 pwconv1 shapes
    8x512x2048 ... 16x384x1536 with weights from DRAM; bench/NOTES.md, round 5)."""
    M, K = x.shape
    xf = x.reshape(M * K)
    wf = w.reshape(w.shape[0] * K)
    L = lanes(x)
    KL = K - K % L
    rest = K - KL
    n4 = n0 + (n1 - n0) - (n1 - n0) % 4
    # 4-row tiles: 16 accumulators need AVX-512's 32 registers. Both tiles are written out here:
    # as called functions, even inlined by Numba, they ran 1.1-4x slower (NOTES.md round 14)
    wide = L * xf.itemsize >= 64
    tiled = M - M % (4 if wide else 2)  # rows in whole tiles
    line = 64 // wf.itemsize  # elements per cache line
    last = wf.size - 1
    for n in range(n0, n4, 4):
        w0 = n * K
        w1 = w0 + K
        w2 = w1 + K
        w3 = w2 + K
        ahead = w3 + K  # the next tile's rows, up to `stop`
        stop = min(ahead + 4 * K, last)
        if wide:
            for m in range(0, tiled, 4):
                x0 = m * K
                x1 = x0 + K
                x2 = x1 + K
                x3 = x2 + K
                a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = vzero(xf)
                a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = vzero(xf)
                for k in range(0, KL, L):
                    if ahead < stop:
                        vprefetch(wf, ahead)
                        vprefetch(wf, min(ahead + line, stop))
                        ahead += 2 * line
                    v0 = vload(wf, w0 + k)
                    v1 = vload(wf, w1 + k)
                    v2 = vload(wf, w2 + k)
                    v3 = vload(wf, w3 + k)
                    u = vload(xf, x0 + k)
                    a00 = vfma(a00, u, v0)
                    a01 = vfma(a01, u, v1)
                    a02 = vfma(a02, u, v2)
                    a03 = vfma(a03, u, v3)
                    u = vload(xf, x1 + k)
                    a10 = vfma(a10, u, v0)
                    a11 = vfma(a11, u, v1)
                    a12 = vfma(a12, u, v2)
                    a13 = vfma(a13, u, v3)
                    u = vload(xf, x2 + k)
                    a20 = vfma(a20, u, v0)
                    a21 = vfma(a21, u, v1)
                    a22 = vfma(a22, u, v2)
                    a23 = vfma(a23, u, v3)
                    u = vload(xf, x3 + k)
                    a30 = vfma(a30, u, v0)
                    a31 = vfma(a31, u, v1)
                    a32 = vfma(a32, u, v2)
                    a33 = vfma(a33, u, v3)
                if rest:
                    v0 = vload_head(wf, w0 + KL, rest)
                    v1 = vload_head(wf, w1 + KL, rest)
                    v2 = vload_head(wf, w2 + KL, rest)
                    v3 = vload_head(wf, w3 + KL, rest)
                    u = vload_head(xf, x0 + KL, rest)
                    a00 = vfma(a00, u, v0)
                    a01 = vfma(a01, u, v1)
                    a02 = vfma(a02, u, v2)
                    a03 = vfma(a03, u, v3)
                    u = vload_head(xf, x1 + KL, rest)
                    a10 = vfma(a10, u, v0)
                    a11 = vfma(a11, u, v1)
                    a12 = vfma(a12, u, v2)
                    a13 = vfma(a13, u, v3)
                    u = vload_head(xf, x2 + KL, rest)
                    a20 = vfma(a20, u, v0)
                    a21 = vfma(a21, u, v1)
                    a22 = vfma(a22, u, v2)
                    a23 = vfma(a23, u, v3)
                    u = vload_head(xf, x3 + KL, rest)
                    a30 = vfma(a30, u, v0)
                    a31 = vfma(a31, u, v1)
                    a32 = vfma(a32, u, v2)
                    a33 = vfma(a33, u, v3)
                vstore_sums(out, m, n, (a00, a01, a02, a03, a10, a11, a12, a13,
                                        a20, a21, a22, a23, a30, a31, a32, a33))
        else:
            for m in range(0, tiled, 2):
                x0 = m * K
                x1 = x0 + K
                a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = vzero(xf)
                for k in range(0, KL, L):
                    if ahead < stop:
                        vprefetch(wf, ahead)
                        vprefetch(wf, min(ahead + line, stop))
                        ahead += 2 * line
                    v0 = vload(wf, w0 + k)
                    v1 = vload(wf, w1 + k)
                    v2 = vload(wf, w2 + k)
                    v3 = vload(wf, w3 + k)
                    u = vload(xf, x0 + k)
                    a00 = vfma(a00, u, v0)
                    a01 = vfma(a01, u, v1)
                    a02 = vfma(a02, u, v2)
                    a03 = vfma(a03, u, v3)
                    u = vload(xf, x1 + k)
                    a10 = vfma(a10, u, v0)
                    a11 = vfma(a11, u, v1)
                    a12 = vfma(a12, u, v2)
                    a13 = vfma(a13, u, v3)
                if rest:
                    v0 = vload_head(wf, w0 + KL, rest)
                    v1 = vload_head(wf, w1 + KL, rest)
                    v2 = vload_head(wf, w2 + KL, rest)
                    v3 = vload_head(wf, w3 + KL, rest)
                    u = vload_head(xf, x0 + KL, rest)
                    a00 = vfma(a00, u, v0)
                    a01 = vfma(a01, u, v1)
                    a02 = vfma(a02, u, v2)
                    a03 = vfma(a03, u, v3)
                    u = vload_head(xf, x1 + KL, rest)
                    a10 = vfma(a10, u, v0)
                    a11 = vfma(a11, u, v1)
                    a12 = vfma(a12, u, v2)
                    a13 = vfma(a13, u, v3)
                vstore_sums(out, m, n, (a00, a01, a02, a03, a10, a11, a12, a13))
        for m in range(tiled, M):
            x0 = m * K
            a00 = a01 = a02 = a03 = vzero(xf)
            for k in range(0, KL, L):
                u = vload(xf, x0 + k)
                a00 = vfma(a00, u, vload(wf, w0 + k))
                a01 = vfma(a01, u, vload(wf, w1 + k))
                a02 = vfma(a02, u, vload(wf, w2 + k))
                a03 = vfma(a03, u, vload(wf, w3 + k))
            if rest:
                u = vload_head(xf, x0 + KL, rest)
                a00 = vfma(a00, u, vload_head(wf, w0 + KL, rest))
                a01 = vfma(a01, u, vload_head(wf, w1 + KL, rest))
                a02 = vfma(a02, u, vload_head(wf, w2 + KL, rest))
                a03 = vfma(a03, u, vload_head(wf, w3 + KL, rest))
            out[m, n] = vsum(a00)
            out[m, n + 1] = vsum(a01)
            out[m, n + 2] = vsum(a02)
            out[m, n + 3] = vsum(a03)
    for n in range(n4, n1):
        w0 = n * K
        for m in range(M):
            x0 = m * K
            a00 = vzero(xf)
            for k in range(0, KL, L):
                a00 = vfma(a00, vload(xf, x0 + k), vload(wf, w0 + k))
            if rest:
                a00 = vfma(a00, vload_head(xf, x0 + KL, rest), vload_head(wf, w0 + KL, rest))
            out[m, n] = vsum(a00)
    return out


@njit(cache=True)
def _split(n, parts, p):
    """Start of part p of range(n) cut into `parts` pieces at multiples of 4."""
    if p >= parts:
        return n
    return min(n, (n * p // parts) // 4 * 4)


@njit(cache=True)
def matmul_rows(x, w, out):
    """out[M, N] = x[M, K] @ w[N, K].T for few rows M (serial). x, w C-contiguous; returns out."""
    first = 0 * w.shape[0]  # computed: a literal 0 would compile a second `_matmul_cols`
    return _matmul_cols(x, w, out, first, w.shape[0])


@njit(cache=True, parallel=prange_only())
def block_forward_rows(x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2, gamma, keep,
                       z, a, out, parts, matmul):
    """A whole block's inference in one call, for few rows.

    x [B, T, C], w_taps [K, C], dw_bias, norm_w, norm_b, b2, gamma [C], w1 [4C, C], b1 [4C],
    w2 [C, 4C], keep [B]; scratch z [parts, B*T, C], a [B*T, 4C]; writes out [B, T, C] (must
    not alias x) and returns it. Same math as the training path:

        z = LN(dwconv(x)); a = GELU(z W1^T + b1); out = x + keep * gamma * (a W2^T + b2)

    `matmul` is `matmul_cols_address(x.dtype, w1.dtype)`: the matmul runs through it.
    Each matmul is split by output columns into `parts` pieces (cut at multiples of 4, so the
    bits do not depend on `parts`), one `prange` iteration each, with GELU resp. the residual
    done by the same iteration on its columns: two fork/joins per block in all (each piece
    computes dwconv + LayerNorm of every row into its own z[p], a few microseconds, instead of
    a third parallel loop whose wake-up of the sleeping threads costs about as much: 4-10 %
    faster at batch 1, bench/NOTES.md round 4). Call it with
    Numba's thread count = parts (the Block does; with one thread it runs serially). At batch 1
    the weights are streamed from memory once per predict, so a second core adds bandwidth.

    The elementwise loops sit in `prange` bodies also for one thread: Numba compiles a prange
    body with its arrays marked non-aliasing, so LLVM vectorises it (GELU: 11 us instead of
    70 us for 10K elements as a plain loop). (Setting the thread count in here would make the
    function uncacheable: Numba reaches it through a ctypes pointer.)
    """
    B, T, C = x.shape
    R = B * T
    H = a.shape[1]
    for p in prange(parts):
        zp = z[p]  # each piece normalises every row itself: one fork/join less per block
        for r in range(R):
            row = zp[r]
            _conv_row(x, w_taps, dw_bias, r // T, r % T, row)
            _normalize_row(row, norm_w, norm_b, eps, row)  # in place: reads x[c] before out[c]
        n0 = _split(H, parts, p)
        n1 = _split(H, parts, p + 1)
        call_matmul_cols(matmul, zp, w1, a, n0, n1)
        bias = b1[n0:n1]
        for m in range(R):
            row = a[m, n0:n1]  # slices: indices from 0 (no negative-index wraparound)
            for j in range(n1 - n0):
                row[j] = gelu_scalar(row[j] + bias[j])
    flat = out.reshape(R, C)
    xf = x.reshape(R, C)
    for p in prange(parts):
        n0 = _split(C, parts, p)
        n1 = _split(C, parts, p + 1)
        call_matmul_cols(matmul, a, w2, flat, n0, n1)
        g = gamma[n0:n1]
        bias = b2[n0:n1]
        for m in range(R):
            k = keep[m // T]
            orow = flat[m, n0:n1]
            xrow = xf[m, n0:n1]
            for c in range(n1 - n0):
                orow[c] = xrow[c] + k * g[c] * (orow[c] + bias[c])
    return out


def _types(dtype, weights) -> tuple[types.Type, types.Type]:
    dtype, weights = np.dtype(dtype), np.dtype(weights)
    if dtype.name not in ("float32", "float64") or weights not in (dtype, np.uint16) \
            or (weights == np.uint16 and dtype != np.float32):
        raise TypeError(f"no few-row kernel for {dtype} activations with {weights} weights")
    return numba.from_dtype(dtype), numba.from_dtype(weights)


def matmul_cols_signature(dtype, weights) -> tuple[types.Type, ...]:
    """`_matmul_cols`'s argument types for float `dtype` x and out, `weights` w (the same
    dtype, or uint16 bfloat16 bits with float32)."""
    x, w = _types(dtype, weights)
    matrix, weight_matrix = types.Array(x, 2, "C"), types.Array(w, 2, "C")
    return matrix, weight_matrix, matrix, types.int64, types.int64


def block_rows_signature(dtype, pointwise) -> tuple[types.Type, ...]:
    """`block_forward_rows`'s argument types, dtypes as for `matmul_cols_signature`."""
    x, w = _types(dtype, pointwise)
    vector, matrix, cube = (types.Array(x, n, "C") for n in (1, 2, 3))
    weights = types.Array(w, 2, "C")
    return (cube, matrix, vector, vector, vector, types.float64, weights, vector, weights, vector,
            vector, vector, cube, matrix, cube, types.int64, types.int64)


@functools.cache  # per predict it costs a dictionary lookup
def matmul_cols_address(dtype, weights) -> int:
    """Address of `_matmul_cols` for these dtypes (kernels/pointer.py), compiled if needed."""
    return native_address(_matmul_cols, matmul_cols_signature(dtype, weights))


@functools.cache
def block_rows_address(dtype, pointwise) -> int:
    """Address of `block_forward_rows` for these dtypes, compiled if needed."""
    return native_address(block_forward_rows, block_rows_signature(dtype, pointwise))
