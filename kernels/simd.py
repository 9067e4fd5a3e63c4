"""Explicit SIMD vectors inside Numba kernels: a vector type and the few operations a dot product
needs, lowered straight to LLVM vector IR.

Why: LLVM's auto-vectoriser decides the width itself, and on AVX-512 Intel cores its tuning
prefers 256-bit vectors (`prefer-256-bit`), so the reductions of `_matmul_cols` used ymm
registers only (bench/NOTES.md, "LLVM vector width"). A vector written out in the IR keeps the
width we give it. Here that is the widest the code is compiled for: 64 bytes (16 float32, 8
float64) when the target has AVX-512 F, else 32 bytes (8 float32, 4 float64: AVX2; on older x86
LLVM splits them into SSE halves, still correct).

    vzero(row)          the zero vector of row's dtype
    vload(row, i)       row[i : i + lanes(row)] as a vector (row: 1-D contiguous, no bound check;
                        a uint16 row holds bfloat16 bits and loads as float32, exactly)
    vsplat(row, i)      row[i] in every lane (a broadcast; float32 or float64 rows)
    vgather(row, i, stride)
                        row[i + l * stride] in lane l (a gather: one column of a row-major
                        matrix; float32 or float64 rows, no bound check)
    vload_head(row, i, count)
                        row[i : i + count] in the first count lanes, zeros after (a masked
                        load: reads nothing past row[i + count - 1])
    vstore(row, i, v)   row[i : i + lanes(row)] = v (float32 or float64 rows)
    vstore_head(row, i, count, v)
                        row[i : i + count] = the first count lanes of v (a masked store: writes
                        nothing past row[i + count - 1])
    vstore_transposed(out, o, ostride, x, i, xstride)
                        out[o + r * ostride + c] = x[i + c * xstride + r] for r, c < lanes: a
                        square block of x's rows written as out's columns (loads, then log2(lanes)
                        rounds of two-vector shuffles, then stores; float32 or float64)
    vfma(acc, a, b)     acc + a * b lane by lane, fused (one rounding)
    vsum(v)             the sum of the lanes: pairwise, halves then quarters ... (a fixed order,
                        so equal vectors give equal bits)
    vstore_sums(out, m, n, sums)
                        out[m + r, n + c] = vsum(sums[4r + c]) for a tuple of 16 vectors (a 4 x 4
                        tile), the same bits as 16 vsums, reduced together (below)
    vprefetch(row, i)   a hint to bring the cache line holding row[i] into the caches (x86
                        `prefetcht0`; never faults, changes no value: it only moves the wait)
    vprefetch_write(row, i)
                        the same for a line about to be written (x86 `prefetchw` where the CPU
                        has it: the line arrives owned, so the store does not wait for it)
    lanes(array)        how many elements of the array a vector holds (a compile-time constant)

Eight float64 lanes whatever the ISA (an `OCTET`: the eight running sums of a row reduction
in float64, lane j summing the elements j mod 8, the order of eight scalar sums):

    voctet(row, i)      row[i : i + 8] as an OCTET (a float32 row's elements widened, exactly)
    voctet_splat(x)     the float x in every lane of an OCTET
    veight(row, i)      row[i : i + 8] in eight lanes of row's own dtype (for arithmetic in
                        float32 before widening, as scalar float32 code rounds)
    veight_splat(row, x)
                        x, cast to row's dtype, in eight lanes of that dtype
    vwiden(v)           eight lanes as an OCTET (float32 widened exactly; float64 as it is)
    vadd(a, b), vsub(a, b), vmul(a, b)
                        lane by lane, each rounded once as the scalar operation is (no fusing)
    vlane(v, j)         lane j of v as a scalar

And one scalar operation the auto-vectoriser widens like any other (Numba never fuses a * b + c
itself):

    fmadd(a, b, c)      a * b + c for floats of one type, fused (one rounding: `llvm.fma`)

And one for a loop's constants, taken before the loop:

    opaque(x)           x itself, as a value LLVM no longer knows (an empty inline asm on its
                        bits; a tuple of floats, named or not, element by element): a kernel
                        takes its constants through it once, before its loop, so that a loop
                        short of registers keeps them on the stack and reads them as operands,
                        instead of rebuilding each from the constant pool at every iteration
                        (two instructions each under Numba's large code model; bench/NOTES.md
                        round 26)

The width is read from the features Numba compiles for (`NUMBA_CPU_FEATURES` if set, else the
host's) when a kernel is compiled, not at import; Numba's cache is keyed by them too.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


@functools.cache
def vector_bytes() -> int:
    """64 if the compile target has AVX-512 F, else 32. Numba's JIT compiles for the features
    of `NUMBA_CPU_FEATURES` if set, else for the host's, whatever CPU `NUMBA_CPU_NAME` names
    (none for `generic`: numba.core.config); so does this."""
    features = numba.config.CPU_FEATURES
    if features is None:
        from llvmlite import binding

        features = binding.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in features.split(",") else 32


# LLVM feature names of the vector extensions past AVX2 (AVX-512 and its EVEX encodings, AVX10,
# AMX)
_PAST_AVX2 = ("avx512", "evex512", "avx10", "amx")


def features_without_avx512() -> str:
    """This host's LLVM feature string with AVX-512, AVX10 and AMX turned off. With
    `NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=<this>` Numba compiles the kernels as for an AVX2
    CPU (the name alone keeps the host's features), e.g. to test or time the AVX2 code on an
    AVX-512 machine (bench/README.md shows the command)."""
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return ",".join(("-" if name.startswith(_PAST_AVX2) else "+" if on else "-") + name
                    for name, on in sorted(features.items()))


@functools.cache
def compile_cpu() -> str:
    """LLVM's name of the CPU Numba compiles for (`NUMBA_CPU_NAME` if set, else the host's:
    "znver5", "sapphirerapids", "haswell", ...)."""
    name = numba.config.CPU_NAME
    if name in (None, "host"):
        from llvmlite import binding

        name = binding.get_host_cpu_name()
    return str(name)


class Vector(types.Type):
    """An LLVM vector <lanes x dtype> held in registers (a value, like a scalar)."""

    def __init__(self, dtype: types.Float, lanes: int):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vector({dtype}, {lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = ir.FloatType() if fe_type.dtype == types.float32 else ir.DoubleType()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.lanes))


_ELEMENTS = (types.float32, types.float64, types.uint16)  # uint16: bfloat16 bits


def _vector_for(element: types.Type) -> Vector:
    """The vector a load of `element`s gives: that dtype, or float32 for bfloat16 bits."""
    dtype = types.float32 if element == types.uint16 else element
    return Vector(dtype, vector_bytes() * 8 // dtype.bitwidth)


def _vector_of(array: types.Array) -> Vector:
    """The vector a load from the 1-D contiguous `array` gives."""
    if not isinstance(array, types.Array) or array.ndim != 1 or array.layout != "C" \
            or array.dtype not in _ELEMENTS:
        raise numba.core.errors.TypingError(
            "SIMD operations take a 1-D contiguous float32, float64 or uint16 (bfloat16 bits) "
            f"array, got {array}")
    return _vector_for(array.dtype)


def _widen_bf16(builder, bits, lanes_):
    """<lanes x i16> bfloat16 bits -> <lanes x float>: the bits are the float32's upper half."""
    wide = builder.zext(bits, ir.VectorType(ir.IntType(32), lanes_))
    shift = ir.Constant(ir.VectorType(ir.IntType(32), lanes_), [16] * lanes_)
    return builder.bitcast(builder.shl(wide, shift), ir.VectorType(ir.FloatType(), lanes_))


