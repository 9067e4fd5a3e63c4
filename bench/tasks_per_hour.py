"""Tasks per hour of the basket evaluation on this machine: in-process (--jobs 1), 2 local
processes (--jobs 2) and Ray on 2 local CPUs, the same tasks side by side in one run, then the
projection for a cluster from the measured cost.

    python bench/tasks_per_hour.py [--symbols 2] [--bars 4000] [--folds 2] [--configs 3]
                                   [--epochs 1] [--window 64] [--no-ray] [--out FILE]

A task is one (configuration, fold) of ``numpyconvnext.research.basket``: train atto on the
pooled symbols' training windows, calibrate and trade every symbol's test block (synthetic
markets with the same hours). Each mode runs the same tasks from scratch (a fresh report folder).
The projection divides the measured single-threaded task seconds by the training work of the
tasks (symbols x training windows x epochs) and multiplies by the work of the cluster run
(default: 30 symbols x 5 folds x 20 configurations on 3 years of 1h candles, window 128,
2 epochs), spread over ``--cluster-cpus`` CPUs with the efficiency measured here for 2 processes.
Timing a shared VM is noisy: the ratios of one run are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import machine_info, machine_line  # noqa: E402


def basket(symbols: int, bars: int):
    from numpyconvnext.data.synthetic import synthetic_candles

    candles = {f"SYN{i}USDT": synthetic_candles(bars, seed=i + 1, kind="market",
                                                planted_signal_strength=0.3) for i in range(symbols)}
    sources = {s: {"kind": "test", "symbol": s, "interval": "1h"} for s in candles}
    return candles, sources


def train_windows(n_bars: int, window: int, horizon: int, folds: int) -> list[int]:
    """Training windows of each fold (expanding walk-forward, as the basket plans them)."""
    from numpyconvnext.data.dataset import walk_forward_folds
    from numpyconvnext.data.labels import LabelConfig

    return [len(f.train) for f in walk_forward_folds(n_bars, window, LabelConfig(horizon=horizon),
                                                     n_folds=folds)]


def run_mode(name: str, candles, sources, config, grid, options: dict) -> dict:
    from numpyconvnext.research.basket import evaluate_basket

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = evaluate_basket(candles, sources, config, grid, out, quiet=True,
                                 trials_log=Path(out) / "trials.jsonl", **options)
        wall = time.perf_counter() - started
    if result.report is None:
        raise SystemExit(f"{name}: tasks failed: {result.failed}")
    seconds = result.report["cost"]["task_seconds"]
    tasks = len(seconds)
    return {"mode": name, "tasks": tasks, "wall_seconds": wall,
            "task_seconds_mean": sum(seconds.values()) / tasks,
            "tasks_per_hour": tasks / wall * 3600.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=2)
    parser.add_argument("--bars", type=int, default=4000)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--configs", type=int, default=3, help="grid size (learning rates)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--cluster-symbols", type=int, default=30)
    parser.add_argument("--cluster-folds", type=int, default=5)
    parser.add_argument("--cluster-configs", type=int, default=20)
    parser.add_argument("--cluster-cpus", type=int, default=100)
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args()

    from numpyconvnext.evaluate import EvaluationConfig

    info = machine_info()
    print(f"machine: {machine_line(info)}; load average {os.getloadavg()[0]:.1f}", flush=True)
    print("command: python bench/tasks_per_hour.py " + " ".join(sys.argv[1:]), flush=True)
    candles, sources = basket(args.symbols, args.bars)
    config = EvaluationConfig(folds=args.folds, variant="atto", epochs=args.epochs,
                              window=args.window, horizon=12, funding_rate=0.0001,
                              bootstrap_samples=200)
    grid = [{"learning_rate": 4e-4 * (1 + i)} for i in range(args.configs)]
    modes = [("jobs 1 (in-process)", {"jobs": 1}), ("jobs 2 (2 processes)", {"jobs": 2})]
    if not args.no_ray:
        try:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, logging_level="ERROR",
                     runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
            modes.append(("ray, 2 local CPUs", {"executor": "ray"}))
        except ImportError:
            print('ray: skipped (not installed; pip install -e ".[cluster]")')
    rows = []
    for name, options in modes:
        row = run_mode(name, candles, sources, config, grid, options)
        rows.append(row)
        print(f"{name:22s} {row['tasks']} tasks in {row['wall_seconds']:7.1f} s = "
              f"{row['tasks_per_hour']:7.1f} tasks/hour (mean task {row['task_seconds_mean']:.1f} s, "
              f"x{row['tasks_per_hour'] / rows[0]['tasks_per_hour']:.2f} of jobs 1)", flush=True)

    # projection: seconds per unit of training work, measured in-process (single-threaded tasks)
    measured_work = args.symbols * args.epochs * sum(
        train_windows(args.bars, args.window, 12, args.folds)) * args.configs
    unit = rows[0]["task_seconds_mean"] * rows[0]["tasks"] / measured_work
    scale_window = 128 / args.window  # cost grows linearly with the window length
    fold_windows = train_windows(26_280, 128, 12, args.cluster_folds)
    cluster_work = args.cluster_symbols * 2 * sum(fold_windows) * args.cluster_configs
    cpu_hours = unit * scale_window * cluster_work / 3600.0
    longest = unit * scale_window * args.cluster_symbols * 2 * max(fold_windows) / 3600.0
    efficiency = rows[1]["tasks_per_hour"] / (2 * rows[0]["tasks_per_hour"])
    tasks = args.cluster_folds * args.cluster_configs
    ideal = max(cpu_hours / min(args.cluster_cpus, tasks), longest)
    wall = max(cpu_hours / (min(args.cluster_cpus, tasks) * efficiency), longest / efficiency)
    print(f"projection: {args.cluster_symbols} symbols x {args.cluster_folds} folds x "
          f"{args.cluster_configs} configurations = {tasks} tasks (3 years of 1h candles, atto, "
          f"window 128, 2 epochs): {cpu_hours:.0f} CPU-hours of tasks, the longest task "
          f"{longest:.1f} h; on {args.cluster_cpus} dedicated CPUs about {ideal:.1f} h (no task "
          f"waits for a CPU), {wall:.1f} h at the 2-process efficiency measured here "
          f"({efficiency:.2f})")
    print("command for the cluster: python cli.py evaluate --symbols <30 symbols> --grid grid.toml "
          "--executor ray --address auto")
    figures = {"machine": info, "load_average": os.getloadavg(), "args": vars(args) | {"out": None},
               "modes": rows, "seconds_per_training_window_epoch_symbol": unit,
               "projection": {"tasks": tasks, "cpu_hours": cpu_hours, "longest_task_hours": longest,
                              "efficiency_2_processes": efficiency, "wall_hours": wall,
                              "wall_hours_dedicated": ideal,
                              "cluster_cpus": args.cluster_cpus}}
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
