"""The end of a ConvNeXt block: layer scale, drop path and the residual, fused.

    out[b, t, c] = x[b, t, c] + keep[b] * gamma[c] * branch[b, t, c]

branch is the block's branch output (pwconv2's, bias included); keep[b] is the per-sample
drop-path factor (0 or 1/keep_prob in training, 1 in eval). Backward, for dout [B, T, C]:

    dx = dout (the residual passes through; the caller reuses dout),
    dbranch[b, t, c] = dout[b, t, c] * keep[b] * gamma[c],
    dgamma[c]        = sum_{b,t} dout[b, t, c] * keep[b] * branch[b, t, c]
    dbias[c]         = sum_{b,t} dbranch[b, t, c]    (optional: pwconv2's bias)

Plain-NumPy reference: ``reference.residual_forward`` / ``reference.residual_backward``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import prange_only
from kernels.layernorm import _CHUNKS
from kernels.reduce import sum_leading


@njit(cache=True, parallel=prange_only())
def residual_forward(x, branch, gamma, keep):
    """x, branch [B, T, C], gamma [C], keep [B] -> out [B, T, C]."""
    B, T, C = x.shape
    out = np.empty_like(x)
    for row in prange(B * T):
        bi = row // T
        t = row % T
        k = keep[bi]
        for c in range(C):
            out[bi, t, c] = x[bi, t, c] + k * gamma[c] * branch[bi, t, c]
    return out


@njit(cache=True, parallel=prange_only())
def residual_backward(dout, branch, gamma, keep, dbias=None):
    """dout, branch [B, T, C], gamma [C], keep [B] -> dbranch [B, T, C], dgamma [C].

    With dbias [C] (written): also dbias[c] = sum_{b,t} dbranch[b, t, c], the gradient of the
    bias that `bias_residual_forward` added to the branch, summed in the same pass."""
    B, T, C = branch.shape
    N = B * T
    dbranch = np.empty_like(branch)
    chunks = min(_CHUNKS, N)
    partial = np.zeros((chunks, C), dtype=np.float64)
    partial_bias = np.zeros((chunks, C if dbias is not None else 0), dtype=np.float64)
    for chunk in prange(chunks):
        acc = partial[chunk]
        acc_bias = partial_bias[chunk]
        for row in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            bi = row // T
            t = row % T
            k = keep[bi]
            for c in range(C):
                g = dout[bi, t, c] * k
                d = g * gamma[c]
                dbranch[bi, t, c] = d
                acc[c] += g * branch[bi, t, c]
                if dbias is not None:
                    acc_bias[c] += d
    if dbias is not None:
        dbias[:] = sum_leading(partial_bias)
    return dbranch, sum_leading(partial).astype(branch.dtype)


@njit(cache=True, parallel=prange_only())
def bias_residual_forward(x, branch, bias, gamma, keep, out):
    """The block's last step fused with pwconv2's bias: branch += bias (in place: the branch
    output is kept for the backward), out = x + keep[b] * gamma * branch. x, branch, out
    [B, T, C]; branch holds pwconv2's product without its bias on entry; out may be a
    workspace."""
    B, T, C = x.shape
    for row in prange(B * T):
        bi = row // T
        t = row % T
        k = keep[bi]
        br = branch[bi, t]
        xr = x[bi, t]
        orow = out[bi, t]
        for c in range(C):
            v = br[c] + bias[c]
            br[c] = v
            orow[c] = xr[c] + k * gamma[c] * v
    return out
