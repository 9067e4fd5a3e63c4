"""kernels/gemm.py (our matrix product) and how kernels.linear.matmul chooses it over BLAS."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kernels import linear
from kernels.gemm import BLOCK_ROWS, DEPTH, GROUP_PANELS, TILE_ROWS, gemm
from tests.test_kernels import SETTINGS


def _operand(rng, shape, dtype, order):
    """A random array of `shape` laid out in C or Fortran order."""
    value = rng.standard_normal(shape).astype(dtype)
    return value if order == "C" else np.asfortranarray(value)


def _tolerance(a, b):
    """A bound on |computed - exact| for a product of a and b (each element: depth roundings)."""
    eps = np.finfo(a.dtype).eps
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    return 2 * (a.shape[1] + 2) * eps * scale + np.finfo(a.dtype).tiny


# rows past the 8-row tile and a block of BLOCK_ROWS, columns past 2 vectors (32 float32 with
# AVX-512, 16 with AVX2) and a group of GROUP_PANELS panels, depth past one pass of DEPTH rows of b
ROWS = st.integers(1, BLOCK_ROWS + 20)
COLUMNS = st.integers(1, GROUP_PANELS * 32 + 40)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=ROWS, k=st.sampled_from([0, 1, 3, 17, DEPTH, DEPTH + 5, 2 * DEPTH + 1]), n=COLUMNS,
       orders=st.sampled_from(["CC", "CF", "FC", "FF"]), seed=st.integers(0, 2**16))
@example(m=BLOCK_ROWS + 13, k=DEPTH + 5, n=GROUP_PANELS * 32 + 33, orders="CF", seed=1)
@SETTINGS
def test_gemm_matches_the_exact_product(dtype, m, k, n, orders, seed):
    rng = np.random.default_rng(seed)
    a = _operand(rng, (m, k), dtype, orders[0])
    b = _operand(rng, (k, n), dtype, orders[1])
    out = gemm(a, b)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert out.dtype == dtype and out.shape == (m, n)
    assert np.all(np.abs(out - exact) <= _tolerance(a, b))


def check_gemm_blocks(a: np.ndarray, b: np.ndarray, at_row: int, at_col: int) -> None:
    """The module's promise: gemm(a, b) is the product within the bound of `_tolerance`, any
    split by rows or by columns gives the bits of one call, and a call writes only its block
    of out. Also run by the AVX2 child of tests/test_simd.py (6-row tiles there)."""
    m, n = a.shape[0], b.shape[1]
    whole = gemm(a, b)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert whole.dtype == a.dtype and whole.shape == (m, n)
    assert np.all(np.abs(whole - exact) <= _tolerance(a, b))
    by_rows = np.full((m, n), np.nan, a.dtype)
    gemm(a, b, by_rows, rows=(0, at_row))
    assert np.isnan(by_rows[at_row:]).all()
    gemm(a, b, by_rows, rows=(at_row, m))
    by_cols = np.full((m, n), np.nan, a.dtype)
    gemm(a, b, by_cols, cols=(at_col, n))
    assert np.isnan(by_cols[:, :at_col]).all()
    gemm(a, b, by_cols, cols=(0, at_col))
    np.testing.assert_array_equal(by_rows, whole)
    np.testing.assert_array_equal(by_cols, whole)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=ROWS, k=st.sampled_from([1, 40, DEPTH + 7]), n=COLUMNS,
       orders=st.sampled_from(["CC", "CF", "FC", "FF"]), cut=st.floats(0, 1),
       seed=st.integers(0, 2**16))
@example(m=BLOCK_ROWS + 13, k=DEPTH + 7, n=GROUP_PANELS * 32 + 33, orders="FC", cut=0.6, seed=1)
@SETTINGS
def test_gemm_bits_do_not_depend_on_the_block_computed(dtype, m, k, n, orders, cut, seed):
    rng = np.random.default_rng(seed)
    a = _operand(rng, (m, k), dtype, orders[0])
    b = _operand(rng, (k, n), dtype, orders[1])
    check_gemm_blocks(a, b, int(cut * m), int(cut * n))


def _panels(b: np.ndarray) -> np.ndarray:
    """b [K, N] packed as a frozen model packs its pointwise weights (w = b.T)."""
    from kernels.block import pack_columns, panel_columns

    return pack_columns(np.ascontiguousarray(b.T), panel_columns(b.dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=ROWS, k=st.sampled_from([1, 40, DEPTH, DEPTH + 7, 2 * DEPTH + 3]), n=COLUMNS,
       orders=st.sampled_from(["CC", "CF", "FC", "FF"]), cut=st.floats(0, 1),
       seed=st.integers(0, 2**16))
@example(m=BLOCK_ROWS + 13, k=2 * DEPTH + 3, n=GROUP_PANELS * 32 + 33, orders="CF", cut=0.5,
         seed=1)
@SETTINGS
def test_gemm_reads_whole_panels_from_packed_b(dtype, m, k, n, orders, cut, seed):
    """With b packed already (`panels`), gemm reads its whole panels from there: the bits of
    packing b itself. Panels of 2b show which columns came from them: every column of a whole
    panel when the block starts at a panel, none when it does not; a last panel cut short is
    packed from b."""
    from kernels.block import panel_columns

    rng = np.random.default_rng(seed)
    a = _operand(rng, (m, k), dtype, orders[0])
    b = _operand(rng, (k, n), dtype, orders[1])
    width = panel_columns(dtype)
    np.testing.assert_array_equal(gemm(a, b, panels=_panels(b)), gemm(a, b))
    doubled = gemm(a, b, panels=_panels(2 * b))
    whole = n // width * width  # the columns of whole panels
    np.testing.assert_array_equal(doubled[:, :whole], gemm(a, 2 * b)[:, :whole])
    np.testing.assert_array_equal(doubled[:, whole:], gemm(a, b)[:, whole:])
    top, start = int(cut * m), int(cut * n)  # a block: rows from top, columns from start
    block = np.full((m, n), np.nan, dtype)
    gemm(a, b, block, rows=(top, m), cols=(start, n), panels=_panels(2 * b))
    expected = gemm(a, b)
    if start % width == 0:
        expected[:, :whole] = doubled[:, :whole]
    np.testing.assert_array_equal(block[top:, start:], expected[top:, start:])
    assert np.isnan(block[:top]).all() and np.isnan(block[:, :start]).all()


def test_gemm_refuses_panels_that_are_not_b_packed():
    a, b = np.ones((4, 3), np.float32), np.ones((3, 40), np.float32)
    for wrong in (np.ones(119, np.float32), np.ones(120, np.float64), np.ones((3, 40), np.float32)):
        with pytest.raises(ValueError, match="panels must be"):
            gemm(a, b, panels=wrong)


@pytest.mark.parametrize("region", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(600, 96, 384), (96, 1536, 200), (40, 70, 500)])
def test_matmul_reads_packed_panels_however_it_is_split(gemm_choice, region, threads, shape):
    """kernels.linear.matmul(..., panels=) with our gemm, split over threads by rows or columns
    (helper threads or one parallel region): the panels' bits; BLAS ignores them."""
    from kernels.block import panel_columns

    m, k, n = shape
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)  # a layer's weight: b = w.T
    gemm_choice("own")
    with linear.split_matmuls(threads, region=region):
        plain = linear.matmul(a, w.T)
        np.testing.assert_array_equal(linear.matmul(a, w.T, panels=_panels(w.T)), plain)
        doubled = linear.matmul(a, w.T, panels=_panels(2 * w.T))
    whole = n // panel_columns(np.float32) * panel_columns(np.float32)
    np.testing.assert_array_equal(doubled[:, :whole], 2 * plain[:, :whole])
    np.testing.assert_array_equal(doubled[:, whole:], plain[:, whole:])
    gemm_choice("blas")
    with linear.split_matmuls(threads, region=region):
        np.testing.assert_allclose(linear.matmul(a, w.T, panels=_panels(2 * w.T)), a @ w.T,
                                   rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype, n", [(np.float32, 1024), (np.float64, 512), (np.float32, 1040)])
def test_gemm_rows_4kb_apart_are_still_right(dtype, n):
    """A C-order b whose rows are 4 KB apart (where reading it in place would thrash L1) gives
    the product, and the bits of its Fortran-order copy (packed by transposed blocks)."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((21, 300)).astype(dtype)
    b = rng.standard_normal((300, n)).astype(dtype)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(gemm(a, b) - exact) <= _tolerance(a, b))
    np.testing.assert_array_equal(gemm(a, b), gemm(a, np.asfortranarray(b)))


def test_gemm_refuses_what_it_cannot_multiply():
    a = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="do not multiply"):
        gemm(a, np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="one dtype"):
        gemm(a, np.ones((3, 2), np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        gemm(a.astype(np.int64), np.ones((3, 2), np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        gemm(a, np.ones((3, 2), np.float32), out=np.ones((2, 4), np.float32).T)
    strided = np.ones((4, 6), np.float32)[:, ::2]  # neither C nor Fortran order: copied
    np.testing.assert_array_equal(gemm(strided, np.ones((3, 2), np.float32)), np.full((4, 2), 3))


@pytest.fixture
def gemm_choice():
    """Restore the module's choice after a test that sets it."""
    yield linear.set_gemm
    linear.set_gemm("auto")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(300, 70, 90), (40, 70, 500), (500, 600, 9)])
