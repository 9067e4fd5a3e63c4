"""Train a ConvNeXt1D on a candle file and report test metrics (the library API, not the CLI).

    python examples/fetch_data.py                  # writes data/BTCUSDT_linear_1h.csv
    python examples/train_model.py                 # trains on it: models/<run>/model.npz
    python examples/live_signals.py                # signals from the newest models/*/model.npz

Any CSV or JSON candle file works (--data FILE; the format: docs/data.md), e.g. the spec's
`--data data/btcusdt_1h.json --epochs 100`. The epoch default, 12, is the CLI's (`python cli.py
train`): early stopping usually ends hourly runs well before 100. Without the file, it says so
and trains on the synthetic market.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from numpyconvnext.config import TrainingConfig
from numpyconvnext.data.source import resolve_candles
from numpyconvnext.workflow import train_run

DEFAULT_DATA = "data/BTCUSDT_linear_1h.csv"  # examples/fetch_data.py's default output
DEFAULT_EPOCHS = 12  # as `python cli.py train`


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="candle file (.csv or .json); default: what fetch_data.py writes")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--model", default="atto", help="variant: atto femto pico nano tiny small base")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--bars", type=int, default=None, help="use only the most recent N candles")
    parser.add_argument("--out", default="models")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    if Path(args.data).exists():
        candles, source = resolve_candles(path=args.data, last_bars=args.bars)
    else:
        print(f"NOTICE: {args.data} not found (run examples/fetch_data.py first); training on the "
              "SYNTHETIC market instead")
        candles, source = resolve_candles("synthetic", last_bars=args.bars)
    config = TrainingConfig(epochs=args.epochs, variant=args.model, window=args.window,
                            horizon=args.horizon)
    result = train_run(candles, source, config, out_dir=args.out, quiet=args.quiet)

    test, baseline = result.test_metrics["test"], result.test_metrics["test_baseline"]
    print(f"best epoch {result.best_epoch}: validation loss {result.best_val_loss:.4f}")
    direction = test["direction_accuracy"]
    print(f"test accuracy {test['accuracy']:.3f} (always-{baseline['class']} baseline "
          f"{baseline['accuracy']:.3f}), direction accuracy "
          + ("n/a (no Long/Short calls)" if direction is None else f"{direction:.3f}"))
    print(f"model saved to {result.best_path}")


if __name__ == "__main__":
    main()
