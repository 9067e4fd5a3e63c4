"""Download closed candles from Bybit into a local file (the library API, not the CLI).

    python examples/fetch_data.py --symbol BTCUSDT --interval 1h --days 365

Writes data/BTCUSDT_linear_1h.csv, the file examples/train_model.py reads by default (or .json
with --format json; --category spot for spot candles), bringing an existing file up to date
(the newer candles, and older ones when it holds less than --days). Offline, it says so and
writes the synthetic market to data/SYNTHETIC-BTCUSDT_linear_1h.csv instead, a name no one
will mistake for real prices.
"""

from __future__ import annotations

import argparse

from numpyconvnext.data import (
    BybitClient,
    BybitError,
    BybitUnreachableError,
    save_candles,
    synthetic_candles,
    update_cache,
)
from numpyconvnext.data.intervals import interval_to_timedelta


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--interval", default="1h")
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--out", default="data", help="folder for the candle file")
    parser.add_argument("--format", default="csv", choices=["csv", "json"])
    parser.add_argument("--category", default="linear", choices=["linear", "spot"])
    parser.add_argument("--base-url", default=None, help="Bybit URL (default: mainnet)")
    parser.add_argument("--retry-time", type=float, default=20.0, help="seconds to keep retrying")
    args = parser.parse_args()

    client = BybitClient(args.base_url, args.category, max_retry_time_s=args.retry_time)
    try:
        result = update_cache(client, args.symbol, args.interval, args.days, args.out, args.format,
                              notice=print)
    except BybitUnreachableError as error:  # the network itself failed: fall back, loudly
        print(f"NOTICE: Bybit unreachable ({str(error).splitlines()[0][:100]}); writing the "
              "SYNTHETIC market instead - it says nothing about real prices")
        bars = int(args.days * 86_400 / interval_to_timedelta(args.interval).total_seconds())
        path = f"{args.out}/SYNTHETIC-{args.symbol.upper()}_{args.category}_{args.interval}.{args.format}"
        save_candles(synthetic_candles(bars, interval=args.interval, seed=7), path)
        print(f"{path}: {bars} synthetic candles")
        return
    except (ValueError, BybitError, OSError) as error:  # unknown symbol, a failing answer, disk
        parser.exit(2, f"error: {str(error).splitlines()[0]}\n")
    candles = result.candles
    print(f"{result.path}: {len(candles)} candles ({result.n_new} new), "
          f"{candles['timestamp'].iloc[0]:%Y-%m-%d %H:%M} .. "
          f"{candles['timestamp'].iloc[-1]:%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()
