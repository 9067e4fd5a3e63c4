"""kernels/simd.py (explicit SIMD vectors) and the matmuls built on it (kernels/block.py; the
32-byte path of kernels/gemm.py, which tests/test_gemm.py checks at the compiled width)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

from kernels.block import _matmul_cols, matmul_rows
from kernels.simd import (
    features_without_avx512,
    fmadd,
    lanes,
    opaque,
    vadd,
    vector_bytes,
    veight,
    veight_splat,
    vfma,
    vgather,
    vlane,
    vload,
    vload_head,
    vmul,
    voctet,
    voctet_splat,
    vprefetch,
    vprefetch_write,
    vsplat,
    vstore,
    vstore_sums,
    vstore_transposed,
    vsub,
    vsum,
    vwiden,
    vzero,
)
from tests.test_kernels import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


@njit(cache=True)
def _dot(x, w):
    L = lanes(x)
    full = x.shape[0] - x.shape[0] % L
    acc = vzero(x)
    for k in range(0, full, L):
        acc = vfma(acc, vload(x, k), vload(w, k))
    if full < x.shape[0]:
        acc = vfma(acc, vload_head(x, full, x.shape[0] - full), vload_head(w, full, x.shape[0] - full))
    return vsum(acc)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lanes_fill_the_vector_width(dtype):
    @njit
    def count(x):
        return lanes(x)

    assert vector_bytes() in (32, 64)
    assert count(np.zeros(3, dtype)) == vector_bytes() // np.dtype(dtype).itemsize


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 70), seed=st.integers(0, 2**16))
@SETTINGS
def test_vector_dot_matches_numpy(dtype, n, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((2, n)).astype(dtype)
    # a window of a longer array: the masked last load must not pick up what follows
    padded = np.full(n + 40, 1e30, dtype)
    padded[:n] = x
    expected = float(np.dot(x.astype(np.float64), w.astype(np.float64)))
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    assert _dot(padded[:n], w) == pytest.approx(expected, rel=tolerance, abs=tolerance * n)


def test_vector_operations_refuse_strided_and_integer_arrays():
    with pytest.raises(TypingError):
        _dot(np.ones(8)[::2], np.ones(4))
    with pytest.raises(TypingError):
        _dot(np.ones(8, np.int64), np.ones(8, np.int64))


@njit(cache=True)
def _tile_sums(rows, out, m, n):
    """The first vector of each of 16 rows summed by `vstore_sums` into out[m:m+4, n:n+4], and
    by 16 `vsum`s as the expected values."""
    v0, v1, v2, v3 = vload(rows[0], 0), vload(rows[1], 0), vload(rows[2], 0), vload(rows[3], 0)
    v4, v5, v6, v7 = vload(rows[4], 0), vload(rows[5], 0), vload(rows[6], 0), vload(rows[7], 0)
    v8, v9, v10, v11 = vload(rows[8], 0), vload(rows[9], 0), vload(rows[10], 0), vload(rows[11], 0)
    v12, v13, v14, v15 = (vload(rows[12], 0), vload(rows[13], 0), vload(rows[14], 0),
                          vload(rows[15], 0))
    vstore_sums(out, m, n, (v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15))
    return np.array([[vsum(v0), vsum(v1), vsum(v2), vsum(v3)],
                     [vsum(v4), vsum(v5), vsum(v6), vsum(v7)],
                     [vsum(v8), vsum(v9), vsum(v10), vsum(v11)],
                     [vsum(v12), vsum(v13), vsum(v14), vsum(v15)]], dtype=out.dtype)


@njit(cache=True)
def _tile_sums_two_rows(rows, out, m, n):
    """`_tile_sums` for a tile of 2 x 4 sums (the first 8 rows)."""
    v0, v1, v2, v3 = vload(rows[0], 0), vload(rows[1], 0), vload(rows[2], 0), vload(rows[3], 0)
    v4, v5, v6, v7 = vload(rows[4], 0), vload(rows[5], 0), vload(rows[6], 0), vload(rows[7], 0)
    vstore_sums(out, m, n, (v0, v1, v2, v3, v4, v5, v6, v7))
    return np.array([[vsum(v0), vsum(v1), vsum(v2), vsum(v3)],
                     [vsum(v4), vsum(v5), vsum(v6), vsum(v7)]], dtype=out.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile_rows", [4, 2])
@given(seed=st.integers(0, 2**16), m=st.integers(0, 3), n=st.integers(0, 5))
@SETTINGS
def test_tile_sums_have_the_bits_of_single_sums_and_touch_only_the_tile(dtype, tile_rows, seed,
                                                                         m, n):
    rng = np.random.default_rng(seed)
    # wide exponent range, so a different order of additions would show in the bits
    rows = (rng.standard_normal((16, 16)) * 10.0 ** rng.integers(-6, 7, (16, 16))).astype(dtype)
    out = np.full((m + 5, n + 6), -7.0, dtype)
    expected = (_tile_sums if tile_rows == 4 else _tile_sums_two_rows)(rows, out, m, n)
    np.testing.assert_array_equal(out[m:m + tile_rows, n:n + 4], expected)
    outside = np.ones(out.shape, bool)
    outside[m:m + tile_rows, n:n + 4] = False
    assert (out[outside] == -7.0).all()


@njit(cache=True)
def _gather(x, i, stride, out):
    vstore(out, 0, vgather(x, i, stride))


@njit(cache=True)
def _transpose(out, o, ostride, x, i, xstride):
    vstore_transposed(out, o, ostride, x, i, xstride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(i=st.integers(0, 40), stride=st.integers(0, 30), seed=st.integers(0, 2**16))
@SETTINGS
def test_gather_reads_one_element_per_stride(dtype, i, stride, seed):
    count = vector_bytes() // np.dtype(dtype).itemsize
    x = np.random.default_rng(seed).standard_normal(i + stride * count + 1).astype(dtype)
    out = np.zeros(count, dtype)
    _gather(x, i, stride, out)
    np.testing.assert_array_equal(out, x[i + stride * np.arange(count)])
    with pytest.raises(TypingError):
        _gather(np.zeros(64, np.uint16), 0, 1, np.zeros(count, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(o=st.integers(0, 9), i=st.integers(0, 9), extra_out=st.integers(0, 20),
       extra_x=st.integers(0, 20), seed=st.integers(0, 2**16))
@SETTINGS
def test_transposed_store_writes_rows_as_columns_and_nothing_else(dtype, o, i, extra_out,
                                                                  extra_x, seed):
    count = vector_bytes() // np.dtype(dtype).itemsize
    ostride, xstride = count + extra_out, count + extra_x
    x = np.random.default_rng(seed).standard_normal(i + xstride * count).astype(dtype)
    out = np.full(o + ostride * count, np.nan, dtype)
    _transpose(out, o, ostride, x, i, xstride)
    block = x[i:].reshape(count, xstride)[:, :count]  # block[c, r] = x[i + c*xstride + r]
    written = out[o:].reshape(count, ostride)
    np.testing.assert_array_equal(written[:, :count], block.T)
    assert np.isnan(written[:, count:]).all() and np.isnan(out[:o]).all()


@njit(cache=True)
def _splat_lanes(x, i):
    v = vsplat(x, i)
    return vsum(v), vsum(vfma(vzero(x), v, v))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_splat_puts_one_element_in_every_lane(dtype):
    x = np.array([1.5, -2.0, 3.25], dtype)
    count = vector_bytes() // x.itemsize
    for i in range(3):
        assert _splat_lanes(x, i) == (count * x[i], count * x[i] * x[i])
    with pytest.raises(TypingError):
        _splat_lanes(np.zeros(4, np.uint16), 0)


@njit(cache=True)
def _prefetched_sum(x, ahead):
    total = 0.0
    for i in range(x.shape[0]):
        vprefetch(x, i + ahead)  # also far past the end: a hint, never a fault
        total += x[i]
    return total


@njit(cache=True)
def _prefetched_double(x, ahead):
    for i in range(x.shape[0]):
        vprefetch_write(x, i + ahead)  # also past the end, or before the start
        x[i] *= 2
    return x


def test_prefetch_changes_no_value_and_takes_only_contiguous_rows():
    x = np.arange(100, dtype=np.float32)
    for ahead in (0, 16, 10**6):
        assert _prefetched_sum(x, ahead) == 4950.0
    assert _prefetched_sum(np.zeros(0, np.uint16), 5) == 0.0
    for ahead in (0, 16, 10**6, -10**6):
        np.testing.assert_array_equal(_prefetched_double(x.copy(), ahead), 2 * x)
    with pytest.raises(TypingError):
        _prefetched_sum(x[::2], 1)
    with pytest.raises(TypingError):
        _prefetched_double(x[::2], 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=st.integers(1, 13), k=st.integers(1, 70), n=st.integers(1, 23), cut=st.integers(0, 6),
       seed=st.integers(0, 2**16))
@SETTINGS
def test_matmul_bits_do_not_depend_on_rows_or_column_split(dtype, m, k, n, cut, seed):
    """The docstring's promise: each out[m, n] is computed the same way whatever tile or split."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    whole = matmul_rows(x, w, np.empty((m, n), dtype))
    split = np.empty((m, n), dtype)
    at = min(n, 4 * cut)
    _matmul_cols(x, w, split, 0, at)
    _matmul_cols(x, w, split, at, n)
    np.testing.assert_array_equal(split, whole)
    for row in range(m):
        alone = matmul_rows(x[row:row + 1].copy(), w, np.empty((1, n), dtype))
        np.testing.assert_array_equal(alone[0], whole[row])


