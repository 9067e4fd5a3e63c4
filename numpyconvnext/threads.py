"""Threads: how numpyconvnext shares the cores with the process it runs in. The one place that
sets the policy (README "Embedding" summarises it).

Importing numpyconvnext changes nothing outside the package: no environment variable, no BLAS
thread count, no other package's internals. Everything below happens only inside our own calls
that compute (`ConvNeXt1D.forward`, `backward`, `predict`, `AdamW.step`, the Trainer), and is
undone when they return:

- **Numba** (the kernels): `set_num_threads(n)` fixes how many threads our calls use, from any
  Python thread; by default (`None`) a call uses Numba's count for the calling thread
  (`numba.get_num_threads()`, i.e. NUMBA_NUM_THREADS = all cores unless you changed it).
  Numba's own setting is thread-local, so we set it at the start of a call and restore it after.
  The pool is started explicitly by `start()` before the first kernel runs, never as a side
  effect of an argument.
- **BLAS** (NumPy's matmuls): during a call that does big products (training, large batches)
  NumPy's BLAS runs one thread (threadpoolctl, reference-counted across concurrent calls, the
  previous count restored when the last one returns) and our matmuls split their rows over our
  own helper threads instead: OpenBLAS's threads spin-wait and collapse 3-80x when another
  process holds a core (bench/NOTES.md). Other threads of your process that call BLAS while one
  of our calls runs get one BLAS thread too. Batch-1 predict uses no BLAS and limits nothing.
  When the kernels run on all of Numba's threads (below), the split products run on them too,
  in one parallel loop calling BLAS by address per block (kernels/split.py): the pool's
  threads are awake from the kernel before, a Python helper has to be woken.
- **OpenMP wait policy**: we set none. Numba's default threading layer on Linux is GNU OpenMP,
  whose idle threads spin 300,000 times (milliseconds) before sleeping unless the process
  environment says otherwise, and when torch was imported first Numba shares torch's OpenMP
  runtime with whatever policy torch started it with. Spinning OpenMP threads take the cores
  from our helper threads (training 2.5-5x slower, batch 1 up to 25x under load; bench/NOTES.md,
  "Issue 12"). So when Numba's pool is OpenMP and the environment sets no short wait
  (`OMP_WAIT_POLICY=PASSIVE`, `GOMP_SPINCOUNT` <= 10000, or for Intel/LLVM OpenMP
  `KMP_BLOCKTIME` <= 1), our calls leave the OpenMP threads asleep: the kernels run on the
  calling thread and only the matmuls use helper threads (training ~0.85x of all threads with a
  short wait; next to torch 1.0-1.1x of alone instead of 0.2-0.4x). Give the process a short wait
  (before anything loads OpenMP, e.g. `GOMP_SPINCOUNT=3000`) or use Numba's `tbb` layer to use
  every thread in the kernels too; `set_num_threads(n)` is obeyed as given.
- **Batch 1**: a predict of one window runs ~24 short parallel loops. A wait that bridges the
  gaps between them (GNU: 2,000-10,000 spins, ~50-300 us) lets every block split its matmuls
  over the threads; with a shorter one each loop first wakes a sleeping thread (10-40 us on a
  VM), so only the blocks with enough work split (`split_work`). On an idle 2-vCPU AMD EPYC:
  atto / pico / tiny 1.4 / 1.5 / 1.25x faster with 3,000 spins than with 300; with one core busy
  with another process splitting is 0.45-0.75x (a spinning thread competes with it), so each
  model times both ways and takes the faster (`SplitChooser`).
- The CLI owns its process: it sets `GOMP_SPINCOUNT=3000` and `KMP_BLOCKTIME=0` (unless you set
  an OpenMP wait yourself) before anything is imported, so it always runs with all threads.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numba

from kernels.block import SPLIT_WORK
from kernels.linear import numpy_blas, split_matmuls

F = TypeVar("F", bound=Callable)

# GNU OpenMP spins this many times at most for a wait that does not take the cores from our
# matmul threads (a spin is one `pause`: 25-40 ns, so 300 is ~10 us)
SHORT_SPIN_COUNT = 10_000
# ... and at least this many for one that bridges the gaps between the parallel loops of a
# batch-1 predict (~50-120 us), so that the threads are awake when the next loop starts
BRIDGING_SPIN_COUNT = 2_000
# Intel/LLVM OpenMP: blocktime in ms at most for a short wait (any above 0 bridges the gaps)
SHORT_BLOCKTIME_MS = 1

_requested: int | None = None  # set_num_threads
_local = threading.local()  # .depth: our calls on this thread's stack
_start_lock = threading.Lock()
_started = False
_openmp_wait = "short"  # how the pool's idle threads wait: _openmp_wait_kind
_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list = []
# Numba's thread-local count, read and set through its C functions once the pool runs: the
# public numba.get/set_num_threads take a process lock on every call (~15-20 us under load)
_numba_get: Callable[[], int] = numba.get_num_threads
_numba_set: Callable[[int], None] = numba.set_num_threads


def set_num_threads(n: int | None) -> None:
    """Threads for numpyconvnext's calls from now on, in every Python thread (None: automatic,
    see the module docstring). 1 <= n <= numba.config.NUMBA_NUM_THREADS."""
    global _requested
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"number of threads must be an int or None, got {n!r}")
        limit = numba.config.NUMBA_NUM_THREADS
        if not 1 <= n <= limit:
            raise ValueError(f"number of threads must be between 1 and {limit} "
                             f"(NUMBA_NUM_THREADS), got {n}")
    _requested = n


def get_num_threads() -> int:
    """Threads a numpyconvnext call made from this Python thread would use (helper threads
    for big matmuls included)."""
    start()
    return _requested if _requested is not None else _numba_get()


def numba_threads() -> int:
    """Numba's thread count for the calling thread (the pool must be started)."""
    return _numba_get()


