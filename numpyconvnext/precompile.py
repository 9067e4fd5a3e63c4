"""Compile a command's kernels in a second process while this one starts and compiles too.

On an empty Numba cache (a fresh install) the first training step waits ~20 s for about ten
kernels, compiled one after another: Numba compiles one function at a time per process. The
CLI's `train` starts a helper process beside it (`compiling_beside("train")`) that compiles
the same kernels, last needed first, into Numba's on-disk cache; each kernel the command
reaches and finds there it loads (milliseconds) instead of compiling. The two meet in the
middle, so on two cores the wait is about halved. Before its first batch-1 predict, `live`
calls `ready_for_batch1`: the blocks (and the matmul of a frozen model's packed weights)
compile here while a helper compiles the rest of the one-call network (plan "predict"; the
network calls its blocks, and they their matmul, through addresses, kernels/pointer.py, so
none waits for another).

A helper is started only when a kernel of its plan is missing from the cache and the process
may use two cores; it writes nothing but Numba's cache (each file written whole, then
renamed), and is stopped when the command's block ends. A plan lists each kernel with its
argument types exactly as the command calls it (a kernel compiled for other types would be of
no use): tests/test_precompile.py checks that a run compiles nothing its plan did not, and the
plan nothing the run does not use.

    python -m numpyconvnext.precompile train|predict      (what the helper runs)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
from numba import typeof, types

_NOT_NEEDED = ("0", "false", "no", "off")


def plan(name: str) -> list[tuple[object, tuple[types.Type, ...]]]:
    """(kernel, argument types) of the command `name`, in the order the helper compiles them:
    the reverse of the order the command first calls them.

    "train": a training step of the float32 model (forward, backward, AdamW; our gemm where
    `kernels.linear.uses_own_gemm()`, as in the command's process), then what the
    evaluation of the validation and test windows adds (batched inference, its head on few rows)
    and the backtest of their trades.
    "predict": the batch-1 network of a frozen float32 model (what `live` runs) without its
    blocks and packed matmul (`ready_for_batch1`).
    """
    plans = {"train": _train_plan, "predict": _predict_plan}
    if name not in plans:
        raise ValueError(f"no compile plan {name!r}; the plans are 'train' and 'predict'")
    return plans[name]()


def _train_plan() -> list[tuple[object, tuple[types.Type, ...]]]:
    from kernels import adamw, block, dwconv, gelu, gemm, layernorm, linear, residual, split
    from numpyconvnext import threads
    from numpyconvnext.trading.backtest import _run as backtest_run

    a1, a2, a3 = (types.Array(types.float32, ndim, "C") for ndim in (1, 2, 3))
    real, count = types.float64, types.int64
    operand = types.Array(types.float32, 1, "C", readonly=True)  # kernels.gemm.strided
    own = linear.uses_own_gemm()
    products = [  # the split products: in Numba's pool when the kernels use it too
        (operand, operand, a1, types.Array(count, 1, "C"))] * 2
    tasks = types.Array(count, 2, "C")
    address, wide = linear.blas_gemm_address(np.float32)
    region = []
    if threads.products_in_pool(*threads.thread_counts()):
        if own:  # our gemm's products also take b's packed panels (empty when there are none)
            region = [(split.own_products, (tasks, *products[0], operand, *products[1],
                                            operand))]
        elif address:
            region = [(split.blas_products, (count, typeof(wide), tasks, *products[0],
                                             *products[1]))]
    step = [  # the order a training step first calls them
        *([(gemm.gemm_block, (operand, count, count, operand, count, count, count, a1, count,
                              count, count, count, count, operand))] if own else []),
        *region,
        (layernorm.layernorm_forward, (a2, a1, a1, real)),
        (dwconv.dwconv_layernorm_inference_into, (a3, a2, a1, a1, a1, real, a3)),
        (gelu.bias_gelu_forward_into, (a2, a1, a2)),
        (residual.bias_residual_forward, (a3, a3, a1, a1, a1, a3)),
        (layernorm.layernorm_backward, (a2, a2, a1, a1, a1)),
        (gelu.gelu_forward_into, (a2, a2)),
        (residual.residual_backward, (a3, a3, a1, a1, a1)),
        (gelu.bias_gelu_backward, (a2, a2)),
        (dwconv.dwconv_layernorm_forward_into, (a3, a2, a1, a1, a1, real, a3, a3, a2, a2)),
        (dwconv.dwconv_backward, (a3, a3, a2, a3)),
        (adamw.adamw_update, (a1, a1, a1, a1, real, real, real, real, real, count)),
    ]
    evaluation = [
        (gelu.bias_gelu_inplace, (a2, a1)),
        (layernorm.layernorm_forward_serial, (a2, a1, a1, real)),
        (block.matmul_rows, (a2, a2, a2)),
    ]
    # the trades on the validation and test windows after training: state, params, then the
    # bars' open, high, low, close, targets, stop and take-profit distances, funding rates
    trades = [(backtest_run, (types.Array(types.float64, 1, "C"),) * 10)]
    # the step's kernels first (last needed first), then evaluation's (needed an epoch later)
    return step[::-1] + evaluation + trades


def _predict_plan() -> list[tuple[object, tuple[types.Type, ...]]]:
    """A batch-1 predict of a frozen float32 model (the copy `live` runs): the one-call network
    (and, within its compile, the stem, downsample and head kernels), the few-row matmul it
    and the blocks call and its split over threads (the downsamples'), but not the blocks nor
    the matmul of packed pointwise weights, which `ready_for_batch1` compiles in this process
    meanwhile (each is called through its address, kernels/pointer.py)."""
    from kernels.block import _matmul_cols, matmul_cols_signature, matmul_split
    from kernels.network import network_forward_rows

    a3 = types.Array(types.float32, 3, "C")
    i1, i2 = types.Array(types.int64, 1, "C"), types.Array(types.int64, 2, "C")
    functions = types.Array(types.int64, 1, "C", readonly=True)  # kernels.network.addresses
    count, real = types.int64, types.float64
    # x, flat, spans, dims, depths, kernel, eps, parts, threads, pointwise, functions
    frozen = types.Array(types.float32, 1, "C", readonly=True)  # its flat_params, _pointwise
    return [(network_forward_rows, (a3, frozen, i2, i1, i1, count, real, i1, count, frozen,
                                    functions)),
            (_matmul_cols, matmul_cols_signature(np.float32, np.float32)),
            (matmul_split, matmul_cols_signature(np.float32, np.float32))]  # the same types


def _cached(kernel, argument_types: tuple) -> bool:
    """Whether Numba's on-disk cache holds `kernel` for these argument types (for this CPU)."""
    cache = kernel._cache
    key = cache._index_key(argument_types, kernel.targetctx.codegen())
    return key in cache._cache_file._load_index()


def missing(name: str) -> bool:
    """Whether a kernel of the plan is neither compiled in this process nor in the disk cache.
    False when there is nothing a helper could do (JIT disabled, no disk cache)."""
    from numba import config
    from numba.core.caching import NullCache

    if config.DISABLE_JIT:
        return False
    for kernel, argument_types in plan(name):
        if argument_types in kernel.overloads:
            continue
        if isinstance(kernel._cache, NullCache):
            return False
        try:
            if not _cached(kernel, argument_types):
                return True
        except (AttributeError, TypeError, OSError, EOFError, ValueError):
            return True  # another Numba's internals, or an unreadable index: compile
    return False


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def compiling_beside(name: str) -> Iterator[subprocess.Popen | None]:
    """Within the block, a helper process compiles the plan `name` (see the module docstring);
    yields it, or None when not started: on one core, with NUMPYCONVNEXT_COMPILE_HELPER=0, or
    when every kernel is compiled already. The helper is stopped when the block ends."""
    start = (os.environ.get("NUMPYCONVNEXT_COMPILE_HELPER", "1").lower() not in _NOT_NEEDED
             and sys.executable and _cores() >= 2 and missing(name))
    helper = None
    if start:
        # the package's own directory first: the command may run from a checkout, elsewhere
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                f"from numpyconvnext.precompile import main; sys.exit(main([{name!r}]))")
        try:
            helper = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError:  # no process to be had: this one compiles everything, as without
            helper = None
    try:
        yield helper
    finally:
        if helper is not None and helper.poll() is None:
            helper.terminate()  # a cache file is written whole, then renamed: none is left half
            helper.wait()


def ready_for_batch1(model) -> None:
    """Compile what a batch-1 `model.predict` needs, if it is not in the cache: the blocks (and
    the matmul of packed pointwise weights, if the model has them) here and, beside them, the
    rest of the one-call network in a helper process (plan "predict"; waited for, so that this
    process loads it instead of compiling it too)."""
    from kernels.block import block_rows_address, matmul_cols_packed_address

    pointwise = model._pointwise.dtype
    planned = model.dtype == pointwise == np.float32  # the plan is the float32 network's
    with compiling_beside("predict") if planned else nullcontext() as helper:
        block_rows_address(model.dtype, pointwise)
        if model._pointwise_packed:
            matmul_cols_packed_address(model.dtype, pointwise)
        if helper is not None:
            helper.wait()


def compile_plan(name: str, parent: int | None = None) -> None:
    """Compile the plan's kernels in order (each loaded instead if the cache has it); stop early
    if `parent` (a process id) has gone."""
    for kernel, argument_types in plan(name):
        if parent is not None and os.getppid() != parent:
            return
        kernel.compile(argument_types)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m numpyconvnext.precompile PLAN", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    compile_plan(argv[0], parent=os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