@njit(cache=True)
def _octet_sums(x, shift, squares):
    full = x.shape[0] - x.shape[0] % 8
    sums = voctet_splat(0.0)
    center = voctet_splat(shift)
    for c in range(0, full, 8):
        d = vsub(voctet(x, c), center)
        sums = vadd(sums, vmul(d, d) if squares else voctet(x, c))
    return [vlane(sums, j) for j in range(8)]


def _scalar_sums(x, shift, squares):
    """Eight running float64 sums, element c into sum c mod 8, in plain Python floats."""
    sums = [0.0] * 8
    for c in range(x.shape[0] - x.shape[0] % 8):
        d = float(x[c]) - shift
        sums[c % 8] += d * d if squares else float(x[c])
    return sums


@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(0, 60),
       shift=st.floats(-5, 5), squares=st.booleans(), seed=st.integers(0, 2**16))
@SETTINGS
def test_octet_lanes_are_eight_scalar_running_sums(dtype, n, shift, squares, seed):
    """voctet widens float32 exactly and vadd / vsub / vmul round each lane as Python's float
    arithmetic does (no fused multiply-add): the bits of eight scalar sums, on any ISA."""
    x = (np.random.default_rng(seed).standard_normal(n) * 3).astype(dtype)
    assert _octet_sums(x, shift, squares) == _scalar_sums(x, shift, squares)


