"""The compile helper of `cli.py train` (numpyconvnext/precompile.py): its plan is exactly what a
training run compiles, it is started only when a kernel is missing, and stopped with the block."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from numpyconvnext import precompile

ROOT = Path(__file__).resolve().parents[1]

# every (kernel, signature) the kernels package and the backtest hold compiled or loaded in
# this process
COMPILED = """
import importlib, pkgutil, sys, tempfile
import numpy as np
from numba.core.registry import CPUDispatcher
import kernels
from numpyconvnext.precompile import compile_plan, missing

def compiled():
    found = set()
    names = ["kernels." + info.name for info in pkgutil.iter_modules(kernels.__path__)]
    for module_name in names + ["numpyconvnext.trading.backtest"]:
        module = importlib.import_module(module_name)
        for name, kernel in vars(module).items():
            if isinstance(kernel, CPUDispatcher):
                found.update((kernel.py_func.__qualname__, str(sig)) for sig in kernel.overloads)
    return found
"""

# a short run with the default window (256 bars): its batches of 32 (training) and 256
# (evaluation) and their remainders take the kernels a default run takes
RUN = COMPILED + """
from cli import main

def train():
    main(["train", "--source", "synthetic", "--bars", "2400", "--horizon", "4", "--epochs", "1",
          "--quiet", "--out", tempfile.mkdtemp()], standalone_mode=False)

if sys.argv[1] == "plan-first":
    compile_plan("train")
    assert not missing("train")
    before = compiled()
    train()
else:
    train()
    before = compiled()
    compile_plan("train")
print(sorted(compiled() - before))
"""


def run_python(script: str, *args: str, env: dict | None = None) -> str:
    environment = {**os.environ, "NUMPYCONVNEXT_COMPILE_HELPER": "0", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("wait", ["default", "cli"])
@pytest.mark.parametrize("order", ["plan-first", "train-first"])
def test_plan_is_exactly_what_a_training_run_compiles(order, wait):
    """plan-first: the run then compiles nothing (the plan is complete); train-first: the plan
    then compiles nothing (it holds nothing a run does not use). Under OpenMP's default wait
    and under the CLI's short one (the products then split in Numba's pool: kernels/split.py)."""
    env = {"GOMP_SPINCOUNT": "3000", "KMP_BLOCKTIME": "0"} if wait == "cli" else {
        name: "" for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    assert run_python(RUN, order, env=env) == "[]"


def test_plan_is_exactly_what_a_training_run_compiles_with_avx2_code(tmp_path):
    """Compiled for AVX2 the products stay with BLAS (`kernels.linear.uses_own_gemm`) and, under
    the CLI's wait, split in Numba's pool through `kernels.split.blas_products`, whose signature
    differs from our gemm's `own_products`: the plan holds that one, and only what a run uses."""
    from kernels.simd import features_without_avx512

    env = {"GOMP_SPINCOUNT": "3000", "KMP_BLOCKTIME": "0", "NUMBA_CPU_NAME": "haswell",
           "NUMBA_CPU_FEATURES": features_without_avx512(), "NUMBA_CACHE_DIR": str(tmp_path)}
    assert run_python(RUN, "plan-first", env=env) == "[]"


MISSING = """
from numpyconvnext.precompile import missing
print(missing("train"))
"""


def test_missing_on_an_empty_cache_and_without_jit(tmp_path):
    assert run_python(MISSING, env={"NUMBA_CACHE_DIR": str(tmp_path)}) == "True"
    assert run_python(MISSING, env={"NUMBA_CACHE_DIR": str(tmp_path),
                                    "NUMBA_DISABLE_JIT": "1"}) == "False"


BESIDE = """
import sys
from numpyconvnext.precompile import compiling_beside
with compiling_beside("train") as helper:
    started = helper is not None and helper.poll() is None
print(started, helper is None or helper.returncode is not None)
"""


def test_helper_starts_on_an_empty_cache_and_stops_with_the_block(tmp_path):
    cache = {"NUMBA_CACHE_DIR": str(tmp_path)}
    assert run_python(BESIDE, env={**cache, "NUMPYCONVNEXT_COMPILE_HELPER": "1"}) == "True True"
    assert run_python(BESIDE, env={**cache, "NUMPYCONVNEXT_COMPILE_HELPER": "0"}) == "False True"


def test_unknown_plan_and_usage():
    with pytest.raises(ValueError, match="no compile plan"):
        precompile.plan("nope")
    assert precompile.main([]) == 2


PREDICT = COMPILED + """
from numpyconvnext import ConvNeXt1D
from numpyconvnext.precompile import ready_for_batch1

model = ConvNeXt1D.from_config("atto", 20, 3).frozen()  # what `live` predicts with
x = np.zeros((1, 20, 256), np.float32)
if sys.argv[1] == "plan-first":
    compile_plan("predict")
    ready_for_batch1(model)  # what it compiles in this process (no helper: none is needed)
    assert not missing("predict")
    before = compiled()
    model.predict(x)
else:
    model.predict(x)
    before = compiled()
    compile_plan("predict")
print(sorted(compiled() - before))
"""


@pytest.mark.parametrize("order", ["plan-first", "predict-first"])
def test_predict_plan_is_exactly_the_batch1_network(order):
    assert run_python(PREDICT, order) == "[]"


READY = """
import numpy as np
from kernels.block import _matmul_cols, block_forward_rows
from kernels.network import network_forward_rows
from numpyconvnext import ConvNeXt1D
from numpyconvnext.precompile import ready_for_batch1

model = ConvNeXt1D.from_config("atto", 20, 3).frozen()
ready_for_batch1(model)
model.predict(np.zeros((1, 20, 256), np.float32))
# the network and the matmul were compiled by the helper and loaded here, the block compiled here
print(*(sum(kernel._cache_hits.values()) + 10 * sum(kernel._cache_misses.values())
        for kernel in (network_forward_rows, _matmul_cols, block_forward_rows)))
"""


def test_ready_for_batch1_has_the_helper_compile_the_network(tmp_path):
    cache = {"NUMBA_CACHE_DIR": str(tmp_path), "NUMPYCONVNEXT_COMPILE_HELPER": "1"}
    # hits + 10 x misses: loaded once (1) or compiled once (10)
    assert run_python(READY, env=cache) == "1 1 10"


def test_no_helper_when_no_process_can_be_started(monkeypatch):
    """A failed start (no executable, no process to be had) only means compiling alone."""
    monkeypatch.setenv("NUMPYCONVNEXT_COMPILE_HELPER", "1")
    monkeypatch.setattr(precompile, "missing", lambda name: True)
    monkeypatch.setattr(precompile, "_cores", lambda: 2)

    def refuse(*args, **kwargs):
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(precompile.subprocess, "Popen", refuse)
    with precompile.compiling_beside("train") as helper:
        assert helper is None

    def unexpected(*args, **kwargs):
        raise AssertionError("no start without an executable")

    monkeypatch.setattr(precompile.subprocess, "Popen", unexpected)
    monkeypatch.setattr(precompile.sys, "executable", "")
    with precompile.compiling_beside("train") as helper:
        assert helper is None
