"""Small timing helpers for the benchmarks: medians with warm-up, peak memory, matmul ceiling,
and the machine a figure was measured on."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 2,
                   min_seconds: float = 0.0) -> float:
    """Median wall time of `fn()` over `repeat` timed calls after `warmup` untimed ones.

    With `min_seconds`, keeps timing past `repeat` calls until that much time has passed
    (short calls get more samples, so their median is stable).
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * max(repeat, 1):
            break
    return float(np.median(times))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Achieved GFLOP/s of one large float32 matmul through NumPy's BLAS (the ceiling)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    seconds = median_seconds(lambda: np.matmul(a, b, out=out), repeat, warmup=1)
    return 2 * n**3 / seconds / 1e9


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
# variables that hold a framework's code below what the CPU has (an AVX2 run on an AVX-512 CPU):
# Numba's compile target, PyTorch's ATen kernels, oneDNN, MKL. ONNX Runtime has none (MLAS
# picks its kernels from CPUID), OPENBLAS_CORETYPE is recorded with NumPy's BLAS.
ISA_LIMITS = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
              "MKL_ENABLE_INSTRUCTIONS")


def cpu_fields(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The kernel's description of the first CPU, field by field up to its flags ("model
    name", "cpu family", "model", "flags", ...; what the CPU has, whatever CPUID is made to
    say), or {} where there is no such file."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
                if key.strip() == "flags":
                    break
    except OSError:
        pass
    return fields


def machine_info() -> dict:
    """CPU model, the ISA extensions that matter for float32 kernels, core count, Python.

    Every benchmark records this beside its figures: the same cloud machine type may be AVX2
    one day and AVX-512 the next.
    """
    fields = cpu_fields()
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    numbers = {}
    try:
        numbers = {key.replace(" ", "_"): int(fields[key])
                   for key in ("cpu family", "model") if key in fields}
    except ValueError:
        pass
    info = {"cpu": model, "isa": [flag for flag in ISA_FLAGS if flag in flags],
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), **numbers}
    # a cloud CPU may be named only "AMD EPYC": LLVM's name for the host tells Zen 4 from Zen 5
    microarchitecture = host_microarchitecture()
    if microarchitecture:
        info["microarchitecture"] = microarchitecture
    limits = isa_limits()
    if limits:
        info["isa_limits"] = limits
    return info


def host_microarchitecture() -> str | None:
    """LLVM's name of this CPU ("znver4", "znver5", "sapphirerapids", ...), None without llvmlite."""
    try:
        from llvmlite import binding
    except ImportError:
        return None
    return str(binding.get_host_cpu_name())


def isa_limits() -> dict[str, str]:
    """The variables of ISA_LIMITS set in this environment, with their values, and whether
    CPUID hides AVX-512 from this process (`run.py --hide-avx512`)."""
    from hide_avx512 import hidden

    limits = {name: os.environ[name] for name in ISA_LIMITS if os.environ.get(name)}
    if hidden():
        limits["CPUID"] = "AVX-512 hidden"
    return limits


def machine_key(info: dict) -> str:
    """CPU model and ISA, and the limits its code ran under if any: one machine kind."""
    name = info["cpu"]
    if info.get("microarchitecture"):
        name += f" [{info['microarchitecture']}]"
    key = f"{name} ({'/'.join(info.get('isa', [])) or 'no AVX2'})"
    limits = dict(info.get("isa_limits") or {})
    if "NUMBA_CPU_FEATURES" in limits:  # a long list: only whether AVX-512 is in it
        avx512 = "+avx512f" in limits["NUMBA_CPU_FEATURES"].split(",")
        limits["NUMBA_CPU_FEATURES"] = "<AVX-512 on>" if avx512 else "<no AVX-512>"
    if limits:
        key += " with " + " ".join(f"{name}={value}" for name, value in limits.items())
    return key


def software_info() -> dict:
    """NumPy's BLAS (threadpoolctl: library, version, kernel architecture, threading) and Numba
    (version, threading layer; starts Numba's pool), for a benchmark child's environment."""
    import numba
    import numpy

    from kernels.linear import numpy_blas, uses_own_gemm

    libraries = numpy_blas()
    lib = libraries[0].info() if libraries else {}
    numba.get_num_threads()  # launches the pool, so the layer is known
    blas_info = {key: lib.get(key) for key in ("internal_api", "version", "architecture",
                                                "threading_layer", "num_threads")}
    # a kernel forced by the environment (OpenBLAS otherwise picks one for the CPU)
    blas_info["coretype_env"] = os.environ.get("OPENBLAS_CORETYPE") or None
    return {"numpy": numpy.__version__, "blas": blas_info,
            "numba": numba.__version__, "numba_threading_layer": numba.threading_layer(),
            "model_matmul": "kernels.gemm" if uses_own_gemm() else "BLAS"}


def machine_line(info: dict) -> str:
    """One line naming the machine, for printed results (with software_info's keys when given)."""
    line = f"{machine_key(info)}, {info['cpu_count']} cores, Python {info['python']}"
    blas = info.get("blas")
    if blas:
        forced = (f", set by OPENBLAS_CORETYPE={blas['coretype_env']}"
                  if blas.get("coretype_env") else "")
        line += (f"; NumPy {info['numpy']} BLAS {blas.get('internal_api')} {blas.get('version')} "
                 f"({blas.get('architecture')} kernel{forced}); Numba {info['numba']} "
                 f"({info['numba_threading_layer']} layer)")
        if info.get("model_matmul"):
            line += f"; the model's big matmuls: {info['model_matmul']}"
    return line


def training_step(model, rng: np.random.Generator, batch: int, in_channels: int, length: int,
                  classes: int) -> Callable[[], None]:
    """One of our training steps on random data: forward, cross-entropy, backward, AdamW."""
    from numpyconvnext.losses import cross_entropy
    from numpyconvnext.optim import AdamW

    x = rng.standard_normal((batch, in_channels, length)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    optimizer = AdamW.for_model(model, lr=1e-3, weight_decay=0.05)
    model.train()

    def step():
        _, dlogits = cross_entropy(model.forward(x), y)
        model.backward(dlogits)
        optimizer.step()

    return step