def _element_pointer(context, builder, signature, args, element_vector):
    array = context.make_array(signature.args[0])(context, builder, args[0])
    index = context.cast(builder, args[1], signature.args[1], types.intp)
    return builder.bitcast(builder.gep(array.data, [index]), element_vector.as_pointer())


def _stored_vector(context, row: types.Array, vector: Vector) -> ir.VectorType:
    """The LLVM vector as it lies in memory: the vector itself, or i16 lanes for bfloat16 bits."""
    if row.dtype == types.uint16:
        return ir.VectorType(ir.IntType(16), vector.lanes)
    return context.get_value_type(vector)


def _broadcast(builder, value, vector_type: ir.VectorType):
    """`value` in every lane of a vector of `vector_type`."""
    first = builder.insert_element(ir.Constant(vector_type, None), value,
                                   ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, first, ir.Constant(
        ir.VectorType(ir.IntType(32), vector_type.count), None))


@intrinsic
def vzero(typingctx, row):
    vector = _vector_of(row)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vector), None)

    return vector(row), codegen


@intrinsic
def lanes(typingctx, row):
    if not (isinstance(row, types.Array) and row.dtype in _ELEMENTS):
        return None
    count = _vector_for(row.dtype).lanes

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, count)

    return types.intp(row), codegen


