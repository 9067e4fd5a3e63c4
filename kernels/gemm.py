"""A general matrix product in explicit SIMD: a register tile of 8 rows (AVX-512) or 6 (AVX2)
over packed column panels.

    out[i, j] = sum_k a[i, k] * b[k, j]          a [M, K], b [K, N] -> out [M, N]

The reference is `np.matmul`. BLAS does this too; this version exists because the BLAS a user
has is not always built for their CPU's widest vectors (an OpenBLAS told `OPENBLAS_CORETYPE=
Haswell` runs 8-lane AVX2 code on an AVX-512 core), and this one is compiled by Numba for the
CPU it runs on (16 float32 lanes with AVX-512 F, kernels/simd.py). `kernels.linear.matmul`
chooses between the two (`kernels.linear.uses_own_gemm`).

How it is laid out (the scheme of GotoBLAS / BLIS, reduced to what our products need):

- b is cut into passes of `DEPTH` (512) rows k and, within a pass, into panels of `2 * lanes`
  columns (32 float32 with AVX-512), each copied ("packed") into one contiguous run, row k
  after row k, so that the tile reads a panel's row as two vector loads and the panel stays in
  L2 (`_pack_b`: vector copies for a C-order b, L x L blocks transposed in registers for
  `W.T`; zeros past the last column). Read in place instead, a b's rows a power of two apart
  would share a few L1 sets and evict each other; the copy costs ~0.2 ns per element. A
  group's panels are packed just before the first block of rows uses them, so that block
  reads them from L2 rather than from wherever the whole pass's pack left them; when the rows
  make one block, every group is packed into the same 512 KB, whose lines stay in L2 (tiny's
  training step 1.008x, bench/NOTES.md round 22). A frozen model's pointwise weights come
  packed already (`ConvNeXt1D.frozen` packs them in such panels for its batch-1 products,
  `kernels.block.pack_columns`): its batches read the whole panels from there (`panels`)
  instead of packing a weight from memory at every call (tiny's batch 256 1.02x, round 24). Two
  panel loads feed 16 multiply-adds, which L2 keeps up with; a pass costs a trip of out
  through memory and back, so passes are deep (512 rows, not the 256 that fit in L1).
- a is read where it lies, C or Fortran order, one a[i, k] at a time broadcast to a vector.
  The tiles go row tile by row tile under a group of `GROUP_PANELS` (8) panels: a tile's 8
  rows of a (16 KB) stay in L1 while the group's panels (512 KB, in L2) pass under them, so
  a is read from L2 once per group, not once per panel; rows come in blocks of `BLOCK_ROWS`
  (256), whose part of a is still in cache for the next group. (Every panel under a block of
  96 rows, the order before round 18, read a's 8 rows from L2 for every panel: 1-4 % slower
  in the model.) The last rows short of a whole tile are copied into a whole tile with
  zeros after them. With AVX2 a Fortran-order a (a weight gradient's dy^T) has its tiles'
  rows copied out once per block and pass, [k][6] per tile: read in place, a tile's rows are
  a column whose k's a power of two apart share one L1 set, so every panel read them from L2
  (and through the TLB) again: dW's products 0.72-0.92x OpenBLAS's speed, copied 0.94-1.03x.
- The tile keeps 8 rows x 2 vectors of out in 16 registers and, for each k of the pass, loads
  the panel's row once and does 16 fused multiply-adds (`_tile`). Before its loop it asks for
  the 16 lines of out of the next tile (`vprefetch_write`): they arrive, owned, while this
  tile computes, instead of the stores (or the next pass's loads) waiting on memory. Deeper
  passes and this prefetch took our products from 0.95x OpenBLAS's speed to 1.00-1.03x on a
  Zen 4 core, and the model's training and batch 256 to 1.02-1.07x (bench/NOTES.md, round
  17). AVX2 has 16 vector registers, where 8 rows' 16 sums spill (0.57-0.62x OpenBLAS's
  Haswell kernels on the same core) and two tiles of 4 rows (8 sums) wait on the
  multiply-adds' latency (0.84-0.95x); there a tile is 6 rows (`_tile` with rows 6 and 7
  dropped at compile time: 12 sums, the shape of BLIS's Haswell kernel: 0.90-1.06x). The
  last columns, when fewer than 2L, take one or two vectors of a tile's rows with masked
  loads and stores (`_half_tile`); the last rows, when fewer than a tile, a scratch tile
  copied in and out.
- Passes add into out: the first starts from zero, each later one from the sums so far.

Every out[i, j] is the same fused multiply-adds in the same order (k ascending, passes of
`DEPTH`) whatever the range of rows and columns computed and wherever the tile falls, so a
product split over threads by rows or by columns gives the same bits as one call.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.simd import (
    lanes,
    vector_bytes,
    vfma,
    vgather,
    vload,
    vload_head,
    vprefetch_write,
    vsplat,
    vstore,
    vstore_head,
    vstore_transposed,
    vzero,
)

# rows of the register tile for the compile target: 8 with AVX-512's 32 vector registers, 6
# with AVX2's 16 (`_tile`, `_half_tile`); read once, so that gemm_block steps by the rows its
# tile computes
TILE_ROWS = 8 if vector_bytes() == 64 else 6
DEPTH = 512  # rows of b per pass: a panel of 512 x 32 float32 is 64 KB, it stays in L2
GROUP_PANELS = 8  # panels per group: 8 x 64 KB stay in L2 while a's rows pass under them
BLOCK_ROWS = 256  # rows of a per block: 256 x 512 float32 (512 KB), in cache for the next group


@njit(nogil=True, cache=True)
def _tile(a, a0, sa, sk, panel, p0, depth, out, o0, ldo, first, ahead):
    """out[o0 + r*ldo + j] (+)= sum_{k < depth} a[a0 + r*sa + k*sk] * panel[p0 + k*2L + j]
    for r < TILE_ROWS and j < 2L (L = lanes; a packed panel's rows are 2L long); `first` starts
    from zero instead of out. All 1-D contiguous; out's rows are ldo apart. `ahead`: where in
    out the next tile starts (its lines are prefetched; any value is safe).

    Written for 8 rows (AVX-512: 16 sums of 32 registers). With 6-row tiles (AVX2: 16
    registers, where 16 sums would spill and 4 rows' 8 wait on the multiply-adds' latency)
    rows 6 and 7 repeat row 5 and are not stored, so LLVM drops them: 12 sums, the panel's
    row in 2 registers and a's element in 1, the shape of BLIS's Haswell kernel."""
    L = lanes(panel)
    eight = TILE_ROWS == 8
    r6, r7 = (6, 7) if eight else (5, 5)
    for r in range(TILE_ROWS):
        vprefetch_write(out, ahead + r * ldo)
        vprefetch_write(out, ahead + r * ldo + L)
    if first:
        c00 = vzero(panel)
        c01, c10, c11, c20, c21, c30, c31 = c00, c00, c00, c00, c00, c00, c00
        c40, c41, c50, c51, c60, c61, c70, c71 = c00, c00, c00, c00, c00, c00, c00, c00
    else:
        c00, c01 = vload(out, o0), vload(out, o0 + L)
        c10, c11 = vload(out, o0 + ldo), vload(out, o0 + ldo + L)
        c20, c21 = vload(out, o0 + 2 * ldo), vload(out, o0 + 2 * ldo + L)
        c30, c31 = vload(out, o0 + 3 * ldo), vload(out, o0 + 3 * ldo + L)
        c40, c41 = vload(out, o0 + 4 * ldo), vload(out, o0 + 4 * ldo + L)
        c50, c51 = vload(out, o0 + 5 * ldo), vload(out, o0 + 5 * ldo + L)
        c60, c61 = vload(out, o0 + r6 * ldo), vload(out, o0 + r6 * ldo + L)
        c70, c71 = vload(out, o0 + r7 * ldo), vload(out, o0 + r7 * ldo + L)
    for k in range(depth):
        i = a0 + k * sk
        p = p0 + k * 2 * L
        b0 = vload(panel, p)
        b1 = vload(panel, p + L)
        x = vsplat(a, i)
        c00, c01 = vfma(c00, x, b0), vfma(c01, x, b1)
        x = vsplat(a, i + sa)
        c10, c11 = vfma(c10, x, b0), vfma(c11, x, b1)
        x = vsplat(a, i + 2 * sa)
        c20, c21 = vfma(c20, x, b0), vfma(c21, x, b1)
        x = vsplat(a, i + 3 * sa)
        c30, c31 = vfma(c30, x, b0), vfma(c31, x, b1)
        x = vsplat(a, i + 4 * sa)
        c40, c41 = vfma(c40, x, b0), vfma(c41, x, b1)
        x = vsplat(a, i + 5 * sa)
        c50, c51 = vfma(c50, x, b0), vfma(c51, x, b1)
        x = vsplat(a, i + r6 * sa)
        c60, c61 = vfma(c60, x, b0), vfma(c61, x, b1)
        x = vsplat(a, i + r7 * sa)
        c70, c71 = vfma(c70, x, b0), vfma(c71, x, b1)
    vstore(out, o0, c00)
    vstore(out, o0 + L, c01)
    vstore(out, o0 + ldo, c10)
    vstore(out, o0 + ldo + L, c11)
    vstore(out, o0 + 2 * ldo, c20)
    vstore(out, o0 + 2 * ldo + L, c21)
    vstore(out, o0 + 3 * ldo, c30)
    vstore(out, o0 + 3 * ldo + L, c31)
    vstore(out, o0 + 4 * ldo, c40)
    vstore(out, o0 + 4 * ldo + L, c41)
    vstore(out, o0 + 5 * ldo, c50)
    vstore(out, o0 + 5 * ldo + L, c51)
    if eight:
        vstore(out, o0 + 6 * ldo, c60)
        vstore(out, o0 + 6 * ldo + L, c61)
        vstore(out, o0 + 7 * ldo, c70)
        vstore(out, o0 + 7 * ldo + L, c71)


# whether a Fortran-order a's tile rows are copied out (6-row tiles only: gemm_block), a
# constant so that Numba drops that code for AVX-512 before compiling it
_COPY_A = TILE_ROWS == 6


@njit(nogil=True, cache=True)
def _half_tile(a, a0, sa, sk, panel, p0, depth, out, o0, ldo, first, columns):
    """`_tile` for one vector of columns, of which the first `columns` (<= L) are read and
    written (masked loads and stores): the last columns of a product. The same fused
    multiply-adds per element as `_tile`, so the same bits; with 6-row tiles rows 6 and 7
    dropped as there."""
    width = 2 * lanes(panel)
    eight = TILE_ROWS == 8
    r6, r7 = (6, 7) if eight else (5, 5)
    if first:
        c0 = vzero(panel)
        c1, c2, c3, c4, c5, c6, c7 = c0, c0, c0, c0, c0, c0, c0
    else:
        c0 = vload_head(out, o0, columns)
        c1 = vload_head(out, o0 + ldo, columns)
        c2 = vload_head(out, o0 + 2 * ldo, columns)
        c3 = vload_head(out, o0 + 3 * ldo, columns)
        c4 = vload_head(out, o0 + 4 * ldo, columns)
        c5 = vload_head(out, o0 + 5 * ldo, columns)
        c6 = vload_head(out, o0 + r6 * ldo, columns)
        c7 = vload_head(out, o0 + r7 * ldo, columns)
    for k in range(depth):
        i = a0 + k * sk
        b0 = vload(panel, p0 + k * width)
        c0 = vfma(c0, vsplat(a, i), b0)
        c1 = vfma(c1, vsplat(a, i + sa), b0)
        c2 = vfma(c2, vsplat(a, i + 2 * sa), b0)
        c3 = vfma(c3, vsplat(a, i + 3 * sa), b0)
        c4 = vfma(c4, vsplat(a, i + 4 * sa), b0)
        c5 = vfma(c5, vsplat(a, i + 5 * sa), b0)
        c6 = vfma(c6, vsplat(a, i + r6 * sa), b0)
        c7 = vfma(c7, vsplat(a, i + r7 * sa), b0)
    vstore_head(out, o0, columns, c0)
    vstore_head(out, o0 + ldo, columns, c1)
    vstore_head(out, o0 + 2 * ldo, columns, c2)
    vstore_head(out, o0 + 3 * ldo, columns, c3)
    vstore_head(out, o0 + 4 * ldo, columns, c4)
    vstore_head(out, o0 + 5 * ldo, columns, c5)
    if eight:
        vstore_head(out, o0 + 6 * ldo, columns, c6)
        vstore_head(out, o0 + 7 * ldo, columns, c7)


@njit(nogil=True, cache=True)
def gemm_block(a, sa, sk, b, sb, sn, depth, out, ldo, rows0, rows1, cols0, cols1, panels):
    """out[i, j] = sum_{k < depth} a[i, k] b[k, j] for rows0 <= i < rows1, cols0 <= j < cols1.

    Operands are flat 1-D contiguous arrays with element strides: a[i, k] = a[i*sa + k*sk],
    b[k, j] = b[k*sb + j*sn], out[i, j] = out[i*ldo + j]; a and b are in C or Fortran order
    (sk or sa is 1, sn or sb is 1). The other elements of out are not touched, so threads may
    fill disjoint blocks of one out.

    `panels`: b already packed whole, as `kernels.block.pack_columns` lays out a frozen
    model's pointwise weights (each panel of 2L columns of b, its `depth` rows after each
    other), or an empty array. When given and cols0 is a multiple of 2L, the whole panels are
    read from it instead of packed (the same values, so the same bits); a last panel short of
    2L columns is packed as usual."""
    if rows1 <= rows0 or cols1 <= cols0:
        return
    if depth == 0:  # an empty sum
        for i in range(rows0, rows1):
            out[i * ldo + cols0:i * ldo + cols1] = 0.0
        return
    L = lanes(out)
    width = 2 * L
    tr = TILE_ROWS
    count_panels = (cols1 - cols0 + width - 1) // width
    # Not compile-time constants on purpose: with BLOCK_ROWS folded into the loops LLVM
    # compiled them into code 15-20 % slower (bench/NOTES.md round 11).
    block_rows = min(BLOCK_ROWS // tr * tr, (rows1 - rows0 + tr - 1) // tr * tr)
    group = min(GROUP_PANELS, count_panels)
    # One block of rows (training's stage 3 cut over two threads, say): a group's panels serve
    # only while the group is current, so every group is packed into the same place, which
    # stays in L2; a place per group sent the packing's writes on to L3 and memory
    one_block = rows1 - rows0 <= block_rows
    packed = np.empty(DEPTH * width * (group if one_block else count_panels), dtype=out.dtype)
    ready = panels.size > 0 and cols0 % width == 0  # whole panels of b from `panels`
    count = (rows1 - rows0) % tr
    whole = rows1 - count  # the rows before `whole` fill whole tiles
    last = np.zeros(DEPTH * tr, dtype=out.dtype)  # the last rows (fewer than tr): [k][tr]
    tile = np.empty(tr * width, dtype=out.dtype)  # and their results
    # AVX2's 6-row tiles: a's rows of a tile, when they are a column (sa = 1) whose k's are a
    # power of two apart, share one L1 set and come from L2 again for every panel; copied out
    # per block and pass instead, [k][tr] per tile (a block: at most 252 x 512 elements)
    gather_a = _COPY_A and sa == 1 and sk != 1
    rows_a = np.empty(block_rows * DEPTH + L if gather_a else 0, dtype=out.dtype)
    for k0 in range(0, depth, DEPTH):
        pass_depth = min(DEPTH, depth - k0)
        first = k0 == 0
        if count:  # the last rows, as a whole tile (zeros after them)
            for k in range(pass_depth):
                for r in range(count):
                    last[k * tr + r] = a[(whole + r) * sa + (k0 + k) * sk]
        for i0 in range(rows0, rows1, block_rows):
            i1 = min(i0 + block_rows, rows1)
            for g0 in range(0, count_panels, group):
                g1 = min(g0 + group, count_panels)
                home = 0 if one_block else g0  # the group's first panel in `packed`
                if i0 == rows0:  # packed as the first block needs them, still in L2 for it
                    p = g1 - 1 if ready else g0  # with `panels`, only a last panel cut short
                    if not ready or cols1 - (cols0 + p * width) < width:
                        _pack_b(b, sb, sn, k0, pass_depth, cols0 + p * width,
                                min(cols1, cols0 + g1 * width),
                                packed[(home + p - g0) * pass_depth * width:])
                for i in range(i0, i1, tr):
                    start = i * sa + k0 * sk
                    own_a = (i - i0) * pass_depth  # the tile's rows in rows_a
                    if _COPY_A and gather_a and g0 == 0 and i < whole:
                        for k in range(pass_depth):  # each store's lanes past tr: the next k's
                            for r in range(0, tr, L):
                                vstore(rows_a, own_a + k * tr + r,
                                       vload_head(a, start + k * sk + r, min(L, tr - r)))
                    for q in range(g0, g1):
                        j0 = cols0 + q * width
                        used = min(width, cols1 - j0)
                        if ready and used == width:
                            source, p0 = panels, (j0 // width * depth + k0) * width
                        else:
                            source, p0 = packed, (home + q - g0) * pass_depth * width
                        if i < whole and used == width:
                            # the next tile: the next panel, a tile down, or the next group
                            if q + 1 < g1:
                                ahead = i * ldo + j0 + width
                            elif i + tr < min(i1, whole):
                                ahead = (i + tr) * ldo + cols0 + g0 * width
                            else:
                                ahead = i0 * ldo + cols0 + g1 * width
                            if _COPY_A and gather_a:
                                _tile(rows_a, own_a, 1, tr, source, p0, pass_depth, out,
                                      i * ldo + j0, ldo, first, ahead)
                            else:
                                _tile(a, start, sa, sk, source, p0, pass_depth, out,
                                      i * ldo + j0, ldo, first, ahead)
                        elif i < whole:  # the last columns: one or two masked vectors
                            o0 = i * ldo + j0
                            _half_tile(a, start, sa, sk, source, p0, pass_depth, out, o0, ldo,
                                       first, min(L, used))
                            if used > L:
                                _half_tile(a, start, sa, sk, source, p0 + L, pass_depth, out,
                                           o0 + L, ldo, first, used - L)
                        else:  # the last rows: a scratch tile
                            for r in range(count):
                                for j in range(used):
                                    tile[r * width + j] = out[(i + r) * ldo + j0 + j]
                            _tile(last, 0, 1, tr, source, p0, pass_depth, tile, 0, width,
                                  first, 0)
                            for r in range(count):
                                for j in range(used):
                                    out[(i + r) * ldo + j0 + j] = tile[r * width + j]


@njit(nogil=True, cache=True)
def _pack_b(b, sb, sn, k0, depth, cols0, cols1, packed):
    """packed[q*depth*2L + k*2L + j] = b[k0 + k, cols0 + q*2L + j], zeros past cols1: b's rows
    in panels of 2L columns. When b's rows are contiguous (sn = 1): two vector copies per row k.
    When its columns are (sb = 1, b = W^T): L x L blocks of W transposed in registers
    (`vstore_transposed`), a gather per k for the last depth % L rows, scalar copies for a last
    panel cut short."""
    L = lanes(packed)
    width = 2 * L
    panels = (cols1 - cols0 + width - 1) // width
    for q in range(panels):
        j0 = cols0 + q * width
        used = min(width, cols1 - j0)
        target = q * depth * width
        if sn == 1:
            for k in range(depth):
                row = (k0 + k) * sb + j0
                t = target + k * width
                if used == width:
                    vstore(packed, t, vload(b, row))
                    vstore(packed, t + L, vload(b, row + L))
                else:  # the zeros of the masked loads fill the panel's last columns
                    vstore(packed, t, vload_head(b, row, min(L, used)))
                    vstore(packed, t + L, vload_head(b, row + L, max(used - L, 0)))
        elif used == width:  # 2L columns of W^T: square blocks of W's rows, transposed
            whole = depth - depth % L
            for k in range(0, whole, L):
                column = (k0 + k) * sb + j0 * sn
                vstore_transposed(packed, target + k * width, width, b, column, sn)
                vstore_transposed(packed, target + k * width + L, width, b, column + L * sn, sn)
            for k in range(whole, depth):
                column = (k0 + k) * sb + j0 * sn
                vstore(packed, target + k * width, vgather(b, column, sn))
                vstore(packed, target + k * width + L, vgather(b, column + L * sn, sn))
        else:
            packed[target:target + depth * width] = 0.0
            for j in range(used):
                column = k0 * sb + (j0 + j) * sn
                for k in range(depth):
                    packed[target + k * width + j] = b[column + k * sb]


def strided(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A C- or Fortran-ordered 2-D array as (flat view, row stride, column stride) in elements;
    other layouts are copied. The view is read-only, so that `gemm_block` is compiled once for
    writable and read-only operands alike (a frozen model's weights are read-only)."""
    if x.flags.c_contiguous:
        flat, rows, cols = x.reshape(-1), x.shape[1], 1
    elif x.flags.f_contiguous:
        flat, rows, cols = x.T.reshape(-1), 1, x.shape[0]
    else:
        flat, rows, cols = np.ascontiguousarray(x).reshape(-1), x.shape[1], 1
    flat = flat.view()
    flat.flags.writeable = False
    return flat, rows, cols


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
         rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
         panels: np.ndarray | None = None) -> np.ndarray:
    """out = a @ b for 2-D float32 or float64 operands of one dtype (a, b in C or Fortran order;
    other layouts are copied). out, if given, must be C-contiguous. `rows` / `cols` = (start,
    stop) restrict the work to that block of out (the rest of out is left as it is).
    `panels`: b packed as `kernels.block.pack_columns(b.T, 2L)` does, read instead of packing b."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: shapes {a.shape} and {b.shape} do not multiply")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm: float32 or float64 operands of one dtype, got {a.dtype}, {b.dtype}")
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    elif out.shape != (a.shape[0], b.shape[1]) or out.dtype != a.dtype \
            or not out.flags.c_contiguous:
        raise ValueError("gemm: out must be C-contiguous, of a's dtype and shape (M, N)")
    rows0, rows1 = rows or (0, a.shape[0])
    cols0, cols1 = cols or (0, b.shape[1])
    a_flat, sa, sk = strided(a)
    b_flat, sb, sn = strided(b)
    gemm_block(a_flat, sa, sk, b_flat, sb, sn, a.shape[1], out.reshape(-1), out.shape[1],
               rows0, rows1, cols0, cols1, panel_operand(panels, b))
    return out


_NO_PANELS = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0)}
for _empty in _NO_PANELS.values():
    _empty.flags.writeable = False


def panel_operand(panels: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """`gemm_block`'s `panels` argument for b [K, N]: b packed as `kernels.block.pack_columns(
    b.T, 2L)` does, as a read-only view (like every operand `strided` makes, so that one
    compiled version serves), or an empty array when there are none."""
    if panels is None:
        return _NO_PANELS[b.dtype]
    if panels.dtype != b.dtype or panels.ndim != 1 or panels.size != b.size \
            or not panels.flags.c_contiguous:
        raise ValueError(f"gemm: panels must be b's {b.size} elements of {b.dtype}, packed")
    view = panels.view()
    view.flags.writeable = False
    return view
