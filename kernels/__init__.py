"""Numba kernels: each op's forward and backward side by side, and plain-NumPy references.

Read `kernels/README.md` for the order and the math. Every function here is pure: arrays in,
arrays out (or written into a caller's buffer), no state. Importing this package changes
nothing outside it; how many threads the kernels use is decided by the caller
(`numpyconvnext.threads` for the library).
"""
