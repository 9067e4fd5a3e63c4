"""kernels/reference.py on its own: it imports without Numba, uses the standard library's erf,
and its residual / drop path / block functions agree with the Numba kernels and with finite
differences (the other ops: tests/test_kernels.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import reference, residual
from tests.gradcheck import directional_check

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=15, deadline=None)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}

NO_NUMBA = """
import sys

class NoNumba:
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba is blocked for this test")
        return None

sys.meta_path.insert(0, NoNumba())
import numpy as np
from kernels import reference
x = np.linspace(-3, 3, 7)[None, :]
assert np.allclose(reference.gelu_forward(x)[0, 3], 0.0)
print("ok", "numba" in sys.modules)
"""


def test_reference_imports_and_runs_without_numba():
    result = subprocess.run([sys.executable, "-c", NO_NUMBA], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "False"]


def test_gelu_reference_is_the_standard_library_erf():
    x = np.array([-2.5, -1.0, 0.0, 0.3, 1.0, 4.0])
    expected = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    assert reference.gelu_forward(x).tolist() == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(B=st.integers(1, 3), T=st.integers(1, 10), C=st.integers(1, 8), seed=st.integers(0, 2**16))
@SETTINGS
def test_residual_kernels_match_reference(dtype, B, T, C, seed):
    rng = np.random.default_rng(seed)
    x, branch, dout = (rng.standard_normal((B, T, C)).astype(dtype) for _ in range(3))
    gamma = rng.standard_normal(C).astype(dtype)
    keep = np.array([0.0, 1.25, 1.0], dtype=dtype)[:B]
    np.testing.assert_allclose(residual.residual_forward(x, branch, gamma, keep),
                               reference.residual_forward(x, branch, gamma, keep), **TOL[dtype])
    for ours, ref in zip(residual.residual_backward(dout, branch, gamma, keep),
                         reference.residual_backward(dout, branch, gamma, keep), strict=True):
        np.testing.assert_allclose(ours, ref, **TOL[dtype])
    bias = rng.standard_normal(C).astype(dtype)
    fused_branch = branch.copy()
    out = residual.bias_residual_forward(x, fused_branch, bias, gamma, keep, np.empty_like(x))
    np.testing.assert_allclose(fused_branch, branch + bias, **TOL[dtype])
    np.testing.assert_allclose(out, reference.residual_forward(x, branch + bias, gamma, keep),
                               **TOL[dtype])


@given(B=st.integers(1, 3), T=st.integers(1, 10), C=st.integers(1, 8), seed=st.integers(0, 2**16))
@SETTINGS
def test_residual_reference_backward_finite_differences(B, T, C, seed):
    rng = np.random.default_rng(seed)
    x, branch, r = (rng.standard_normal((B, T, C)) for _ in range(3))
    gamma = rng.standard_normal(C)
    keep = np.array([0.0, 1.25, 1.0])[:B]
    dbranch, dgamma = reference.residual_backward(r, branch, gamma, keep)

    def loss():
        return float(np.sum(reference.residual_forward(x, branch, gamma, keep) * r))

    directional_check(loss, branch, dbranch, rng)
    directional_check(loss, gamma, dgamma, rng)
    directional_check(loss, x, r, rng)  # dx = dout: the residual passes it straight through


def test_drop_path_keep_factors():
    keep = reference.drop_path_keep(0.25, 20_000, np.random.default_rng(0))
    assert set(np.unique(keep)) == {0.0, 1 / 0.75}
    assert abs(keep.mean() - 1.0) < 0.03  # E[keep] = 1: training matches evaluation on average
    assert (reference.drop_path_keep(0.0, 5, np.random.default_rng(0)) == 1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(B=st.integers(1, 2), T=st.integers(1, 12), C=st.integers(2, 6), seed=st.integers(0, 2**16))
@SETTINGS
def test_block_reference_matches_the_block_kernel(dtype, B, T, C, seed):
    from kernels.block import block_forward_rows, matmul_cols_address

    rng = np.random.default_rng(seed)
    shapes = {"dwconv.weight": (C, 1, 7), "dwconv.bias": (C,), "norm.weight": (C,),
              "norm.bias": (C,), "pwconv1.weight": (4 * C, C), "pwconv1.bias": (4 * C,),
              "pwconv2.weight": (C, 4 * C), "pwconv2.bias": (C,), "gamma": (C,)}
    state = {f"s.{k}": rng.standard_normal(v).astype(dtype) for k, v in shapes.items()}
    x = rng.standard_normal((B, T, C)).astype(dtype)
    keep = np.array([1.25, 0.0], dtype=dtype)[:B]
    p = {k[2:]: v for k, v in state.items()}
    out = block_forward_rows(x, np.ascontiguousarray(p["dwconv.weight"][:, 0, :].T), p["dwconv.bias"],
                             p["norm.weight"], p["norm.bias"], 1e-6, p["pwconv1.weight"],
                             p["pwconv1.bias"], p["pwconv2.weight"], p["pwconv2.bias"], p["gamma"],
                             keep, np.empty((1, B * T, C), dtype), np.empty((B * T, 4 * C), dtype),
                             np.empty_like(x), 1, matmul_cols_address(dtype, dtype))
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == np.float64 else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out, reference.block_forward(x, state, "s.", keep), **tol)
