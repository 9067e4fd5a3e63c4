"""numpyconvnext command line: a thin click front over the library.

Heavy modules (numba, pandas, the model) are imported inside each command so that
`python cli.py --help` stays instant. User errors become one readable line and exit code 2.
"""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ConvNeXt for 1D market data: fetch candles, train, backtest, run live signals."""


@main.command()
@click.option("--symbol", default="BTCUSDT", show_default=True, help="Bybit symbol.")
@click.option("--interval", default="1h", show_default=True,
              help="1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d 1w 1M, or Bybit's 1..720 D W M.")
@click.option("--days", default=365.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="History for a new file.")
@click.option("--out", "out_dir", default="data", show_default=True,
              type=click.Path(file_okay=False), help="Folder of the candle file.")
@click.option("--base-url", default=None,
              help="Bybit URL, or mainnet/testnet (default $NUMPYCONVNEXT_BYBIT_URL or mainnet).")
@click.option("--category", type=click.Choice(["linear", "spot", "inverse"]), default="linear",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)
@click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=120.0,
              show_default=True, help="Seconds to keep retrying a failing request.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fetch(symbol: str, interval: str, days: float, out_dir: str, base_url: str | None,
          category: str, fmt: str, retry_time_s: float, quiet: bool) -> None:
    """Download closed candles from Bybit into OUT/SYMBOL_INTERVAL.csv.

    An existing file is extended with the candles after its last one (incremental).
    """
    import contextlib
    import sys

    from numpyconvnext.data.bybit import BybitClient, BybitError, BybitResponseError
    from numpyconvnext.data.intervals import interval_to_timedelta, normalize_interval
    from numpyconvnext.data.store import CandleFileError, update_cache

    try:
        name = normalize_interval(interval)
    except ValueError as error:
        raise UserError(str(error)) from None
    if not symbol.strip().isalnum():
        raise UserError(f"bad symbol {symbol!r}: letters and digits only, e.g. BTCUSDT")
    client = BybitClient(base_url, category, max_retry_time_s=retry_time_s)
    expected_bars = max(1, int(days * 86_400 / interval_to_timedelta(name).total_seconds()))
    with contextlib.ExitStack() as stack:
        bars = []

        def progress(n_candles: int) -> None:
            # opened on the first page so that an early error stays a single line
            if not bars:
                bars.append(stack.enter_context(click.progressbar(
                    length=expected_bars, label=f"{symbol.upper()} {name}", file=sys.stderr,
                    hidden=quiet)))
            bars[0].update(n_candles)

        try:
            result = update_cache(client, symbol, name, days, out_dir, fmt, progress=progress)
        except (ValueError, BybitError, BybitResponseError, CandleFileError, OSError) as error:
            raise UserError(str(error).splitlines()[0]) from None
    click.echo(f"{result.path}: {len(result.candles)} candles, {result.n_new} new", err=True)


@main.command()
@click.argument("model_path", required=False, type=click.Path(dir_okay=False))
@click.option("--length", default=256, show_default=True, type=click.IntRange(min=32),
              help="Window length for the GFLOPs column.")
def info(model_path: str | None, length: int) -> None:
    """The model variants (parameters, GFLOPs), or what a saved MODEL_PATH holds."""
    from numpyconvnext.checkpoint import CheckpointError, load

    if model_path is None:
        click.echo(_variants_table(length))
        return
    try:
        model = load(model_path)
    except CheckpointError as error:
        raise UserError(str(error)) from None
    click.echo(_model_summary(model, model_path))


def _variants_table(length: int) -> str:
    import math

    from numpyconvnext.data.features import FEATURE_NAMES
    from numpyconvnext.model import CONFIGS, forward_flops, parameter_shapes

    channels = len(FEATURE_NAMES)
    lines = [f"ConvNeXt1D variants for {channels} input channels, 3 classes, T={length}:",
             "",
             "| variant | dims | depths | parameters | GFLOPs / window |",
             "|---|---|---|---:|---:|"]
    for name, config in CONFIGS.items():
        shapes = parameter_shapes(**config, in_channels=channels, num_classes=3)
        count = sum(math.prod(shape) for shape in shapes.values())
        gflops = forward_flops(**config, in_channels=channels, num_classes=3, length=length) / 1e9
        lines.append(f"| {name} | {'-'.join(map(str, config['dims']))} | "
                     f"{'-'.join(map(str, config['depths']))} | {count:,} | {gflops:.3f} |")
    return "\n".join(lines)


def _model_summary(model, path: str) -> str:
    meta = getattr(model, "metadata", {}) or {}
    config = model.config
    pre = meta.get("preprocessing", {})
    source = meta.get("data_source", {})
    metrics = meta.get("metrics", {})
    window = pre.get("window", 256)
    lines = [
        f"model       {path}",
        f"variant     {meta.get('variant', 'custom')}  dims {config['dims']}  depths {config['depths']}",
        f"parameters  {model.num_parameters():,}   {model.flops(window) / 1e9:.3f} GFLOPs per window",
        f"created     {meta.get('created', 'unknown')}",
    ]
    if source:
        lines.append(f"data        {source.get('symbol')} {source.get('interval')} ({source.get('kind')}) "
                     f"{str(source.get('first'))[:16]} .. {str(source.get('last'))[:16]}, "
                     f"{source.get('bars')} candles")
    for part, bounds in (meta.get("split") or {}).items():
        if bounds:
            lines.append(f"  {part:<9} windows ending {str(bounds['first_time'])[:16]} .. "
                         f"{str(bounds['last_time'])[:16]}")
    if pre:
        lines.append(f"features    {len(pre.get('feature_names', []))}: "
                     f"{', '.join(pre.get('feature_names', []))}")
        lines.append(f"window      {window} bars")
        label = pre.get("label_config", {})
        if label:
            rule = (f"{label['vol_multiple']} x rolling sigma ({label['vol_window']} bars) x sqrt(h)"
                    if label.get("mode") == "vol" else f"fixed {label.get('threshold')}")
            lines.append(f"labels      horizon {label.get('horizon')} bars, threshold {rule}")
    for part in ("validation", "test"):
        values = metrics.get(part)
        if values:
            shown = {k: values.get(k) for k in ("loss", "accuracy", "direction_accuracy", "correlation")
                     if values.get(k) is not None}
            lines.append(f"{part:<11} " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    baseline = metrics.get("test_baseline")
    if baseline:
        lines.append(f"baseline    always {baseline['class']}: accuracy {baseline['accuracy']:.4f}")
    return "\n".join(lines)


def _notice(message: str) -> None:
    """A progress or status line for the user, on stderr (stdout stays for results)."""
    click.echo(message, err=True)


def _resolve_candles(source: str, **options):
    """Candles from the chosen source (`numpyconvnext.data.source.resolve_candles`), and one
    line on stderr saying which: (candles, description)."""
    from numpyconvnext.data.source import resolve_candles

    candles, description = resolve_candles(source, notice=_notice, **options)
    _notice(f"data: {description['symbol']} {description['interval']}, {description['bars']} "
            f"candles {description['first'][:16]} .. {description['last'][:16]}")
    return candles, description


def _source_options(days: float, bars: int | None):
    """The data-source flags `train` and `evaluate` share (see numpyconvnext.data.source)."""
    options = [
        click.option("--data", "data_path", type=click.Path(dir_okay=False),
                     help="Candle file (.csv or .json); overrides --source."),
        click.option("--source", type=click.Choice(["auto", "bybit", "synthetic"]), default="auto",
                     show_default=True, help="auto: data/ cache, else Bybit, else the synthetic market."),
        click.option("--symbol", default="BTCUSDT", show_default=True),
        click.option("--interval", default="1h", show_default=True),
        click.option("--days", default=days, show_default=True, type=click.FloatRange(min=1),
                     help="History to fetch (Bybit) or generate (synthetic)."),
        click.option("--bars", default=bars, show_default=bars is not None, type=click.IntRange(min=1),
                     help="Use only the most recent N candles."),
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _bybit_options(command):
    """--cache-dir, --base-url and --retry-time, for commands that may fetch from Bybit."""
    for option in reversed([
        click.option("--cache-dir", default="data", show_default=True, type=click.Path(file_okay=False)),
        click.option("--base-url", default=None,
                     help="Bybit URL (default $NUMPYCONVNEXT_BYBIT_URL or mainnet)."),
        click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=20.0,
                     show_default=True, help="Seconds to keep retrying Bybit before giving up."),
    ]):
        command = option(command)
    return command


# The default run must finish in minutes on a 2-core laptop (see README for the measured time);
# TrainingConfig keeps the spec's defaults (epochs 100) for --config files and the library.
CLI_DEFAULT_VARIANT = "atto"
CLI_DEFAULT_EPOCHS = 12


@main.command()
@_source_options(days=365.0, bars=None)
@click.option("--model", "variant", help=f"Variant (atto ... base). [default: {CLI_DEFAULT_VARIANT}]")
@click.option("--epochs", type=click.IntRange(min=1), help=f"[default: {CLI_DEFAULT_EPOCHS}]")
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True))
@click.option("--window", type=click.IntRange(min=32), help="Bars per input window (multiple of 32).")
@click.option("--horizon", type=click.IntRange(min=1), help="Label horizon in bars.")
@click.option("--loss", type=click.Choice(["cross_entropy", "mse", "huber"]))
@click.option("--seed", type=int)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML or JSON file of training settings; flags override it.")
@click.option("--out", "out_dir", default="models", show_default=True, type=click.Path(file_okay=False))
@click.option("--resume", "resume_path", type=click.Path(), help="last.npz (or run folder) to continue.")
@_bybit_options
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
def train(data_path, source, symbol, interval, days, bars, variant, epochs, batch_size, learning_rate,
          window, horizon, loss, seed, config_path, out_dir, resume_path, cache_dir, base_url,
          retry_time_s, quiet) -> None:
    """Train a ConvNeXt1D on candles and report test metrics beside the majority-class baseline.

    With no arguments: BTCUSDT 1h, 365 days from the data/ cache, Bybit, or the synthetic market.
    """
    import sys

    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.config import TrainingConfig
    from numpyconvnext.model import CONFIGS
    from numpyconvnext.train import TrainingDivergedError
    from numpyconvnext.workflow import resume_run, train_run

    try:
        if resume_path:
            result = resume_run(resume_path, quiet=quiet, epochs=epochs)
        else:
            overrides = dict(variant=variant, epochs=epochs, batch_size=batch_size,
                             learning_rate=learning_rate, window=window, horizon=horizon, loss=loss,
                             seed=seed)
            if config_path:
                config = TrainingConfig.from_file(config_path).with_overrides(**overrides)
            else:
                config = TrainingConfig(variant=CLI_DEFAULT_VARIANT, epochs=CLI_DEFAULT_EPOCHS)
                config = config.with_overrides(**overrides)
            if config.variant not in CONFIGS:
                raise ValueError(f"unknown model {config.variant!r}; choose from {', '.join(CONFIGS)}")
            candles, description = _resolve_candles(
                source, path=data_path, symbol=symbol, interval=interval, days=days,
                cache_dir=cache_dir, base_url=base_url, retry_time_s=retry_time_s, last_bars=bars)
            result = train_run(candles, description, config, out_dir, quiet=quiet)
    except (ValueError, CheckpointError, OSError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    except TrainingDivergedError as error:
        raise click.ClickException(str(error)) from None
    if result.interrupted:
        _notice(f"interrupted; continue with: python cli.py train --resume {result.last_path}")
        sys.exit(130)
    click.echo(_training_report(result))


def _training_report(result) -> str:
    metrics = result.test_metrics
    test, baseline = metrics.get("test"), metrics.get("test_baseline")
    lines = [f"best epoch {result.best_epoch} (validation loss {result.best_val_loss:.4f})"
             + (", stopped early" if result.stopped_early else "")]

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    if test is not None and baseline is not None:
        lines += [
            "test period            model   majority class (" + baseline["class"] + ")",
            f"  accuracy            {pct(test['accuracy']):>6}   {pct(baseline['accuracy']):>6}",
            f"  direction accuracy  {pct(test['direction_accuracy']):>6}   "
            f"{pct(baseline['direction_accuracy']):>6}",
            f"  (direction calls: {test['direction_calls']} of {test['samples']} test windows)",
        ]
    elif test is not None:
        lines += [f"test period: direction accuracy {pct(test['direction_accuracy'])}, "
                  f"correlation {test['correlation']}, loss {test['loss']:.4f}"]
    lines.append(f"model saved to {result.best_path}")
    return "\n".join(lines)


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.npz) written by train.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="Candle file (.csv/.json): backtest on all of it after warm-up.")
@click.option("--symbol", help="Fetch this Bybit symbol and backtest on it (with --days).")
@click.option("--interval", help="Interval for --symbol. [default: the model's]")
@click.option("--days", type=click.FloatRange(min=0, min_open=True),
              help="History to fetch for --symbol. [default: 90]")
@click.option("--confidence", default=0.6, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum probability for a Long/Short signal.")
@click.option("--fee-rate", type=click.FloatRange(0, 0.1), help="Per fill. [default: 0.00055, Bybit taker]")
@click.option("--slippage", type=click.FloatRange(0, 0.1), help="Adverse, per fill. [default: 0.0002]")
@click.option("--stop-loss", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Stop distance in ATR(14) multiples, also the sizing's risk stop; 0 = none.")
@click.option("--take-profit", type=click.FloatRange(min=0, min_open=True),
              help="Take-profit in ATR multiples; sets Kelly's win/loss ratio to TP/SL. [default: none]")
@click.option("--equity", default=10_000.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for trades.csv, equity.csv, signals.csv, equity.png. "
                   "[default: backtest_<time> next to the model]")
@click.option("--base-url", default=None,
              help="Bybit URL for --symbol (default $NUMPYCONVNEXT_BYBIT_URL or mainnet).")
@click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=20.0,
              show_default=True, help="Seconds to keep retrying Bybit before giving up.")
def backtest(model_path, data_path, symbol, interval, days, confidence, fee_rate, slippage, stop_loss,
             take_profit, equity, out_dir, base_url, retry_time_s) -> None:
    """Backtest a model beside buy-and-hold, with fees, slippage and ATR stops.

    By default on the held-out test period recorded in the checkpoint; with --data or --symbol
    on that whole data (after the indicator warm-up). Decisions at a bar's close are filled at
    the next bar's open.
    """
    from datetime import datetime, timezone
    from pathlib import Path

    import numpy as np

    from numpyconvnext import load
    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.trading.inference import DEFAULT_WIN_LOSS_RATIO, decide, preprocessing_of

    if data_path and symbol:
        raise UserError("use either --data FILE or --symbol (with --interval/--days), not both")
    if (days is not None or interval) and not symbol:
        raise UserError("--interval and --days go with --symbol")
    try:
        model = load(model_path)
        prep = preprocessing_of(model)
    except (CheckpointError, ValueError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    metadata = model.metadata
    try:
        candles, end_index, what = _backtest_data(
            metadata, prep, data_path, symbol, interval, days, base_url, retry_time_s)
        win_loss = (take_profit / stop_loss if take_profit and stop_loss else DEFAULT_WIN_LOSS_RATIO)
        decisions = decide(model, candles, end_index, confidence=confidence, equity=equity,
                           atr_multiple=stop_loss or None, win_loss_ratio=win_loss)
        from numpyconvnext.trading.backtest import DEFAULT_FEE_RATE, DEFAULT_SLIPPAGE
        from numpyconvnext.trading.backtest import backtest as run_backtest

        fee_rate = DEFAULT_FEE_RATE if fee_rate is None else fee_rate
        slippage = DEFAULT_SLIPPAGE if slippage is None else slippage
        result = run_backtest(candles, decisions.signal_series(), size=decisions.fraction_series(),
                              fee_rate=fee_rate, slippage=slippage, stop_loss=stop_loss or None,
                              take_profit=take_profit, stop_mode="atr", initial_equity=equity)
    except (ValueError, OSError) as error:
        raise UserError(str(error).splitlines()[0]) from None

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path(model_path).resolve().parent / f"backtest_{stamp}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        result.trades.to_csv(out / "trades.csv", index=False)
        result.equity_frame().to_csv(out / "equity.csv", index=False)
        decisions.frame().to_csv(out / "signals.csv", index=False)
    except OSError as error:
        raise UserError(f"cannot write to {out}: {error.strerror or error}") from None
    from numpyconvnext.plots import equity_and_drawdown

    name = f"{metadata.get('symbol') or 'model'} {metadata.get('interval') or ''}".strip()
    picture = equity_and_drawdown(
        {"Model": result.equity, "Buy & hold": result.benchmark.equity}, out / "equity.png",
        title=f"{name}, {what.split(',')[0]}: model vs buy & hold (after costs)")

    kind = "regression" if prep.regression else "3 classes"
    first, last = result.equity.index[0], result.equity.index[-1]
    trades = result.trades
    n_long = int((trades["side"] == "long").sum())
    stops = (f"stop {stop_loss:g} ATR" if stop_loss else "no stop") + (
        f", take-profit {take_profit:g} ATR" if take_profit else ", no take-profit")
    lines = [
        f"model    {model_path} ({metadata.get('variant', '?')}, {kind}, window {prep.window})",
        f"data     {what}",
        f"period   {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} UTC: {len(result.equity)} bars, "
        f"{len(decisions)} decisions ({int(np.sum(decisions.signal != 2))} Long/Short)",
        f"costs    fee {100 * fee_rate:.3f}%, slippage {100 * slippage:.3f}% per fill; {stops}",
        f"signals  confidence >= {confidence:.2f}; half-Kelly sizes (win/loss {win_loss:g}), "
        f"initial equity {equity:,.0f}",
        "",
        result.comparison_table(),
        "",
        f"trades   {len(trades)} ({n_long} long, {len(trades) - n_long} short), "
        f"fees paid {result.total_fees:,.2f}",
        f"wrote    {out}/ trades.csv equity.csv signals.csv" + (" equity.png" if picture else ""),
    ]
    click.echo("\n".join(lines))


def _backtest_data(metadata, prep, data_path, symbol, interval, days, base_url, retry_time_s):
    """(candles, decision bar indices, description) for `backtest`'s three data modes."""
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from numpyconvnext.data.intervals import normalize_interval
    from numpyconvnext.data.store import load_candles
    from numpyconvnext.trading.inference import valid_decision_indices

    model_interval = metadata.get("interval")
    if data_path:
        candles = load_candles(data_path)
        what = f"{Path(data_path).name}, all bars after warm-up"
    elif symbol:
        from numpyconvnext.data.bybit import BybitClient, BybitError

        if not symbol.strip().isalnum():
            raise ValueError(f"bad symbol {symbol!r}: letters and digits only, e.g. BTCUSDT")
        interval = normalize_interval(interval or model_interval or "1h")
        days = 90.0 if days is None else days
        client = BybitClient(base_url, max_retry_time_s=retry_time_s)
        end = pd.Timestamp.now(tz="UTC")
        try:
            candles = client.get_klines(symbol, interval, end - pd.Timedelta(days=days), end)
        except BybitError as error:
            raise ValueError(f"cannot fetch {symbol} {interval}: {str(error).splitlines()[0]}") from None
        what = f"Bybit {symbol.upper()} {interval} last {days:g} days, after warm-up"
    else:
        from numpyconvnext.data.source import load_source

        source, split = metadata.get("data_source"), (metadata.get("split") or {}).get("test")
        if not source or not split:
            raise ValueError("the checkpoint records no data source or test period; "
                             "pass --data FILE or --symbol")
        try:
            candles = load_source(source)
        except (OSError, KeyError) as error:
            raise ValueError(f"cannot reload the training data ({error}); pass --data FILE") from None
        end_index = np.arange(int(split["first_index"]), int(split["last_index"]) + 1)
        stamps = pd.DatetimeIndex(candles["timestamp"])
        if (end_index[-1] >= len(candles) or stamps[end_index[0]] != pd.Timestamp(split["first_time"])
                or stamps[end_index[-1]] != pd.Timestamp(split["last_time"])):
            raise ValueError("the training data changed since the run: its test period no longer "
                             "lines up; pass --data FILE")
        return candles, end_index, "test period, held out in training"
    if len(candles) < prep.min_candles + 1:
        raise ValueError(f"{len(candles)} candles are too few: need more than {prep.min_candles} "
                         f"(warm-up {prep.warmup_bars} + window {prep.window})")
    if model_interval and len(candles) > 1:
        from numpyconvnext.data.intervals import interval_to_timedelta

        spacing = pd.DatetimeIndex(candles["timestamp"][:50]).to_series().diff().median()
        if spacing != interval_to_timedelta(model_interval):
            click.echo(f"warning: the model was trained on {model_interval} candles, these are "
                       f"{spacing} apart", err=True)
    return candles, valid_decision_indices(len(candles), prep), what


