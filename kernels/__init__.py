"""Numba kernels: each op's forward and backward side by side, and plain-NumPy references.

Read `kernels/README.md` for the order and the math. Every function here is pure: arrays in,
arrays out (or written into a caller's buffer), no state.
"""

import os

# How idle OpenMP threads (Numba's parallel loops) wait, chosen before the OpenMP runtime loads,
# i.e. before any kernel runs. OpenMP's default active waiting (GNU: 300,000 spins; Intel/LLVM:
# 200 ms) made a training step ~20x slower on 2 cores, the spinning threads taking turns with the
# matmul threads (measured: 1400 ms vs 67 ms for an atto step). Sleeping at once (passive) costs
# a wake-up (~10 us on our VM) at each of the ~24 parallel loops of a batch-1 predict. Default
# here: GNU OpenMP spins 300 times (~10 us) before sleeping; Intel/LLVM OpenMP sleep at once.
# Measured against passive (bench/NOTES.md, round 4): batch 1 2-16 % faster on an idle machine,
# 5-20 % slower while another process holds a core; training and batch 256 unchanged. A policy
# or spin count of your own (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME) is left alone.
if not any(os.environ.get(name) for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
    os.environ["GOMP_SPINCOUNT"] = "300"
    os.environ["KMP_BLOCKTIME"] = "0"


def _single_threaded_openblas() -> None:
    """Run NumPy's OpenBLAS on one thread; `kernels.linear.matmul` then splits big products
    across Numba's threads itself.

    OpenBLAS's own threads synchronise and spin inside every call: with a second busy process on
    2 cores a pico training step fell from 85 to 21 samples/s and a warm start grew from 1.4 s to
    11 s (bench/NOTES.md). This is process-wide, so it is done once here and can be refused:
    an explicit OPENBLAS_NUM_THREADS, or NUMPYCONVNEXT_KEEP_BLAS_THREADS=1, leaves BLAS alone.
    """
    if os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("NUMPYCONVNEXT_KEEP_BLAS_THREADS"):
        return
    import ctypes
    import glob

    import numpy

    libs = os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs", "*openblas*")
    for path in glob.glob(libs):
        try:
            lib = ctypes.CDLL(path)  # the library NumPy already loaded: same handle
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(1)
                return


_single_threaded_openblas()


def _load_numba_without_scipy_probe() -> None:
    """Import Numba's NumPy support without its scipy.linalg probe (~0.4 s of a cold start).

    `numba.np.arraymath` calls `ensure_blas()` at import, which imports scipy.linalg only to
    set a flag (`_HAVE_BLAS`, read when typing np.correlate/np.convolve). No kernel here calls
    BLAS from Numba, so the probe is skipped and the flag set from whether scipy is installed;
    jitted np.dot / np.linalg still import scipy.linalg themselves when first compiled.
    """
    import importlib.util
    import sys

    if "numba.np.arraymath" in sys.modules:
        return
    import numba.np.linalg as numba_linalg

    probe = getattr(numba_linalg, "ensure_blas", None)
    if probe is None:  # another Numba version: import it the ordinary way
        return

    def skip() -> None:
        raise ImportError("probe skipped by kernels/__init__.py")

    numba_linalg.ensure_blas = skip
    try:
        import numba.np.arraymath as arraymath
    finally:
        numba_linalg.ensure_blas = probe
    if hasattr(arraymath, "_HAVE_BLAS"):
        arraymath._HAVE_BLAS = importlib.util.find_spec("scipy") is not None


_load_numba_without_scipy_probe()
