"""Our GEMM against NumPy's BLAS inside the model, in one process, taking turns.

    python bench/gemm_ab.py [--variants atto,pico,tiny] [--rounds 6]

For each variant: a training step (batch 32: forward, cross-entropy, backward, AdamW) and a
batch-256 predict, with `kernels.linear.set_gemm("blas")` and `set_gemm("own")` alternating
round by round (the order flips every round), 5 steps / 3 predicts per turn. Prints each
side's median and the ratio BLAS time / our time: what `kernels.linear.uses_own_gemm` gains
or would lose on this machine, whatever it chooses by default.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import machine_info, machine_line, software_info, training_step  # noqa: E402

from kernels import linear  # noqa: E402
from numpyconvnext.model import CONFIGS, ConvNeXt1D  # noqa: E402

C_IN, T, CLASSES = 20, 256, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="atto,pico,tiny")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(machine_line({**machine_info(), **software_info()}))
    for variant in args.variants.split(","):
        rng = np.random.default_rng(0)
        model = ConvNeXt1D(in_channels=C_IN, num_classes=CLASSES, **CONFIGS[variant])
        step = training_step(model, rng, 32, C_IN, T, CLASSES)
        batch = rng.standard_normal((256, C_IN, T)).astype(np.float32)
        predict = partial(model.predict, batch)
        times = {(task, side): [] for task in ("train", "b256") for side in ("blas", "own")}
        for side in ("blas", "own"):  # compile and warm both
            linear.set_gemm(side)
            step()
            model.predict(batch)
        for round_ in range(args.rounds):
            for side in ("blas", "own") if round_ % 2 == 0 else ("own", "blas"):
                linear.set_gemm(side)
                for task, call, repeat in (("train", step, 5),
                                           ("b256", predict, 3)):
                    seconds = []
                    for _ in range(repeat):
                        start = time.perf_counter()
                        call()
                        seconds.append(time.perf_counter() - start)
                    times[task, side].append(median(seconds))
        linear.set_gemm("auto")
        for task in ("train", "b256"):
            blas, own = median(times[task, "blas"]), median(times[task, "own"])
            print(f"{variant} {task:5s}: BLAS {blas * 1e3:7.1f} ms, ours {own * 1e3:7.1f} ms, "
                  f"BLAS/ours {blas / own:.2f}x")
    print(f"The model uses {'ours' if linear.uses_own_gemm() else 'BLAS'} here by default.")
    print(f"Reproduce: python bench/gemm_ab.py --variants {args.variants} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