@njit(cache=True)
def _centred_products(a, b, x, center):
    out = np.empty(8, np.float64)
    product = vmul(vmul(veight(a, 0), veight(b, 0)), vsub(veight(x, 0), veight_splat(x, center)))
    wide = vwiden(product)
    for j in range(8):
        out[j] = vlane(wide, j)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eight_lanes_of_the_rows_dtype_round_as_numpy_does(dtype):
    """veight / veight_splat compute in the rows' own dtype (float32 rounds to float32 at each
    step, as NumPy's float32 arithmetic), vwiden then widens exactly."""
    rng = np.random.default_rng(3)
    a, b, x = (rng.standard_normal(8).astype(dtype) for _ in range(3))
    center = 0.1
    expected = (a * b) * (x - dtype(center))
    assert expected.dtype == dtype
    np.testing.assert_array_equal(_centred_products(a, b, x, center), expected.astype(np.float64))


def test_octet_operations_refuse_what_they_cannot_take():
    @njit
    def widen_ints(x):
        return vwiden(veight(x, 0))

    @njit
    def mixed(x, y):
        return vadd(voctet(x, 0), veight(y, 0))

    with pytest.raises(TypingError):
        widen_ints(np.arange(8))
    with pytest.raises(TypingError):
        mixed(np.ones(8, np.float32), np.ones(8, np.float32))


