"""The one reduction the kernels share: per-chunk partial sums combined after a parallel loop.

    total[j] = sum_i partial[i, j]          (i in order 0, 1, ..., like ndarray.sum(axis=0))

A serial loop instead of `partial.sum(axis=0)`: Numba compiles its axis reduction (with the
bound checks and error-message formatting that come with it) once per dtype and rank, about
1 s each on an empty cache; this compiles once per dtype. Layout: partial C-contiguous
[n, m] (callers reshape [n, k, m] to [n, k*m], a free view).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def sum_leading(partial):
    """partial [n, m] (C-contiguous) -> total [m], the sum over the first axis in row order."""
    n, m = partial.shape
    total = np.zeros(m, dtype=partial.dtype)
    for i in range(n):
        row = partial[i]
        for j in range(m):
            total[j] += row[j]
    return total
