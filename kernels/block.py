"""Few-row paths for inference at small batch: a register-blocked matmul and a whole ConvNeXt
block in one call (serial, or with its big matmuls split by output columns over threads).

At batch 1 a block has B*T = 8..64 rows. There BLAS is far from its peak (OpenBLAS packs
panels sized for large M: [8, 512] @ [512, 2048] ran at ~35 GFLOP/s on this machine) and each
parallel Numba kernel pays an OpenMP fork/join for a few microseconds of work. These kernels
read each weight row once for several rows of x:

    matmul_rows:          out[m, n] = sum_k x[m, k] w[n, k]          (x @ w.T, PyTorch layout)
    block_forward_rows:   out = x + keep * gamma * (GELU(LN(dwconv(x)) W1^T + b1) W2^T + b2)

The dot products are reassociated (fastmath "reassoc", "contract": SIMD partial sums and FMA),
so results match BLAS to rounding, not bit for bit.
"""

from __future__ import annotations

from numba import njit, prange

from kernels.dwconv import _conv_row
from kernels.gelu import gelu_scalar
from kernels.layernorm import _normalize_row

# rows at or below which `linear_forward` (stem, downsample, head) takes `matmul_rows`
SMALL_ROWS = 32
# rows (B*T) at or below which a block's inference takes `block_forward_rows` (and its eval-mode
# forward `matmul_rows`, for the same bits): at 64 rows the one-call block still beats BLAS plus
# three parallel kernels (measured atto/pico/tiny stage 0: 74/135/229 us vs 89/143/243, 1 thread)
BLOCK_ROWS = 64
# pwconv1 weights (4C*C elements) from which `block_forward_rows` splits its matmuls over the
# threads: measured, 2 threads vs 1 (quiet machine) 0.5x at C=80, 0.85x at 160, 1.07x at 320
# rows 8, 1.16x at C=256 rows 16, 2-2.4x at C=512/768 (the weights stream from DRAM)
SPLIT_WEIGHTS = 1 << 18


@njit(cache=True, fastmath={"reassoc", "contract"})
def _matmul_cols(x, w, out, n0, n1):
    """out[:, n0:n1] = x[M, K] @ w[n0:n1, K].T; tiles of 2 rows x 4 output columns (8
    accumulators), then the n1 - n0 % 4 tail columns one by one. Each out[m, n] is computed by
    the same code whatever the range, as long as n0 and the tile starts agree modulo 4 (callers
    split at multiples of 4), so a split product has the same bits as a whole one.

    Not inlined: Numba applies the fastmath flags of the function the code ends up in, and
    the reductions only vectorise with "reassoc"."""
    M, K = x.shape
    zero = x.dtype.type(0.0)
    n4 = n0 + (n1 - n0) - (n1 - n0) % 4
    m2 = M - M % 2
    for n in range(n0, n4, 4):
        w0 = w[n]
        w1 = w[n + 1]
        w2 = w[n + 2]
        w3 = w[n + 3]
        for m in range(0, m2, 2):
            xa = x[m]
            xb = x[m + 1]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = zero
            for k in range(K):
                u = xa[k]
                v = xb[k]
                a0 += w0[k] * u
                a1 += w1[k] * u
                a2 += w2[k] * u
                a3 += w3[k] * u
                b0 += w0[k] * v
                b1 += w1[k] * v
                b2 += w2[k] * v
                b3 += w3[k] * v
            out[m, n] = a0
            out[m, n + 1] = a1
            out[m, n + 2] = a2
            out[m, n + 3] = a3
            out[m + 1, n] = b0
            out[m + 1, n + 1] = b1
            out[m + 1, n + 2] = b2
            out[m + 1, n + 3] = b3
        for m in range(m2, M):
            xa = x[m]
            a0 = a1 = a2 = a3 = zero
            for k in range(K):
                u = xa[k]
                a0 += w0[k] * u
                a1 += w1[k] * u
                a2 += w2[k] * u
                a3 += w3[k] * u
            out[m, n] = a0
            out[m, n + 1] = a1
            out[m, n + 2] = a2
            out[m, n + 3] = a3
    for n in range(n4, n1):
        wn = w[n]
        for m in range(M):
            xa = x[m]
            s = zero
            for k in range(K):
                s += wn[k] * xa[k]
            out[m, n] = s
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
    return _matmul_cols(x, w, out, 0, w.shape[0])


@njit(cache=True, parallel=True)
def block_forward_rows(x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2, gamma, keep,
                       z, a, out, parts=1):
    """A whole block's inference in one call, for few rows.

    x [B, T, C], w_taps [K, C], dw_bias, norm_w, norm_b, b2, gamma [C], w1 [4C, C], b1 [4C],
    w2 [C, 4C], keep [B]; scratch z [parts, B*T, C], a [B*T, 4C]; writes out [B, T, C] (must
    not alias x) and returns it. Same math as the training path:

        z = LN(dwconv(x)); a = GELU(z W1^T + b1); out = x + keep * gamma * (a W2^T + b2)

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
        _matmul_cols(zp, w1, a, n0, n1)
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
        _matmul_cols(a, w2, flat, n0, n1)
        g = gamma[n0:n1]
        bias = b2[n0:n1]
        for m in range(R):
            k = keep[m // T]
            orow = flat[m, n0:n1]
            xrow = xf[m, n0:n1]
            for c in range(n1 - n0):
                orow[c] = xrow[c] + k * g[c] * (orow[c] + bias[c])
    return out