@pytest.mark.parametrize("dtype, bits", [(np.float32, 12), (np.float64, 27)])
def test_fmadd_rounds_once_and_vectorises_in_a_loop(dtype, bits):
    """a * a - (1 + 2 eps') is eps'^2 exactly, which a multiply rounded before the add loses:
    (1 + 2^-k)^2 = 1 + 2^(1-k) + 2^-2k, and 2^-2k is half a unit in the last place of 1."""
    a = dtype(1) + dtype(2.0 ** -bits)
    c = -(dtype(1) + dtype(2.0 ** (1 - bits)))

    @njit
    def fused(x, y, z):
        return fmadd(x, y, z)

    @njit
    def each(xs, ys, zs, out):  # a loop the vectoriser widens: the same roundings per element
        for i in range(xs.size):
            out[i] = fmadd(xs[i], ys[i], zs[i])
        return out

    assert a * a + c == 0  # rounded twice
    assert fused(a, a, c) == dtype(2.0 ** (-2 * bits))
    xs = np.full(37, a, dtype)
    got = each(xs, xs, np.full(37, c, dtype), np.empty(37, dtype))
    assert got.dtype == dtype and (got == dtype(2.0 ** (-2 * bits))).all()
    with pytest.raises(TypingError):
        fused(np.float32(1), np.float64(1), np.float32(1))


@pytest.mark.parametrize("dtype, int_type", [(np.float32, np.int32), (np.float64, np.int64)])
def test_opaque_returns_its_argument_bit_for_bit(dtype, int_type):
    """opaque(x) only hides x from LLVM's constant folding: every bit comes back, NaN payloads,
    signed zeros, infinities and subnormals included, and a constant that went through it
    gives the same results in a vectorised loop as the constant itself."""
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(dtype).tiny / 4, 1.0 / 3, -2.5],
                        dtype)
    payload = np.array([0x7FC00123 if dtype == np.float32 else 0x7FF8000000000123],
                       int_type).view(dtype)
    values = np.concatenate([specials, payload])

    @njit
    def through(xs, out):
        for i in range(xs.size):
            out[i] = opaque(xs[i])
        return out

    @njit
    def scaled(xs, out):
        third, half = opaque(dtype(1.0 / 3)), opaque(dtype(0.5))  # taken once, before the loop
        for i in range(xs.size):
            out[i] = fmadd(xs[i], third, half)
        return out

    @njit
    def scaled_constants(xs, out):
        for i in range(xs.size):
            out[i] = fmadd(xs[i], dtype(1.0 / 3), dtype(0.5))
        return out

    got = through(values, np.empty_like(values))
    np.testing.assert_array_equal(got.view(int_type), values.view(int_type))
    xs = np.random.default_rng(0).standard_normal(101).astype(dtype)
    np.testing.assert_array_equal(scaled(xs, np.empty_like(xs)).view(int_type),
                                  scaled_constants(xs, np.empty_like(xs)).view(int_type))
    with pytest.raises(TypingError):
        through(np.arange(3), np.empty(3, np.int64))

    @njit
    def each_of(pair):  # a tuple of floats: element by element
        return opaque(pair)

    pair = each_of((values[3], values[-1]))
    assert np.array(pair, dtype).view(int_type).tolist() == values[[3, -1]].view(int_type).tolist()
    with pytest.raises(TypingError):
        each_of((1, 2))


