"""Numba kernels: each op's forward and backward side by side, and plain-NumPy references.

Read `kernels/README.md` for the order and the math. Every function here is pure: arrays in,
arrays out (or written into a caller's buffer), no state.
"""

import os

# Numba's parallel loops (OpenMP layer) and OpenBLAS's matmuls take turns on the same cores.
# With OpenMP's default active waiting, each side's idle threads spin while the other works and
# a training step gets ~20x slower on 2 cores (measured: 1400 ms vs 67 ms for an atto step).
# Passive waiting must be chosen before the OpenMP runtime loads, i.e. before any kernel runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
