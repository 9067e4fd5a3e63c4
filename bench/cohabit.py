"""Good neighbours: our speed with PyTorch imported first and used in the same process, over
our speed alone.

    python bench/cohabit.py [--variant pico] [--rounds 4] [--tasks train,b1] [--env VAR=VALUE ...]

Each round starts one fresh process per setting (the order alternates between rounds):
  alone        numpyconvnext only
  torch        `import torch` before numpyconvnext, a torch ConvNeXt run a few times before ours
  interleaved  as torch, and a torch forward (batch 1) before every one of our timed calls
Each process times a training step (forward + cross-entropy + backward + AdamW, batch 32) and
`predict` on one window (C_in=20, T=256), both as a library user would call them: no
environment settings of ours (pass `--env` to add some, e.g. `--env GOMP_SPINCOUNT=300` for
what the CLI sets). Printed: medians over the rounds and the median of the per-round ratios
setting / alone (>= 0.8 is the target), the CPU and its ISA, the load average, and the command.
Without torch (or with BENCH_NO_TORCH=1) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
C_IN, T, CLASSES, BATCH_TRAIN = 20, 256, 3, 32
SETTINGS = ("alone", "torch", "interleaved")


def child(setting: str, variant: str, tasks: list[str], seconds: float) -> dict:
    torch_call = None
    if setting != "alone":
        import torch
        from torch_convnext import VARIANTS, ConvNeXt1DTorch

        neighbour = ConvNeXt1DTorch(C_IN, CLASSES, *VARIANTS["atto"]).eval()
        torch_window = torch.randn(1, C_IN, T)

        def torch_call():
            with torch.inference_mode():
                neighbour(torch_window)

        with torch.inference_mode():
            for _ in range(5):
                neighbour(torch.randn(8, C_IN, T))
    import numpy as np
    from measure import training_step

    from numpyconvnext import ConvNeXt1D

    before = torch_call if setting == "interleaved" else None

    def timed(fn, warmup: int, minimum: int) -> float:
        for _ in range(warmup):
            fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < minimum or time.perf_counter() - start < seconds:
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return median(times)

    rng = np.random.default_rng(0)
    model = ConvNeXt1D.from_config(variant, C_IN, CLASSES)
    result = {}
    if "train" in tasks:
        step = training_step(model, rng, BATCH_TRAIN, C_IN, T, CLASSES)
        result["train_samples_s"] = BATCH_TRAIN / timed(step, 2, 5)
    if "b1" in tasks:
        model.eval()
        window = rng.standard_normal((1, C_IN, T)).astype(np.float32)
        result["b1_ms"] = timed(lambda: model.predict(window), 20, 50) * 1e3
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="pico")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tasks", default="train,b1")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per task and process")
    parser.add_argument("--env", action="append", default=[], help="VAR=VALUE for every child")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if args.child:
        setting, variant = args.child
        print(json.dumps(child(setting, variant, tasks, args.seconds)))
        return
    command = "python bench/cohabit.py " + " ".join(sys.argv[1:])
    if importlib.util.find_spec("torch") is None or os.environ.get("BENCH_NO_TORCH") == "1":
        print("torch is not installed (or BENCH_NO_TORCH=1): nothing to compare "
              "(pip install -e .[bench]). "
              f"Reproduce: {command}")
        return
    extra = dict(item.split("=", 1) for item in args.env)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), **extra)
    from measure import machine_info, machine_line

    machine = machine_line(machine_info())
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for round_ in range(args.rounds):
        for setting in (SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", setting, args.variant, "--tasks", args.tasks,
                 "--seconds", str(args.seconds)], env=env, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{setting} child failed: {proc.stderr.strip()[-2000:]}")
            runs[setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"round {round_ + 1}/{args.rounds}: load average {os.getloadavg()[0]:.2f}",
              file=sys.stderr)
    figures = {"train": ("train_samples_s", "samples/s", False), "b1": ("b1_ms", "ms", True)}
    print(f"{args.variant}, C_in={C_IN}, T={T}; train = batch {BATCH_TRAIN} step, b1 = predict one "
          f"window; {args.rounds} rounds; env {extra or 'as given'}")
    print(f"Machine: {machine}; load average "
          f"{load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print("| task | alone | torch | interleaved | torch / alone | interleaved / alone |")
    print("|---|---|---|---|---|---|")
    for task in tasks:
        key, unit, lower_is_better = figures[task]
        values = {s: [run[key] for run in runs[s]] for s in SETTINGS}
        cells = [f"{median(values[s]):.2f} {unit}" for s in SETTINGS]
        ratios = []
        for s in SETTINGS[1:]:  # speed ratio: > 1 means faster than alone
            per_round = [(a / b) if lower_is_better else (b / a)
                         for a, b in zip(values["alone"], values[s], strict=True)]
            ratios.append(f"{median(per_round):.2f}x")
        print(f"| {task} | " + " | ".join(cells + ratios) + " |")
    print(f"Reproduce: {command}")


if __name__ == "__main__":
    main()