def _has_avx2() -> bool:
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx2(), reason="needs an x86-64 CPU with AVX2 (/proc/cpuinfo)")
def test_the_32_byte_path_is_right_when_compiled_for_avx2(tmp_path):
    """On an AVX-512 machine the kernels use 64-byte vectors; compiled for Haswell (AVX2) they
    use 32-byte ones. A child compiles for Haswell so both paths are checked on any machine."""
    code = (
        "import numpy as np\n"
        "from kernels.block import matmul_rows\n"
        "from kernels.simd import vector_bytes\n"
        "assert vector_bytes() == 32, vector_bytes()\n"
        "rng = np.random.default_rng(0)\n"
        "for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-11)):\n"
        "    for m, k, n in ((1, 1, 1), (5, 7, 9), (16, 41, 18), (8, 100, 12)):\n"
        "        x = rng.standard_normal((m, k)).astype(dtype)\n"
        "        w = rng.standard_normal((n, k)).astype(dtype)\n"
        "        out = matmul_rows(x, w, np.empty((m, n), dtype))\n"
        "        np.testing.assert_allclose(out, x @ w.T, rtol=tol, atol=tol)\n"
        "        for row in range(m):  # 2-row tiles (tree sums) = a row alone (vsum)\n"
        "            alone = matmul_rows(x[row:row + 1].copy(), w, np.empty((1, n), dtype))\n"
        "            np.testing.assert_array_equal(alone[0], out[row])\n"
        "from kernels.gemm import gemm\n"
        "for dtype, tol in ((np.float32, 1e-3), (np.float64, 1e-11)):\n"
        "    for m, k, n in ((1, 1, 1), (9, 300, 17), (100, 40, 40), (21, 263, 70)):\n"
        "        a = rng.standard_normal((m, k)).astype(dtype)\n"
        "        for b in (rng.standard_normal((k, n)).astype(dtype),\n"
        "                  np.asfortranarray(rng.standard_normal((k, n)).astype(dtype))):\n"
        "            for left in (a, np.asfortranarray(a)):\n"
        "                np.testing.assert_allclose(gemm(left, b), a @ b, rtol=tol, atol=tol)\n"
        + PACKED_TILES + GEMM_TILES + LAYERNORM_BITS +
        "print('ok', digest)\n"
    )
    # the name alone would keep the host's features (AVX-512 where it has them)
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=features_without_avx512(),
               NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    here: dict = {}
    exec(LAYERNORM_BITS, here)  # the same LayerNorms compiled for this machine's vectors
    assert result.stdout.split() == ["ok", here["digest"]]


# The batch-1 products over packed weights (a frozen model's), whose whole panels take tiles of
# 4 rows x 2 vectors with AVX2's 16 registers (8 rows with AVX-512's 32): right, and each row's
# bits the same whatever the tile, the rows around it and the columns computed; bfloat16 bits too
PACKED_TILES = (
    "from kernels.block import panel_columns\n"
    "from kernels.simd import bfloat16_bits, bfloat16_values\n"
    "from tests.test_kernels import check_packed_matmul\n"
    "for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-11)):\n"
    "    panel = panel_columns(dtype)\n"
    "    assert panel == 32 // np.dtype(dtype).itemsize * 2, panel\n"
    "    for m, k, n in ((1, 1, 1), (3, 9, 16), (4, 33, 40), (8, 64, 64), (13, 100, 70),\n"
    "                    (17, 20, 2 * panel + 3)):\n"
    "        x = rng.standard_normal((m, k)).astype(dtype)\n"
    "        w = rng.standard_normal((n, k)).astype(dtype)\n"
    "        check_packed_matmul(x, w, panel, x @ w.T, (0, n // 3, n - 1, n), tol, tol)\n"
    "x = rng.standard_normal((9, 70)).astype(np.float32)\n"
    "bits = bfloat16_bits(rng.standard_normal((45, 70)).astype(np.float32)).reshape(45, 70)\n"
    "check_packed_matmul(x, bits, panel_columns(np.float32),\n"
    "                    x @ bfloat16_values(bits.reshape(-1)).reshape(45, 70).T, (0, 45),\n"
    "                    1e-5, 1e-4)\n"
)


