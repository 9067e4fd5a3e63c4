"""Pointwise (linear) layers and patchify convs as one BLAS matmul each.

Linear, PyTorch weight layout w[C_out, C_in]:

    y = x @ w.T + b          x [N, C_in] -> y [N, C_out]
    dx = dy @ w,  dw = dy.T @ x,  db = sum_n dy

Patchify conv (kernel = stride = s, no padding), the stem and the downsample layers. On a
channels-last x[B, T, C_in] the patch at output step t is the contiguous run x[b, s*t : s*t + s, :],
so `x.reshape(B, T/s, s*C_in)` is a free view, and with the Conv1d weight w[C_out, C_in, s]
rearranged to w2[C_out, s*C_in] (tap-major) the conv is one matmul:

    y[b, t, :] = x.reshape(B*T/s, s*C_in) @ w2.T + b

Matmuls go to BLAS through NumPy, or inside `split_matmuls` to our `kernels.gemm` where it is
the faster (AVX-512); these functions take an optional `out=` so the model can reuse buffers
between steps (inside `split_matmuls`, big products are also split over threads).
Two exceptions for small inputs: `linear_forward` on at most `SMALL_ROWS` rows (batch-1
inference) calls the serial register-blocked `matmul_rows` (kernels/block.py; BLAS is slow on
so few rows), and `patchify_forward` rearranges whichever of x and w is smaller (same
product, fewer bytes copied).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from kernels.block import SMALL_ROWS, matmul_rows
from kernels.gemm import TILE_ROWS, gemm_block, panel_operand, strided
from kernels.simd import compile_cpu, vector_bytes
from kernels.split import blas_products, own_products

# products below this many FLOPs are not split across threads (a hand-off costs ~20-50 us)
SPLIT_FLOPS = 8_000_000
# products below this many FLOPs stay with BLAS (our gemm's packing and call cost more there)
GEMM_FLOPS = 1_000_000
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_split = threading.local()  # .threads: how many threads `matmul` may use in this thread
_gemm_choice = "auto"


@contextmanager
def split_matmuls(threads: int, region: bool = False) -> Iterator[None]:
    """Within the block, `matmul` in this thread splits big products over `threads` threads
    and may use `kernels.gemm` instead of BLAS (see `uses_own_gemm`).

    With `region`, the blocks of a split product are computed by the threads of one Numba
    parallel loop (kernels/split.py) instead of this thread and Python helper threads: for a
    caller that runs Numba's kernels on `threads` threads too and whose pool's idle threads
    wait briefly (numpyconvnext.threads), so that they are awake when a product starts.
    Only for a caller that knows BLAS runs single-threaded meanwhile (numpyconvnext.threads
    limits it around its own calls); outside such a block every product goes to BLAS as it is.
    """
    saved = getattr(_split, "threads", 0), getattr(_split, "region", False)
    _split.threads, _split.region = int(threads), bool(region)
    try:
        yield
    finally:
        _split.threads, _split.region = saved


def set_gemm(choice: str) -> None:
    """Which matmul `matmul` uses for big products inside `split_matmuls`: "auto" (the rule of
    `uses_own_gemm`), "own" (always `kernels.gemm`) or "blas"."""
    global _gemm_choice
    if choice not in ("auto", "own", "blas"):
        raise ValueError(f"set_gemm: 'auto', 'own' or 'blas', got {choice!r}")
    _gemm_choice = choice


def uses_own_gemm() -> bool:
    """Whether big products go to `kernels.gemm` rather than BLAS. "auto" takes ours where the
    kernels are compiled for AVX-512 (16 float32 lanes) and NumPy's BLAS is an OpenBLAS running
    older kernels (`OPENBLAS_CORETYPE=Haswell`, or a build without AVX-512 ones): there ours ran
    1.4-1.7x its speed in the model. Against OpenBLAS's AVX-512 kernels it runs at parity on
    Intel's Xeon (round 8) and ahead of them on AMD's Zen 5 (training 1.01-1.06x, batch 256
    1.01-1.09x, round 13) and Zen 4 (training 1.04-1.07x, batch 256 1.03-1.08x, round 17), so
    it takes those CPUs too (`OWN_OVER_AVX512_OPENBLAS`). Compiled for AVX2 (6-row tiles since
    round 20) it runs at par with OpenBLAS's Haswell kernels in the model (training 0.99-1.06x,
    batch 256 1.01-1.02x, AVX2 code on a Zen 4), not ahead, and its blocking assumes a 1 MB L2
    where many AVX2 cores have 256 KB: BLAS keeps the work there, as with any other BLAS
    (bench/NOTES.md rounds 10-13, 17, 20)."""
    if _gemm_choice != "auto":
        return _gemm_choice == "own"
    return vector_bytes() == 64 and (_blas_below_avx512() or (
        _blas_is_openblas() and compile_cpu() in OWN_OVER_AVX512_OPENBLAS))


_AVX512_OPENBLAS = ("skylakex", "cooperlake", "sapphirerapids")  # its AVX-512 kernel families
# CPUs (LLVM's names) where our GEMM measured faster in the model than OpenBLAS's AVX-512
# kernels; on others with AVX-512 they stay with OpenBLAS until measured
OWN_OVER_AVX512_OPENBLAS = ("znver4", "znver5")


@functools.cache
def _blas_is_openblas() -> bool:
    """True if every BLAS NumPy calls is an OpenBLAS."""
    infos = [library.info() for library in numpy_blas()]
    return bool(infos) and all(info["internal_api"] == "openblas" for info in infos)


@functools.cache
def _blas_below_avx512() -> bool:
    """True if every BLAS NumPy calls is an OpenBLAS whose kernels are not AVX-512 ones."""
    return _blas_is_openblas() and all(
        str(library.info().get("architecture", "")).lower() not in _AVX512_OPENBLAS
        for library in numpy_blas())


@functools.cache
def blas_gemm_address(dtype) -> tuple[int, np.signedinteger]:
    """(address of NumPy's CBLAS `sgemm` or `dgemm` for `dtype`, np.int64(0) or np.int32(0) as
    its integer width), for `kernels.split.blas_products`; (0, np.int64(0)) where it is not an
    OpenBLAS whose symbols and integer width are known (then products split over Python
    helper threads)."""
    name = {"f": "cblas_sgemm", "d": "cblas_dgemm"}.get(np.dtype(dtype).char)
    libraries = numpy_blas()
    if name is None or len(libraries) != 1 or libraries[0].internal_api != "openblas":
        return 0, np.int64(0)
    library = libraries[0]
    symbol = f"{getattr(library, '_symbol_prefix', '')}{{}}{getattr(library, '_symbol_suffix', '')}"
    try:
        gemm = getattr(library.dynlib, symbol.format(name))
        get_config = getattr(library.dynlib, symbol.format("openblas_get_config"))
    except AttributeError:
        return 0, np.int64(0)
    get_config.restype = ctypes.c_char_p
    wide = np.int64(0) if b"USE64BITINT" in (get_config() or b"") else np.int32(0)
    return ctypes.cast(gemm, ctypes.c_void_p).value or 0, wide


@functools.cache
def numpy_blas() -> list:
    """threadpoolctl controllers of the BLAS NumPy calls (found once; scanning costs ~3 ms)."""
    from threadpoolctl import ThreadpoolController

    libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    here = os.path.dirname(os.path.realpath(np.__file__))
    mine = [library for library in libraries
            if os.path.realpath(library.filepath).startswith((here + os.sep, here + ".libs"))]
    return mine or libraries


def _helper_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(max(threads - 1, 1),
                                       thread_name_prefix="numpyconvnext-matmul")
        return _pool


def _spans(size: int, parts: int, step: int) -> list[tuple[int, int]]:
    """`parts` consecutive (start, stop) spans covering range(size), cut at multiples of step."""
    units = -(-size // step)
    bounds = [min(size, units * i // parts * step) for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def _uses_own(a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> bool:
    """Whether `matmul` computes a @ b (into out) with our gemm (inside `split_matmuls`)."""
    rows, depth, cols = a.shape[0], a.shape[1], b.shape[1]
    return (2 * rows * depth * cols >= GEMM_FLOPS and uses_own_gemm() and a.ndim == b.ndim == 2
            and depth == b.shape[0] and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
            and (out is None or (out.shape == (rows, cols) and out.flags.c_contiguous
                                 and out.dtype == a.dtype)))


def _out_for(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.empty((a.shape[0], b.shape[1]), np.result_type(a, b)) if out is None else out


def _cut_step(own: bool, by_columns: bool, itemsize: int) -> int:
    """Blocks of a split product start at multiples of this (rows, or columns by_columns):
    our gemm's tile rows or panel width, so that its bits do not depend on the cuts; 1 for BLAS.
    Both ways of splitting (`matmul`'s helper threads, `_run_region`) cut with it."""
    if not own:
        return 1
    return 2 * vector_bytes() // itemsize if by_columns else TILE_ROWS


class _Job(NamedTuple):
    """A product as `kernels.split` takes it, and how to cut it into blocks."""

    a: np.ndarray  # flat operands (kernels.gemm.strided) and out
    b: np.ndarray
    out: np.ndarray
    layout: np.ndarray  # [sa, sk, sb, sn, depth, ldo]
    rows: int
    cols: int
    by_columns: bool  # cut out's columns (else its rows)
    step: int  # cuts at multiples of this
    panels: np.ndarray  # b packed already (our gemm; kernels.gemm.panel_operand) or empty


def _region_job(a: np.ndarray, b: np.ndarray, out: np.ndarray, own: bool,
                panels: np.ndarray | None = None) -> _Job | None:
    """The product for `_run_region`, or None if it must go the Python way (a layout or dtype
    the region does not take, or no BLAS address)."""
    rows, depth, cols = a.shape[0], a.shape[1], b.shape[1]
    if not (a.ndim == b.ndim == 2 and depth == b.shape[0] and a.dtype == b.dtype == out.dtype
            and a.dtype in (np.float32, np.float64) and out.shape == (rows, cols)
            and out.flags.c_contiguous and out.flags.writeable
            and all(x.flags.c_contiguous or x.flags.f_contiguous for x in (a, b))):
        return None
    if not own and not blas_gemm_address(a.dtype)[0]:
        return None
    a_flat, sa, sk = strided(a)
    b_flat, sb, sn = strided(b)
    by_columns = cols > rows
    return _Job(a_flat, b_flat, out.reshape(-1), _remembered(_layouts, (sa, sk, sb, sn, depth, cols)),
                rows, cols, by_columns, _cut_step(own, by_columns, out.itemsize),
                panel_operand(panels if own else None, b))


# The int64 arrays of layouts and task tables seen so far, by their values: a training step
# asks for the same few dozen every time, and building them took a third of the ~20 us of
# Python around each product (atto: ~0.5 ms a step; bench/NOTES.md round 13). Never written
# to once made; dropped all at once if a stream of new shapes fills them.
_layouts: dict[tuple, np.ndarray] = {}
_tables: dict[tuple, np.ndarray] = {}
_REMEMBER = 4096


def _remembered(store: dict[tuple, np.ndarray], values: tuple,
                rows: list[tuple] | None = None) -> np.ndarray:
    """The int64 array of `rows` (else of `values`), made once per `values`."""
    array = store.get(values)
    if array is None:
        if len(store) >= _REMEMBER:
            store.clear()
        array = store[values] = np.array(values if rows is None else rows, dtype=np.int64)
    return array


def _run_region(own: bool, jobs: list[tuple[_Job, int]], interleave: bool = False) -> None:
    """Compute one or two products, each cut into the number of blocks given, in one parallel
    loop of `kernels.split`. With `interleave` the tasks alternate between the products (block
    0 of each, then block 1 of each, ...): the loop hands each thread a run of consecutive
    tasks, so with each product cut into as many blocks as there are threads, thread t
    computes block t of both."""
    key = (interleave,) + tuple((job.rows, job.cols, job.by_columns, job.step, parts)
                                for job, parts in jobs)
    table = _tables.get(key)
    if table is None:
        blocks = [[(which, 0, job.rows, lo, hi) if job.by_columns else (which, lo, hi, 0, job.cols)
                   for lo, hi in _spans(job.cols if job.by_columns else job.rows, parts, job.step)]
                  for which, (job, parts) in enumerate(jobs)]
        if interleave:
            tasks = [task for tier in itertools.zip_longest(*blocks) for task in tier if task]
        else:
            tasks = [task for product in blocks for task in product]
        table = _remembered(_tables, key, tasks)
    operands = [(job.a, job.b, job.out, job.layout) for job, _ in jobs]
    panels = [job.panels for job, _ in jobs]
    if len(operands) == 1:  # the loop takes two products; the second is then never read
        operands.append(operands[0])
        panels.append(panels[0])
    if own:
        own_products(table, *operands[0], panels[0], *operands[1], panels[1])
    else:
        address, wide = blas_gemm_address(jobs[0][0].out.dtype)
        blas_products(address, wide, table, *operands[0], *operands[1])


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           panels: np.ndarray | None = None) -> np.ndarray:
    """`np.matmul(a, b, out=out)` for 2-D operands. Inside `split_matmuls(n)` a product big
    enough goes to our `kernels.gemm` where `uses_own_gemm()` says so, and is split across n
    Python threads (NumPy's BLAS and our gemm release the GIL), each computing a block of the
    result's rows, or of its columns when it has more columns than rows (then each thread packs
    half of b, not all of it: tiny's training step 1.02x with BLAS; bench/NOTES.md round 9).
    `panels`: b packed as `kernels.block.pack_columns(b.T, 2L)` does (a frozen model's
    pointwise weights), which our gemm then reads instead of packing b (BLAS ignores them).

    Why threads of our own: OpenBLAS's threads synchronise inside every call and spin-wait; on
    a loaded machine a descheduled partner stalls them all (measured 3-10x slower than one
    thread). Independent blocks with one join per call degrade gracefully instead.
    """
    threads = getattr(_split, "threads", 0)
    rows, depth, cols = a.shape[0], a.shape[1], b.shape[1]
    flops = 2 * rows * depth * cols
    own = threads >= 1 and _uses_own(a, b, out)
    if not own and (threads < 2 or max(rows, cols) < 2 * threads or flops < SPLIT_FLOPS):
        return np.matmul(a, b, out=out)
    out = _out_for(a, b, out)
    parts = threads if flops >= SPLIT_FLOPS else 1
    if parts > 1 and getattr(_split, "region", False):
        job = _region_job(a, b, out, own, panels)
        if job is not None:
            _run_region(own, [(job, parts)])
            return out
    by_columns = cols > rows
    if own:
        a_flat, sa, sk = strided(a)
        b_flat, sb, sn = strided(b)
        flat = out.reshape(-1)
        packed = panel_operand(panels, b)

        def product(lo: int, hi: int) -> None:
            span = ((0, rows), (lo, hi)) if by_columns else ((lo, hi), (0, cols))
            gemm_block(a_flat, sa, sk, b_flat, sb, sn, depth, flat, cols, *span[0], *span[1],
                       packed)
    else:

        def product(lo: int, hi: int) -> None:  # column blocks keep unit strides along rows
            if by_columns:
                np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])
            else:
                np.matmul(a[lo:hi], b, out=out[lo:hi])
    spans = _spans(cols if by_columns else rows, parts, _cut_step(own, by_columns, out.itemsize))
    futures = [_helper_pool(threads).submit(product, *span) for span in spans[1:]]
    product(*spans[0])  # this thread's block
    for future in futures:
        future.result()
    return out


