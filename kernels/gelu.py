"""Exact GELU and its fusion with the bias of the first pointwise layer.

    GELU(x)  = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
    GELU'(x) = Phi(x) + x * phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

Fused with a bias over rows h[N, C]: pre = h + b, y = GELU(pre) (forward keeps pre);
backward dpre = dy * GELU'(pre) (this is also dh) and db = sum_rows dpre.

Precision: float64 uses libm's erf and exp (exact to rounding; the gradient checks and the
PyTorch parity tests run in float64). float32 computes in float32 with a rational erf
(Eigen/XLA's minimax `x P(x^2) / Q(x^2)` clamped to |u| <= 4, max abs error 6.5e-8, i.e. at
float32 rounding) and, for GELU', the exact derivative of that rational (max abs error of GELU'
7e-6 near |x| = 5.6, below 1.3e-6 for |x| < 4). Both are plain polynomials and one division, so
LLVM vectorises the loops (libm calls would keep them scalar: this machine has no SVML), and
float32 never silently widens to float64 (a Python float constant would widen it). The
polynomials run as fused multiply-adds (`kernels.simd.fmadd`; Numba never fuses a * b + c):
half the operations and half the dependent chain of the multiplies and adds written out, the
same accuracy or better (GELU's max abs error on [-8, 8] 8.9e-7 against 1.4e-6, at float32
rounding of values up to 8); bias + GELU on data in cache 1.5x faster (0.17 against 0.26 ns
per element on two Zen 4 cores; bench/NOTES.md round 19).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from kernels import prange_only
from kernels.layernorm import _CHUNKS
from kernels.reduce import sum_leading
from kernels.simd import fmadd, opaque

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf(u) ~= u * P(u^2) / Q(u^2) on |u| <= 4 (erf = +-1 in float32 beyond); lowest degree first
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
          -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
          -2.72614225801306e-10)
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
          -2.13374055278905e-04, -1.45660718464996e-05)
_F32 = {"inv_sqrt2": _INV_SQRT2, "half": 0.5, "one": 1.0, "two": 2.0, "four": 4.0}
_F32.update({f"p{k}": c for k, c in enumerate(_ERF_P)})
_F32.update({f"q{k}": c for k, c in enumerate(_ERF_Q)})
# the coefficients of dP/ds and dQ/ds, k * P_k and k * Q_k, rounded from the float32 P_k, Q_k
_F32.update({f"dp{k}": np.float32(k) * np.float32(_ERF_P[k]) for k in range(1, len(_ERF_P))})
_F32.update({f"dq{k}": np.float32(k) * np.float32(_ERF_Q[k]) for k in range(1, len(_ERF_Q))})
Constants = namedtuple("Constants", list(_F32))
# float32 values, frozen into the code by Numba (a global tuple): what `gelu_constants` passes
# through `opaque`. The batch-1 network (`kernels.block.block_forward_rows`) takes them as they
# are: through `opaque` there, its predicts were no faster (0.94-1.04x, AVX2 code, round 26)
GELU_CONSTANTS = Constants(*(np.float32(value) for value in _F32.values()))


def gelu_constants(x):
    """The constants of `gelu_scalar` and `gelu_grad_scalar` for the float array x: float32
    values of `Constants` passed through `kernels.simd.opaque`, an empty tuple for float64
    (libm). A kernel takes them once, before its loop, and hands them to every call: the loop,
    short of AVX2's 16 vector registers for 27 constants, then reads the ones it cannot keep
    in registers from the stack as operands, instead of rebuilding each from the constant
    pool at every step (bias + GELU 1.3-1.4x faster with AVX2 code, its forward 1.05-1.08x
    with AVX-512; the same bits; bench/NOTES.md round 26)."""
    return ()


@overload(gelu_constants, inline="always")
def _gelu_constants_impl(x):
    if x.dtype != types.float32:
        return lambda x: ()

    # rebuilt from the values: returned as it is, a prange's gufunc could not name its type
    return lambda x: Constants(*opaque(GELU_CONSTANTS))


@njit(cache=True, inline="always")
def _erf32_parts(u, k):
    """For float32 u: (erf(u), d erf / du) of the clamped rational approximation; k: the
    constants of `gelu_constants`."""
    inside = abs(u) < k.four
    u = min(max(u, -k.four), k.four)
    s = u * u
    # Horner's rule in fused multiply-adds: half the operations of a * b + c written out
    # (Numba never fuses those), one rounding each
    p = fmadd(fmadd(fmadd(fmadd(fmadd(fmadd(k.p6, s, k.p5), s, k.p4), s, k.p3), s, k.p2), s,
                    k.p1), s, k.p0)
    dp = fmadd(fmadd(fmadd(fmadd(fmadd(k.dp6, s, k.dp5), s, k.dp4), s, k.dp3), s, k.dp2), s,
               k.dp1)
    q = fmadd(fmadd(fmadd(fmadd(k.q4, s, k.q3), s, k.q2), s, k.q1), s, k.q0)
    dq = fmadd(fmadd(fmadd(k.dq4, s, k.dq3), s, k.dq2), s, k.dq1)
    inv_q = k.one / q
    erf = u * p * inv_q
    # d/du [u p(s) / q(s)] with ds/du = 2u
    derf = ((p + k.two * s * dp) * q - k.two * s * p * dq) * inv_q * inv_q
    return erf, derf if inside else np.float32(0.0)


def gelu_scalar(x, k):
    """GELU of one float, k = `gelu_constants(array)` (dispatches on the float type inside
    Numba code)."""
    return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))


def gelu_grad_scalar(x, k):
    """GELU'(x) of one float, k = `gelu_constants(array)` (dispatches on the float type inside
    Numba code)."""
    return 0.5 * (1.0 + math.erf(x * _INV_SQRT2)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)


@overload(gelu_scalar, inline="always")
def _gelu_scalar_impl(x, k):
    if x == types.float32:
        def impl(x, k):
            erf, _ = _erf32_parts(x * k.inv_sqrt2, k)
            return k.half * x * (k.one + erf)
        return impl
    return lambda x, k: 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))


@overload(gelu_grad_scalar, inline="always")
def _gelu_grad_scalar_impl(x, k):
    if x == types.float32:
        def impl(x, k):
            erf, derf = _erf32_parts(x * k.inv_sqrt2, k)
            return k.half * (k.one + erf) + k.half * k.inv_sqrt2 * x * derf
        return impl
    return lambda x, k: (0.5 * (1.0 + math.erf(x * _INV_SQRT2))
                         + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x))


@njit(cache=True, parallel=prange_only())
def gelu_forward(x):
    """x [N, C] -> GELU(x) [N, C]."""
    N, C = x.shape
    y = np.empty_like(x)
    k = gelu_constants(x)
    for n in prange(N):
        for c in range(C):
            y[n, c] = gelu_scalar(x[n, c], k)
    return y


@njit(cache=True, parallel=prange_only())
def gelu_backward(dy, x):
    """dy, x [N, C] -> dx = dy * GELU'(x) [N, C]."""
    N, C = x.shape
    dx = np.empty_like(x)
    k = gelu_constants(x)
    for n in prange(N):
        for c in range(C):
            dx[n, c] = dy[n, c] * gelu_grad_scalar(x[n, c], k)
    return dx


