"""Numba kernels: each op's forward and backward side by side, and plain-NumPy references.

Read `kernels/README.md` for the order and the math. Functions on arrays, with no state of
their own: each returns its results, and the `_into` variants and a few others (each says so
in its docstring, e.g. `bias_gelu_forward` writing `pre` over its input) write into arrays the
caller passes. `reference.py` needs only NumPy. Importing this package changes nothing outside
it; how many threads the kernels use is decided by the caller (`numpyconvnext.threads` for the
library).
"""
