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
not bit for bit. A frozen model's blocks take `_matmul_cols_packed` instead: the same products
as outer products over its weights packed in column panels (`pack_columns`).

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
from kernels.gelu import GELU_CONSTANTS, gelu_scalar
from kernels.layernorm import _normalize_row
from kernels.pointer import call_matmul_cols, native_address
from kernels.simd import (
    lanes,
    vector_bytes,
    vfma,
    vload,
    vload_head,
    vprefetch,
    vsplat,
    vstore,
    vstore_head,
    vstore_sums,
    vsum,
    vzero,
)

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
def _matmul_cols_packed(x, wp, out, n0, n1):
    """out[:, n0:n1] = x[M, K] @ w[n0:n1, K].T with w packed by `pack_columns` (wp holds its
    K * N elements; shaped [K, N] here for the sizes only): w.T's columns in panels of 2L
    (the last one narrower), each panel's K rows after each other, so that a panel streams
    from memory as one run.

    Outer products: each k adds x[m, k] (broadcast) times the panel's row k (2 vectors) to the
    sums of out[m, panel], a tile of 8 rows x 2 vectors in 16 registers with AVX-512's 64-byte
    vectors (it has 32), of 4 rows x 2 vectors in 8 with AVX2's 32-byte ones (it has 16: 8
    rows would spill), with no sum across lanes at the end (`_matmul_cols`'s dot products end
    in one per output, as much work as the multiply-adds when K is a few vectors: the batch-1
    products of atto, pico and tiny 1.6x faster alone, their predicts 1.13-1.20x, on Zen 5;
    bench/NOTES.md round 15). With AVX2 the first tile of 4 rows draws the panel from memory
    and asks for it 32 lines ahead (`vprefetch`): 1.09-1.26x on the batch-1 products of tiny
    from memory, where the AVX-512 tile ran 0.56-0.91x with it (one tile of 8 rows takes a
    stage 3's 8). AVX2 predicts 1.08 / 1.32 / 1.43x faster for atto / pico / tiny than with
    the dot products, bfloat16 1.14 / 1.22 / 1.40x (AVX2 code on a Zen 4, round 19). The
    tiles are written out, as in `_matmul_cols`. Part-panels (a narrower last panel, or n0, n1
    inside a panel) take tiles of 8 rows of one masked vector, rows past the whole tiles one
    at a time (masked too).

    Every out[m, n] is one chain of fused multiply-adds from zero, k ascending, whichever tile
    computes it: the bits do not depend on M, on the split of the columns or on the thread
    count. wp holds float32/float64, or bfloat16 bits (uint16, widened as loaded)."""
    M, K = x.shape
    N = wp.shape[1]
    xf = x.reshape(M * K)
    wf = wp.reshape(K * N)
    L = lanes(x)
    W = 2 * L
    wide = L * xf.itemsize >= 64
    tiled = M - M % (8 if wide else 4)  # rows in whole tiles of a whole panel
    eights = M - M % 8  # rows in the 8-row tiles of a part-panel
    line = 64 // wf.itemsize
    last = wf.size - 1
    bits = wf.itemsize == 2
    for q in range(n0 // W, (n1 + W - 1) // W):
        lo = max(n0, q * W)  # columns lo .. hi - 1 of panel q
        hi = min(n1, q * W + W)
        width = min(W, N - q * W)  # of the panel: its rows are this far apart
        base = q * W * K + lo - q * W  # wf[base + k * width] = w[lo, k]
        whole = hi - lo == W  # the panel's columns in whole tiles of 2 vectors
        if whole and not wide:
            for m in range(0, tiled, 4):
                x0 = m * K
                c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = vzero(xf)
                for k in range(K):
                    if m == 0:  # the first tile draws the panel from memory: ask ahead for it
                        vprefetch(wf, min(base + k * W + 32 * line, last))
                    b0 = vload(wf, base + k * W)
                    b1 = vload(wf, base + k * W + L)
                    a = vsplat(xf, x0 + k)
                    c00 = vfma(c00, a, b0)
                    c01 = vfma(c01, a, b1)
                    a = vsplat(xf, x0 + K + k)
                    c10 = vfma(c10, a, b0)
                    c11 = vfma(c11, a, b1)
                    a = vsplat(xf, x0 + 2 * K + k)
                    c20 = vfma(c20, a, b0)
                    c21 = vfma(c21, a, b1)
                    a = vsplat(xf, x0 + 3 * K + k)
                    c30 = vfma(c30, a, b0)
                    c31 = vfma(c31, a, b1)
                vstore(out[m], lo, c00)
                vstore(out[m], lo + L, c01)
                vstore(out[m + 1], lo, c10)
                vstore(out[m + 1], lo + L, c11)
                vstore(out[m + 2], lo, c20)
                vstore(out[m + 2], lo + L, c21)
                vstore(out[m + 3], lo, c30)
                vstore(out[m + 3], lo + L, c31)
        elif whole:
            for m in range(0, tiled, 8):
                x0 = m * K
                c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = vzero(xf)
                c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = vzero(xf)
                for k in range(K):
                    if bits:  # bfloat16: 16 rows ahead (float32 ran 0.83-0.90x with it)
                        vprefetch(wf, min(base + k * W + 16 * line, last))
                    b0 = vload(wf, base + k * W)
                    b1 = vload(wf, base + k * W + L)
                    a = vsplat(xf, x0 + k)
                    c00 = vfma(c00, a, b0)
                    c01 = vfma(c01, a, b1)
                    a = vsplat(xf, x0 + K + k)
                    c10 = vfma(c10, a, b0)
                    c11 = vfma(c11, a, b1)
                    a = vsplat(xf, x0 + 2 * K + k)
                    c20 = vfma(c20, a, b0)
                    c21 = vfma(c21, a, b1)
                    a = vsplat(xf, x0 + 3 * K + k)
                    c30 = vfma(c30, a, b0)
                    c31 = vfma(c31, a, b1)
                    a = vsplat(xf, x0 + 4 * K + k)
                    c40 = vfma(c40, a, b0)
                    c41 = vfma(c41, a, b1)
                    a = vsplat(xf, x0 + 5 * K + k)
                    c50 = vfma(c50, a, b0)
                    c51 = vfma(c51, a, b1)
                    a = vsplat(xf, x0 + 6 * K + k)
                    c60 = vfma(c60, a, b0)
                    c61 = vfma(c61, a, b1)
                    a = vsplat(xf, x0 + 7 * K + k)
                    c70 = vfma(c70, a, b0)
                    c71 = vfma(c71, a, b1)
                vstore(out[m], lo, c00)
                vstore(out[m], lo + L, c01)
                vstore(out[m + 1], lo, c10)
                vstore(out[m + 1], lo + L, c11)
                vstore(out[m + 2], lo, c20)
                vstore(out[m + 2], lo + L, c21)
                vstore(out[m + 3], lo, c30)
                vstore(out[m + 3], lo + L, c31)
                vstore(out[m + 4], lo, c40)
                vstore(out[m + 4], lo + L, c41)
                vstore(out[m + 5], lo, c50)
                vstore(out[m + 5], lo + L, c51)
                vstore(out[m + 6], lo, c60)
                vstore(out[m + 6], lo + L, c61)
                vstore(out[m + 7], lo, c70)
                vstore(out[m + 7], lo + L, c71)
        for s in range(lo, hi, L):  # part-panels, and the rows past the whole tiles
            count = min(L, hi - s)
            at = base + s - lo
            for m in range(0, 0 if whole else eights, 8):
                x0 = m * K
                c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = vzero(xf)
                for k in range(K):
                    b0 = vload_head(wf, at + k * width, count)
                    c0 = vfma(c0, vsplat(xf, x0 + k), b0)
                    c1 = vfma(c1, vsplat(xf, x0 + K + k), b0)
                    c2 = vfma(c2, vsplat(xf, x0 + 2 * K + k), b0)
                    c3 = vfma(c3, vsplat(xf, x0 + 3 * K + k), b0)
                    c4 = vfma(c4, vsplat(xf, x0 + 4 * K + k), b0)
                    c5 = vfma(c5, vsplat(xf, x0 + 5 * K + k), b0)
                    c6 = vfma(c6, vsplat(xf, x0 + 6 * K + k), b0)
                    c7 = vfma(c7, vsplat(xf, x0 + 7 * K + k), b0)
                vstore_head(out[m], s, count, c0)
                vstore_head(out[m + 1], s, count, c1)
                vstore_head(out[m + 2], s, count, c2)
                vstore_head(out[m + 3], s, count, c3)
                vstore_head(out[m + 4], s, count, c4)
                vstore_head(out[m + 5], s, count, c5)
                vstore_head(out[m + 6], s, count, c6)
                vstore_head(out[m + 7], s, count, c7)
            for m in range(tiled if whole else eights, M):
                c0 = vzero(xf)
                for k in range(K):
                    c0 = vfma(c0, vsplat(xf, m * K + k), vload_head(wf, at + k * width, count))
                vstore_head(out[m], s, count, c0)
    return out


def pack_columns(w: np.ndarray, width: int) -> np.ndarray:
    """w [N, K] as `_matmul_cols_packed` reads it: for each panel of `width` columns of w.T (the
    last one N % width wide, if not 0), its K rows after each other. Flat, N * K elements."""
    wt = w.T
    return np.concatenate([wt[:, n:n + width].reshape(-1) for n in range(0, w.shape[0], width)])


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
def matmul_split(x, w, out, parts, matmul):
    """out[M, N] = x[M, K] @ w[N, K].T for few rows M through the few-row matmul at address
    `matmul` (`matmul_cols_address`), its output columns cut into `parts` pieces at multiples
    of 4 (so the bits do not depend on `parts`), one `prange` iteration each: a product
    outside the blocks (the downsamples of the batch-1 network) on `parts` threads. Call it
    with Numba's thread count = parts. x, w, out C-contiguous; returns out."""
    N = out.shape[1]
    for p in prange(parts):
        call_matmul_cols(matmul, x, w, out, _split(N, parts, p), _split(N, parts, p + 1))
    return out


@njit(cache=True, parallel=prange_only())
def block_forward_rows(x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2, gamma, keep,
                       z, a, out, parts, matmul):
    """A whole block's inference in one call, for few rows.

    x [B, T, C], w_taps [K, C], dw_bias, norm_w, norm_b, b2, gamma [C], w1 [4C, C], b1 [4C],
    w2 [C, 4C], keep [B]; scratch z [parts, B*T, C], a [B*T, 4C]; writes out [B, T, C] (must
    not alias x) and returns it. Same math as the training path:

        z = LN(dwconv(x)); a = GELU(z W1^T + b1); out = x + keep * gamma * (a W2^T + b2)

    `matmul` is `matmul_cols_address(x.dtype, w1.dtype)`: the matmul runs through it; or
    `matmul_cols_packed_address(...)` with w1, w2 packed (`pack_columns`).
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
    x_flat, w_flat, K = x.reshape(-1), w_taps.reshape(-1), w_taps.shape[0]
    for p in prange(parts):
        zp = z[p]  # each piece normalises every row itself: one fork/join less per block
        for r in range(R):
            row = zp[r]
            _conv_row(x_flat, w_flat, dw_bias, T, K, r // T, r % T, row)
            _normalize_row(row, norm_w, norm_b, eps, row)  # in place: reads x[c] before out[c]
        n0 = _split(H, parts, p)
        n1 = _split(H, parts, p + 1)
        call_matmul_cols(matmul, zp, w1, a, n0, n1)
        bias = b1[n0:n1]
        for m in range(R):
            row = a[m, n0:n1]  # slices: indices from 0 (no negative-index wraparound)
            for j in range(n1 - n0):
                row[j] = gelu_scalar(row[j] + bias[j], GELU_CONSTANTS)
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
def matmul_split_address(dtype) -> int:
    """Address of `matmul_split` for float `dtype` operands, compiled if needed (its argument
    types are `_matmul_cols`'s with `dtype` weights)."""
    return native_address(matmul_split, matmul_cols_signature(dtype, dtype))


@functools.cache
def matmul_cols_packed_address(dtype, weights) -> int:
    """Address of `_matmul_cols_packed` for these dtypes (the types of `matmul_cols_signature`),
    compiled if needed."""
    return native_address(_matmul_cols_packed, matmul_cols_signature(dtype, weights))


def panel_columns(dtype) -> int:
    """Columns per panel of `pack_columns` for `_matmul_cols_packed` with activations of this
    float dtype, as compiled here: 2 vectors."""
    return 2 * vector_bytes() // np.dtype(dtype).itemsize


@functools.cache
def block_rows_address(dtype, pointwise) -> int:
    """Address of `block_forward_rows` for these dtypes, compiled if needed."""
    return native_address(block_forward_rows, block_rows_signature(dtype, pointwise))