@main.command()
@click.option("--symbol", default="BTCUSDT", show_default=True, help="Bybit symbol.")
@click.option("--interval", help="Candle interval. [default: the model's, else 1h]")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="Checkpoint (.npz). [default: the newest models/*/model.npz]")
@click.option("--once", is_flag=True, help="One fetch, one line, exit.")
@click.option("--base-url", default=None,
              help="Bybit URL, or mainnet/testnet (default $NUMPYCONVNEXT_BYBIT_URL or mainnet).")
@click.option("--confidence", default=0.6, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum probability for a Long/Short signal (classifiers; a regression model "
                   "signals beyond its label threshold).")
@click.option("--equity", default=10_000.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Account equity the suggested size refers to.")
@click.option("--stop-loss", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Risk stop for sizing, in ATR(14) multiples; 0 = none.")
@click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=60.0,
              show_default=True, help="Seconds one request keeps retrying before the loop backs off.")
def live(symbol, interval, model_path, once, base_url, confidence, equity, stop_loss,
         retry_time_s) -> None:
    """Print a signal for every newly closed candle: one JSON line on stdout, a readable line on
    stderr. Public market data only; places no orders. Ctrl-C stops.
    """
    import os
    import sys
    from pathlib import Path

    from numpyconvnext import load
    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.data.bybit import BybitClient
    from numpyconvnext.data.intervals import normalize_interval
    from numpyconvnext.trading.inference import preprocessing_of
    from numpyconvnext.trading.live import LiveError, LiveSettings, run_live

    if not symbol.strip().isalnum():
        raise UserError(f"bad symbol {symbol!r}: letters and digits only, e.g. BTCUSDT")
    if model_path is None:
        found = sorted(Path("models").glob("*/model.npz"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError("no --model given and no models/*/model.npz found; "
                            "train one first: python cli.py train")
        model_path = str(found[-1])
    try:
        model = load(model_path)
        preprocessing_of(model)
        model_interval = model.metadata.get("interval")
        interval = normalize_interval(interval or model_interval or "1h")
        client = BybitClient(base_url, max_retry_time_s=retry_time_s)
    except (CheckpointError, ValueError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    if model_interval and normalize_interval(model_interval) != interval:
        click.echo(f"warning: the model was trained on {model_interval} candles, not {interval}",
                   err=True)
    click.echo(f"live: {symbol.upper()} {interval} with {model_path}; public data only, no orders"
               + ("" if once else "; Ctrl-C stops"), err=True)
    settings = LiveSettings(confidence=confidence, equity=equity, atr_multiple=stop_loss or None)
    try:
        run_live(model, client, symbol, interval, settings=settings, once=once)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    except BrokenPipeError:  # stdout closed (e.g. `| head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except ValueError as error:
        raise UserError(str(error).splitlines()[0]) from None
    except LiveError as error:
        raise click.ClickException(str(error)) from None


# evaluate: defaults sized so the whole BTCUSDT 1h run fits in ~20 minutes on 2 busy cores
EVALUATE_DEFAULT_BARS = 26_280  # the most recent 3 years of 1h candles


@main.command()
@_source_options(days=1095.0, bars=EVALUATE_DEFAULT_BARS)
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--model", "variant", default="atto", show_default=True, help="Variant (atto ... base).")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--window", default=128, show_default=True, type=click.IntRange(min=32),
              help="Bars per input window (multiple of 32).")
@click.option("--horizon", default=12, show_default=True, type=click.IntRange(min=1),
              help="Label horizon in bars (also the momentum baseline's lookback).")
@click.option("--confidence", default=0.4, show_default=True, type=click.FloatRange(0, 1),
              help="Trade Long/Short only when that class's probability reaches this.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--trials", type=click.IntRange(min=1),
              help="Configurations tried in total, N of the deflated Sharpe [default: 4 strategies].")
@click.option("--fee-rate", default=None, type=click.FloatRange(0, 1, max_open=True),
              help="Fee per fill [default: Bybit taker 0.00055].")
@click.option("--slippage", default=None, type=click.FloatRange(0, 1, max_open=True),
              help="Adverse slippage per fill [default: 0.0002].")
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Parent folder of the report folder <symbol>_<interval>_<last date>.")
@_bybit_options
@click.option("--quiet", is_flag=True, help="No progress bar or per-fold lines.")
def evaluate(data_path, source, symbol, interval, days, bars, folds, variant, epochs, window, horizon,
             confidence, seed, trials, fee_rate, slippage, out_dir, cache_dir, base_url, retry_time_s,
             quiet) -> None:
    """Walk-forward evaluation after costs against buy-and-hold, flat, momentum and a linear model.

    Each fold trains on the past only, keeps the best-validation checkpoint and trades the next,
    never-seen block with fees and slippage. Writes report.md, report.json, returns.csv and the
    pictures to OUT/<symbol>_<interval>_<last date>/. Rerunning the same command after Ctrl-C or
    a crash resumes at the next unfinished fold.
    """
    import sys

    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.evaluate import EvaluationConfig
    from numpyconvnext.evaluate import evaluate as run_evaluation
    from numpyconvnext.train import TrainingDivergedError

    costs = {k: v for k, v in (("fee_rate", fee_rate), ("slippage", slippage)) if v is not None}
    try:
        config = EvaluationConfig(folds=folds, variant=variant, epochs=epochs, window=window,
                                  horizon=horizon, confidence=confidence, seed=seed, trials=trials,
                                  **costs)
        candles, description = _resolve_candles(
            source, path=data_path, symbol=symbol, interval=interval, days=days, cache_dir=cache_dir,
            base_url=base_url, retry_time_s=retry_time_s, last_bars=bars)
        result = run_evaluation(candles, description, config, out_dir, quiet=quiet)
    except (ValueError, CheckpointError, OSError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    except TrainingDivergedError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        _notice("interrupted; rerun the same command to resume at the next unfinished fold")
        sys.exit(130)
    if result.interrupted:
        _notice(f"interrupted after {result.folds_done} of {result.folds_total} folds; rerun the same "
               "command to resume")
        sys.exit(130)
    click.echo(result.report["verdict"]["text"])
    click.echo(f"report: {result.report_dir / 'report.md'}")


OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def set_process_defaults(environ) -> None:
    """The CLI owns its process, so it may choose what a library must not: idle OpenMP threads
    spin ~10 us, not milliseconds, before they sleep (GNU: 300 spins; Intel/LLVM: sleep at once),
    set before anything loads an OpenMP runtime. A wait setting of the user's is left alone.
    Measured: training 3-4x faster than with GNU's default spin next to our matmul threads;
    numpyconvnext/threads.py has the whole policy."""
    if not any(environ.get(name) for name in OPENMP_WAIT_VARIABLES):
        environ["GOMP_SPINCOUNT"] = "300"
        environ["KMP_BLOCKTIME"] = "0"


if __name__ == "__main__":
    import os

    set_process_defaults(os.environ)
    main()
