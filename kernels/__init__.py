"""Numba kernels: each op's forward and backward side by side, and plain-NumPy references.

Read `kernels/README.md` for the order and the math. Every function here is pure: arrays in,
arrays out (or written into a caller's buffer), no state.
"""

import os

# Numba's parallel loops (OpenMP layer) and OpenBLAS's matmuls take turns on the same cores.
# With OpenMP's default active waiting, each side's idle threads spin while the other works and
# a training step gets ~20x slower on 2 cores (measured: 1400 ms vs 67 ms for an atto step).
# Passive waiting must be chosen before the OpenMP runtime loads, i.e. before any kernel runs.
# A short spin instead (GNU OpenMP's GOMP_SPINCOUNT=300) makes batch-1 inference 2-16 % faster
# on an otherwise idle machine and 5-20 % slower when another process holds a core (training
# unchanged; bench/NOTES.md, round 4): set GOMP_SPINCOUNT yourself to choose it, and no policy
# is set here.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