@njit(cache=True, parallel=prange_only())
def gelu_forward_into(x, y):
    """y[N, C] = GELU(x[N, C]) written into the caller's buffer (recomputes a from pre in the
    block's backward instead of keeping it)."""
    N, C = x.shape
    k = gelu_constants(x)
    for n in prange(N):
        for c in range(C):
            y[n, c] = gelu_scalar(x[n, c], k)
    return y


@njit(cache=True, parallel=prange_only())
def bias_gelu_forward(h, b):
    """h [N, C], b [C] -> (y, pre) with pre = h + b written into h (in place), y = GELU(pre)."""
    # the loop of bias_gelu_forward_into, not a call to it (see dwconv_layernorm_forward)
    N, C = h.shape
    y = np.empty_like(h)
    k = gelu_constants(h)
    for n in prange(N):
        for c in range(C):
            p = h[n, c] + b[c]
            h[n, c] = p
            y[n, c] = gelu_scalar(p, k)
    return y, h


@njit(cache=True, parallel=prange_only())
def bias_gelu_forward_into(h, b, y):
    """As `bias_gelu_forward`, writing y into the caller's buffer y [N, C]. Returns (y, h)."""
    N, C = h.shape
    k = gelu_constants(h)
    for n in prange(N):
        for c in range(C):
            p = h[n, c] + b[c]
            h[n, c] = p
            y[n, c] = gelu_scalar(p, k)
    return y, h


@njit(cache=True, parallel=prange_only())
def bias_gelu_inplace(h, b):
    """h[N, C] = GELU(h + b) in place, for inference (nothing kept for a backward): one read
    and one write per element instead of `bias_gelu_forward_into`'s three streams (the same
    values). Returns h."""
    N, C = h.shape
    k = gelu_constants(h)
    for n in prange(N):
        for c in range(C):
            h[n, c] = gelu_scalar(h[n, c] + b[c], k)
    return h


@njit(cache=True, parallel=prange_only())
def bias_gelu_backward(dy, pre):
    """dy, pre [N, C] -> dpre [N, C] (written into dy, in place), db [C]."""
    N, C = pre.shape
    chunks = min(_CHUNKS, N)
    # per-chunk sums in the storage dtype keep the loop vectorised; chunks combine in float64
    partial = np.zeros((chunks, C), dtype=pre.dtype)
    k = gelu_constants(pre)
    for chunk in prange(chunks):
        acc = partial[chunk]
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            row = dy[n]
            src = pre[n]
            for c in range(C):
                g = row[c] * gelu_grad_scalar(src[c], k)
                row[c] = g
                acc[c] += g
    return dy, sum_leading(partial.astype(np.float64)).astype(pre.dtype)
