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


# The default run must finish in minutes on a 2-core laptop (see README for the measured time);
# TrainingConfig keeps the spec's defaults (epochs 100) for --config files and the library.
CLI_DEFAULT_VARIANT = "atto"
CLI_DEFAULT_EPOCHS = 12


@main.command()
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="Candle file (.csv or .json); overrides --source.")
@click.option("--source", type=click.Choice(["auto", "bybit", "synthetic"]), default="auto",
              show_default=True, help="auto: data/ cache, else Bybit, else the synthetic market.")
@click.option("--symbol", default="BTCUSDT", show_default=True)
@click.option("--interval", default="1h", show_default=True)
@click.option("--days", default=365.0, show_default=True, type=click.FloatRange(min=1))
@click.option("--bars", type=click.IntRange(min=1), help="Use only the most recent N candles.")
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
@click.option("--cache-dir", default="data", show_default=True, type=click.Path(file_okay=False))
@click.option("--base-url", default=None, help="Bybit URL (default $NUMPYCONVNEXT_BYBIT_URL or mainnet).")
@click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=20.0,
              show_default=True, help="Seconds to keep retrying Bybit before giving up.")
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
    from numpyconvnext.data.source import resolve_candles
    from numpyconvnext.model import CONFIGS
    from numpyconvnext.train import TrainingDivergedError
    from numpyconvnext.workflow import resume_run, train_run

    def notice(message: str) -> None:
        click.echo(message, err=True)

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
            candles, description = resolve_candles(
                source, path=data_path, symbol=symbol, interval=interval, days=days,
                cache_dir=cache_dir, base_url=base_url, retry_time_s=retry_time_s, last_bars=bars,
                notice=notice)
            notice(f"data: {description['symbol']} {description['interval']}, {description['bars']} "
                   f"candles {description['first'][:16]} .. {description['last'][:16]}")
            result = train_run(candles, description, config, out_dir, quiet=quiet)
    except (ValueError, CheckpointError, OSError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    except TrainingDivergedError as error:
        raise click.ClickException(str(error)) from None
    if result.interrupted:
        notice(f"interrupted; continue with: python cli.py train --resume {result.last_path}")
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


if __name__ == "__main__":
    main()
