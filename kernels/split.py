"""Matrix products cut into blocks that the threads of one parallel loop compute side by side.

    out[r0:r1, c0:c1] = a[r0:r1, :] @ b[:, c0:c1]        for each task (which, r0, r1, c0, c1)

Up to two products (`which` 0 or 1: e.g. dW = dy^T x and dx = dy W of a backward) share the
loop; each task is one block of one product's out, and tasks of one product cover disjoint
blocks. Operands are described as `kernels.gemm.gemm_block` takes them: flat contiguous a, b
(C or Fortran order) and out, and per product `layout` = [sa, sk, sb, sn, depth, ldo] with
a[i, k] = a[i*sa + k*sk], b[k, j] = b[k*sb + j*sn], out[i, j] = out[i*ldo + j]; for our gemm
also b's `panels` (packed already, or empty).

`blas_products` computes each block with the CBLAS `?gemm` at `address` (NumPy's BLAS, which
the caller runs single-threaded meanwhile; kernels.linear.blas_gemm_address), `own_products`
with `kernels.gemm.gemm_block`. Either way a block is the same call a Python helper thread of
`kernels.linear.matmul` makes, so the bits are the same; what changes is the hand-over: the
threads of Numba's pool, still awake from the kernel before, start a block within microseconds,
where a Python helper sleeping on its queue took 50-100 us to wake (bench/NOTES.md, round 12).
"""

from __future__ import annotations

from numba import njit, prange

from kernels import prange_only
from kernels.gemm import gemm_block
from kernels.pointer import call_blas_gemm

AS_STORED, TRANSPOSED = 111, 112  # CBLAS's CblasNoTrans and CblasTrans


@njit(nogil=True, cache=True, inline="always")
def _product(which, a1, b1, out1, layout1, a2, b2, out2, layout2):
    """The operands of product `which` (0 or 1)."""
    if which == 0:
        return a1, b1, out1, layout1
    return a2, b2, out2, layout2


@njit(nogil=True, cache=True, inline="always")
def _blas_block(address, wide, a, b, out, layout, r0, r1, c0, c1):
    sa, sk, sb, sn, depth, ldo = layout[0], layout[1], layout[2], layout[3], layout[4], layout[5]
    if r1 <= r0 or c1 <= c0:
        return
    # a block of a C-order a is its rows as stored; of a Fortran-order a, rows of a^T (sa = 1)
    trans_a, lda = (AS_STORED, sa) if sk == 1 else (TRANSPOSED, sk)
    trans_b, ldb = (AS_STORED, sb) if sn == 1 else (TRANSPOSED, sn)
    call_blas_gemm(address, wide, trans_a, trans_b, r1 - r0, c1 - c0, depth, a, r0 * sa, lda,
                   b, c0 * sn, ldb, out, r0 * ldo + c0, ldo)


@njit(nogil=True, cache=True, parallel=prange_only())
def blas_products(address, wide, tasks, a1, b1, out1, layout1, a2, b2, out2, layout2):
    """Each task's block with the CBLAS ?gemm at `address` (`wide`: a np.int64 for a BLAS with
    64-bit integers, a np.int32 for 32-bit; kernels.pointer.call_blas_gemm). tasks [n, 5] int64."""
    for t in prange(tasks.shape[0]):
        a, b, out, layout = _product(tasks[t, 0], a1, b1, out1, layout1, a2, b2, out2, layout2)
        _blas_block(address, wide, a, b, out, layout, tasks[t, 1], tasks[t, 2], tasks[t, 3],
                    tasks[t, 4])


@njit(nogil=True, cache=True, parallel=prange_only())
def own_products(tasks, a1, b1, out1, layout1, panels1, a2, b2, out2, layout2, panels2):
    """Each task's block with `kernels.gemm.gemm_block`. tasks [n, 5] int64."""
    for t in prange(tasks.shape[0]):
        a, b, out, layout = _product(tasks[t, 0], a1, b1, out1, layout1, a2, b2, out2, layout2)
        panels = panels1 if tasks[t, 0] == 0 else panels2
        gemm_block(a, layout[0], layout[1], b, layout[2], layout[3], layout[4], out, layout[5],
                   tasks[t, 1], tasks[t, 2], tasks[t, 3], tasks[t, 4], panels)
