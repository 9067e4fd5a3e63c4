"""bench/hide_avx512: a child process that sees no AVX-512 in CPUID, for the benchmark's AVX2 runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

import hide_avx512  # noqa: E402

needs_shim = pytest.mark.skipif(hide_avx512.unavailable() is not None,
                                reason=f"cannot hide AVX-512 here: {hide_avx512.unavailable()}")

# what a process sees: LLVM's host features (CPUID), our kernels' vector width and GEMM, and
# NumPy's OpenBLAS kernel
PROBE = """
import json, threadpoolctl
from llvmlite import binding
from kernels.simd import vector_bytes
from kernels.linear import uses_own_gemm
features = binding.get_host_cpu_features()
blas = [info.get("architecture") for info in threadpoolctl.threadpool_info()
        if info["internal_api"] == "openblas"]
print(json.dumps({"avx512f": features.get("avx512f", False), "avx2": features.get("avx2", False),
                  "fma": features.get("fma", False), "vector_bytes": vector_bytes(),
                  "own_gemm": uses_own_gemm(), "openblas": blas}))
"""


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in env.items() if not k.startswith(("NUMBA_CPU", "OPENBLAS_CORETYPE"))}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=300)


def _words(code: str, env: dict) -> list[str]:
    """What a child running `code` printed, split into words (it must exit 0)."""
    proc = _run(code, env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.fixture(scope="module")
def shim_env(tmp_path_factory) -> dict:
    library = hide_avx512.build(tmp_path_factory.mktemp("shim"))
    return {**os.environ, **hide_avx512.environment(library, os.environ)}


@needs_shim
def test_every_library_of_the_child_sees_avx2_only(shim_env):
    plain = json.loads(_run(PROBE, dict(os.environ)).stdout)
    assert plain["avx512f"] and plain["vector_bytes"] == 64
    proc = _run(PROBE, shim_env)
    assert proc.returncode == 0, proc.stderr
    hidden = json.loads(proc.stdout)
    assert not hidden["avx512f"] and hidden["avx2"] and hidden["fma"]
    assert hidden["vector_bytes"] == 32 and not hidden["own_gemm"]
    assert all(kernel not in ("SkylakeX", "Cooperlake", "SapphireRapids")
               for kernel in hidden["openblas"])


@needs_shim
def test_pytorch_takes_avx2_and_onnx_runtime_loads(shim_env):
    """PyTorch says which kernels it picked; ONNX Runtime has no such query (its MLAS reads
    CPUID as it loads: bench/NOTES.md round 25 counted the masked answers), so only that it
    loads and runs beside the filter."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    code = ("import torch, onnxruntime, onnx, numpy as np\n"
            "from onnx import helper, TensorProto\n"
            "print(torch.backends.cpu.get_cpu_capability())\n"
            "graph = helper.make_graph([helper.make_node('MatMul', ['a', 'b'], ['c'])], 'g',\n"
            "    [helper.make_tensor_value_info(n, TensorProto.FLOAT, [64, 64]) for n in 'ab'],\n"
            "    [helper.make_tensor_value_info('c', TensorProto.FLOAT, [64, 64])])\n"
            "model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)],\n"
            "                          ir_version=8)\n"
            "session = onnxruntime.InferenceSession(model.SerializeToString(),\n"
            "                                       providers=['CPUExecutionProvider'])\n"
            "a, b = np.random.default_rng(0).standard_normal((2, 64, 64)).astype(np.float32)\n"
            "c = session.run(None, {'a': a, 'b': b})[0]\n"
            "print(np.allclose(c, a @ b, rtol=1e-4, atol=1e-4))\n")
    assert _words(code, shim_env) == ["AVX2", "True"]


@needs_shim
def test_the_script_prints_the_library_to_preload(tmp_path):
    proc = subprocess.run([sys.executable, "bench/hide_avx512.py"], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    library = Path(proc.stdout.strip())
    assert library.parent.parent == tmp_path and library.name.startswith("hide_avx512-")
    probe = _run(PROBE, {**os.environ, "LD_PRELOAD": str(library)})
    assert json.loads(probe.stdout)["avx512f"] is False


@needs_shim
def test_threads_and_grandchildren_see_it_too(shim_env):
    code = ("import threading, subprocess, sys\n"
            "from llvmlite import binding\n"
            "seen = []\n"
            "t = threading.Thread(target=lambda: seen.append("
            "binding.get_host_cpu_features().get('avx512f', False)))\n"
            "t.start(); t.join()\n"
            "child = subprocess.run([sys.executable, '-c', 'from llvmlite import binding; "
            "print(binding.get_host_cpu_features().get(\"avx512f\", False))'], "
            "capture_output=True, text=True).stdout.strip()\n"
            "print(seen[0], child)\n")
    assert _words(code, shim_env) == ["False", "False"]


@needs_shim
def test_a_real_segmentation_fault_still_reaches_the_process_handler(shim_env):
    """faulthandler installs its SIGSEGV handler after ours: it still reports a real crash, and
    the process still dies of it."""
    code = ("import faulthandler, ctypes\n"
            "faulthandler.enable()\n"
            "from llvmlite import binding\n"
            "binding.get_host_cpu_features()\n"  # CPUID after faulthandler's handler is in
            "ctypes.string_at(0)\n")
    proc = _run(code, shim_env)
    assert proc.returncode == -11
    assert "Segmentation fault" in proc.stderr
    # and without a handler of its own the process dies as usual
    proc = _run("import ctypes; ctypes.string_at(0)", shim_env)
    assert proc.returncode == -11


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="the CPU checks come after the platform's")
def test_it_says_why_it_cannot_run(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert hide_avx512.unavailable(str(cpuinfo)) == "this CPU has no AVX-512 to hide"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert "no CPUID faulting" in hide_avx512.unavailable(str(cpuinfo))
    assert hide_avx512.unavailable(str(tmp_path / "missing")) == "this CPU has no AVX-512 to hide"


def test_environment_keeps_what_the_user_preloads_and_tunes():
    env = hide_avx512.environment("/x/hide_avx512-abc.so",
                                  {"LD_PRELOAD": "/y/libjemalloc.so",
                                   "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["LD_PRELOAD"] == "/x/hide_avx512-abc.so /y/libjemalloc.so"
    assert env["GLIBC_TUNABLES"].startswith("glibc.malloc.arena_max=2:glibc.cpu.hwcaps=-AVX512F")
    assert hide_avx512.hidden(env) and not hide_avx512.hidden({"LD_PRELOAD": "/y/libjemalloc.so"})


def test_machine_info_records_the_hidden_isa(monkeypatch):
    from measure import machine_info, machine_line

    monkeypatch.setenv("LD_PRELOAD", "/tmp/hide_avx512-0123.so")
    info = machine_info()
    assert info["isa_limits"]["CPUID"] == "AVX-512 hidden"
    assert "CPUID=AVX-512 hidden" in machine_line(info)
