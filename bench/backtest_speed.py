"""Backtest speed: the whole-series compiled pass against the same bars stepped one by one.

    python bench/backtest_speed.py [--bars 40000]

Both run the same strategy on the same synthetic candles and give identical equity curves (the
test suite checks that); the ratio says what the single compiled pass buys over a live-style
loop. Prints bars per second of each, the ratio, and the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import machine_info, machine_line, median_seconds  # noqa: E402

from numpyconvnext.data.synthetic import synthetic_candles  # noqa: E402
from numpyconvnext.trading.backtest import Backtester, backtest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=40_000)
    args = parser.parse_args()

    candles = synthetic_candles(args.bars, seed=1)
    rng = np.random.default_rng(2)
    targets = rng.choice([-1.0, 0.0, 1.0], size=args.bars)
    rows = candles[["open", "high", "low", "close"]].to_numpy()

    def stepped() -> None:
        bt = Backtester()
        for t in range(args.bars):
            bt.step(tuple(rows[t]), targets[t])
        bt.result(periods_per_year=8760.0)

    whole = median_seconds(lambda: backtest(candles, targets, stop_loss=0.01), repeat=5)
    step = median_seconds(stepped, repeat=1, warmup=1)
    print(f"{args.bars} bars on {machine_line(machine_info())}")
    print(f"whole series  {args.bars / whole:12,.0f} bars/s  ({whole * 1e3:.1f} ms)")
    print(f"bar by bar    {args.bars / step:12,.0f} bars/s  ({step * 1e3:.1f} ms)")
    print(f"ratio         {step / whole:12.1f}x")
    print(f"\nReproduce: python bench/backtest_speed.py --bars {args.bars}")


if __name__ == "__main__":
    main()
