"""The CPU's float32 multiply-add peak, measured: what no GEMM can pass.

The sgemm rate (`measure.matmul_gflops`) says how fast a BLAS runs here; this says how fast
the cores can go at all, so that a ratio to PyTorch can be read against the hardware: when
the products already run near this peak, only fewer multiply-adds make a step faster.

Each thread runs CHAINS independent chains of fused multiply-adds on vectors as wide as the
code is compiled for (16 float32 lanes with AVX-512, 8 with AVX2), acc = acc * m + b, the
accumulators held in registers (ten chains cover a 4-cycle latency at two FMAs per cycle; ten
vectors fit AVX2's sixteen registers). 2 FLOPs per lane per FMA.

    python bench/fma_peak.py [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.simd import vector_bytes, vfma, vsplat, vsum  # noqa: E402

CHAINS = 10


@njit(cache=True)
def _chains(seed, steps):
    """CHAINS independent multiply-add chains, `steps` FMAs each; returns a sum of their lanes
    (so that nothing is left out as unused)."""
    m, b = vsplat(seed, 10), vsplat(seed, 11)
    a0, a1, a2, a3, a4 = (vsplat(seed, 0), vsplat(seed, 1), vsplat(seed, 2), vsplat(seed, 3),
                          vsplat(seed, 4))
    a5, a6, a7, a8, a9 = (vsplat(seed, 5), vsplat(seed, 6), vsplat(seed, 7), vsplat(seed, 8),
                          vsplat(seed, 9))
    for _ in range(steps):
        a0 = vfma(b, a0, m)
        a1 = vfma(b, a1, m)
        a2 = vfma(b, a2, m)
        a3 = vfma(b, a3, m)
        a4 = vfma(b, a4, m)
        a5 = vfma(b, a5, m)
        a6 = vfma(b, a6, m)
        a7 = vfma(b, a7, m)
        a8 = vfma(b, a8, m)
        a9 = vfma(b, a9, m)
    return (vsum(a0) + vsum(a1) + vsum(a2) + vsum(a3) + vsum(a4) + vsum(a5) + vsum(a6)
            + vsum(a7) + vsum(a8) + vsum(a9))


@njit(cache=True, parallel=True)
def _chains_on_threads(seed, steps, threads):
    out = np.empty(threads, dtype=seed.dtype)
    for t in prange(threads):
        out[t] = _chains(seed, steps)
    return out.sum()


def fma_peak_gflops(threads: int = 1, seconds: float = 0.3, repeat: int = 3) -> float:
    """float32 GFLOP/s of independent fused multiply-adds on `threads` threads (best of
    `repeat` runs of about `seconds` each; Numba's pool must have that many threads)."""
    seed = np.linspace(0.5, 0.6, 16, dtype=np.float32)
    seed[10], seed[11] = 0.999, 1e-4  # m, b: the chains stay finite and normal
    flops_per_step = CHAINS * 2 * lanes_of_float32()
    run = (lambda steps: _chains(seed, steps)) if threads == 1 else (
        lambda steps: _chains_on_threads(seed, steps, threads))
    run(1000)  # compile
    steps = 1 << 16
    while True:  # grow the run until it takes long enough to time
        start = time.perf_counter()
        run(steps)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4 or steps >= 1 << 34:
            break
        steps *= 4
    steps = max(steps, int(steps * seconds / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(steps)
        best = min(best, time.perf_counter() - start)
    return threads * steps * flops_per_step / best / 1e9


def lanes_of_float32() -> int:
    """float32 lanes of the vectors the kernels are compiled with."""
    return vector_bytes() // 4


def main(argv: list[str] | None = None) -> None:
    import numba
    from measure import machine_info, machine_line, matmul_gflops

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    args = parser.parse_args(argv)
    print(machine_line(machine_info()))
    one = fma_peak_gflops(1)
    many = fma_peak_gflops(args.threads) if args.threads > 1 else one
    sgemm = matmul_gflops()
    print(f"float32 FMA peak ({lanes_of_float32()} lanes): one thread {one:.0f} GFLOP/s, "
          f"{args.threads} threads {many:.0f} GFLOP/s; NumPy's sgemm (2048^2, its own threads) "
          f"{sgemm:.0f} GFLOP/s = {sgemm / many * 100:.0f} % of the {args.threads}-thread peak")
    print(f"reproduce: python bench/fma_peak.py --threads {args.threads}")


if __name__ == "__main__":
    main()