@intrinsic
def vload(typingctx, row, i):
    vector = _vector_of(row)
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        stored = _stored_vector(context, row, vector)
        pointer = _element_pointer(context, builder, signature, args, stored)
        value = builder.load(pointer, align=row.dtype.bitwidth // 8)
        return _widen_bf16(builder, value, vector.lanes) if row.dtype == types.uint16 else value

    return vector(row, i), codegen


@intrinsic
def vsplat(typingctx, row, i):
    vector = _vector_of(row)
    if row.dtype == types.uint16 or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature, args,
                                   context.get_value_type(row.dtype))
        value = builder.load(pointer, align=row.dtype.bitwidth // 8)
        return _broadcast(builder, value, context.get_value_type(vector))

    return vector(row, i), codegen


@intrinsic
def vgather(typingctx, row, i, stride):
    vector = _vector_of(row)
    if row.dtype == types.uint16 or not (isinstance(i, types.Integer)
                                         and isinstance(stride, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        scalar = context.get_value_type(row.dtype)
        pointer = _element_pointer(context, builder, signature, args[:2], scalar)
        offsets_type = ir.VectorType(ir.IntType(64), vector.lanes)
        step = context.cast(builder, args[2], signature.args[2], types.int64)
        step = builder.mul(step, ir.Constant(ir.IntType(64), row.dtype.bitwidth // 8))
        base = builder.ptrtoint(pointer, ir.IntType(64))
        bases, steps = (_broadcast(builder, value, offsets_type) for value in (base, step))
        addresses = builder.add(bases, builder.mul(
            steps, ir.Constant(offsets_type, list(range(vector.lanes)))))
        pointers = builder.inttoptr(addresses, ir.VectorType(scalar.as_pointer(), vector.lanes))
        stored = context.get_value_type(vector)
        mask = ir.Constant(ir.VectorType(ir.IntType(1), vector.lanes), [1] * vector.lanes)
        gather = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(stored, [pointers.type, ir.IntType(32), mask.type, stored]),
            f"llvm.masked.gather.v{vector.lanes}f{row.dtype.bitwidth}.v{vector.lanes}p0")
        return builder.call(gather, [pointers, ir.Constant(ir.IntType(32), row.dtype.bitwidth // 8),
                                     mask, ir.Constant(stored, None)])

    return vector(row, i, stride), codegen


@intrinsic
def vload_head(typingctx, row, i, count):
    vector = _vector_of(row)
    if not (isinstance(i, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        stored = _stored_vector(context, row, vector)
        pointer = _element_pointer(context, builder, signature, args, stored)
        mask = _lane_mask(builder, vector,
                          context.cast(builder, args[2], signature.args[2], types.intp))
        element = "i16" if row.dtype == types.uint16 else f"f{vector.dtype.bitwidth}"
        masked_load = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(stored, [stored.as_pointer(), ir.IntType(32), mask.type, stored]),
            f"llvm.masked.load.v{vector.lanes}{element}.p0")
        value = builder.call(masked_load, [pointer, ir.Constant(ir.IntType(32), row.dtype.bitwidth // 8),
                                           mask, ir.Constant(stored, None)])
        return _widen_bf16(builder, value, vector.lanes) if row.dtype == types.uint16 else value

    return vector(row, i, count), codegen


def _store_target(row, v) -> bool:
    return (isinstance(v, Vector) and isinstance(row, types.Array) and row.dtype != types.uint16
            and _vector_of(row) == v)


def _lane_mask(builder, vector: Vector, count):
    """<lanes x i1>: lane j is on if j < count."""
    index_vector = ir.VectorType(ir.IntType(64), vector.lanes)
    limit = _broadcast(builder, count, index_vector)
    return builder.icmp_signed("<", ir.Constant(index_vector, list(range(vector.lanes))), limit)


@intrinsic
def vstore(typingctx, row, i, v):
    if not (_store_target(row, v) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature, args[:2],
                                   context.get_value_type(v))
        builder.store(args[2], pointer, align=row.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(row, i, v), codegen


@intrinsic
def vstore_head(typingctx, row, i, count, v):
    if not (_store_target(row, v) and isinstance(i, types.Integer)
            and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        stored = context.get_value_type(v)
        pointer = _element_pointer(context, builder, signature, args[:2], stored)
        mask = _lane_mask(builder, v, context.cast(builder, args[2], signature.args[2], types.intp))
        masked_store = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [stored, stored.as_pointer(), ir.IntType(32), mask.type]),
            f"llvm.masked.store.v{v.lanes}f{v.dtype.bitwidth}.p0")
        builder.call(masked_store, [args[3], pointer,
                                    ir.Constant(ir.IntType(32), row.dtype.bitwidth // 8), mask])
        return context.get_dummy_value()

    return types.none(row, i, count, v), codegen


@intrinsic
def vstore_transposed(typingctx, out, o, ostride, x, i, xstride):
    if not (_store_target(out, _vector_of(x)) and out.dtype == x.dtype
            and all(isinstance(value, types.Integer) for value in (o, ostride, i, xstride))):
        return None
    vector = _vector_of(x)
    count = vector.lanes

    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(vector)
        align = x.dtype.bitwidth // 8
        o_, ostride_, i_, xstride_ = (context.cast(builder, value, kind, types.intp)
                                      for value, kind in zip((args[1], args[2], args[4], args[5]),
                                                             (signature.args[1], signature.args[2],
                                                              signature.args[4], signature.args[5]),
                                                             strict=True))
        source = context.make_array(signature.args[3])(context, builder, args[3])
        target = context.make_array(signature.args[0])(context, builder, args[0])

        def address(array, start, stride, r):
            index = builder.add(start, builder.mul(stride, ir.Constant(stride.type, r)))
            return builder.bitcast(builder.gep(array.data, [index]), vector_type.as_pointer())

        rows = [builder.load(address(source, i_, xstride_, c), align=align) for c in range(count)]
        half = count // 2
        while half:  # swap the off-diagonal blocks of size `half` in every 2*half block
            pick = ir.VectorType(ir.IntType(32), count)
            low = [p if p & half == 0 else count + p - half for p in range(count)]
            high = [p + half if p & half == 0 else count + p for p in range(count)]
            for r in range(count):
                if r & half == 0:
                    first, second = rows[r], rows[r + half]
                    rows[r] = builder.shuffle_vector(first, second, ir.Constant(pick, low))
                    rows[r + half] = builder.shuffle_vector(first, second, ir.Constant(pick, high))
            half //= 2
        for r in range(count):
            builder.store(rows[r], address(target, o_, ostride_, r), align=align)
        return context.get_dummy_value()

    return types.none(out, o, ostride, x, i, xstride), codegen


@intrinsic
def fmadd(typingctx, a, b, c):
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        scalar = context.get_value_type(a)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(scalar, [scalar] * 3), f"llvm.fma.f{a.bitwidth}")
        return builder.call(fma, list(args))

    return a(a, b, c), codegen


@intrinsic
def opaque(typingctx, x):
    element = x.dtype if isinstance(x, (types.UniTuple, types.NamedUniTuple)) else x  # each one
    if not isinstance(element, types.Float):
        return None

    def codegen(context, builder, signature, args):
        bits = ir.IntType(element.bitwidth)
        identity = ir.InlineAsm(ir.FunctionType(bits, [bits]), "", "=r,0")

        def hidden(value):
            value = builder.call(identity, [builder.bitcast(value, bits)])
            return builder.bitcast(value, context.get_value_type(element))

        if element is x:
            return hidden(args[0])
        out = args[0]
        for i in range(x.count):
            out = builder.insert_value(out, hidden(builder.extract_value(args[0], i)), i)
        return out

    return x(x), codegen


@intrinsic
def vfma(typingctx, acc, a, b):
    if not (isinstance(acc, Vector) and acc == a == b):
        return None

    def codegen(context, builder, signature, args):
        vector = context.get_value_type(acc)
        suffix = f"v{acc.lanes}f{acc.dtype.bitwidth}"
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.{suffix}")
        return builder.call(fma, [args[1], args[2], args[0]])

    return acc(acc, a, b), codegen


@intrinsic
def vsum(typingctx, v):
    if not isinstance(v, Vector):
        return None

    def codegen(context, builder, signature, args):
        x = args[0]
        n = v.lanes
        while n > 1:
            n //= 2
            low = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n)))
            high = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n, 2 * n)))
            x = builder.fadd(builder.shuffle_vector(x, x, low), builder.shuffle_vector(x, x, high))
        return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))

    return v.dtype(v), codegen


def _halve_together(builder, first, second, width):
    """One level of `vsum` for two vectors at once. Each holds segments of `width` lanes, one
    per sum in progress; returns one vector holding the segments of `first` then those of
    `second`, each halved: lane i of a new segment = lane i + lane i + width/2 of the old one."""
    lanes_ = first.type.count
    half = width // 2
    low = [s + i for s in range(0, 2 * lanes_, width) for i in range(half)]
    pick = ir.VectorType(ir.IntType(32), lanes_)
    low_lanes = builder.shuffle_vector(first, second, ir.Constant(pick, low))
    high_lanes = builder.shuffle_vector(first, second, ir.Constant(pick, [i + half for i in low]))
    return builder.fadd(low_lanes, high_lanes)


@intrinsic
def vstore_sums(typingctx, out, m, n, sums):
    """out[m + r, n + c] = vsum(sums[4r + c]) for c < 4 and r < 4 (16 sums) or r < 2 (8 sums);
    out 2-D C-contiguous.

    Sixteen `vsum`s spend most of their instructions on half-empty vectors; here each level of
    the tree works on two sums' vectors at once (`_halve_together`), so a level costs 2
    shuffles and 1 add per pair of vectors, and the sums come out in order, four to a row of
    out. Every sum is the same additions in the same order as its `vsum`: the same bits."""
    if not (isinstance(out, types.Array) and out.ndim == 2 and out.layout == "C"
            and isinstance(sums, types.UniTuple) and isinstance(sums.dtype, Vector)
            and len(sums) in (8, 16)
            and sums.dtype.dtype == out.dtype
            and isinstance(m, types.Integer) and isinstance(n, types.Integer)):
        return None
    lanes_ = sums.dtype.lanes
    count = len(sums)

    def codegen(context, builder, signature, args):
        vectors = [builder.extract_value(args[3], i) for i in range(count)]
        width = lanes_
        while width > 1:  # each vector: lanes_ / width sums in progress, in order
            if len(vectors) == 1:  # more lanes than sums: the second half repeats the first
                vectors = vectors * 2
            vectors = [_halve_together(builder, vectors[i], vectors[i + 1], width)
                       for i in range(0, len(vectors), 2)]
            width //= 2
        # now vector j holds sums j*lanes_ ... j*lanes_ + lanes_ - 1: rows of four
        array = context.make_array(out)(context, builder, args[0])
        row_type = ir.VectorType(context.get_value_type(out.dtype), 4)
        m_, n_ = (context.cast(builder, v, t, types.intp)
                  for v, t in zip(args[1:3], signature.args[1:3], strict=True))
        for r in range(count // 4):
            first = 4 * r
            vector = vectors[first // lanes_]
            lane = first % lanes_
            row = vector if lanes_ == 4 else builder.shuffle_vector(
                vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), 4),
                                            list(range(lane, lane + 4))))
            index = builder.add(m_, ir.Constant(m_.type, r))
            pointer = cgutils.get_item_pointer(context, builder, out, array, [index, n_])
            builder.store(row, builder.bitcast(pointer, row_type.as_pointer()),
                          align=out.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(out, m, n, sums), codegen


def _prefetch(write: bool):
    """The intrinsic (row, i) -> None that prefetches the cache line of row[i], for reading or
    (write) with the intent to write it."""

    def typer(typingctx, row, i):
        if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
                and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            byte_pointer = ir.IntType(8).as_pointer()
            pointer = _element_pointer(context, builder, signature, args, ir.IntType(8))
            prefetch = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [byte_pointer] + [ir.IntType(32)] * 3),
                "llvm.prefetch.p0")
            # read (0) or write (1), keep in all cache levels (3), data cache (1)
            flags = (int(write), 3, 1)
            builder.call(prefetch, [pointer] + [ir.Constant(ir.IntType(32), v) for v in flags])
            return context.get_dummy_value()

        return types.none(row, i), codegen

    typer.__name__ = typer.__qualname__ = "vprefetch_write" if write else "vprefetch"
    return intrinsic(typer)


