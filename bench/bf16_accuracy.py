"""How much bfloat16 pointwise weights change a trained model's decisions, on real candles.

    python bench/bf16_accuracy.py CHECKPOINT [CHECKPOINT ...] [--data FILE ...] [--out JSON]

For each checkpoint and candle file (default: every CSV of ../shared/data and ../shared/data/perp),
every decidable bar is decided twice by `trading.inference.decide`: with the model as trained
(float32) and with `model.frozen("bfloat16")`. Printed per pair: the bars, the largest
|difference| of a class probability, the share of bars whose most probable class (Long / Short
/ Hold) is the same, and the share whose traded signal (after the checkpoint's confidence
threshold, which turns most bars into Hold) is the same. The last 256 bars are also decided one
window at a time (the batch-1 path that streams the bfloat16 bits) and must give the batched
probabilities to 1e-4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from measure import machine_info  # noqa: E402

from numpyconvnext.checkpoint import CheckpointError, load  # noqa: E402
from numpyconvnext.data.store import CandleFileError, load_candles  # noqa: E402
from numpyconvnext.trading.inference import (  # noqa: E402
    decide,
    preprocessing_of,
    valid_decision_indices,
)

SHARED = ROOT.parent / "shared" / "data"
BATCH1_BARS = 256


def compare(model, candles, symbol: str) -> dict:
    frozen = model.frozen("bfloat16")
    full = decide(model, candles, symbol=symbol)
    half = decide(frozen, candles, symbol=symbol)
    delta = np.abs(full.probabilities - half.probabilities)
    end = valid_decision_indices(len(candles), preprocessing_of(model, symbol))[-BATCH1_BARS:]
    one_by_one = decide(frozen, candles, end, batch_size=1, symbol=symbol)
    batch1_gap = float(np.abs(one_by_one.probabilities - half.probabilities[-len(end):]).max())
    classes = full.probabilities.argmax(axis=1), half.probabilities.argmax(axis=1)
    return {"bars": len(full), "max_abs_probability_change": float(delta.max()),
            "mean_abs_probability_change": float(delta.mean()),
            "same_class": float(np.mean(classes[0] == classes[1])),
            "same_signal": float(np.mean(full.signal == half.signal)),
            "signals_changed": int(np.sum(full.signal != half.signal)),
            "traded_signals": int(np.sum(full.signal != 2)),
            "batch1_vs_batched_max_gap": batch1_gap}


def compare_all(checkpoints: list[str], files: list[str]) -> list[dict]:
    """`compare` for every checkpoint on every candle file, printing a line for each."""
    rows = []
    for path in checkpoints:
        model = load(path)
        variant = "x".join(str(d) for d in model.config["dims"])
        for file in files:
            symbol = Path(file).name.split("_")[0]
            candles = load_candles(file, warn_gaps=False)  # old exchange data has known gaps
            result = compare(model, candles, symbol)
            result.update(checkpoint=path, dims=variant, data=Path(file).name)
            rows.append(result)
            print(f"{Path(path).parent.name:>8} {Path(file).name:>22}: {result['bars']:6d} bars, "
                  f"max |dp| {result['max_abs_probability_change']:.1e}, mean |dp| "
                  f"{result['mean_abs_probability_change']:.1e}, same class "
                  f"{100 * result['same_class']:.2f} %, same signal "
                  f"{100 * result['same_signal']:.2f} % ({result['signals_changed']} of "
                  f"{result['traded_signals']} traded changed); "
                  f"batch 1 vs batched {result['batch1_vs_batched_max_gap']:.1e}", flush=True)
            if result["batch1_vs_batched_max_gap"] > 1e-4:
                raise SystemExit("the batch-1 bfloat16 path disagrees with the batched one")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    files = args.data or sorted(str(p) for p in [*SHARED.glob("*.csv"), *SHARED.glob("perp/*.csv")])
    if not files:
        raise SystemExit(f"no candle files (looked in {SHARED}); pass --data FILE")
    try:
        rows = compare_all(args.checkpoints, files)
    except (CheckpointError, CandleFileError, OSError) as error:
        raise SystemExit(f"bf16_accuracy: {error}") from None
    bars = sum(r["bars"] for r in rows)
    same = sum(r["same_class"] * r["bars"] for r in rows) / bars
    same_signal = sum(r["same_signal"] * r["bars"] for r in rows) / bars
    worst = max(r["max_abs_probability_change"] for r in rows)
    print(f"\nAll: {bars} decisions, same class {100 * same:.2f} % (lowest per pair "
          f"{100 * min(r['same_class'] for r in rows):.2f} %), same signal "
          f"{100 * same_signal:.2f} %, max |dp| {worst:.1e}")
    print("Reproduce: python bench/bf16_accuracy.py " + " ".join(sys.argv[1:]))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_info(), "rows": rows,
                                              "same_class": same, "same_signal": same_signal,
                                              "max_abs_probability_change": worst,
                                              "command": "python bench/bf16_accuracy.py "
                                                         + " ".join(sys.argv[1:])}, indent=2) + "\n")


if __name__ == "__main__":
    main()