def matmul_pair(first: tuple, second: tuple) -> tuple[np.ndarray, np.ndarray]:
    """`matmul(*first), matmul(*second)` for two independent products (a, b[, out]) of a
    backward pass, e.g. dW = dy^T x and dx = dy W. Inside `split_matmuls(n)` with n >= 2 they
    run side by side, the first on a helper thread with n // 2 threads and the second here with
    the rest, instead of one after the other each split n ways: one hand-over for two products
    and blocks twice as big (atto's training step: bench/NOTES.md round 11). Each product is
    computed as `matmul` computes it, so with our gemm the bits do not change.

    In one parallel region (`split_matmuls(n, region=True)`) with our gemm, each product is
    cut n ways instead and thread t computes block t of both: every thread packs a share of
    both b's (dx's b is a weight, from memory; dW's an activation, in cache), where one
    product per thread left the thread packing the weight the last to finish (tiny's
    training step 1.011-1.018x on a Zen 4; bench/NOTES.md round 19). With BLAS, whose bits
    may depend on the block, each product stays whole on its share of the threads."""
    threads = getattr(_split, "threads", 0)
    sizes = [2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, *_ in (first, second)]
    if threads < 2 or min(sizes) < SPLIT_FLOPS:
        return matmul(*first), matmul(*second)
    helper_threads = threads // 2
    if getattr(_split, "region", False):
        (a1, b1, *_), (a2, b2, *_) = first, second
        first, second = (a1, b1, _out_for(*first)), (a2, b2, _out_for(*second))
        own = [_uses_own(*first), _uses_own(*second)]
        jobs = [_region_job(*first, own[0]), _region_job(*second, own[1])]
        if own[0] == own[1] and None not in jobs:
            if own[0]:
                _run_region(True, [(jobs[0], threads), (jobs[1], threads)], interleave=True)
            else:
                _run_region(False, [(jobs[0], helper_threads),
                                    (jobs[1], threads - helper_threads)])
            return first[2], second[2]

    def on_helper() -> np.ndarray:
        with split_matmuls(helper_threads):
            return matmul(*first)

    future = _helper_pool(threads).submit(on_helper)
    try:
        with split_matmuls(threads - helper_threads):
            result = matmul(*second)
    finally:
        first_result = future.result()
    return first_result, result


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


