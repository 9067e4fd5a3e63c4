"""`block_forward_rows` behind a plain C function pointer, for the one-call network.

Numba compiles a called function before its caller, links the callee's code into the caller's
and optimises it again there. Called directly from `network_forward_rows`, the block (two
parallel loops around the few-row matmul: the biggest compile of a batch-1 predict) had to be
compiled first and was then optimised once more inside the network. Called through a pointer,
the network's compile needs only the block's signature: on an empty cache the block and the
network can compile in two processes at once (numpyconvnext/precompile.py), and the network's
own code is all its module holds.

    block_rows_address(dtype, pointwise)  the address of a C function running
                                          block_forward_rows on float `dtype` arrays with
                                          pointwise weights of dtype `pointwise` (the same, or
                                          uint16 bfloat16 bits); compiled on first use and kept
                                          in Numba's disk cache like every kernel
    call_block_rows(address, x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2,
                    gamma, keep, z, a, out, parts)
                                          (in Numba code) calls it: the arguments of
                                          block_forward_rows, which it runs unchanged (same bits)

The C function takes each array as a pointer to its first element (all C-contiguous), then
B, T, C, K (taps), H (= 4C), parts and eps; shapes as in block_forward_rows.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from kernels.block import block_forward_rows

# the arrays in the C function's order with their ranks, and which hold the pointwise weights
_ARRAYS = dict(x=3, w_taps=2, dw_bias=1, norm_w=1, norm_b=1, w1=2, b1=1, w2=2, b2=1, gamma=1,
               keep=1, z=3, a=2, out=3)
_POINTWISE = {"w1", "w2"}
_SIZES = 6  # B, T, C, K, H, parts
# call_block_rows's arguments, in order
_CALL = ("address", "x", "w_taps", "dw_bias", "norm_w", "norm_b", "eps", "w1", "b1", "w2", "b2",
         "gamma", "keep", "z", "a", "out", "parts")


def _block_rows_c(x, w_taps, dw_bias, norm_w, norm_b, w1, b1, w2, b2, gamma, keep, z, a, out,
                  B, T, C, K, H, parts, eps):
    block_forward_rows(
        carray(x, (B, T, C)), carray(w_taps, (K, C)), carray(dw_bias, C), carray(norm_w, C),
        carray(norm_b, C), eps, carray(w1, (H, C)), carray(b1, H), carray(w2, (C, H)),
        carray(b2, C), carray(gamma, C), carray(keep, B), carray(z, (parts, B * T, C)),
        carray(a, (B * T, H)), carray(out, (B, T, C)), parts,
    )


def _c_signature(dtype: types.Float, pointwise: types.Number) -> types.Signature:
    pointers = [types.CPointer(pointwise if name in _POINTWISE else dtype) for name in _ARRAYS]
    return types.void(*pointers, *[types.int64] * _SIZES, types.float64)


@functools.cache  # also keeps the C function alive: its code is freed with it
def _compiled(dtype: str, pointwise: str):
    # a C function is linked as it is compiled, and the block's parallel loops link to the
    # thread pool's scheduler: start the pool first (Numba does it for a jitted function only
    # when one runs; compiled before, the symbol is missing: abort, or a crash when called)
    numba.get_num_threads()
    signature = _c_signature(numba.from_dtype(np.dtype(dtype)), numba.from_dtype(np.dtype(pointwise)))
    return cfunc(signature, cache=True)(_block_rows_c)


@functools.cache  # per predict it costs a dictionary lookup
def block_rows_address(dtype, pointwise) -> int:
    """Address of the C function for float32/float64 arrays and pointwise weights of the same
    dtype or uint16 (bfloat16 bits, with float32)."""
    dtype, pointwise = np.dtype(dtype).name, np.dtype(pointwise).name
    if dtype not in ("float32", "float64") or pointwise not in (dtype, "uint16") \
            or (pointwise == "uint16" and dtype != "float32"):
        raise TypeError(f"no block for {dtype} activations with {pointwise} pointwise weights")
    return _compiled(dtype, pointwise).address


@intrinsic
def call_block_rows(typingctx, address, x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2,
                    gamma, keep, z, a, out, parts):
    given = dict(zip(_CALL, (address, x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2,
                             gamma, keep, z, a, out, parts), strict=True))
    for name, ndim in _ARRAYS.items():
        array, wanted = given[name], w1.dtype if name in _POINTWISE else x.dtype
        if not (isinstance(array, types.Array) and array.layout == "C" and array.dtype == wanted
                and array.ndim == ndim):
            raise TypingError(f"call_block_rows: {name} must be a C-contiguous {wanted} array of "
                              f"{ndim} dimensions, got {array}")
    if not (isinstance(address, types.Integer) and isinstance(parts, types.Integer)
            and isinstance(eps, types.Float)):
        raise TypingError("call_block_rows: address and parts are integers, eps a float")

    def codegen(context, builder, sig, args):
        values = dict(zip(_CALL, args, strict=True))

        def scalar(name, to):
            return context.cast(builder, values[name], given[name], to)

        structs = {name: context.make_array(given[name])(context, builder, values[name])
                   for name in _ARRAYS}
        B, T, C = cgutils.unpack_tuple(builder, structs["x"].shape, 3)
        K = cgutils.unpack_tuple(builder, structs["w_taps"].shape, 2)[0]
        H = cgutils.unpack_tuple(builder, structs["a"].shape, 2)[1]
        pointers = [structs[name].data for name in _ARRAYS]
        function_type = ir.FunctionType(
            ir.VoidType(), [p.type for p in pointers] + [ir.IntType(64)] * _SIZES + [ir.DoubleType()])
        function = builder.inttoptr(scalar("address", types.int64), function_type.as_pointer())
        builder.call(function, [*pointers, B, T, C, K, H, scalar("parts", types.int64),
                                scalar("eps", types.float64)])
        return context.get_dummy_value()

    return types.none(*given.values()), codegen
