"""Exact GELU and its fusion with the bias of the first pointwise layer.

    GELU(x)  = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
    GELU'(x) = Phi(x) + x * phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

Fused with a bias over rows h[N, C]: pre = h + b, y = GELU(pre) (forward keeps pre);
backward dpre = dy * GELU'(pre) (this is also dh) and db = sum_rows dpre.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels.layernorm import _CHUNKS

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(cache=True, inline="always")
def _gelu(x):
    return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))


@njit(cache=True, inline="always")
def _gelu_grad(x):
    return 0.5 * (1.0 + math.erf(x * _INV_SQRT2)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)


@njit(cache=True, parallel=True)
def gelu_forward(x):
    """x [N, C] -> GELU(x) [N, C]."""
    N, C = x.shape
    y = np.empty_like(x)
    for n in prange(N):
        for c in range(C):
            y[n, c] = _gelu(x[n, c])
    return y


@njit(cache=True, parallel=True)
def gelu_backward(dy, x):
    """dy, x [N, C] -> dx = dy * GELU'(x) [N, C]."""
    N, C = x.shape
    dx = np.empty_like(x)
    for n in prange(N):
        for c in range(C):
            dx[n, c] = dy[n, c] * _gelu_grad(x[n, c])
    return dx


@njit(cache=True, parallel=True)
def bias_gelu_forward(h, b):
    """h [N, C], b [C] -> (y, pre) with pre = h + b written into h (in place), y = GELU(pre)."""
    N, C = h.shape
    y = np.empty_like(h)
    for n in prange(N):
        for c in range(C):
            p = h[n, c] + b[c]
            h[n, c] = p
            y[n, c] = _gelu(p)
    return y, h


@njit(cache=True, parallel=True)
def bias_gelu_backward(dy, pre):
    """dy, pre [N, C] -> dpre [N, C] (written into dy, in place), db [C]."""
    N, C = pre.shape
    chunks = min(_CHUNKS, N)
    partial = np.zeros((chunks, C), dtype=np.float64)
    for chunk in prange(chunks):
        acc = partial[chunk]
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            for c in range(C):
                g = dy[n, c] * _gelu_grad(pre[n, c])
                dy[n, c] = g
                acc[c] += g
    return dy, partial.sum(axis=0).astype(pre.dtype)
