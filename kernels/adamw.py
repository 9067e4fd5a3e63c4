"""Fused AdamW update (PyTorch semantics: decoupled weight decay, bias correction).

For a flat parameter p with gradient g, moments m, v and step number t >= 1:

    p <- p * (1 - lr * weight_decay)
    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g^2
    p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

One pass over memory instead of the eight a NumPy expression chain makes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import prange_only


@njit(cache=True, parallel=prange_only())
def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """In-place AdamW step on 1-D contiguous arrays p, g, m, v (same dtype and length).

    `step` is the 1-based step count after this update (t in the docstring above).
    """
    bias1 = 1.0 - beta1**step
    bias2 = 1.0 - beta2**step
    step_size = lr / bias1
    inv_sqrt_bias2 = 1.0 / np.sqrt(bias2)
    decay = 1.0 - lr * weight_decay
    n = p.shape[0]
    for i in prange(n):
        gi = g[i]
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (np.sqrt(vi) * inv_sqrt_bias2 + eps)