# Our GEMM with AVX2's 16 registers: tiles of 6 rows x 2 vectors, and a Fortran-order a's rows
# copied out per block and pass. Past a block of rows, a pass of depth and a group of panels,
# with last rows short of a tile and last columns short of a panel; splits at any row or column
GEMM_TILES = (
    "from kernels.gemm import BLOCK_ROWS, DEPTH, GROUP_PANELS, TILE_ROWS\n"
    "from tests.test_gemm import check_gemm_blocks\n"
    "assert TILE_ROWS == 6, TILE_ROWS\n"
    "for dtype in (np.float32, np.float64):\n"
    "    for m, k, n in ((BLOCK_ROWS + 11, DEPTH + 5, GROUP_PANELS * 16 + 9), (13, 2, 16),\n"
    "                    (7, DEPTH, 5), (40, 33, 200)):\n"
    "        for order_a in 'CF':\n"
    "            for order_b in 'CF':\n"
    "                a = rng.standard_normal((m, k)).astype(dtype, order=order_a)\n"
    "                b = rng.standard_normal((k, n)).astype(dtype, order=order_b)\n"
    "                check_gemm_blocks(a, b, m // 3 + 1, n // 3 + 1)\n"
)


# LayerNorm forward and backward of float32 and float64 rows of many widths, hashed: its row
# sums run in eight float64 lanes whatever the ISA, so AVX2 and AVX-512 give the same bits
LAYERNORM_BITS = (
    "import hashlib\n"
    "import numpy as np\n"
    "from kernels.layernorm import layernorm_backward, layernorm_forward\n"
    "rng = np.random.default_rng(7)\n"
    "digest = hashlib.sha256()\n"
    "for dtype in (np.float32, np.float64):\n"
    "    for c in (1, 7, 8, 13, 40, 64, 100):\n"
    "        x, dy = (rng.standard_normal((9, c)).astype(dtype) for _ in range(2))\n"
    "        w, b = (rng.standard_normal(c).astype(dtype) for _ in range(2))\n"
    "        y, mean, rstd = layernorm_forward(x, w, b, 1e-6)\n"
    "        for array in (y, mean, rstd, *layernorm_backward(dy, x, w, mean, rstd)):\n"
    "            digest.update(np.ascontiguousarray(array).tobytes())\n"
    "digest = digest.hexdigest()\n"
)


def test_vector_bytes_reads_the_features_numba_compiles_for(monkeypatch):
    import numba
    from llvmlite import binding

    host = binding.get_host_cpu_features()
    monkeypatch.setattr(numba.config, "CPU_NAME", "haswell")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    # Numba's JIT keeps the host's features whatever CPU is named
    assert vector_bytes.__wrapped__() == (64 if host.get("avx512f") else 32)
    without = features_without_avx512()
    monkeypatch.setattr(numba.config, "CPU_FEATURES", without)
    assert vector_bytes.__wrapped__() == 32
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma,+avx512f")
    assert vector_bytes.__wrapped__() == 64
    turned_on = {name[1:] for name in without.split(",") if name.startswith("+")}
    assert not any(name.startswith(("avx512", "amx", "avx10")) for name in turned_on)
    assert ("avx2" in turned_on) is bool(host.get("avx2")) and ("fma" in turned_on) is bool(
        host.get("fma"))


def test_compile_cpu_names_the_cpu_numba_compiles_for(monkeypatch):
    import numba
    from llvmlite import binding

    from kernels.simd import compile_cpu

    host = binding.get_host_cpu_name()
    assert host  # e.g. "znver4": what the machine record and the GEMM rule read
    # NUMBA_CPU_NAME (read into numba.config.CPU_NAME) wins; unset or "host" means this CPU
    try:
        for setting, expected in (("haswell", "haswell"), ("skylake-avx512", "skylake-avx512"),
                                  (None, host), ("host", host)):
            monkeypatch.setattr(numba.config, "CPU_NAME", setting)
            compile_cpu.cache_clear()  # read once per process
            assert compile_cpu() == expected
    finally:
        monkeypatch.undo()
        compile_cpu.cache_clear()
