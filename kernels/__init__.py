"""Numba kernels: each op's forward and backward side by side, and plain-NumPy references.

Read `kernels/README.md` for the order and the math. Functions on arrays, with no state of
their own: each returns its results, and the `_into` variants and a few others (each says so
in its docstring, e.g. `bias_gelu_forward` writing `pre` over its input) write into arrays the
caller passes. `reference.py` needs only NumPy. Importing this package changes nothing outside
it; how many threads the kernels use is decided by the caller (`numpyconvnext.threads` for the
library).
"""


def prange_only() -> dict[str, bool]:
    """`parallel=` option of our parallel kernels: their explicit `prange` loops only, none of
    Numba's automatic conversions of array expressions (`np.zeros`, `a + b`, ...) into parallel
    loops and no loop fusion. The kernels parallelise nothing else, and those passes took ~20 %
    of the first training step's compile on an empty cache (bench/NOTES.md, round 5). A new
    dict each call: Numba consumes the one it is given."""
    return dict(comprehension=False, reduction=False, inplace_binop=False, setitem=False,
                numpy=False, stencil=False, fusion=False)
