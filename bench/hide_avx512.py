"""Run a benchmark child as on a CPU without AVX-512: bench/hide_avx512.c, preloaded.

The environment variables of round 14 (`NUMBA_CPU_FEATURES`, `ATEN_CPU_CAPABILITY`,
`ONEDNN_MAX_CPU_ISA`, ...) hold Numba, PyTorch and oneDNN to AVX2, but ONNX Runtime has no such
switch: its kernels come from CPUID. The preloaded library hides AVX-512, AVX10 and AMX from
every CPUID of the process (Linux's CPUID faulting), so every framework, ONNX Runtime included,
and NumPy's OpenBLAS pick their AVX2 code, as on an AVX2 machine with this core.

    python bench/run.py --hide-avx512 ...      # every child of the run
    LD_PRELOAD=$(python bench/hide_avx512.py) python bench/batch1_ab.py ...   # any other script
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from measure import cpu_fields

SOURCE = Path(__file__).resolve().parent / "hide_avx512.c"
# glibc picked its string functions before the library runs: its tunables hide AVX-512 there
GLIBC_HWCAPS = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX512ER,-AVX512PF"


def unavailable(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """Why AVX-512 cannot be hidden here, or None if it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    flags = set(cpu_fields(cpuinfo).get("flags", "").split())
    if "avx512f" not in flags:
        return "this CPU has no AVX-512 to hide"
    if "cpuid_fault" not in flags:
        return "this CPU (or its hypervisor) has no CPUID faulting (flag cpuid_fault)"
    if not compiler():
        return "no C compiler (cc, gcc or clang) to build bench/hide_avx512.c"
    return None


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def build(directory: str | Path | None = None) -> Path:
    """Compile bench/hide_avx512.c into a shared library (once per version of the source) and
    return its path. Raises RuntimeError with the reason where it cannot be used."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"cannot hide AVX-512: {reason}")
    source = SOURCE.read_bytes()
    directory = Path(directory or Path(tempfile.gettempdir()) / "numpyconvnext-bench")
    directory.mkdir(parents=True, exist_ok=True)
    library = directory / f"hide_avx512-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if not library.exists():
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([compiler(), "-O2", "-shared", "-fPIC", "-o", str(partial),
                               str(SOURCE), "-ldl"], capture_output=True, text=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"cannot build {SOURCE.name}: {proc.stderr.strip()}")
        os.replace(partial, library)  # whole or not at all, for a run that starts beside us
    return library


def environment(library: str | Path, env: Mapping[str, str]) -> dict[str, str]:
    """The variables that make a child of `env` start with AVX-512 hidden (to update it with)."""
    preload = " ".join(filter(None, (str(library), env.get("LD_PRELOAD"))))
    tunables = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), GLIBC_HWCAPS)))
    return {"LD_PRELOAD": preload, "GLIBC_TUNABLES": tunables}


def hidden(env: Mapping[str, str] = os.environ) -> bool:
    """Whether a process of this environment runs with AVX-512 hidden (this library preloaded)."""
    return any(Path(item).name.startswith("hide_avx512")
               for item in env.get("LD_PRELOAD", "").replace(":", " ").split())


if __name__ == "__main__":
    import sys

    try:
        print(build())
    except RuntimeError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