def test_matmul_splits_our_gemm_without_changing_a_bit(gemm_choice, threads, shape):
    """kernels.linear.matmul with our gemm: the product of one call, however it is split
    over threads (by rows, or by columns for wide results), into a given out or a new one."""
    m, k, n = shape
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    gemm_choice("own")
    assert linear.uses_own_gemm()
    with linear.split_matmuls(threads):
        forward = linear.matmul(a, w.T)
        backward = linear.matmul(a.T, a, out=np.empty((k, k), np.float32))
    np.testing.assert_array_equal(forward, gemm(a, w.T))
    np.testing.assert_array_equal(backward, gemm(a.T, a))
    gemm_choice("blas")
    assert not linear.uses_own_gemm()
    with linear.split_matmuls(threads):
        np.testing.assert_allclose(linear.matmul(a, w.T), a @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("choice", ["own", "blas"])
def test_matmul_pair_gives_each_product_as_matmul_does(gemm_choice, threads, choice):
    """Two independent products side by side (a backward's dW and dx): each equals matmul's
    (bit for bit with our gemm, whose bits no split changes), into the outs given."""
    rng = np.random.default_rng(threads)
    dy = rng.standard_normal((700, 48)).astype(np.float32)
    x = rng.standard_normal((700, 192)).astype(np.float32)
    w = rng.standard_normal((48, 192)).astype(np.float32)
    gemm_choice(choice)
    dw, dx = np.empty((48, 192), np.float32), np.empty((700, 192), np.float32)
    with linear.split_matmuls(threads):
        first, second = linear.matmul_pair((dy.T, x, dw), (dy, w, dx))
        alone = linear.matmul(dy.T, x), linear.matmul(dy, w)
    assert first is dw and second is dx
    if choice == "own":
        np.testing.assert_array_equal(dw, gemm(dy.T, x))
        np.testing.assert_array_equal(dx, gemm(dy, w))
    for result, single, exact in ((dw, alone[0], dy.T @ x), (dx, alone[1], dy @ w)):
        np.testing.assert_allclose(result, exact, rtol=1e-4, atol=1e-3)
        if choice == "own":
            np.testing.assert_array_equal(result, single)


def test_matmul_pair_waits_for_its_helper_and_passes_errors_on(gemm_choice):
    """A failing product raises from matmul_pair, and only after the other one has finished
    (its out is not written after the call returns)."""
    gemm_choice("own")
    a = np.ones((400, 300), np.float32)
    out = np.empty((400, 400), np.float32)
    with linear.split_matmuls(2):
        with pytest.raises(ValueError):
            linear.matmul_pair((a, a.T, out), (a, a))  # (400, 300) @ (400, 300): no product
    np.testing.assert_array_equal(out, np.full((400, 400), 300.0))


def test_matmul_outside_a_split_block_is_numpys(gemm_choice, monkeypatch):
    """Outside `split_matmuls` (BLAS may run its own threads there) every product is BLAS's,
    and so are products too small for our gemm and operands of mixed dtypes."""
    gemm_choice("own")
    used = []
    monkeypatch.setattr(linear, "gemm_block", lambda *args: used.append(args))
    a = np.ones((200, 100), np.float32)
    np.testing.assert_array_equal(linear.matmul(a, a.T), np.full((200, 200), 100))
    with linear.split_matmuls(2):
        linear.matmul(a[:8, :8], a[:8, :8])  # 1,024 FLOPs
        linear.matmul(a, a.T.astype(np.float64))
        with pytest.raises(ValueError):  # NumPy's error, not a write past out's end
            linear.matmul(a, a.T, out=np.empty((200, 100), np.float32))
        with pytest.raises(ValueError):
            linear.matmul(a, a)
        assert not used
        linear.matmul(a, a.T)
    assert used


@pytest.mark.parametrize("blas, expected", [
    ([("openblas", "Haswell")], True),
    ([("openblas", "Zen")], True),
    ([("openblas", "SkylakeX")], False),
    ([("openblas", "Haswell"), ("openblas", "SapphireRapids")], False),
    ([("mkl", None)], False),
    ([], False),
])
def test_auto_takes_our_gemm_over_an_openblas_without_avx512_kernels_or_on_zen5(
        gemm_choice, monkeypatch, blas, expected):
    class Library:
        def __init__(self, api, architecture):
            self._info = {"internal_api": api, "architecture": architecture}

        def info(self):
            return self._info

    monkeypatch.setattr(linear, "numpy_blas", lambda: [Library(*entry) for entry in blas])
    monkeypatch.setattr(linear, "compile_cpu", lambda: "sapphirerapids")
    linear._blas_below_avx512.cache_clear()
    linear._blas_is_openblas.cache_clear()
    try:
        assert linear._blas_below_avx512() is expected
        for vector_bytes in (32, 64):
            monkeypatch.setattr(linear, "vector_bytes", lambda vector_bytes=vector_bytes: vector_bytes)
            assert linear.uses_own_gemm() is (expected and vector_bytes == 64)
        # on a CPU where ours measured faster than OpenBLAS's AVX-512 kernels: any OpenBLAS
        openblas = bool(blas) and all(api == "openblas" for api, _ in blas)
        for cpu in ("znver4", "znver5"):
            monkeypatch.setattr(linear, "compile_cpu", lambda cpu=cpu: cpu)
            monkeypatch.setattr(linear, "vector_bytes", lambda: 64)
            assert linear.uses_own_gemm() is openblas
            monkeypatch.setattr(linear, "vector_bytes", lambda: 32)
            assert not linear.uses_own_gemm()
    finally:
        linear._blas_below_avx512.cache_clear()
        linear._blas_is_openblas.cache_clear()
    with pytest.raises(ValueError, match="'auto', 'own' or 'blas'"):
        gemm_choice("mine")


def test_read_only_operands_take_the_same_compiled_code():
    """A frozen model's weights are read-only; they must not cost a second compile."""
    from kernels.gemm import gemm_block

    a = np.ones((20, 30), np.float32)
    b = np.ones((30, 40), np.float32)
    gemm(a, b)
    compiled = set(gemm_block.overloads)
    a.flags.writeable = b.flags.writeable = False
    np.testing.assert_array_equal(gemm(a, b.T.copy().T), np.full((20, 40), 30))
    assert set(gemm_block.overloads) == compiled


def _operands(rng, m, k, n, dtype, orders):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    a = a if orders[0] == "C" else np.asfortranarray(a)
    b = b if orders[1] == "C" else np.asfortranarray(b)
    return a, b


@pytest.mark.parametrize("choice", ["own", "blas"])
@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, orders", [((300, 70, 90), "CC"), ((40, 70, 500), "FC"),
                                           ((500, 600, 9), "CF"), ((64, 256, 200), "FF")])
