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

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from kernels import prange_only
from kernels.layernorm import _CHUNKS
from kernels.reduce import sum_leading
from kernels.simd import fmadd

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf(u) ~= u * P(u^2) / Q(u^2) on |u| <= 4 (erf = +-1 in float32 beyond); lowest degree first
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
          -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
          -2.72614225801306e-10)
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
          -2.13374055278905e-04, -1.45660718464996e-05)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (np.float32(c) for c in _ERF_P)
_Q0, _Q1, _Q2, _Q3, _Q4 = (np.float32(c) for c in _ERF_Q)
_F32_INV_SQRT2 = np.float32(_INV_SQRT2)
_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F32_TWO = np.float32(2.0)
_F32_FOUR = np.float32(4.0)
# the coefficients of dP/ds and dQ/ds: k * P_k, k * Q_k
_DP1, _DP2, _DP3, _DP4, _DP5, _DP6 = (np.float32(k) * c for k, c in
                                      enumerate((_P1, _P2, _P3, _P4, _P5, _P6), start=1))
_DQ1, _DQ2, _DQ3, _DQ4 = (np.float32(k) * c for k, c in enumerate((_Q1, _Q2, _Q3, _Q4), start=1))


@njit(cache=True, inline="always")
def _erf32_parts(u):
    """For float32 u: (erf(u), d erf / du) of the clamped rational approximation."""
    inside = abs(u) < _F32_FOUR
    u = min(max(u, -_F32_FOUR), _F32_FOUR)
    s = u * u
    # Horner's rule in fused multiply-adds: half the operations of a * b + c written out
    # (Numba never fuses those), one rounding each
    p = fmadd(fmadd(fmadd(fmadd(fmadd(fmadd(_P6, s, _P5), s, _P4), s, _P3), s, _P2), s, _P1),
              s, _P0)
    dp = fmadd(fmadd(fmadd(fmadd(fmadd(_DP6, s, _DP5), s, _DP4), s, _DP3), s, _DP2), s, _DP1)
    q = fmadd(fmadd(fmadd(fmadd(_Q4, s, _Q3), s, _Q2), s, _Q1), s, _Q0)
    dq = fmadd(fmadd(fmadd(_DQ4, s, _DQ3), s, _DQ2), s, _DQ1)
    inv_q = _F32_ONE / q
    erf = u * p * inv_q
    # d/du [u p(s) / q(s)] with ds/du = 2u
    derf = ((p + _F32_TWO * s * dp) * q - _F32_TWO * s * p * dq) * inv_q * inv_q
    return erf, derf if inside else np.float32(0.0)


def gelu_scalar(x):
    """GELU of one float (dispatches on the float type inside Numba code)."""
    return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))


def gelu_grad_scalar(x):
    """GELU'(x) of one float (dispatches on the float type inside Numba code)."""
    return 0.5 * (1.0 + math.erf(x * _INV_SQRT2)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)


@overload(gelu_scalar, inline="always")
def _gelu_scalar_impl(x):
    if x == types.float32:
        def impl(x):
            erf, _ = _erf32_parts(x * _F32_INV_SQRT2)
            return _F32_HALF * x * (_F32_ONE + erf)
        return impl
    return lambda x: 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))


@overload(gelu_grad_scalar, inline="always")
def _gelu_grad_scalar_impl(x):
    if x == types.float32:
        def impl(x):
            erf, derf = _erf32_parts(x * _F32_INV_SQRT2)
            return _F32_HALF * (_F32_ONE + erf) + _F32_HALF * _F32_INV_SQRT2 * x * derf
        return impl
    return lambda x: (0.5 * (1.0 + math.erf(x * _INV_SQRT2))
                      + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x))


@njit(cache=True, parallel=prange_only())
def gelu_forward(x):
    """x [N, C] -> GELU(x) [N, C]."""
    N, C = x.shape
    y = np.empty_like(x)
    for n in prange(N):
        for c in range(C):
            y[n, c] = gelu_scalar(x[n, c])
    return y


@njit(cache=True, parallel=prange_only())
def gelu_backward(dy, x):
    """dy, x [N, C] -> dx = dy * GELU'(x) [N, C]."""
    N, C = x.shape
    dx = np.empty_like(x)
    for n in prange(N):
        for c in range(C):
            dx[n, c] = dy[n, c] * gelu_grad_scalar(x[n, c])
    return dx


@njit(cache=True, parallel=prange_only())
def gelu_forward_into(x, y):
    """y[N, C] = GELU(x[N, C]) written into the caller's buffer (recomputes a from pre in the
    block's backward instead of keeping it)."""
    N, C = x.shape
    for n in prange(N):
        for c in range(C):
            y[n, c] = gelu_scalar(x[n, c])
    return y


@njit(cache=True, parallel=prange_only())
def bias_gelu_forward(h, b):
    """h [N, C], b [C] -> (y, pre) with pre = h + b written into h (in place), y = GELU(pre)."""
    # the loop of bias_gelu_forward_into, not a call to it (see dwconv_layernorm_forward)
    N, C = h.shape
    y = np.empty_like(h)
    for n in prange(N):
        for c in range(C):
            p = h[n, c] + b[c]
            h[n, c] = p
            y[n, c] = gelu_scalar(p)
    return y, h


@njit(cache=True, parallel=prange_only())
def bias_gelu_forward_into(h, b, y):
    """As `bias_gelu_forward`, writing y into the caller's buffer y [N, C]. Returns (y, h)."""
    N, C = h.shape
    for n in prange(N):
        for c in range(C):
            p = h[n, c] + b[c]
            h[n, c] = p
            y[n, c] = gelu_scalar(p)
    return y, h


@njit(cache=True, parallel=prange_only())
def bias_gelu_inplace(h, b):
    """h[N, C] = GELU(h + b) in place, for inference (nothing kept for a backward): one read
    and one write per element instead of `bias_gelu_forward_into`'s three streams (the same
    values). Returns h."""
    N, C = h.shape
    for n in prange(N):
        for c in range(C):
            h[n, c] = gelu_scalar(h[n, c] + b[c])
    return h


@njit(cache=True, parallel=prange_only())
def bias_gelu_backward(dy, pre):
    """dy, pre [N, C] -> dpre [N, C] (written into dy, in place), db [C]."""
    N, C = pre.shape
    chunks = min(_CHUNKS, N)
    # per-chunk sums in the storage dtype keep the loop vectorised; chunks combine in float64
    partial = np.zeros((chunks, C), dtype=pre.dtype)
    for chunk in prange(chunks):
        acc = partial[chunk]
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            row = dy[n]
            src = pre[n]
            for c in range(C):
                g = row[c] * gelu_grad_scalar(src[c])
                row[c] = g
                acc[c] += g
    return dy, sum_leading(partial.astype(np.float64)).astype(pre.dtype)
