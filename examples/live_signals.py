"""Print a trading signal every time a candle closes (the library API, not the CLI).

    python examples/live_signals.py --symbol BTCUSDT --interval 1h

Uses the newest models/*/model.npz, where examples/train_model.py saves (the chain:
fetch_data.py -> train_model.py -> live_signals.py, each with its defaults), and Bybit's public
market data; it places no orders. Offline (or with --replay FILE), it says so and replays the
last --bars candles of a local candle file - or of the synthetic market - as if each had just
closed, through the very same decision path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import numpyconvnext
from numpyconvnext.data import BybitClient, load_candles
from numpyconvnext.data.source import resolve_candles
from numpyconvnext.trading.inference import decide
from numpyconvnext.trading.live import LiveError, format_human, run_live, signal_record


def newest_model(folder: str) -> Path:
    models = sorted(Path(folder).glob("*/model.npz"), key=lambda p: p.stat().st_mtime)
    if not models:
        sys.exit(f"no model under {folder}/: train one first (python examples/train_model.py)")
    return models[-1]


def replay(model, candles, symbol: str, interval: str, bars: int) -> None:
    """Decide for each of the last `bars` candles as if it had just closed."""
    end_index = np.arange(len(candles) - bars, len(candles))
    decisions = decide(model, candles, end_index)
    for i in range(len(decisions)):
        record = signal_record(decisions, i, symbol, interval)
        print(json.dumps(record))
        print(format_human(record), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--interval", default="1h")
    parser.add_argument("--model", default=None, help="checkpoint (default: newest models/*/model.npz)")
    parser.add_argument("--models", default="models", help="folder searched for the newest model")
    parser.add_argument("--base-url", default=None, help="Bybit URL (default: mainnet)")
    parser.add_argument("--once", action="store_true", help="one signal, then exit")
    parser.add_argument("--replay", default=None, help="candle file to replay instead of Bybit")
    parser.add_argument("--bars", type=int, default=24, help="candles to replay")
    parser.add_argument("--retry-time", type=float, default=20.0, help="seconds to keep retrying")
    args = parser.parse_args()

    model = numpyconvnext.load(args.model or newest_model(args.models))
    if args.replay:
        replay(model, load_candles(args.replay), args.symbol, args.interval, args.bars)
        return
    client = BybitClient(args.base_url, max_retry_time_s=args.retry_time)
    try:
        run_live(model, client, args.symbol, args.interval, once=True)
    except LiveError as error:
        print(f"NOTICE: Bybit unreachable ({str(error)[:100]}); replaying the SYNTHETIC market "
              "instead - these signals say nothing about real prices", file=sys.stderr)
        candles, _ = resolve_candles("synthetic", interval=args.interval, days=120)
        replay(model, candles, args.symbol, args.interval, args.bars)
        return
    if not args.once:
        run_live(model, client, args.symbol, args.interval)


if __name__ == "__main__":
    main()
