"""A/B comparison of batch-1 latency between settings or checkouts, in alternating processes.

    python bench/batch1_ab.py [--variants atto,pico,tiny] [--rounds 6] [--busy]
        [--config NAME:VAR=VALUE,VAR=VALUE ...] [--root PATH ...]

Each round runs one fresh process per configuration (the order alternates between rounds),
each timing `model.predict` on one window (C_in=20, T=256) 300 times after warm-up and
reporting the median. Printed: per configuration the median over rounds, and the median of
the per-round ratios first/this (> 1: this one is faster), which cancels a load that drifts
between rounds. A configuration is environment variables (e.g. `spin:GOMP_SPINCOUNT=300`) and/or
a source tree (`--root`, e.g. a `git worktree` of the commit before a change);
`BENCH_PRECISION=float32` (or `bfloat16`) in a configuration times `model.frozen(...)` instead, the
copy `live` runs (packed pointwise weights on AVX-512; bench/run.py times it). `--busy` keeps
one core busy with another process meanwhile (a loaded machine). OpenBLAS runs on one thread,
Numba on all cores, as in bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, sys, time
import numpy as np
from numpyconvnext import ConvNeXt1D
for variant in sys.argv[1].split(","):
    model = ConvNeXt1D.from_config(variant, 20, 3).eval()
    if os.environ.get("BENCH_PRECISION"):
        model = model.frozen(os.environ["BENCH_PRECISION"])
    x = np.random.default_rng(0).standard_normal((1, 20, 256)).astype(np.float32)
    for _ in range(30):
        model.predict(x)
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        model.predict(x)
        times.append(time.perf_counter() - t0)
    print(np.median(times) * 1e3)
"""


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = {}
    for item in filter(None, assignments.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config {text!r}: expected NAME:VAR=VALUE[,VAR=VALUE]")
        env[key] = value
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="atto,pico,tiny")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--config", action="append", default=[],
                        help="NAME:VAR=VALUE,... (repeat; default: this tree as it is)")
    parser.add_argument("--root", action="append", default=[],
                        help="source tree per configuration, in --config order (default: this one)")
    parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    args = parser.parse_args()
    configs = [parse_config(c) for c in args.config] or [("default", {})]
    roots = args.root or [str(ROOT)] * len(configs)
    if len(roots) != len(configs):
        if args.config:
            parser.error("give one --root per --config, or none")
        configs = [(Path(r).name, {}) for r in roots]
    variants = args.variants.split(",")
    busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None)
    results: dict[str, list[list[float]]] = {name: [] for name, _ in configs}
    try:
        for round_ in range(args.rounds):
            order = list(zip(configs, roots, strict=True))
            for (name, extra), root in (order if round_ % 2 == 0 else order[::-1]):
                env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=root, **extra)
                if "GOMP_SPINCOUNT" in extra:
                    env.pop("OMP_WAIT_POLICY", None)
                out = subprocess.run([sys.executable, "-c", CHILD, args.variants], env=env,
                                     cwd=root, capture_output=True, text=True, check=True).stdout
                results[name].append([float(v) for v in out.split()])
    finally:
        if busy is not None:
            busy.kill()
    first = results[configs[0][0]]
    print(f"batch-1 predict, ms (median of {args.rounds} rounds); ratio = {configs[0][0]} / this, "
          f"median of per-round ratios" + (" (one core busy)" if args.busy else ""))
    for name, rows in results.items():
        cells = []
        for i, variant in enumerate(variants):
            ms = median([row[i] for row in rows])
            r = median([a[i] / b[i] for a, b in zip(first, rows, strict=True)])
            cells.append(f"{variant} {ms:.2f} ({r:.3f}x)")
        print(f"  {name:>12}: " + "  ".join(cells))
    print("Reproduce: python bench/batch1_ab.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