def set_numba_threads(n: int) -> None:
    """Set Numba's thread count for the calling thread (1 <= n <= NUMBA_NUM_THREADS)."""
    _numba_set(n)


def start() -> None:
    """Start Numba's thread pool if nothing has yet, and note how its threads wait.

    Called before the first kernel of every computing call (a no-op after the first time):
    a compiled function that calls a parallel one must not run before the pool exists.
    """
    global _started, _openmp_wait, _numba_get, _numba_set
    if _started:
        return
    with _start_lock:
        if _started:
            return
        from numba.np.ufunc import parallel

        launch = getattr(parallel, "_launch_threads", None)
        if launch is not None:
            launch()
        else:  # another Numba: its public accessor launches the pool first
            numba.get_num_threads()
        _openmp_wait = _openmp_wait_kind(numba.threading_layer(), os.environ)
        fast_get = getattr(parallel, "_get_num_threads", None)
        fast_set = getattr(parallel, "_set_num_threads", None)
        if fast_get is not None and fast_set is not None and fast_get() == numba.get_num_threads():
            _numba_get, _numba_set = fast_get, fast_set
        _started = True


def _openmp_wait_kind(layer: str, environ) -> str:
    """How the idle threads of Numba's pool wait before they sleep: "long" (milliseconds or
    more: OpenMP's default; they would take the cores from our matmul threads), "bridging"
    (about 50-120 us: they are still awake when the next parallel loop of a predict starts) or
    "short" (they sleep within ~10 us, or the pool does not spin)."""
    if layer != "omp":
        return "short"  # tbb threads yield within microseconds, workqueue threads block
    if environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive":
        return "short"
    try:
        from numba.np.ufunc import omppool

        vendor = getattr(omppool, "openmp_vendor", "GNU")
    except ImportError:
        vendor = "GNU"
    if vendor == "GNU":
        count = _number(environ.get("GOMP_SPINCOUNT", ""), {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12})
        if count is None or count > SHORT_SPIN_COUNT:
            return "long"
        return "bridging" if count >= BRIDGING_SPIN_COUNT else "short"
    blocktime = _number(environ.get("KMP_BLOCKTIME", ""), {"ms": 1.0, "us": 1e-3, "s": 1e3})
    if blocktime is None or blocktime > SHORT_BLOCKTIME_MS:
        return "long"
    return "bridging" if blocktime > 0 else "short"


def _number(text: str, units: dict[str, float]) -> float | None:
    """A count or time with an optional unit suffix ('300', '10k', '5ms'); None if unset or
    unreadable (the runtime then uses its default too)."""
    text = text.strip().lower()
    for suffix, scale in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            text, factor = text[: -len(suffix)], scale
            break
    else:
        factor = 1.0
    try:
        return float(text) * factor
    except ValueError:
        return None


def thread_counts() -> tuple[int, int]:
    """(threads for Numba kernels, threads for our split matmuls) of a call on this thread."""
    start()
    if _requested is not None:
        return _requested, _requested
    threads = _numba_get()
    return (1 if _openmp_wait == "long" else threads), threads


def products_in_pool(kernel_threads: int, matmul_threads: int) -> bool:
    """Whether our split products run in Numba's pool (one parallel loop, kernels/split.py)
    rather than on Python helper threads, given `thread_counts()`: when the kernels use the
    pool's threads too, so that they are awake (not left asleep for a long OpenMP wait)."""
    return kernel_threads == matmul_threads > 1


