"""Pointwise (linear) layers and patchify convs as one BLAS matmul each.

Linear, PyTorch weight layout w[C_out, C_in]:

    y = x @ w.T + b          x [N, C_in] -> y [N, C_out]
    dx = dy @ w,  dw = dy.T @ x,  db = sum_n dy

Patchify conv (kernel = stride = s, no padding), the stem and the downsample layers. On a
channels-last x[B, T, C_in] the patch at output step t is the contiguous run x[b, s*t : s*t + s, :],
so `x.reshape(B, T/s, s*C_in)` is a free view, and with the Conv1d weight w[C_out, C_in, s]
rearranged to w2[C_out, s*C_in] (tap-major) the conv is one matmul:

    y[b, t, :] = x.reshape(B*T/s, s*C_in) @ w2.T + b

Matmuls go to BLAS through NumPy; these functions take an optional `out=` so the model can
reuse buffers between steps (inside `split_matmuls`, big products are split over threads).
Two exceptions for small inputs: `linear_forward` on at most `SMALL_ROWS` rows (batch-1
inference) calls the serial register-blocked `matmul_rows` (kernels/block.py; BLAS is slow on
so few rows), and `patchify_forward` rearranges whichever of x and w is smaller (same
product, fewer bytes copied).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from kernels.block import SMALL_ROWS, matmul_rows

# products below this many FLOPs are not split across threads (a hand-off costs ~20-50 us)
SPLIT_FLOPS = 8_000_000
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_split = threading.local()  # .threads: how many threads `matmul` may use in this thread


@contextmanager
def split_matmuls(threads: int) -> Iterator[None]:
    """Within the block, `matmul` in this thread splits big products over `threads` threads.

    Only for a caller that knows BLAS runs single-threaded meanwhile (numpyconvnext.threads
    limits it around its own calls); outside such a block products are not split.
    """
    saved = getattr(_split, "threads", 1)
    _split.threads = int(threads)
    try:
        yield
    finally:
        _split.threads = saved


def _helper_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(max(threads - 1, 1),
                                       thread_name_prefix="numpyconvnext-matmul")
        return _pool


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`np.matmul(a, b, out=out)` for 2-D operands; inside `split_matmuls(n)` a product big
    enough is split across n Python threads (NumPy releases the GIL inside BLAS), each calling
    the single-threaded BLAS on a block of the result's rows, or of its columns when it has
    more columns than rows (then each thread packs half of b, not all of it: tiny's training
    step 1.02x, atto's and pico's the same; bench/NOTES.md round 9).

    Why: OpenBLAS's own threads synchronise inside every call and spin-wait; on a loaded
    machine a descheduled partner stalls them all (measured 3-10x slower than one thread).
    Independent blocks with one join per call degrade gracefully instead.
    """
    threads = getattr(_split, "threads", 1)
    rows, cols = a.shape[0], b.shape[1]
    size = max(rows, cols)
    if threads < 2 or size < 2 * threads or 2 * rows * a.shape[1] * cols < SPLIT_FLOPS:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((rows, cols), dtype=np.result_type(a, b))
    bounds = [size * i // threads for i in range(threads + 1)]
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    if cols > rows:  # column blocks: out[:, lo:hi] keeps unit strides along its rows (BLAS)
        blocks = [(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in spans]
    else:
        blocks = [(a[lo:hi], b, out[lo:hi]) for lo, hi in spans]
    pool = _helper_pool(threads)
    futures = [pool.submit(np.matmul, x, y, out=z) for x, y, z in blocks[1:]]
    x, y, z = blocks[0]
    np.matmul(x, y, out=z)  # this thread's block
    for future in futures:
        future.result()
    return out


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, out=None) -> np.ndarray:
    """y = x @ w.T (+ b): x [N, C_in], w [C_out, C_in], b [C_out] or None -> y [N, C_out]."""
    if (out is None and x.shape[0] <= SMALL_ROWS and x.dtype == w.dtype
            and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous and w.flags.c_contiguous):
        y = matmul_rows(x, w, np.empty((x.shape[0], w.shape[0]), dtype=x.dtype))
    else:
        y = matmul(x, w.T, out=out)
    if b is not None:
        y += b
    return y


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, need_dx: bool = True):
    """dy [N, C_out], x [N, C_in], w [C_out, C_in] -> (dx [N, C_in] or None, dw, db)."""
    dx = matmul(dy, w) if need_dx else None
    return dx, matmul(dy.T, x), dy.sum(axis=0)


def patch_weight(w: np.ndarray) -> np.ndarray:
    """Conv1d weight [C_out, C_in, s] -> tap-major matmul weight [C_out, s*C_in]."""
    return np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(w.shape[0], -1)


def patch_weight_grad(dw2: np.ndarray, s: int) -> np.ndarray:
    """Inverse of `patch_weight` for a gradient: [C_out, s*C_in] -> [C_out, C_in, s]."""
    return np.ascontiguousarray(dw2.reshape(dw2.shape[0], s, -1).transpose(0, 2, 1))


def patchify_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [B, T, C_in] (contiguous), w [C_out, C_in, s], b [C_out] -> y [B, T/s, C_out]."""
    B, T, C = x.shape
    s = w.shape[2]
    if x.size < w.size:  # rearrange the patches to channel-major instead of the weight
        patches = np.ascontiguousarray(x.reshape(B * (T // s), s, C).transpose(0, 2, 1))
        weight = np.ascontiguousarray(w).reshape(w.shape[0], C * s)
    else:
        patches, weight = x.reshape(B * (T // s), s * C), patch_weight(w)
    return linear_forward(patches.reshape(B * (T // s), -1), weight, b).reshape(
        B, T // s, w.shape[0])


def patchify_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, need_dx: bool = True):
    """dy [B, T/s, C_out], x [B, T, C_in], w [C_out, C_in, s] -> (dx [B, T, C_in] or None, dw, db)."""
    B, T, C = x.shape
    s = w.shape[2]
    rows = dy.reshape(-1, dy.shape[2])
    dpatch, dw2, db = linear_backward(rows, x.reshape(B * (T // s), s * C), patch_weight(w), need_dx)
    dx = dpatch.reshape(B, T, C) if need_dx else None
    return dx, patch_weight_grad(dw2, s), db
