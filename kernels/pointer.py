"""Kernels called through their addresses, and the intrinsics that call them from Numba code.

Numba compiles a called function before its caller, links the callee's code into the caller's
and optimises it again there. The batch-1 network calls its blocks and each block its few-row
matmul; called directly, each compile had to wait for its callees and then optimised their
code once more. Called through an address, a caller's compile needs only the callee's types:
on an empty cache the pieces can compile in two processes at once (numpyconvnext/precompile.py),
and each module holds its own code only. The address is an argument of the caller (a constant
address would not survive Numba's disk cache).

    native_address(kernel, argument_types)
                          the entry point of `kernel`'s compiled code for these types (Numba's
                          own calling convention), compiled or loaded from the disk cache if
                          needed; valid as long as the kernel's overload (the process)
    call_matmul_cols(address, x, w, out, n0, n1)
                          calls kernels.block._matmul_cols (kernels.block.matmul_cols_address)
    call_matmul_split(address, x, w, out, parts, matmul)
                          calls kernels.block.matmul_split (kernels.block.matmul_split_address;
                          the argument types of call_matmul_cols, so the same intrinsic)
    call_block_rows(address, x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2, gamma,
                    keep, z, a, out, parts, matmul)
                          calls kernels.block.block_forward_rows (kernels.block.block_rows_address)

    thread_setter_address()
                          the address of Numba's C function that sets the calling thread's
                          thread count (what `numba.set_num_threads` sets), 0 if this Numba
                          has none
    call_set_threads(address, n)
                          calls it from compiled code (the parallel loops launched after it
                          use n threads); no-op for address 0

    call_blas_gemm(address, wide, trans_a, trans_b, m, n, k, a, a0, lda, b, b0, ldb, c, c0, ldc)
                          calls a CBLAS `?gemm` (kernels.linear.blas_gemm_address) in row-major
                          order with alpha 1 and beta 0: c[c0:] = op(a[a0:]) @ op(b[b0:]), m x n
                          from depth k; trans 111 (as stored) or 112 (transposed), ld* the
                          leading dimensions, all in elements; `wide` a np.int64 for a BLAS with
                          64-bit integers (ILP64), a np.int32 for one with 32-bit integers

The kernel calls run their kernel unchanged (same bits) and return what it returns (`out`).
The address must be that of the kernel compiled for the same dtypes and ranks (the functions
in kernels.block choose it by dtype; the intrinsics check that every array is C-contiguous: an
array's layout does not change how it is passed, its dtype and rank do).
"""

from __future__ import annotations

import ctypes

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic


def native_address(kernel, argument_types: tuple[types.Type, ...]) -> int:
    """Address of `kernel` (a jitted function) compiled for `argument_types`."""
    # parallel loops in the code link to the thread pool's scheduler: start the pool first
    # (Numba does it for a jitted function only when one runs through its dispatcher)
    numba.get_num_threads()
    kernel.compile(argument_types)
    compiled = kernel.overloads[argument_types]
    return compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)


def thread_setter_address() -> int:
    """Address of the C function `void set(int n)` behind `numba.set_num_threads` (thread-local,
    like it; no range check), or 0 if this Numba has none. Starts the thread pool."""
    numba.get_num_threads()
    from numba.np.ufunc import parallel

    setter = getattr(parallel, "_set_num_threads", None)
    if not isinstance(setter, ctypes._CFuncPtr):
        return 0
    return ctypes.cast(setter, ctypes.c_void_p).value or 0


def _check(name: str, array, dtype, ndim: int) -> None:
    if not (isinstance(array, types.Array) and array.layout == "C" and array.dtype == dtype
            and array.ndim == ndim):
        raise TypingError(f"{name} must be a C-contiguous {dtype} array of {ndim} dimensions, "
                          f"got {array}")


def _check_scalars(caller: str, integers: dict, floats: dict) -> None:
    for name, value in integers.items():
        if not isinstance(value, types.Integer):
            raise TypingError(f"{caller}: {name} must be an integer, got {value}")
    for name, value in floats.items():
        if not isinstance(value, types.Float):
            raise TypingError(f"{caller}: {name} must be a float, got {value}")


def _emit_call(context, builder, signature, args):
    """Call the kernel at address args[0] (int64) with args[1:] as typed by `signature` (its
    return type the kernel's); propagates an exception it raised, as a direct call does."""
    argument_types = signature.args[1:]
    function_type = context.call_conv.get_function_type(signature.return_type, argument_types)
    function = builder.inttoptr(args[0], function_type.as_pointer())
    status, result = context.call_conv.call_function(builder, function, signature.return_type,
                                                     argument_types, args[1:])
    with cgutils.if_unlikely(builder, status.is_error):
        context.call_conv.return_status_propagate(builder, status)
    return result


