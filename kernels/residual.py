"""The end of a ConvNeXt block: layer scale, drop path and the residual, fused.

    out[b, t, c] = x[b, t, c] + keep[b] * gamma[c] * z[b, t, c]

keep[b] is the per-sample drop-path factor (0 or 1/keep_prob in training, 1 in eval).
Backward, for dout [B, T, C]:

    dx = dout (the residual passes through; the caller reuses dout),
    dz[b, t, c] = dout[b, t, c] * keep[b] * gamma[c],
    dgamma[c]   = sum_{b,t} dout[b, t, c] * keep[b] * z[b, t, c]
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.layernorm import _CHUNKS
from kernels.reduce import sum_leading


@njit(cache=True, parallel=True)
def residual_forward(x, z, gamma, keep):
    """x, z [B, T, C], gamma [C], keep [B] -> out [B, T, C]."""
    B, T, C = x.shape
    out = np.empty_like(x)
    for row in prange(B * T):
        bi = row // T
        t = row % T
        k = keep[bi]
        for c in range(C):
            out[bi, t, c] = x[bi, t, c] + k * gamma[c] * z[bi, t, c]
    return out


@njit(cache=True, parallel=True)
def residual_backward(dout, z, gamma, keep):
    """dout, z [B, T, C], gamma [C], keep [B] -> dz [B, T, C], dgamma [C]."""
    B, T, C = z.shape
    N = B * T
    dz = np.empty_like(z)
    chunks = min(_CHUNKS, N)
    partial = np.zeros((chunks, C), dtype=np.float64)
    for chunk in prange(chunks):
        acc = partial[chunk]
        for row in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            bi = row // T
            t = row % T
            k = keep[bi]
            for c in range(C):
                g = dout[bi, t, c] * k
                dz[bi, t, c] = g * gamma[c]
                acc[c] += g * z[bi, t, c]
    return dz, sum_leading(partial).astype(z.dtype)


@njit(cache=True, parallel=True)
def bias_residual_forward(x, h, bias, gamma, keep, out):
    """The block's last step fused with pwconv2's bias: z = h + bias (written into h, kept for
    the backward), out = x + keep[b] * gamma * z. x, h, out [B, T, C]; out may be a workspace."""
    B, T, C = x.shape
    for row in prange(B * T):
        bi = row // T
        t = row % T
        k = keep[bi]
        hr = h[bi, t]
        xr = x[bi, t]
        orow = out[bi, t]
        for c in range(C):
            z = hr[c] + bias[c]
            hr[c] = z
            orow[c] = xr[c] + k * gamma[c] * z
    return out