vprefetch = _prefetch(write=False)
vprefetch_write = _prefetch(write=True)


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 array -> uint16 bfloat16 bits, rounded to nearest, ties to even (the upper half
    of each float32 after adding 0x7FFF + its lowest kept bit). Raises ValueError for NaN,
    infinity or a value that would round to infinity."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("bfloat16_bits: the array has NaN or infinite values")
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    if ((rounded & 0x7F80) == 0x7F80).any():  # |x| within half a step of float32's maximum
        raise ValueError("bfloat16_bits: a value rounds beyond bfloat16's range")
    return rounded


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> the float32 values they stand for (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


OCTET = Vector(types.float64, 8)


def _is_row(row) -> bool:
    return (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
            and row.dtype in (types.float32, types.float64))


@intrinsic
def voctet(typingctx, row, i):
    if not (_is_row(row) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        stored = ir.VectorType(context.get_value_type(row.dtype), OCTET.lanes)
        value = builder.load(_element_pointer(context, builder, signature, args, stored),
                             align=row.dtype.bitwidth // 8)
        if row.dtype == types.float32:
            value = builder.fpext(value, context.get_value_type(OCTET))
        return value

    return OCTET(row, i), codegen


@intrinsic
def voctet_splat(typingctx, x):
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], x, types.float64)
        return _broadcast(builder, value, context.get_value_type(OCTET))

    return OCTET(x), codegen


def _lanewise(name: str, operation: str):
    def typer(typingctx, a, b):
        if not (isinstance(a, Vector) and a == b):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, operation)(args[0], args[1])

        return a(a, b), codegen

    typer.__name__ = typer.__qualname__ = name  # each intrinsic under its own name
    return intrinsic(typer)