def swap_last_axes(x: np.ndarray) -> np.ndarray:
    """A contiguous copy of x [..., m, n] as [..., n, m], copied in min(m, n) strided slices.

    For the patchify layers one of the two axes is the kernel's few taps: NumPy's own copy of
    the transposed view moves the taps innermost, two or four elements at a time, 4-5x slower
    (atto's last downsampling layer: 95 vs 21 us; bench/NOTES.md, round 13)."""
    m, n = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (n, m), dtype=x.dtype)
    if m <= n:
        for i in range(m):
            out[..., i] = x[..., i, :]
    else:
        for j in range(n):
            out[..., j, :] = x[..., j]
    return out


def patch_weight(w: np.ndarray) -> np.ndarray:
    """Conv1d weight [C_out, C_in, s] -> tap-major matmul weight [C_out, s*C_in]."""
    return swap_last_axes(w).reshape(w.shape[0], -1)


def patch_weight_grad(dw2: np.ndarray, s: int) -> np.ndarray:
    """Inverse of `patch_weight` for a gradient: [C_out, s*C_in] -> [C_out, C_in, s]."""
    return swap_last_axes(dw2.reshape(dw2.shape[0], s, -1))


def patchify_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [B, T, C_in] (contiguous), w [C_out, C_in, s], b [C_out] -> y [B, T/s, C_out]."""
    B, T, C = x.shape
    s = w.shape[2]
    if x.size < w.size:  # rearrange the patches to channel-major instead of the weight
        patches = swap_last_axes(x.reshape(B * (T // s), s, C))
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
