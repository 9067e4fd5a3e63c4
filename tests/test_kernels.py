"""Every kernel: Numba == plain-NumPy reference (float32 and float64), backward == finite
differences (float64) on hypothesis-drawn shapes and values."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels import dwconv, gelu, layernorm, linear, reference, residual
from kernels.adamw import adamw_update
from tests.gradcheck import directional_check, elementwise_check
from tests.test_interop import randomised

SETTINGS = settings(max_examples=15, deadline=None)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

# channels up to 72: past four 16-lane float32 vectors of AVX-512, so the explicit-SIMD kernels
# run their four-vectors-at-a-time loops (dwconv), single full vectors and a partial one
shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 24), st.integers(1, 72), st.sampled_from([1, 3, 5, 7, 9, 11])
)


def arrays(seed: int, *shapes_, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes_]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes, seed=st.integers(0, 2**16))
@example(shape=(2, 9, 70, 7), seed=1)  # four full float32 vectors of AVX-512, then a partial one
@SETTINGS
def test_dwconv_matches_reference(dtype, shape, seed):
    B, T, C, K = shape
    x, w, b, dy = arrays(seed, (B, T, C), (K, C), (C,), (B, T, C), dtype=dtype)
    np.testing.assert_allclose(dwconv.dwconv_forward(x, w, b), reference.dwconv_forward(x, w, b),
                               **TOL[dtype])
    for ours, ref in zip(dwconv.dwconv_backward(dy, x, w), reference.dwconv_backward(dy, x, w),
                         strict=True):
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours, ref, **TOL[dtype])
    # a skip gradient added to dx as it is stored: the same bits as adding it afterwards
    dskip = arrays(seed + 1, (B, T, C), dtype=dtype)[0]
    plain, skipped = dwconv.dwconv_backward(dy, x, w), dwconv.dwconv_backward(dy, x, w, dskip)
    np.testing.assert_array_equal(skipped[0], plain[0] + dskip)
    for ours, without in zip(skipped[1:], plain[1:], strict=True):
        np.testing.assert_array_equal(ours, without)


@pytest.mark.parametrize("B, T", [(0, 5), (2, 0)])
def test_dwconv_backward_of_nothing_is_zero(B, T):
    """No rows (an empty batch or window): dx is empty, dw and db are zeros (nothing summed)."""
    x = np.ones((B, T, 70), np.float32)
    w = np.ones((7, 70), np.float32)
    dx, dw, db = dwconv.dwconv_backward(x, x, w, x)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, np.zeros((7, 70), np.float32))
    np.testing.assert_array_equal(db, np.zeros(70, np.float32))


@given(shape=shapes, seed=st.integers(0, 2**16))
@SETTINGS
def test_dwconv_backward_finite_differences(shape, seed):
    B, T, C, K = shape
    x, w, b, r = arrays(seed, (B, T, C), (K, C), (C,), (B, T, C))
    rng = np.random.default_rng(seed)
    dx, dw, db = dwconv.dwconv_backward(r, x, w)

    def loss():
        return float(np.sum(dwconv.dwconv_forward(x, w, b) * r))

    for array, grad in ((x, dx), (w, dw), (b, db)):
        directional_check(loss, array, grad, rng)
        elementwise_check(loss, array, grad, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes, seed=st.integers(0, 2**16))
@SETTINGS
def test_dwconv_layernorm_fused_matches_composition(dtype, shape, seed):
    B, T, C, K = shape
    x, w, b, nw, nb = arrays(seed, (B, T, C), (K, C), (C,), (C,), (C,), dtype=dtype)
    y, z, mean, rstd = dwconv.dwconv_layernorm_forward(x, w, b, nw, nb, 1e-6)
    y_ref = reference.dwconv_forward(x, w, b)
    z_ref, mean_ref, rstd_ref = reference.layernorm_forward(y_ref, nw, nb, 1e-6)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(mean, mean_ref, **TOL[dtype])
    # rstd amplifies rounding when a row is nearly constant (C=1 rows are exactly constant)
    np.testing.assert_allclose(z, z_ref, **tol)
    np.testing.assert_allclose(rstd, rstd_ref, rtol=tol["rtol"])
    # inference: z alone, normalised where it was convolved: the same bits as the training kernel
    inference = dwconv.dwconv_layernorm_inference_into(x, w, b, nw, nb, 1e-6, np.empty_like(x))
    np.testing.assert_array_equal(inference, z)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 40), c=st.integers(2, 24), seed=st.integers(0, 2**16))
@SETTINGS
@example(n=5, c=2, seed=3933)  # a row of two values 0.001 apart (seed 131)
def test_layernorm_matches_reference(dtype, n, c, seed):
    x, w, b, dy = arrays(seed, (n, c), (c,), (c,), (n, c), dtype=dtype)
    ours = layernorm.layernorm_forward(x, w, b, 1e-6)
    ref = reference.layernorm_forward(x, w, b, 1e-6)
    # x - mean loses the digits the rows share: a relative error of about eps * |x| / std,
    # magnified by rstd. Such rows (a spread of 1e-3 around 1.5) are where the two differ
    # most, so the tolerance grows with that condition number instead of excluding them.
    condition = float(np.max(np.abs(x) * ref[2][:, None])) * float(np.max(np.abs(w), initial=1.0))
    slack = max(1.0, 4 * np.finfo(dtype).eps * condition / TOL[dtype]["atol"])
    rtol, atol = TOL[dtype]["rtol"] * slack, TOL[dtype]["atol"] * slack
    for a, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, r, rtol=rtol, atol=atol)
    y, mean, rstd = ours
    for a, r in zip(layernorm.layernorm_backward(dy, x, w, mean, rstd),
                    reference.layernorm_backward(dy, x, w, mean, rstd), strict=True):
        np.testing.assert_allclose(a, r, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_of_rows_whose_mean_is_exactly_zero(dtype):
    """The row sums are eight running sums; a mean of exactly 0 must still give the variance."""
    x = np.array([[-1, 1, -2, 2, 3, -3, 0.5, -0.5, 4, -4, 0], [0] * 11], dtype=dtype)
    w, b = np.ones(11, dtype), np.zeros(11, dtype)
    y, mean, rstd = layernorm.layernorm_forward(x, w, b, 1e-6)
    np.testing.assert_array_equal(mean, [0, 0])
    np.testing.assert_allclose(rstd, [1 / np.sqrt(np.mean(x[0] ** 2) + 1e-6), 1 / np.sqrt(1e-6)],
                               rtol=1e-6)
    np.testing.assert_allclose(y, reference.layernorm_forward(x, w, b, 1e-6)[0], rtol=1e-6,
                               atol=1e-6)


# >= 3 channels: over 2 the normalised output jumps from -1 to +1 within sqrt(eps) of equal
# values, a curvature no central difference follows (the forward/backward equalities above
# cover 2 channels against the reference)
@given(n=st.integers(1, 20), c=st.integers(3, 16), seed=st.integers(0, 2**16),
       eps=st.sampled_from([1e-6, 1e-3]))
@SETTINGS
def test_layernorm_backward_finite_differences(n, c, seed, eps):
    x, w, b, r = arrays(seed, (n, c), (c,), (c,), (n, c))
    rng = np.random.default_rng(seed)
    y, mean, rstd = layernorm.layernorm_forward(x, w, b, eps)
    dx, dw, db = layernorm.layernorm_backward(r, x, w, mean, rstd)

    def loss():
        return float(np.sum(layernorm.layernorm_forward(x, w, b, eps)[0] * r))

    for array, grad in ((x, dx), (w, dw), (b, db)):
        directional_check(loss, array, grad, rng)
        elementwise_check(loss, array, grad, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 30), c=st.integers(1, 20), seed=st.integers(0, 2**16))
@SETTINGS
@example(n=29, c=10, seed=48)  # h = -5.65 with dy = 3.15 (seed 208)
def test_gelu_matches_reference(dtype, n, c, seed):
    h, b, dy = arrays(seed, (n, c), (c,), (n, c), dtype=dtype)
    h = h * 3  # reach the tails
    tol = TOL[dtype]

    def assert_backward_close(ours, ref):
        # dy * GELU'(h): GELU''s absolute error (float32: up to 7e-6 near |h| = 5.6, see
        # kernels/gelu.py) comes out multiplied by |dy|
        bound = tol["rtol"] * np.abs(ref) + tol["atol"] * np.maximum(np.abs(dy), 1.0)
        excess = np.abs(ours.astype(np.float64) - ref) - bound
        assert excess.max() <= 0, f"worst at {np.unravel_index(excess.argmax(), ref.shape)}"

    np.testing.assert_allclose(gelu.gelu_forward(h), reference.gelu_forward(h), **tol)
    assert_backward_close(gelu.gelu_backward(dy, h), reference.gelu_backward(dy, h))
    y, pre = gelu.bias_gelu_forward(h.copy(), b)
    y_ref, pre_ref = reference.bias_gelu_forward(h, b)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(pre, pre_ref, **tol)
    # inference, in place: the same bits as the training kernel's y
    np.testing.assert_array_equal(gelu.bias_gelu_inplace(h.copy(), b), y)
    dpre, db = gelu.bias_gelu_backward(dy.copy(), pre)
    dpre_ref, db_ref = reference.bias_gelu_backward(dy, pre_ref)
    assert_backward_close(dpre, dpre_ref)
    np.testing.assert_allclose(db, db_ref, rtol=tol["rtol"] * 10,
                               atol=tol["atol"] * 10 * max(1.0, float(np.abs(dy).max())))


def test_gelu_constants_taken_opaque_are_the_constants():
    """The kernels take GELU's float32 constants through `opaque` (`gelu_constants`), the
    batch-1 network as frozen constants (`GELU_CONSTANTS`): the same values field by field,
    so the same bits from both."""
    from numba import njit

    @njit
    def taken(x):
        return gelu.gelu_constants(x)

    @njit
    def with_frozen(h, b, out):
        for n in range(h.shape[0]):
            for c in range(h.shape[1]):
                out[n, c] = gelu.gelu_scalar(h[n, c] + b[c], gelu.GELU_CONSTANTS)
        return out

    constants = taken(np.zeros((1, 1), np.float32))
    assert constants._fields == gelu.GELU_CONSTANTS._fields
    assert all(np.float32(a).tobytes() == b.tobytes()
               for a, b in zip(constants, gelu.GELU_CONSTANTS, strict=True))
    assert taken(np.zeros((1, 1))) == ()  # float64: libm, no constants
    rng = np.random.default_rng(3)
    h = (rng.standard_normal((37, 53)) * 3).astype(np.float32)
    h[0, :6] = [0.0, -4.5, 4.5, 1e4, -1e4, 5.6]  # both sides of the clamp of erf at |u| = 4
    b = rng.standard_normal(53).astype(np.float32)
    np.testing.assert_array_equal(gelu.bias_gelu_inplace(h.copy(), b).view(np.int32),
                                  with_frozen(h, b, np.empty_like(h)).view(np.int32))


def test_gelu_known_values():
    x = np.array([[0.0, 1.0, -1.0, 3.0]])
    # x * Phi(x) with Phi(1) = 0.8413447460685429, Phi(3) = 0.9986501019683699
    expected = [0.0, 0.8413447460685429, -1 + 0.8413447460685429, 3 * 0.9986501019683699]
    np.testing.assert_allclose(gelu.gelu_forward(x)[0], expected, rtol=1e-14, atol=1e-15)


@given(n=st.integers(1, 12), c=st.integers(1, 10), seed=st.integers(0, 2**16))
@SETTINGS
def test_bias_gelu_backward_finite_differences(n, c, seed):
    h, b, r = arrays(seed, (n, c), (c,), (n, c))
    h *= 2
    rng = np.random.default_rng(seed)
    _, pre = gelu.bias_gelu_forward(h.copy(), b)
    dh, db = gelu.bias_gelu_backward(r.copy(), pre)

    def loss():
        return float(np.sum(gelu.bias_gelu_forward(h.copy(), b)[0] * r))

    for array, grad in ((h, dh), (b, db)):
        directional_check(loss, array, grad, rng)
        elementwise_check(loss, array, grad, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 20), c_in=st.integers(1, 12), c_out=st.integers(1, 12),
       seed=st.integers(0, 2**16))
@SETTINGS
def test_linear_matches_reference_and_finite_differences(dtype, n, c_in, c_out, seed):
    x, w, b, r = arrays(seed, (n, c_in), (c_out, c_in), (c_out,), (n, c_out), dtype=dtype)
    np.testing.assert_allclose(linear.linear_forward(x, w, b), reference.linear_forward(x, w, b),
                               **TOL[dtype])
    grads = linear.linear_backward(r, x, w)
    for a, ref in zip(grads, reference.linear_backward(r, x, w), strict=True):
        np.testing.assert_allclose(a, ref, **TOL[dtype])
    if dtype == np.float64:
        rng = np.random.default_rng(seed)

        def loss():
            return float(np.sum(linear.linear_forward(x, w, b) * r))

        for array, grad in zip((x, w, b), grads, strict=True):
            directional_check(loss, array, grad, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(B=st.integers(1, 3), t_out=st.integers(1, 8), c_in=st.integers(1, 6),
       c_out=st.integers(1, 6), s=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
@SETTINGS
def test_patchify_matches_reference_and_finite_differences(dtype, B, t_out, c_in, c_out, s, seed):
    T = t_out * s
    x, w, b, r = arrays(seed, (B, T, c_in), (c_out, c_in, s), (c_out,), (B, t_out, c_out),
                        dtype=dtype)
    np.testing.assert_allclose(linear.patchify_forward(x, w, b),
                               reference.patchify_forward(x, w, b), **TOL[dtype])
    grads = linear.patchify_backward(r, x, w)
    for a, ref in zip(grads, reference.patchify_backward(r, x, w), strict=True):
        np.testing.assert_allclose(a, ref, **TOL[dtype])
    if dtype == np.float64:
        rng = np.random.default_rng(seed)

        def loss():
            return float(np.sum(linear.patchify_forward(x, w, b) * r))

        for array, grad in zip((x, w, b), grads, strict=True):
            directional_check(loss, array, grad, rng)
            elementwise_check(loss, array, grad, rng)


@given(lead=st.lists(st.integers(1, 3), max_size=2), m=st.integers(1, 9), n=st.integers(1, 9),
       dtype=st.sampled_from([np.float32, np.float64]))
@SETTINGS
def test_swap_last_axes_is_a_contiguous_transposed_copy(lead, m, n, dtype):
    x = np.arange(np.prod(lead, dtype=int) * m * n, dtype=dtype).reshape(*lead, m, n)
    y = linear.swap_last_axes(x)
    assert y.flags.c_contiguous and y.dtype == x.dtype and not np.shares_memory(x, y)
    np.testing.assert_array_equal(y, np.swapaxes(x, -1, -2))


@given(B=st.integers(1, 3), T=st.integers(1, 10), C=st.integers(1, 8), seed=st.integers(0, 2**16))
@SETTINGS
def test_residual_matches_formula_and_finite_differences(B, T, C, seed):
    x, z, gamma, r = arrays(seed, (B, T, C), (B, T, C), (C,), (B, T, C))
    keep = np.array([0.0, 1.25, 1.0])[:B]
    out = residual.residual_forward(x, z, gamma, keep)
    np.testing.assert_allclose(out, x + keep[:, None, None] * gamma * z, rtol=1e-14)
    dz, dgamma = residual.residual_backward(r, z, gamma, keep)
    rng = np.random.default_rng(seed)

    def loss():
        return float(np.sum(residual.residual_forward(x, z, gamma, keep) * r))

    directional_check(loss, z, dz, rng)
    directional_check(loss, gamma, dgamma, rng)
    # pwconv2's bias, added to the branch before it (bias_residual_forward), summed on the way
    dbias = np.full(C, np.nan)
    dz2, dgamma2 = residual.residual_backward(r, z, gamma, keep, dbias)
    np.testing.assert_array_equal(dz2, dz)
    np.testing.assert_array_equal(dgamma2, dgamma)
    np.testing.assert_allclose(dbias, dz.reshape(-1, C).sum(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 50), step=st.integers(1, 20), wd=st.sampled_from([0.0, 0.05]),
       seed=st.integers(0, 2**16))
@SETTINGS
def test_adamw_matches_reference(dtype, n, step, wd, seed):
    p, g, m = arrays(seed, (n,), (n,), (n,), dtype=dtype)
    v = np.abs(arrays(seed + 1, (n,), dtype=dtype)[0])
    expected = reference.adamw_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, wd, step)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    adamw_update(p2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-8, wd, step)
    for ours, ref in zip((p2, m2, v2), expected, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=TOL[dtype]["rtol"], atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), seed=st.integers(0, 2**16))
@SETTINGS
def test_matmul_rows_matches_reference(dtype, m, k, n, seed):
    from kernels.block import matmul_rows

    x, w = arrays(seed, (m, k), (n, k), dtype=dtype)
    out = matmul_rows(x, w, np.empty((m, n), dtype=dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(out, reference.linear_forward(x, w, np.zeros(n, dtype)),
                               rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes, seed=st.integers(0, 2**16))
@SETTINGS
def test_block_forward_rows_matches_reference(dtype, shape, seed):
    from kernels.block import block_forward_rows, matmul_cols_address

    B, T, C, K = shape
    x, wt, dwb, nw, nb, w1, b1, w2, b2, gamma = arrays(
        seed, (B, T, C), (K, C), (C,), (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C), (C,), (C,),
        dtype=dtype)
    keep = np.array([1.0, 0.0, 1.25], dtype=dtype)[:B]
    out = block_forward_rows(x, wt, dwb, nw, nb, 1e-6, w1, b1, w2, b2, gamma, keep,
                             np.empty((1, B * T, C), dtype), np.empty((B * T, 4 * C), dtype),
                             np.empty_like(x), 1, matmul_cols_address(dtype, dtype))
    z, _, _ = reference.layernorm_forward(reference.dwconv_forward(x, wt, dwb), nw, nb, 1e-6)
    a = reference.gelu_forward(reference.linear_forward(z.reshape(B * T, C), w1, b1))
    branch = reference.linear_forward(a, w2, b2).reshape(B, T, C)
    expected = x + keep[:, None, None] * gamma * branch
    # LayerNorm of a nearly constant row amplifies rounding (C=1 rows are exactly constant)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out, expected, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 40), c=st.integers(2, 24), seed=st.integers(0, 2**16))
@SETTINGS
def test_layernorm_serial_equals_parallel(dtype, n, c, seed):
    x, w, b = arrays(seed, (n, c), (c,), (c,), dtype=dtype)
    for a, r in zip(layernorm.layernorm_forward_serial(x, w, b, 1e-6),
                    layernorm.layernorm_forward(x, w, b, 1e-6), strict=True):
        np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=st.integers(1, 30), k=st.integers(1, 20), n=st.integers(1, 20), transposed=st.booleans(),
       seed=st.integers(0, 2**16))
@SETTINGS
def test_matmul_split_across_threads_matches_numpy(dtype, m, k, n, transposed, seed):
    a, b = arrays(seed, (k, m) if transposed else (m, k), (k, n), dtype=dtype)
    a = a.T if transposed else a
    saved = linear.SPLIT_FLOPS
    try:
        linear.SPLIT_FLOPS = 0
        with linear.split_matmuls(2):
            out = np.full((m, n), np.nan, dtype=dtype)
            got = linear.matmul(a, b, out=out)
            fresh = linear.matmul(a, b)
    finally:
        linear.SPLIT_FLOPS = saved
    assert got is out
    np.testing.assert_allclose(out, a @ b, **TOL[dtype])
    np.testing.assert_allclose(fresh, a @ b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes, seed=st.integers(0, 2**16))
@SETTINGS
def test_block_forward_rows_split_by_columns_has_same_bits(dtype, shape, seed):
    import numba

    from kernels.block import block_forward_rows, matmul_cols_address

    B, T, C, K = shape
    args = arrays(seed, (B, T, C), (K, C), (C,), (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C),
                  (C,), (C,), dtype=dtype)
    keep = np.array([1.0, 0.0, 1.25], dtype=dtype)[:B]

    def run(parts):
        return block_forward_rows(*args[:5], 1e-6, *args[5:], keep,
                                  np.empty((parts, B * T, C), dtype),
                                  np.empty((B * T, 4 * C), dtype), np.empty_like(args[0]), parts,
                                  matmul_cols_address(dtype, dtype))

    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        split = [run(parts) for parts in (2, 3)]
    finally:
        numba.set_num_threads(saved)
    for out in split:
        np.testing.assert_array_equal(out, run(1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(dims=st.lists(st.integers(1, 12), min_size=4, max_size=4),
       depths=st.lists(st.integers(0, 2), min_size=4, max_size=4), c_in=st.integers(1, 5),
       classes=st.integers(1, 4), batch_steps=st.sampled_from([(1, 32), (1, 64), (2, 64), (1, 256)]),
       packed=st.booleans(), seed=st.integers(0, 2**16))
@SETTINGS
def test_network_forward_rows_matches_reference(dtype, dims, depths, c_in, classes, batch_steps,
                                                packed, seed):
    """Pointwise weights as stored (as an unfrozen model's batch-1 predict reads them), or packed
    as a frozen model packs them."""
    import numba

    from kernels.block import panel_columns
    from kernels.network import addresses, network_forward_rows
    from numpyconvnext import ConvNeXt1D

    # off the init: every parameter matters
    model = randomised(ConvNeXt1D(dims, depths, c_in, classes, dtype=dtype), seed)
    B, T = batch_steps
    x = np.random.default_rng(seed + 1).standard_normal((B, T, c_in)).astype(dtype)
    expected = reference.convnext_forward(model.state_dict(), depths, x)
    with mock.patch("numpyconvnext.model.panel_columns", panel_columns if packed else lambda _: 0):
        pointwise = model.frozen(np.dtype(dtype).name)._pointwise

    def run(parts, threads):
        return network_forward_rows(x, model.flat_params, model._spans, np.array(dims),
                                    np.array(depths), 7, 1e-6, np.array(parts, dtype=np.int64),
                                    threads, pointwise, addresses(dtype, dtype, packed))

    saved = numba.get_num_threads()
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    try:
        numba.set_num_threads(threads)
        # blocks of stages 0, 2, 3 split, the downsamples into stages 1 and 3
        split = run([threads, 1, threads, threads, 1, threads, 1, threads], threads)
        assert numba.get_num_threads() == threads  # set back after the serial stage
        whole = run([1] * 8, 1)
        assert numba.get_num_threads() == 1  # the network's setter works
    finally:
        numba.set_num_threads(saved)
    assert whole.shape == (B, classes) and whole.dtype == dtype
    np.testing.assert_array_equal(split, whole)  # the thread count does not change a bit
    # LayerNorm of a nearly constant row amplifies float32 rounding (dims of 1 are constant)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(whole, expected, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(n=st.integers(1, 40), m=st.integers(1, 50), seed=st.integers(0, 2**16))
@SETTINGS
def test_sum_leading_equals_numpy_axis_sum(dtype, n, m, seed):
    from kernels.reduce import sum_leading

    (partial,) = arrays(seed, (n, m), dtype=dtype)
    total = sum_leading(partial)
    assert total.dtype == dtype and total.shape == (m,)
    # rows added in order, as the kernels' partial sums were before: the same bits as a loop
    expected = np.zeros(m, dtype)
    for row in partial:
        expected += row
    np.testing.assert_array_equal(total, expected)
    np.testing.assert_allclose(total, partial.sum(axis=0), **TOL[dtype])


def test_stage_parts_split_only_the_stages_with_enough_work():
    from kernels.block import SPLIT_WORK, block_parts
    from kernels.network import stage_parts

    # one window of 256 bars: 64, 32, 16, 8 rows per stage
    # the blocks' threads per stage, then the downsamples' (a quarter of a pwconv's work;
    # the stem's product never splits)
    assert stage_parts(64, (40, 80, 160, 320), 2, SPLIT_WORK).tolist() == [1] * 8  # atto
    assert stage_parts(64, (64, 128, 256, 512), 2, SPLIT_WORK).tolist() == [1, 1, 2, 2] + [1] * 4
    assert stage_parts(64, (96, 192, 384, 768), 2, SPLIT_WORK).tolist() == [1, 2, 2, 2,
                                                                             1, 1, 1, 2]  # tiny
    assert stage_parts(64, (64, 128, 256, 512), 1, SPLIT_WORK).tolist() == [1] * 8
    assert stage_parts(128, (40, 80, 160, 320), 2, SPLIT_WORK).tolist() == [1, 1, 1, 2] + [1] * 4
    assert stage_parts(64, (40, 80, 160, 320), 2, 0).tolist() == [2, 2, 2, 2, 1, 2, 2, 2]  # awake
    assert block_parts(SPLIT_WORK // 4, 1, 3) == 3 and block_parts(SPLIT_WORK // 4 - 1, 1, 3) == 1


@given(dims=st.lists(st.integers(1, 12), min_size=4, max_size=4),
       depths=st.lists(st.integers(0, 2), min_size=4, max_size=4), c_in=st.integers(1, 5),
       packed=st.booleans(), seed=st.integers(0, 2**16))
@SETTINGS
def test_network_forward_rows_with_bfloat16_pointwise_weights(dims, depths, c_in, packed, seed):
    """With the pointwise weights given as bfloat16 bits (as stored, or packed) the network
    computes the reference model whose pointwise weights are those bfloat16 values (widening
    is exact)."""
    import numba

    from kernels.block import panel_columns
    from kernels.network import addresses, network_forward_rows
    from numpyconvnext import ConvNeXt1D

    # frozen("bfloat16") holds the bits (`_pointwise`) and their values (its state dict); its
    # rounding itself is checked in tests/test_model.py
    with mock.patch("numpyconvnext.model.panel_columns", panel_columns if packed else lambda _: 0):
        model = randomised(ConvNeXt1D(dims, depths, c_in, 3), seed).frozen("bfloat16")
    assert model._pointwise_packed == packed
    x = np.random.default_rng(seed + 1).standard_normal((1, 64, c_in)).astype(np.float32)
    got = network_forward_rows(x, model.flat_params, model._spans, np.array(dims),
                               np.array(depths), 7, 1e-6, np.ones(8, dtype=np.int64),
                               numba.get_num_threads(), model._pointwise,
                               addresses(np.float32, np.uint16, packed))
    expected = reference.convnext_forward(model.state_dict(), depths, x)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)


def test_addresses_only_for_the_compiled_dtypes():
    from kernels.block import block_rows_address, matmul_cols_address

    for dtype, pointwise in [(np.float64, np.uint16), (np.float32, np.float64), (np.int32, np.int32)]:
        for address in (block_rows_address, matmul_cols_address):
            with pytest.raises(TypeError, match="no few-row kernel for"):
                address(dtype, pointwise)


def test_call_block_rows_refuses_a_strided_array():
    from numba import njit
    from numba.core.errors import TypingError

    from kernels.pointer import call_block_rows

    @njit
    def call(x, vector, matrix):
        call_block_rows(0, x, matrix, vector, vector, vector, 1e-6, matrix, vector, matrix,
                        vector, vector, vector, x, matrix, x, 1, 0)

    vector, matrix = np.zeros(2, np.float32), np.zeros((2, 2), np.float32)
    strided = np.zeros((1, 2, 4), np.float32)[:, :, ::2]
    with pytest.raises(TypingError, match="x must be a C-contiguous float32 array of 3"):
        call(strided, vector, matrix)


@pytest.mark.parametrize("dtype, weights", [(np.float32, np.float32), (np.float64, np.float64),
                                            (np.float32, np.uint16)])
@given(m=st.integers(1, 20), k=st.integers(1, 40), n=st.integers(1, 20), seed=st.integers(0, 2**16))
@SETTINGS
def test_matmul_through_its_address_has_the_same_bits(dtype, weights, m, k, n, seed):
    """call_matmul_cols runs _matmul_cols through its address: the same bits as calling it
    directly, for each piece of a column split."""
    from numba import njit
    from numba.core.errors import TypingError

    from kernels.block import _matmul_cols, matmul_cols_address
    from kernels.pointer import call_matmul_cols
    from kernels.simd import bfloat16_bits

    x, w = arrays(seed, (m, k), (n, k), dtype=dtype)
    w = bfloat16_bits(w) if weights == np.uint16 else w

    @njit
    def through(address, x, w, out, n0, n1):
        call_matmul_cols(address, x, w, out, n0, n1)
        return out

    cut = n // 2
    got = np.full((m, n), np.nan, dtype)
    through(matmul_cols_address(dtype, weights), x, w, got, 0, cut)
    through(matmul_cols_address(dtype, weights), x, w, got, cut, n)
    np.testing.assert_array_equal(got, _matmul_cols(x, w, np.empty((m, n), dtype), 0, n))
    strided = np.zeros((2, 4), w.dtype)[:, ::2]
    with pytest.raises(TypingError, match="w must be a C-contiguous"):
        through(0, x, strided, got, 0, n)


@given(values=st.lists(st.floats(-(2.0**127), 2.0**127, width=32), min_size=1, max_size=50))
@SETTINGS
def test_bfloat16_rounding_is_nearest_even(values):
    from kernels.simd import bfloat16_bits, bfloat16_values

    x = np.array(values, np.float32)
    back = bfloat16_values(bfloat16_bits(x)).astype(np.float64)
    # the neighbours of x in bfloat16 (8 significant bits): rounding picks the nearer one
    exponent = np.floor(np.log2(np.maximum(np.abs(x.astype(np.float64)), 2.0**-133)))
    step = 2.0 ** (np.maximum(exponent, -126) - 7)
    assert (np.abs(back - x) <= step / 2).all()
    np.testing.assert_array_equal(bfloat16_values(bfloat16_bits(back.astype(np.float32))), back)
    # ties go to the even neighbour: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7
    ties = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8)], np.float32)
    np.testing.assert_array_equal(bfloat16_values(bfloat16_bits(ties)), [1.0, 1 + 2.0**-6, -1.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        bfloat16_bits(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="beyond"):
        bfloat16_bits(np.array([3.4e38], np.float32))


def check_packed_matmul(x, weight, panel, expected, bounds, rtol, atol):
    """`_matmul_cols_packed` of x [M, K] with `weight` [N, K] (floats, or bfloat16 bits) packed
    in panels of `panel` columns: `expected` to the tolerance, and the same bits with the
    columns computed in the spans between `bounds`, and for the second half of the rows and
    each row alone (whichever tile computes a row). The AVX2 child of tests/test_simd.py runs
    it too, where whole panels take tiles of 4 rows instead of 8."""
    from kernels.block import _matmul_cols_packed, pack_columns

    (m, k), n = x.shape, weight.shape[0]
    packed = pack_columns(weight, panel).reshape(k, n)
    whole = _matmul_cols_packed(x, packed, np.full((m, n), np.nan, x.dtype), 0, n)
    np.testing.assert_allclose(whole, expected, rtol=rtol, atol=atol)
    parts = np.full((m, n), np.nan, x.dtype)
    for n0, n1 in zip(bounds[:-1], bounds[1:], strict=True):
        _matmul_cols_packed(x, packed, parts, n0, n1)
    np.testing.assert_array_equal(parts, whole)
    for start, stop in [(m // 2, m)] + [(row, row + 1) for row in range(m)]:
        rows = np.ascontiguousarray(x[start:stop])
        np.testing.assert_array_equal(
            _matmul_cols_packed(rows, packed, np.empty((stop - start, n), x.dtype), 0, n),
            whole[start:stop])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=st.integers(1, 20), k=st.integers(1, 40), n=st.integers(1, 80),
       cuts=st.lists(st.integers(0, 80), max_size=3), seed=st.integers(0, 2**16))
@SETTINGS
def test_matmul_cols_packed_matches_reference_with_the_same_bits_however_split(dtype, m, k, n,
                                                                              cuts, seed):
    from kernels.block import panel_columns

    x, w = arrays(seed, (m, k), (n, k), dtype=dtype)
    bounds = sorted({0, n, *(min(c, n) for c in cuts)})  # columns cut anywhere, not just panels
    check_packed_matmul(x, w, panel_columns(dtype),
                        reference.linear_forward(x, w, np.zeros(n, dtype)), bounds,
                        rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=st.integers(1, 20), k=st.integers(1, 40), n=st.integers(1, 80), parts=st.integers(1, 3),
       seed=st.integers(0, 2**16))
@SETTINGS
def test_matmul_split_gives_the_bits_of_one_call(dtype, m, k, n, parts, seed):
    import numba

    from kernels.block import matmul_cols_address, matmul_rows, matmul_split

    x, w = arrays(seed, (m, k), (n, k), dtype=dtype)
    whole = matmul_rows(x, w, np.full((m, n), np.nan, dtype))
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(min(parts, numba.config.NUMBA_NUM_THREADS))
        split = matmul_split(x, w, np.full((m, n), np.nan, dtype), parts,
                             matmul_cols_address(dtype, dtype))
    finally:
        numba.set_num_threads(saved)
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_allclose(whole, reference.linear_forward(x, w, np.zeros(n, dtype)),
                               rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


def test_pack_columns_keeps_each_panel_as_one_run():
    from kernels.block import pack_columns

    w = np.arange(5 * 3).reshape(5, 3)  # [N=5, K=3]: panels of 2 columns of w.T, then 1
    assert pack_columns(w, 2).tolist() == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11, 12, 13, 14]


def test_matmul_cols_packed_reads_bfloat16_bits():
    from kernels.block import panel_columns
    from kernels.simd import bfloat16_bits, bfloat16_values

    x, w = arrays(5, (9, 70), (45, 70), dtype=np.float32)
    bits = bfloat16_bits(w).reshape(w.shape)
    check_packed_matmul(x, bits, panel_columns(np.float32),
                        x @ bfloat16_values(bits.reshape(-1)).reshape(w.shape).T, (0, 20, 45),
                        rtol=1e-5, atol=1e-4)
