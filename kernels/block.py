"""Few-row paths for inference at small batch: a register-blocked matmul and a whole ConvNeXt
block in one serial call.

At batch 1 a block has B*T = 8..64 rows. There BLAS is far from its peak (OpenBLAS packs
panels sized for large M: [8, 512] @ [512, 2048] ran at ~35 GFLOP/s on this machine) and each
parallel Numba kernel pays an OpenMP fork/join for a few microseconds of work. These kernels are
serial and read each weight row once for several rows of x:

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

# rows (B*T) at or below which the block's inference takes `block_forward_rows`
SMALL_ROWS = 32


@njit(cache=True, fastmath={"reassoc", "contract"})
def _matmul_rows(x, w, out):
    """out[M, N] = x[M, K] @ w[N, K].T; tiles of 2 rows x 4 output columns (8 accumulators).

    Not inlined: Numba applies the fastmath flags of the function the code ends up in, and
    the reductions only vectorise with "reassoc"."""
    M, K = x.shape
    N = w.shape[0]
    z = x.dtype.type(0.0)
    n4 = N - N % 4
    m2 = M - M % 2
    for n in range(0, n4, 4):
        w0 = w[n]
        w1 = w[n + 1]
        w2 = w[n + 2]
        w3 = w[n + 3]
        for m in range(0, m2, 2):
            xa = x[m]
            xb = x[m + 1]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = z
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
            a0 = a1 = a2 = a3 = z
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
    for n in range(n4, N):
        wn = w[n]
        for m in range(M):
            xa = x[m]
            s = z
            for k in range(K):
                s += wn[k] * xa[k]
            out[m, n] = s
    return out


@njit(cache=True)
def matmul_rows(x, w, out):
    """out[M, N] = x[M, K] @ w[N, K].T for few rows M (serial). x, w C-contiguous; returns out."""
    return _matmul_rows(x, w, out)


@njit(cache=True, parallel=True)
def block_forward_rows(x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2, gamma, keep,
                       z, a, out):
    """A whole block's inference in one call, for few rows, on one thread.

    x [B, T, C], w_taps [K, C], dw_bias, norm_w, norm_b, b2, gamma [C], w1 [4C, C], b1 [4C],
    w2 [C, 4C], keep [B]; scratch z [B*T, C], a [B*T, 4C]; writes out [B, T, C] (must not
    alias x) and returns it. Same math as the training path:

        z = LN(dwconv(x)); a = GELU(z W1^T + b1); out = x + keep * gamma * (a W2^T + b2)

    The elementwise loops are `prange` loops run with one thread: Numba compiles a prange body
    with its arrays marked non-aliasing, so LLVM vectorises it (GELU: 11 us instead of 70 us
    for 10K elements as a plain loop). Call it with `numba.set_num_threads(1)` (the Block
    does): a fork/join costs more than the work. (Setting the thread count in here would make
    the function uncacheable: Numba reaches it through a ctypes pointer.)
    """
    B, T, C = x.shape
    for r in prange(B * T):
        row = z[r]
        _conv_row(x, w_taps, dw_bias, r // T, r % T, row)
        _normalize_row(row, norm_w, norm_b, eps, row)  # in place: reads x[c] before out[c]
    _matmul_rows(z, w1, a)
    H = a.shape[1]
    for m in prange(B * T):
        for j in range(H):
            a[m, j] = gelu_scalar(a[m, j] + b1[j])
    flat = out.reshape(B * T, C)
    _matmul_rows(a, w2, flat)
    for bi in range(B):
        k = keep[bi]
        for t in range(T):
            orow = out[bi, t]
            xrow = x[bi, t]
            for c in range(C):
                orow[c] = xrow[c] + k * gamma[c] * (orow[c] + b2[c])
    return out