@intrinsic
def call_matmul_cols(typingctx, address, x, w, out, n0, n1):
    for name, array, dtype in (("x", x, getattr(x, "dtype", None)),
                               ("w", w, getattr(w, "dtype", None)),
                               ("out", out, getattr(x, "dtype", None))):
        _check(f"call_matmul_cols: {name}", array, dtype, 2)
    _check_scalars("call_matmul_cols", dict(address=address, n0=n0, n1=n1), {})
    # the scalars as the kernel is compiled for them (the call casts them)
    return out(types.int64, x, w, out, types.int64, types.int64), _emit_call


call_matmul_split = call_matmul_cols

# call_block_rows's arrays (name: rank) and the arrays holding the pointwise weights
_BLOCK_ARRAYS = dict(x=3, w_taps=2, dw_bias=1, norm_w=1, norm_b=1, w1=2, b1=1, w2=2, b2=1,
                     gamma=1, keep=1, z=3, a=2, out=3)
_POINTWISE = {"w1", "w2"}


@intrinsic
def call_block_rows(typingctx, address, x, w_taps, dw_bias, norm_w, norm_b, eps, w1, b1, w2, b2,
                    gamma, keep, z, a, out, parts, matmul):
    given = dict(x=x, w_taps=w_taps, dw_bias=dw_bias, norm_w=norm_w, norm_b=norm_b, w1=w1, b1=b1,
                 w2=w2, b2=b2, gamma=gamma, keep=keep, z=z, a=a, out=out)
    for name, ndim in _BLOCK_ARRAYS.items():
        wanted = getattr(w1 if name in _POINTWISE else x, "dtype", None)
        _check(f"call_block_rows: {name}", given[name], wanted, ndim)
    _check_scalars("call_block_rows", dict(address=address, parts=parts, matmul=matmul),
                   dict(eps=eps))
    i64 = types.int64
    return out(i64, x, w_taps, dw_bias, norm_w, norm_b, types.float64, w1, b1, w2, b2, gamma,
               keep, z, a, out, i64, i64), _emit_call


@intrinsic
def call_blas_gemm(typingctx, address, wide, trans_a, trans_b, m, n, k, a, a0, lda, b, b0, ldb, c,
                   c0, ldc):
    dtype = getattr(a, "dtype", None)
    if dtype not in (types.float32, types.float64):
        raise TypingError(f"call_blas_gemm: a must be a float32 or float64 array, got {a}")
    for name, array in (("a", a), ("b", b), ("c", c)):
        _check(f"call_blas_gemm: {name}", array, dtype, 1)
    _check_scalars("call_blas_gemm", dict(address=address, wide=wide, trans_a=trans_a,
                                          trans_b=trans_b, m=m, n=n, k=k, a0=a0, lda=lda, b0=b0,
                                          ldb=ldb, c0=c0, ldc=ldc), {})
    if wide.bitwidth not in (32, 64):
        raise TypingError(f"call_blas_gemm: wide must be a 32- or 64-bit integer, got {wide}")

    def codegen(context, builder, signature, args):
        address, _, trans_a, trans_b, m, n, k, a, a0, lda, b, b0, ldb, c, c0, ldc = args
        real = context.get_value_type(dtype)
        pointer = real.as_pointer()
        enum, integer = ir.IntType(32), ir.IntType(signature.args[1].bitwidth)
        gemm_type = ir.FunctionType(ir.VoidType(), [enum, enum, enum, integer, integer, integer,
                                                    real, pointer, integer, pointer, integer,
                                                    real, pointer, integer])

        def at(array, array_type, offset):
            data = context.make_array(array_type)(context, builder, array).data
            return builder.gep(data, [offset])

        def blas_int(value):
            return builder.trunc(value, integer) if integer.width < 64 else value

        gemm = builder.inttoptr(address, gemm_type.as_pointer())
        row_major = enum(101)
        builder.call(gemm, [row_major, builder.trunc(trans_a, enum), builder.trunc(trans_b, enum),
                            blas_int(m), blas_int(n), blas_int(k), real(1.0),
                            at(a, signature.args[7], a0), blas_int(lda),
                            at(b, signature.args[10], b0), blas_int(ldb), real(0.0),
                            at(c, signature.args[13], c0), blas_int(ldc)])
        return context.get_dummy_value()

    i64 = types.int64
    return types.none(i64, wide, i64, i64, i64, i64, i64, a, i64, i64, b, i64, i64, c, i64,
                      i64), codegen


@intrinsic
def call_set_threads(typingctx, address, n):
    _check_scalars("call_set_threads", dict(address=address, n=n), {})

    def codegen(context, builder, signature, args):
        address, n = args
        with builder.if_then(builder.icmp_unsigned("!=", address, address.type(0))):
            setter_type = ir.FunctionType(ir.VoidType(), [ir.IntType(32)])
            setter = builder.inttoptr(address, setter_type.as_pointer())
            builder.call(setter, [builder.trunc(n, ir.IntType(32))])
        return context.get_dummy_value()

    return types.none(types.int64, types.int64), codegen