def split_work() -> int:
    """Multiply-adds of a pwconv from which a few-row block (batch-1 inference) splits its
    matmuls over the threads (`kernels.block.block_parts`): every block when the pool's idle
    threads bridge the gaps between a predict's parallel loops, else `SPLIT_WORK` (each loop
    then wakes a sleeping thread: 10-40 us; bench/NOTES.md, round 9)."""
    start()
    return 0 if _openmp_wait == "bridging" else SPLIT_WORK


@contextmanager
def compute(blas: bool = True) -> Iterator[None]:
    """Around one of our computing calls: start Numba's pool, apply our thread counts, and with
    `blas` run NumPy's BLAS single-threaded and split our big matmuls. Re-entrant: a call nested
    in another (forward inside the Trainer's step) costs only a counter."""
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth = depth
        return
    kernel_threads, matmul_threads = thread_counts()
    saved = _numba_get()
    if kernel_threads != saved:
        _numba_set(kernel_threads)
    limited = _limit_blas() if blas else None
    _local.depth = 1
    try:
        if limited:
            with split_matmuls(matmul_threads,
                               region=products_in_pool(kernel_threads, matmul_threads)):
                yield
        else:
            yield
    finally:
        _local.depth = 0
        if limited is not None:
            _release_blas()
        if kernel_threads != saved:
            _numba_set(saved)


class SplitChooser:
    """Whether a batch-1 predict splits its blocks over the threads (as `split_work` says) or
    runs them all on the calling thread, chosen by their measured times: splitting wins on an
    idle machine (1.3-1.5x with a bridging wait) and loses when another process holds a core
    (0.45-0.75x: a thread spins on the core the other process needs; bench/NOTES.md round 9).
    Each way keeps its last 3 times; the one with the lower median is taken, and every
    `EXPLORE` calls the other is taken twice so that a change of load is noticed. The first
    call after a change of way is not timed: after serial calls the pool's threads have gone
    to sleep, and waking them made that split call 45-80 us slower than the next (atto,
    bench/NOTES.md round 13), which biased every look at splitting against it. One per model
    (unsynchronised: calls from several Python threads at most perturb the times kept)."""

    EXPLORE = 32
    KEEP = 3

    def __init__(self) -> None:
        self._times: tuple[list[float], list[float]] = ([], [])  # split, serial
        self._calls = 0
        self._last: bool | None = None  # the way of the last call recorded

    def split(self) -> bool:
        """Whether the next call should split (the first calls time splitting, then not)."""
        self._calls += 1
        split, serial = self._times
        if len(split) < self.KEEP:
            return True
        if len(serial) < self.KEEP:
            return False
        faster = sorted(split)[self.KEEP // 2] <= sorted(serial)[self.KEEP // 2]
        return faster != (self._calls % self.EXPLORE in (0, 1))

    def record(self, split: bool, seconds: float) -> None:
        """A call's time, the way `split` said (not kept if the call before went the other
        way)."""
        changed, self._last = split != self._last, split
        if changed:
            return
        times = self._times[0 if split else 1]
        times.append(seconds)
        del times[:-self.KEEP]


def computes(blas: bool = True) -> Callable[[F], F]:
    """Decorator: run the function inside `compute(blas)`."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with compute(blas):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _set_blas_threads(library, count: int) -> None:
    # threadpoolctl lets only the first Python thread that limited OpenBLAS change it later
    # (others are ignored, so Python threads do not fight); our calls may come from any thread
    # and count their users themselves, so they use its unguarded setter where it has one
    getattr(library, "_real_set_num_threads", library.set_num_threads)(count)


def _limit_blas() -> bool | None:
    """Enter a one-BLAS-thread section (None: no BLAS library found, nothing entered); True if
    NumPy's BLAS is known to run one thread now."""
    global _blas_users, _blas_saved
    with _blas_lock:
        libraries = numpy_blas()
        if not libraries:
            return None
        if _blas_users == 0:
            _blas_saved = [(lib, lib.get_num_threads()) for lib in libraries]
            for lib, count in _blas_saved:
                if count != 1:
                    _set_blas_threads(lib, 1)
        _blas_users += 1
        return all(lib.get_num_threads() == 1 for lib in libraries)


def _release_blas() -> None:
    global _blas_users
    with _blas_lock:
        _blas_users -= 1
        if _blas_users == 0:
            for lib, count in _blas_saved:
                if count != 1 and count is not None:
                    _set_blas_threads(lib, count)