def test_matmul_in_one_parallel_region_gives_the_helper_threads_bits(
        gemm_choice, choice, threads, dtype, shape, orders):
    """A product split in one Numba parallel loop (kernels/split.py) is the same blocks, each
    the same call, as split over Python helper threads: the same bits, into out if given."""
    rng = np.random.default_rng(threads)
    a, b = _operands(rng, *shape, dtype, orders)
    gemm_choice(choice)
    with linear.split_matmuls(threads):
        helpers = linear.matmul(a, b)
    out = np.full((shape[0], shape[2]), np.nan, dtype)
    with linear.split_matmuls(threads, region=True):
        region = linear.matmul(a, b, out=out)
    assert region is out
    np.testing.assert_array_equal(region, helpers)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(region, a.astype(np.float64) @ b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("choice", ["own", "blas"])
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_matmul_pair_in_one_parallel_region_gives_the_helper_threads_bits(
        gemm_choice, choice, threads):
    rng = np.random.default_rng(threads)
    dy = rng.standard_normal((700, 48)).astype(np.float32)
    x = rng.standard_normal((700, 192)).astype(np.float32)
    w = rng.standard_normal((48, 192)).astype(np.float32)
    gemm_choice(choice)
    with linear.split_matmuls(threads):
        helpers = linear.matmul_pair((dy.T, x), (dy, w))
    dx = np.empty((700, 192), np.float32)
    with linear.split_matmuls(threads, region=True):
        dw, given = linear.matmul_pair((dy.T, x), (dy, w, dx))
    assert given is dx
    np.testing.assert_array_equal(dw, helpers[0])
    np.testing.assert_array_equal(dx, helpers[1])
    np.testing.assert_allclose(dw, dy.T @ x, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("threads", [2, 3])
def test_matmul_pair_with_our_gemm_gives_each_thread_a_block_of_both(gemm_choice, threads,
                                                                      monkeypatch):
    """In one region with our gemm each product is cut `threads` ways and the tasks alternate
    between the products, so that the parallel loop's run of tasks for thread t is block t of
    each (every thread packs a share of both b's); with BLAS each product stays whole."""
    tables = []
    for choice, runner in (("own", "own_products"), ("blas", "blas_products")):
        gemm_choice(choice)
        real = getattr(linear, runner)

        def recording(*args, real=real, at=0 if choice == "own" else 2):  # tasks: 1st / 3rd
            tables.append(np.array(args[at]))
            return real(*args)

        monkeypatch.setattr(linear, runner, recording)
        rng = np.random.default_rng(threads)
        dy = rng.standard_normal((512, 96)).astype(np.float32)
        x = rng.standard_normal((512, 384)).astype(np.float32)
        w = rng.standard_normal((96, 384)).astype(np.float32)
        with linear.split_matmuls(threads, region=True):
            dw, dx = linear.matmul_pair((dy.T, x), (dy, w))
        np.testing.assert_allclose(dw, dy.T @ x, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dx, dy @ w, rtol=1e-4, atol=1e-3)
    own, blas = tables
    assert own[:, 0].tolist() == [0, 1] * threads  # block t of product 0, then of product 1
    # dW [96, 384] is cut by columns at whole panels, dx [512, 384] by rows at whole tiles
    for which, (lo, hi, size, step) in ((0, (3, 4, 384, 16)), (1, (1, 2, 512, TILE_ROWS))):
        blocks = own[own[:, 0] == which]
        assert blocks[0, lo] == 0 and blocks[-1, hi] == size
        assert (blocks[1:, lo] == blocks[:-1, hi]).all() and (blocks[:-1, hi] % step == 0).all()
    assert blas[:, 0].tolist() == [0] * (threads // 2) + [1] * (threads - threads // 2)


def test_the_region_leaves_what_it_does_not_take_to_the_helper_threads(gemm_choice, monkeypatch):
    """Mixed dtypes, an operand in neither order, a read-only or non-contiguous out, or no
    BLAS address: computed the Python way (and still right)."""
    gemm_choice("blas")
    regions = []
    monkeypatch.setattr(linear, "_run_region", lambda *args: regions.append(args))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((200, 400)).astype(np.float32)
    read_only = np.empty((300, 400), np.float32)
    read_only.flags.writeable = False
    with linear.split_matmuls(2, region=True):
        linear.matmul(a, b)
        assert len(regions) == 1  # taken (not computed: recorded)
        regions.clear()
        for x, y, out in ((a, b.astype(np.float64), None), (a[:, ::2], b[::2], None),
                          (a, b, np.empty((400, 300), np.float32).T)):
            result = linear.matmul(x, y, out=out)
            np.testing.assert_allclose(result, x.astype(np.float64) @ y, rtol=1e-4, atol=1e-3)
        with pytest.raises(ValueError):
            linear.matmul(a, b, out=read_only)
        assert not regions
        monkeypatch.setattr(linear, "blas_gemm_address", lambda dtype: (0, np.int64(0)))
        np.testing.assert_allclose(linear.matmul(a, b), a @ b, rtol=1e-4, atol=1e-3)
        assert not regions


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_products_compute_each_block_as_numpy_does(dtype):
    """kernels.split.blas_products calls NumPy's own ?gemm per block (C and Fortran operands,
    blocks by rows and by columns, two products in one loop): each block of out is what
    np.matmul gives for that block, and nothing outside the blocks is written."""
    from kernels.gemm import strided
    from kernels.split import blas_products

    address, wide = linear.blas_gemm_address(dtype)
    if not address:
        assert not [lib for lib in linear.numpy_blas() if lib.internal_api == "openblas"]
        pytest.skip("NumPy's BLAS is not an OpenBLAS: the region is not used with it")
    rng = np.random.default_rng(1)
    first = _operands(rng, 50, 30, 70, dtype, "FC")
    second = _operands(rng, 64, 33, 20, dtype, "CF")
    outs = [np.full((50, 70), -7, dtype), np.full((64, 20), -7, dtype)]
    blocks = [(0, 0, 50, 0, 32), (0, 0, 50, 40, 70), (1, 0, 24, 0, 20), (1, 30, 64, 5, 20)]
    described = []
    for (a, b), out in zip((first, second), outs, strict=True):
        a_flat, sa, sk = strided(a)
        b_flat, sb, sn = strided(b)
        described.append((a_flat, b_flat, out.reshape(-1),
                          np.array([sa, sk, sb, sn, a.shape[1], out.shape[1]], np.int64)))
    blas_products(address, wide, np.array(blocks, np.int64), *described[0], *described[1])
    for which, r0, r1, c0, c1 in blocks:
        (a, b), out = (first, second)[which], outs[which]
        np.testing.assert_array_equal(out[r0:r1, c0:c1], np.matmul(a[r0:r1], b[:, c0:c1]))
        out[r0:r1, c0:c1] = -7
    assert all((out == -7).all() for out in outs)


def test_blas_address_only_for_an_openblas_it_can_read(monkeypatch):
    """Another BLAS, two of them, or an OpenBLAS without the symbols: no address (Python
    helper threads then); an OpenBLAS built with 32-bit integers is called with 32-bit ones."""
    import ctypes

    callback = ctypes.CFUNCTYPE(None)(lambda: None)

    class Symbols:
        def __init__(self, config):
            self.cblas_sgemm = callback
            self.openblas_get_config = lambda: config

    class Library:
        def __init__(self, api, config=b"OpenBLAS 0.3.31 DYNAMIC_ARCH", symbols=True):
            self.internal_api = api
            self.dynlib = Symbols(config) if symbols else object()

    expected = ctypes.cast(callback, ctypes.c_void_p).value
    cases = [([Library("mkl")], 0, None), ([Library("openblas")] * 2, 0, None),
             ([Library("openblas", symbols=False)], 0, None),
             ([Library("openblas")], expected, np.int32),
             ([Library("openblas", b"OpenBLAS USE64BITINT")], expected, np.int64)]
    try:
        for libraries, address, width in cases:
            monkeypatch.setattr(linear, "numpy_blas", lambda libraries=libraries: libraries)
            linear.blas_gemm_address.cache_clear()
            found, wide = linear.blas_gemm_address(np.float32)
            assert found == address
            if width is not None:
                assert type(wide) is width
        assert linear.blas_gemm_address(np.int32)[0] == 0
    finally:
        linear.blas_gemm_address.cache_clear()


def test_region_tables_are_made_once_per_shape_and_stay_bounded(gemm_choice, monkeypatch):
    """The layouts and task tables the region reuses between calls: one array per distinct
    value, the same products whichever call made it, and the store dropped when full."""
    gemm_choice("blas")
    monkeypatch.setattr(linear, "_layouts", {})
    monkeypatch.setattr(linear, "_tables", {})
    rng = np.random.default_rng(0)
    outs = []
    for rows in (300, 301, 300):
        a = rng.standard_normal((rows, 200)).astype(np.float32)
        b = rng.standard_normal((200, 128)).astype(np.float32)  # split: >= 8 MFLOP
        with linear.split_matmuls(2, region=True):
            outs.append(linear.matmul(a, b))
        np.testing.assert_allclose(outs[-1], a @ b, rtol=1e-4, atol=1e-3)
    assert len(linear._tables) == 2 and len(linear._layouts) == 1
    first = next(iter(linear._tables.values()))
    assert first.dtype == np.int64 and first[:, 2].max() == 300  # rows 0..300, two blocks
    monkeypatch.setattr(linear, "_REMEMBER", 2)
    store: dict = {}
    kept = linear._remembered(store, (1, 2))
    assert linear._remembered(store, (1, 2)) is kept
    linear._remembered(store, (3, 4))
    linear._remembered(store, (5, 6), [(5, 6), (7, 8)])
    assert list(store) == [(5, 6)] and store[(5, 6)].tolist() == [[5, 6], [7, 8]]
