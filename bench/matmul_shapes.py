"""NumPy's BLAS, our kernels.gemm and PyTorch on the matmuls of a training step, one thread each.

    python bench/matmul_shapes.py [--variant pico] [--batch 32]

For each stage of the variant (rows R = batch * T/4 / 2^stage, C = dims[stage], H = 4C) the six
products of a block's training step: forward z W1^T and a W2^T, backward dW2 = dy^T a,
da = dy W2, dW1 = dpre^T z, dz = dpre W1, in the operand layouts our layers use. Prints
GFLOP/s of `np.matmul`, of our `kernels.gemm.gemm` and of `torch` on the same arrays: how much
of the gap to PyTorch in training and at batch 256 is the matmul itself, and which of BLAS
and ours is the faster here (`kernels.linear.uses_own_gemm()` says which the model uses).
Needs torch (the `bench` extra); without it, exits with a message.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from statistics import median

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a benchmark owns its process

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_info, machine_key, median_seconds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernels.gemm import gemm  # noqa: E402
from kernels.linear import uses_own_gemm  # noqa: E402

DIMS = {"atto": (40, 80, 160, 320), "pico": (64, 128, 256, 512), "tiny": (96, 192, 384, 768)}


def gflops(product, flops: float) -> float:
    return flops / median_seconds(product, repeat=20, min_seconds=0.2) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="pico", choices=sorted(DIMS))
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("matmul_shapes: needs torch (pip install -e .[bench])") from None
    torch.set_num_threads(1)
    print(f"{machine_key(machine_info())}, NumPy {np.__version__} "
          f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}), "
          f"torch {torch.__version__}, 1 thread each")
    rng = np.random.default_rng(0)
    rows0 = args.batch * 64  # T = 256 after the stride-4 stem
    ratios = []
    for stage, C in enumerate(DIMS[args.variant]):
        R, H = rows0 >> stage, 4 * C
        z, dy = (rng.standard_normal((R, C), dtype=np.float32) for _ in range(2))
        a, dpre = (rng.standard_normal((R, H), dtype=np.float32) for _ in range(2))
        w1 = rng.standard_normal((H, C), dtype=np.float32)
        w2 = rng.standard_normal((C, H), dtype=np.float32)
        arrays = dict(z=z, dy=dy, a=a, dpre=dpre, w1=w1, w2=w2)
        tensors = {name: torch.from_numpy(value) for name, value in arrays.items()}
        products = {}  # name -> (NumPy product, torch product) on the same operands
        for name, left, right in (("z @ W1.T", "z", "w1.T"), ("a @ W2.T", "a", "w2.T"),
                                  ("dy.T @ a", "dy.T", "a"), ("dy @ W2", "dy", "w2"),
                                  ("dpre.T @ z", "dpre.T", "z"), ("dpre @ W1", "dpre", "w1")):
            operands = [(pool[key.removesuffix(".T")].T if key.endswith(".T")
                         else pool[key.removesuffix(".T")]) for pool in (arrays, tensors)
                        for key in (left, right)]
            products[name] = (partial(np.matmul, *operands[:2]), partial(gemm, *operands[:2]),
                              partial(torch.matmul, *operands[2:]))
        for name, (blas, own, theirs) in products.items():
            numpy_rate, own_rate, torch_rate = (gflops(product, 2 * R * C * H)
                                                for product in (blas, own, theirs))
            ratios.append((torch_rate / numpy_rate, own_rate / numpy_rate))
            print(f"stage {stage} R={R:5d} C={C:4d} H={H:5d} {name:11s} NumPy {numpy_rate:6.1f}"
                  f"  ours {own_rate:6.1f}  torch {torch_rate:6.1f} GFLOP/s  torch/NumPy "
                  f"{torch_rate / numpy_rate:.2f}x  ours/NumPy {own_rate / numpy_rate:.2f}x")
    for label, values in (("torch/NumPy", [r[0] for r in ratios]),
                          ("ours/NumPy", [r[1] for r in ratios])):
        print(f"{label}: median {median(values):.2f}x, range {min(values):.2f}-{max(values):.2f}x")
    print(f"The model's products use {'ours' if uses_own_gemm() else 'BLAS'} here "
          "(kernels.linear.uses_own_gemm)")
    print(f"Reproduce: python bench/matmul_shapes.py --variant {args.variant} --batch {args.batch}")


if __name__ == "__main__":
    main()