vadd = _lanewise("vadd", "fadd")
vsub = _lanewise("vsub", "fsub")
vmul = _lanewise("vmul", "fmul")


@intrinsic
def vlane(typingctx, v, j):
    if not (isinstance(v, Vector) and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], j, types.int32)
        return builder.extract_element(args[0], index)

    return v.dtype(v, j), codegen


def _eight(dtype: types.Float) -> Vector:
    return Vector(dtype, OCTET.lanes)


@intrinsic
def veight(typingctx, row, i):
    if not (_is_row(row) and isinstance(i, types.Integer)):
        return None
    vector = _eight(row.dtype)

    def codegen(context, builder, signature, args):
        return builder.load(_element_pointer(context, builder, signature, args,
                                             context.get_value_type(vector)),
                            align=row.dtype.bitwidth // 8)

    return vector(row, i), codegen


@intrinsic
def veight_splat(typingctx, row, x):
    if not (_is_row(row) and isinstance(x, types.Float)):
        return None
    vector = _eight(row.dtype)

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[1], x, row.dtype)
        return _broadcast(builder, value, context.get_value_type(vector))

    return vector(row, x), codegen


@intrinsic
def vwiden(typingctx, v):
    if not (isinstance(v, Vector) and v.lanes == OCTET.lanes):
        return None

    def codegen(context, builder, signature, args):
        if v.dtype == types.float64:
            return args[0]
        return builder.fpext(args[0], context.get_value_type(OCTET))

    return OCTET(v), codegen
