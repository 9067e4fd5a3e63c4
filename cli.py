"""numpyconvnext command line: a thin click front over the library.

Heavy modules (numba, pandas, the model) are imported inside each command so that
`python cli.py --help` stays instant. User errors become one readable line and exit code 2.
"""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one `warning: ...` line on stderr (the CLI owns its process)."""
    click.echo(f"warning: {message}", err=True)


class _Commands(click.Group):
    """click's group, with a usage error (bad option value, unknown option or command) as one
    line, `Error: ... See 'cli.py train --help'.`, instead of click's usage, hint, blank line
    and error (exit code 2 either way)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        import sys

        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:  # bare `cli.py`: the help
            error.show()
            sys.exit(error.exit_code)
        except click.UsageError as error:
            hint = f" See '{error.ctx.command_path} --help'." if error.ctx is not None else ""
            click.echo(f"Error: {error.format_message()}{hint}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ConvNeXt for 1D market data: fetch candles, train, backtest, run live signals."""
    import warnings

    warnings.showwarning = _show_warning


def _check_symbol(ctx, param, value: str | None) -> str | None:
    """--symbol for every command: exchange symbol characters only (see data/symbols.py)."""
    if value is None:
        return None
    from numpyconvnext.data.symbols import validate_symbol

    try:
        return validate_symbol(value)
    except ValueError as error:
        raise UserError(str(error)) from None


def _symbol_option(default: str | None = "BTCUSDT", help: str = "Bybit symbol, e.g. BTCUSDT."):
    return click.option("--symbol", default=default, show_default=default is not None,
                        callback=_check_symbol, help=help)


@main.command()
@_symbol_option()
@click.option("--symbols", "symbols_text",
              help="Several symbols, comma-separated (e.g. BTCUSDT,ETHUSDT): each into its own "
                   "file; each must be listed on Bybit.")
@click.option("--top", type=click.IntRange(min=1),
              help="The N linear USDT perpetuals with the most 24 h turnover (Bybit tickers) "
                   "whose status is Trading (instruments-info).")
@click.option("--interval", default="1h", show_default=True,
              help="1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d 1w 1M, or Bybit's 1..720 D W M.")
@click.option("--days", default=365.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="History wanted: a new file gets this much, a shorter one is extended back.")
@click.option("--out", "out_dir", default="data", show_default=True,
              type=click.Path(file_okay=False), help="Folder of the candle file.")
@click.option("--base-url", default=None,
              help="Bybit URL, or mainnet/testnet (default $NUMPYCONVNEXT_BYBIT_URL or mainnet).")
@click.option("--category", type=click.Choice(["linear", "spot", "inverse"]), default="linear",
              show_default=True, help="linear: USDT perpetuals; spot; inverse: coin-margined.")
@click.option("--funding/--no-funding", default=None,
              help="Also fetch the funding history into OUT/SYMBOL_CATEGORY_funding.csv. "
                   "[default: on for linear and inverse]")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)
@click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=120.0,
              show_default=True, help="Seconds to keep retrying a failing request.")
@click.option("--repair", is_flag=True,
              help="Sort and de-duplicate a damaged existing file first (see `repair`).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def fetch(ctx, symbol: str, symbols_text: str | None, top: int | None, interval: str, days: float,
          out_dir: str, base_url: str | None, category: str, funding: bool | None, fmt: str,
          retry_time_s: float, repair: bool, quiet: bool) -> None:
    """Download closed candles from Bybit into OUT/SYMBOL_CATEGORY_INTERVAL.csv, and a
    perpetual's funding history beside them (OUT/SYMBOL_CATEGORY_funding.csv).

    An existing file gets the candles (and settlements) after its last one, and older ones when
    it holds less than --days; an old-style OUT/SYMBOL_INTERVAL.csv is read as linear and
    continued under the new name. Progress is saved as pages arrive: after an interruption or a
    failure, rerun the same command and it continues where it stopped.

    --symbols A,B,C or --top N fetch a universe, each symbol into its own file, with one
    progress bar over the symbols and their pages.
    """
    import contextlib
    import sys

    from click.core import ParameterSource

    from numpyconvnext.data.bybit import BybitClient, BybitError, BybitResponseError
    from numpyconvnext.data.intervals import interval_to_timedelta, normalize_interval
    from numpyconvnext.data.store import CandleFileError, cache_path

    try:
        name = normalize_interval(interval)
    except ValueError as error:
        raise UserError(str(error)) from None
    if funding and category == "spot":
        raise UserError("spot has no funding: --funding goes with --category linear or inverse")
    funding = category != "spot" if funding is None else funding
    chosen = [o for o, given in (("--symbols", symbols_text is not None), ("--top", top is not None),
                                 ("--symbol", ctx.get_parameter_source("symbol")
                                  == ParameterSource.COMMANDLINE)) if given]
    if len(chosen) > 1:
        raise UserError(f"use one of --symbol, --symbols and --top, not {' and '.join(chosen)}")
    client = BybitClient(base_url, category, max_retry_time_s=retry_time_s)
    try:
        symbols = _fetch_universe(client, symbol, symbols_text, top, category)
    except (ValueError, BybitError, BybitResponseError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    expected_bars = max(1, int(days * 86_400 / interval_to_timedelta(name).total_seconds()))
    many = len(symbols) > 1 or symbols_text is not None or top is not None
    with contextlib.ExitStack() as stack:
        bars = []
        done = []
        current = [symbols[0]]

        def progress(n_candles: int) -> None:
            # opened on the first page so that an early error stays a single line
            label = f"{current[0]} {name}" + (f" ({len(done) + 1}/{len(symbols)})" if many else "")
            if not bars:
                bars.append(stack.enter_context(click.progressbar(
                    length=expected_bars * len(symbols), label=label, file=sys.stderr,
                    hidden=quiet)))
            bars[0].label = label
            bars[0].update(n_candles)

        lines = []
        for each in symbols:
            current[0] = each
            try:
                lines += _fetch_one(client, each, name, days, out_dir, fmt, funding, repair,
                                    progress)
            except (ValueError, BybitError, BybitResponseError, CandleFileError, OSError) as error:
                reason = str(error).splitlines()[0]
                if done:
                    reason += (f" (after {len(done)} of {len(symbols)} symbols: "
                               f"{', '.join(done)}; rerun the same command to continue)")
                raise UserError(reason) from None
            except KeyboardInterrupt:
                _notice(f"interrupted; the candles fetched so far are in "
                        f"{cache_path(out_dir, each, name, fmt, category)}: rerun the same command "
                        "to continue")
                sys.exit(130)
            done.append(each)
            if bars:  # a symbol already up to date moves the bar on too
                bars[0].update(expected_bars * len(done) - bars[0].pos)
    for line in lines:
        click.echo(line, err=True)


def _fetch_universe(client, symbol: str, symbols_text: str | None, top: int | None,
                    category: str) -> list[str]:
    """The symbols `fetch` was asked for: --top's ranking, --symbols checked against Bybit's
    instruments (unlisted: an error; listed but not Trading: a warning), else --symbol."""
    from numpyconvnext.data.symbols import parse_symbol_list
    from numpyconvnext.data.universe import check_listed, list_instruments, top_perpetuals

    if top is not None:
        if category != "linear":
            raise ValueError("--top ranks linear perpetuals: use it with --category linear")
        ranked = top_perpetuals(client, top)
        if not ranked:
            raise ValueError("Bybit lists no linear USDT perpetual with status Trading")
        if len(ranked) < top:
            _notice(f"only {len(ranked)} Trading linear USDT perpetuals have a 24 h turnover; "
                    "fetching those")
        _notice(f"top {len(ranked)} by 24 h turnover: " + ", ".join(
            f"{s} ({t / 1e6:,.0f}M USDT)" for s, t in ranked))
        return [s for s, _ in ranked]
    if symbols_text is None:
        return [symbol]
    try:
        symbols = parse_symbol_list(symbols_text)
    except ValueError as error:
        raise ValueError(f"--symbols: {error}") from None
    for instrument in check_listed(symbols, list_instruments(client), category):
        _notice(f"warning: {instrument.symbol} is {instrument.status} on Bybit, not Trading; "
                "fetching the history it has")
    return symbols


def _fetch_one(client, symbol: str, name: str, days: float, out_dir: str, fmt: str,
               funding: bool, repair: bool, progress) -> list[str]:
    """One symbol's candles (and funding) into the cache; the summary lines."""
    from numpyconvnext.data.funding import update_funding_cache
    from numpyconvnext.data.store import update_cache

    result = update_cache(client, symbol, name, days, out_dir, fmt, progress=progress,
                          notice=_notice, repair=repair)
    lines = [f"{result.path}: {len(result.candles)} candles, {result.n_new} new"]
    if funding and len(result.candles):
        path, series, n_new = update_funding_cache(
            client, symbol, result.candles["timestamp"].iloc[0], out_dir)
        lines.append(f"{path}: {len(series)} funding settlements, {n_new} new")
    return lines


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Write the repaired candles here. [default: replace PATH, keeping PATH.bak]")
@click.option("--no-backup", is_flag=True, help="Replace PATH without keeping PATH.bak.")
def repair(path: str, out_path: str | None, no_backup: bool) -> None:
    """Sort a candle file by time and drop duplicate timestamps (the later line wins).

    Reports what it changed, and the gaps and off-grid rows that remain. Rows that are wrong
    on their own (a bad number, high below low, ...) are an error: fix those by hand.
    """
    from numpyconvnext.data.store import CandleFileError, repair_candles

    try:
        report = repair_candles(path, out_path, backup=not no_backup)
    except (CandleFileError, OSError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    click.echo(report.summary())


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
    if source.get("kind") == "pool":
        lines.append(f"data        {len(source.get('sources', {}))} symbols pooled, "
                     f"{source.get('interval')} {source.get('category', 'linear')}")
        for symbol, each in source.get("sources", {}).items():
            lines.append(f"  {symbol:<9} ({each.get('kind')}) {str(each.get('first'))[:16]} .. "
                         f"{str(each.get('last'))[:16]}, {each.get('bars')} candles")
        lines.append(_pool_text({"symbols": meta.get("symbols", []),
                                  "skipped": meta.get("pool_skipped")}))
    elif source:
        lines.append(f"data        {source.get('symbol')} {source.get('interval')} "
                     f"{meta.get('category', source.get('category', 'linear'))} ({source.get('kind')}) "
                     f"{str(source.get('first'))[:16]} .. {str(source.get('last'))[:16]}, "
                     f"{source.get('bars')} candles"
                     + (f", content sha256 {meta['data_sha256'][:12]}…" if meta.get("data_sha256")
                        else ""))
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
    lines += _strategy_summary(meta)
    return "\n".join(lines)


def _strategy_summary(meta: dict) -> list[str]:
    """info's lines on calibration and the strategy chosen on the validation block."""
    calibration, chosen = meta.get("calibration") or {}, meta.get("strategy") or {}
    if not calibration:
        return ["calibrated  no (raw softmax; a checkpoint from before calibration, or regression)"]
    lines = [f"calibrated  temperature {calibration['temperature']:.3f} on the validation block "
             f"(NLL {calibration['validation_nll']:.4f} -> {calibration['validation_nll_calibrated']:.4f})"]
    if chosen:
        grid = "  ".join(f"{row['confidence']:g}:{row['sharpe']:+.2f}" for row in chosen.get("grid", []))
        lines.append(f"strategy    confidence {chosen['confidence']:g} (highest validation Sharpe "
                     f"after costs; tried {grid})")
        lines.append(f"            payoff ratio b {chosen['win_loss_ratio']:.3f} "
                     f"({chosen.get('payoff_source', '?')})")
        for part, activity in (chosen.get("activity") or {}).items():
            if activity:
                lines.append(f"            {part}: {_activity_text(activity)}")
    funding = meta.get("funding") or {}
    if funding.get("note"):
        lines.append(f"            {funding['note']}")
    return lines


def _activity_text(activity: dict) -> str:
    return (f"in a position after {activity['in_position']} of {activity['decisions']} decisions "
            f"({100 * activity['in_position'] / max(activity['decisions'], 1):.1f}%), "
            f"{activity['trades']} trades, exposure {100 * activity['exposure']:.1f}%, "
            f"Sharpe {activity['sharpe']:+.2f}")


def _notice(message: str) -> None:
    """A progress or status line for the user, on stderr (stdout stays for results)."""
    click.echo(message, err=True)


def _resolve_candles(source: str, **options):
    """Candles from the chosen source (`numpyconvnext.data.source.resolve_candles`), and one
    line on stderr saying which: (candles, description)."""
    from numpyconvnext.data.source import resolve_candles

    candles, description = resolve_candles(source, notice=_notice, **options)
    _notice(f"data: {description['symbol']} {description['interval']} {description['category']}, "
            f"{description['bars']} candles {description['first'][:16]} .. {description['last'][:16]}")
    return candles, description


class PoolRequest:
    """What the shared data flags ask for: one market (``pooled`` False: ``path`` and ``symbol``
    for ``_resolve_candles``) or a pool (``paths`` and ``symbols`` for ``_resolve_pool``)."""

    def __init__(self, paths: list[str], symbols: list[str], symbol: str):
        self.paths, self.symbols = paths, symbols
        self.pooled = len(paths) > 1 or len(symbols) > 1
        self.path = paths[0] if len(paths) == 1 else None
        self.symbol = symbols[0] if len(symbols) == 1 else symbol


def _pool_request(ctx: click.Context, data_path: tuple[str, ...], symbols_text: str | None,
                  symbol: str) -> PoolRequest:
    """Read --data (given any number of times), --symbols and --symbol (commands using
    `_source_options`); a bad combination or symbol list is a UserError."""
    from click.core import ParameterSource

    from numpyconvnext.data.symbols import parse_symbol_list

    symbols = []
    if symbols_text is not None:
        if ctx.get_parameter_source("symbol") == ParameterSource.COMMANDLINE:
            raise UserError("use --symbol for one market or --symbols for several, not both")
        try:
            symbols = parse_symbol_list(symbols_text)
        except ValueError as error:
            raise UserError(f"--symbols: {error}") from None
    paths = list(data_path or ())
    if paths and symbols and len(paths) != len(symbols):
        raise UserError(f"{len(paths)} --data files but {len(symbols)} --symbols: give one symbol "
                        "per file, in the same order, or leave --symbols out")
    return PoolRequest(paths, symbols, symbol)


def _resolve_pool(source: str, request: PoolRequest, **options):
    """Candles and descriptions by symbol for a pool (`numpyconvnext.data.source.resolve_pool`),
    one line on stderr per symbol: (candles_by_symbol, descriptions_by_symbol)."""
    from numpyconvnext.data.source import resolve_pool

    candles, descriptions = resolve_pool(source, paths=request.paths, symbols=request.symbols,
                                         notice=_notice, **options)
    for symbol, d in descriptions.items():
        _notice(f"data: {symbol} {d['interval']} {d['category']}, {d['bars']} candles "
                f"{d['first'][:16]} .. {d['last'][:16]}")
    return candles, descriptions


def _source_options(days: float, bars: int | None):
    """The data-source flags `train` and `evaluate` share (see numpyconvnext.data.source)."""
    options = [
        click.option("--data", "data_path", type=click.Path(dir_okay=False), multiple=True,
                     help="Candle file (.csv or .json); overrides --source. Give it once per "
                          "symbol to pool several (the symbol from the file name "
                          "SYMBOL_[category_]1h.csv, or from --symbols in the same order)."),
        click.option("--source", type=click.Choice(["auto", "bybit", "synthetic"]), default="auto",
                     show_default=True,
                     help="auto: Bybit through the data/ cache; the synthetic market only when "
                          "Bybit cannot be reached and there is no cache."),
        _symbol_option(),
        click.option("--symbols", "symbols_text",
                     help="Several symbols pooled, comma-separated (e.g. BTCUSDT,ETHUSDT,SOLUSDT): "
                          "windows of every symbol, split on the same calendar dates."),
        click.option("--interval", default="1h", show_default=True),
        click.option("--days", default=days, show_default=True, type=click.FloatRange(min=1),
                     help="History to fetch (Bybit) or generate (synthetic)."),
        click.option("--bars", default=bars, show_default=bars is not None, type=click.IntRange(min=1),
                     help="Use only the most recent N candles."),
    ]
    return _apply_options(options)


def _apply_options(options):
    """A decorator adding ``options`` to a command in the order given."""
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _bybit_options(command):
    """--cache-dir, --base-url and --retry-time, for commands that may fetch from Bybit."""
    for option in reversed([
        click.option("--cache-dir", default="data", show_default=True, type=click.Path(file_okay=False),
                     help="Candle cache (as `fetch` writes it): only the candles it lacks are "
                          "fetched."),
        click.option("--base-url", default=None,
                     help="Bybit URL (default $NUMPYCONVNEXT_BYBIT_URL or mainnet)."),
        click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=20.0,
                     show_default=True, help="Seconds to keep retrying Bybit before giving up."),
    ]):
        command = option(command)
    return command


CATEGORY_HELP = ("Market: linear (USDT perpetual, fee 0.055%, funding) or spot (long only, "
                 "fee 0.1%).")


def _category_option(default_text: str):
    return click.option("--category", type=click.Choice(["linear", "spot"]), default=None,
                        help=f"{CATEGORY_HELP} [default: {default_text}]")


def _funding_rate_option(command):
    return click.option(
        "--funding-rate", type=click.FloatRange(-0.05, 0.05), default=None,
        help="Funding per 8 h assumed for a perpetual's candles without a funding series (a "
             "stated assumption, e.g. Bybit's base 0.0001). [default: none charged]")(command)


def _strategy_options(confidence_default: str):
    """The traded strategy's flags (numpyconvnext.trading.strategy.Strategy), shared by
    backtest, live and evaluate."""
    options = [
        click.option("--confidence", type=click.FloatRange(0, 1), default=None,
                     help=f"Minimum probability for a Long/Short signal. [default: {confidence_default}]"),
        click.option("--sizing", type=click.Choice(["kelly", "fixed"]), default="kelly",
                     show_default=True,
                     help="kelly: half Kelly of equity risked at the stop; fixed: --max-risk each trade."),
        click.option("--stop-loss", default=2.0, show_default=True, type=click.FloatRange(min=0),
                     help="Stop in ATR(14) multiples, also the sizing's risk distance; 0 = none."),
        click.option("--take-profit", type=click.FloatRange(min=0, min_open=True),
                     help="Take-profit in ATR multiples; sets Kelly's payoff ratio b = TP/SL. "
                          "[default: none; b estimated on the validation block]"),
        click.option("--max-risk", default=0.02, show_default=True,
                     type=click.FloatRange(0, 1, min_open=True),
                     help="Most of equity lost if the stop is hit."),
        click.option("--max-exposure", default=1.0, show_default=True,
                     type=click.FloatRange(0, 10, min_open=True),
                     help="Largest position as a multiple of equity (1 = no leverage)."),
        click.option("--fee-rate", type=click.FloatRange(0, 0.1, max_open=True),
                     help="Fee per fill. [default: Bybit taker, 0.00055 linear, 0.001 spot]"),
        click.option("--slippage", default=0.0002, show_default=True,
                     type=click.FloatRange(0, 0.1, max_open=True), help="Adverse slippage per fill."),
        click.option("--no-calibration", is_flag=True,
                     help="Use the raw softmax instead of the checkpoint's calibrated probabilities."),
    ]
    return _apply_options(options)


def _strategy(category, confidence, sizing, stop_loss, take_profit, max_risk, max_exposure,
              fee_rate, slippage, no_calibration):
    """The Strategy of the shared flags (a bad combination is a UserError)."""
    from numpyconvnext.trading.strategy import Strategy

    try:
        return Strategy(category=category or "linear", confidence=confidence, sizing=sizing,
                        stop_loss=stop_loss or None, take_profit=take_profit, max_risk=max_risk,
                        max_exposure=max_exposure, fee_rate=fee_rate, slippage=slippage,
                        calibrated=not no_calibration)
    except ValueError as error:
        raise UserError(str(error)) from None


def _precision_option(effect: str):
    return click.option(
        "--precision", type=click.Choice(["float32", "bfloat16"]), default="float32",
        show_default=True,
        help=f"bfloat16: the blocks' pointwise weights rounded to bfloat16, float32 "
             f"arithmetic (model.frozen): {effect}; the decisions nearly always match "
             "float32's (README \"Speed\").")


def _model_at(precision: str, model):
    """The loaded model's read-only copy for inference (`model.frozen`), its pointwise weights
    in bfloat16 with `--precision bfloat16` (float32 arithmetic either way)."""
    return model.frozen("bfloat16" if precision == "bfloat16" else model.dtype.name)


def _check_funding_rate(category: str, funding_rate: float | None) -> None:
    if category == "spot" and funding_rate is not None:
        raise UserError("spot has no funding: --funding-rate goes with --category linear")


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
@_category_option("the data file's, else linear")
@_funding_rate_option
@click.option("--trials-log", type=click.Path(dir_okay=False),
              help="Trials log the thresholds tried on validation are appended to. "
                   "[default: $NUMPYCONVNEXT_TRIALS_LOG or reports/trials.jsonl]")
@_bybit_options
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.pass_context
def train(ctx, data_path, source, symbol, symbols_text, interval, days, bars, variant, epochs,
          batch_size, learning_rate, window, horizon, loss, seed, config_path, out_dir, resume_path,
          category, funding_rate, trials_log, cache_dir, base_url, retry_time_s, quiet) -> None:
    """Train a ConvNeXt1D on candles and report test metrics beside the majority-class baseline.

    After training, the model is calibrated on its validation block: temperature scaling of its
    probabilities, the confidence threshold with the best validation Sharpe after costs and the
    payoff ratio of its validation trades, all stored in the checkpoint for backtest and live.
    With no arguments: BTCUSDT 1h, 365 days from the data/ cache, Bybit, or the synthetic market.

    Several symbols (--symbols A,B,C or --data once per symbol) train one model on all of them:
    each symbol normalised with its own training statistics, the split dates the same calendar
    dates for every symbol, class weights over the pool. The checkpoint keeps each symbol's
    normaliser and a pooled one for symbols it has not seen.
    """
    import sys

    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.config import TrainingConfig
    from numpyconvnext.model import CONFIGS
    from numpyconvnext.precompile import compiling_beside
    from numpyconvnext.train import TrainingDivergedError
    from numpyconvnext.workflow import resume_run, train_pooled_run, train_run

    _check_funding_rate(category, funding_rate)
    request = _pool_request(ctx, data_path, symbols_text, symbol)
    if resume_path and (request.paths or request.symbols):
        raise UserError("--resume continues on the run's own data: drop --data/--symbols")
    # on an empty Numba cache a second process compiles the kernels meanwhile: the first
    # training step waits about half as long on two cores (numpyconvnext/precompile.py)
    with compiling_beside("train"):
        try:
            if resume_path:
                result = resume_run(resume_path, quiet=quiet, epochs=epochs, trials_log=trials_log)
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
                options = dict(interval=interval, days=days, cache_dir=cache_dir, base_url=base_url,
                               retry_time_s=retry_time_s, last_bars=bars, category=category)
                if request.pooled:
                    candles, descriptions = _resolve_pool(source, request, **options)
                    for description in descriptions.values():
                        _check_funding_rate(description["category"], funding_rate)
                    result = train_pooled_run(candles, descriptions, config, out_dir, quiet=quiet,
                                              funding_rate=funding_rate, trials_log=trials_log)
                else:
                    candles, description = _resolve_candles(
                        source, path=request.path, symbol=request.symbol, **options)
                    _check_funding_rate(description["category"], funding_rate)
                    result = train_run(candles, description, config, out_dir, quiet=quiet,
                                       funding_rate=funding_rate, trials_log=trials_log)
        except (ValueError, CheckpointError, OSError) as error:
            raise UserError(str(error).splitlines()[0]) from None
        except TrainingDivergedError as error:
            raise click.ClickException(str(error)) from None
    if result.interrupted:
        _notice(f"interrupted; continue with: python cli.py train --resume {result.last_path}")
        sys.exit(130)
    click.echo(_training_report(result))
    if getattr(result, "pool", None):
        click.echo(_pool_text(result.pool))


def _pool_text(pool: dict) -> str:
    """The lines on a pooled model's symbols (train report and info)."""
    lines = [f"pooled      {len(pool['symbols'])} symbols: {', '.join(pool['symbols'])} (each "
             "normalised with its own training statistics; the pooled ones for other symbols)"]
    for symbol, reason in (pool.get("skipped") or {}).items():
        lines.append(f"            {symbol} left out: {reason}")
    return "\n".join(lines)


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
    calibration = result.calibration or {}
    if calibration:
        chosen = calibration["strategy"]
        lines.append(f"calibrated: temperature {calibration['calibration']['temperature']:.3f}; "
                     f"strategy confidence {chosen['confidence']:g} (best validation Sharpe "
                     f"{chosen['validation_sharpe']:+.2f} after costs of "
                     f"{len(chosen['grid'])} thresholds tried), payoff ratio b "
                     f"{chosen['win_loss_ratio']:.2f} ({chosen['payoff_source']})")
        for part, activity in chosen["activity"].items():
            if activity:
                lines.append(f"  would trade on {part}: {_activity_text(activity)}")
        lines.append(f"  {calibration['funding']['note']}")
    lines.append(f"model saved to {result.best_path}")
    return "\n".join(lines)


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.npz) written by train.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="Candle file (.csv/.json): backtest on all of it after warm-up.")
@_symbol_option(None, "Fetch this Bybit symbol and backtest on it (with --days).")
@click.option("--interval", help="Interval for --symbol. [default: the model's]")
@click.option("--days", type=click.FloatRange(min=0, min_open=True),
              help="History to fetch for --symbol. [default: 90]")
@_category_option("the data file's, else the model's, else linear")
@_strategy_options("the threshold chosen on the validation block (stored in the checkpoint), "
                   "else 0.6")
@_funding_rate_option
@click.option("--allow-in-sample", is_flag=True,
              help="With --symbol: also trade the bars the model was trained and validated on "
                   "(marked IN-SAMPLE). [default: start after the validation end]")
@click.option("--equity", default=10_000.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for trades.csv, equity.csv, signals.csv, monthly_returns.csv, "
                   "summary.json, equity.png. [default: backtest_<time> next to the model]")
@_bybit_options  # used with --symbol
@_precision_option("trades what `live --precision bfloat16` would decide")
def backtest(model_path, data_path, symbol, interval, days, category, confidence, sizing, stop_loss,
             take_profit, max_risk, max_exposure, fee_rate, slippage, no_calibration, funding_rate,
             allow_in_sample, equity, out_dir, cache_dir, base_url, retry_time_s,
             precision) -> None:
    """Backtest the strategy beside buy-and-hold, after fees, slippage and funding.

    The strategy is the one live and evaluate trade: calibrated probabilities, the confidence
    threshold and payoff ratio chosen on the validation block, half-Kelly risk sizing, ATR
    stops. By default on the held-out test period recorded in the checkpoint; with --data on
    that whole file (after the indicator warm-up); with --symbol on the last --days of Bybit
    candles (the cache in --cache-dir brought up to date) after the model's validation period.
    Bars the model was trained or validated on are flagged IN-SAMPLE. Decisions at a bar's
    close are filled at the next bar's open.
    """
    from datetime import datetime, timezone
    from pathlib import Path

    from numpyconvnext import load
    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.trading.inference import decide, preprocessing_of

    if data_path and symbol:
        raise UserError("use either --data FILE or --symbol (with --interval/--days), not both")
    if (days is not None or interval) and not symbol:
        raise UserError("--interval and --days go with --symbol")
    if allow_in_sample and not symbol:
        raise UserError("--allow-in-sample goes with --symbol (--data and the test period are "
                        "traded whole, with any in-sample part flagged)")
    try:
        model = _model_at(precision, load(model_path))
        prep = preprocessing_of(model)
    except (CheckpointError, ValueError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    metadata = model.metadata
    try:
        data = _backtest_data(metadata, prep, data_path, symbol, interval, days, category,
                              funding_rate, allow_in_sample, cache_dir, base_url, retry_time_s)
        strategy = _strategy(data.category, confidence, sizing, stop_loss, take_profit, max_risk,
                             max_exposure, fee_rate, slippage, no_calibration)
        _check_funding_rate(strategy.category, funding_rate)
        decisions = decide(model, data.candles, data.end_index, strategy=strategy, equity=equity,
                           symbol=data.symbol)
        from numpyconvnext.trading.strategy import run_strategy

        result = run_strategy(data.candles, decisions.timestamp, decisions.plan, decisions.strategy,
                              funding=data.funding, initial_equity=equity)
    except (ValueError, OSError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    strategy = decisions.strategy

    from numpyconvnext.trading.insample import banner, in_sample_overlaps

    # a pooled model saw its training dates through every symbol's windows: flag those dates
    # whatever the symbol traded
    same_market = (data.symbol is None or data.symbol == metadata.get("symbol")
                   or bool(metadata.get("symbols")))
    overlaps = in_sample_overlaps(metadata, decisions.timestamp) if same_market else []
    warning = banner(overlaps)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path(model_path).resolve().parent / f"backtest_{stamp}"
    try:
        _write_backtest(out, result, decisions, metadata if same_market else {}, warning, strategy,
                        data, model_path, model.precision)
    except OSError as error:
        raise UserError(f"cannot write to {out}: {error.strerror or error}") from None
    from numpyconvnext.plots import equity_and_drawdown

    name = f"{metadata.get('symbol') or 'model'} {metadata.get('interval') or ''}".strip()
    picture = equity_and_drawdown(
        {"Strategy": result.equity, "Buy & hold": result.benchmark.equity}, out / "equity.png",
        title=f"{'IN-SAMPLE ' if warning else ''}{name}, {data.what.split(',')[0]}: strategy vs "
              "buy & hold (after costs)")

    kind = "regression" if prep.regression else "3 classes"
    first, last = result.equity.index[0], result.equity.index[-1]
    trades = result.trades
    n_long = int((trades["side"] == "long").sum())
    from numpyconvnext.trading.metrics import format_comparison_table, monthly_returns

    chosen = metadata.get("strategy") or {}
    threshold_from = ("given" if confidence is not None else
                      "chosen on the validation block" if chosen else "default")
    payoff_from = ("take-profit / stop" if take_profit and strategy.stop_loss
                   else chosen.get("payoff_source", "default"))
    funding_line = data.funding_note.removeprefix("funding: ")
    if result.funding_note and data.funding is not None and strategy.category != "spot":
        funding_line += f"; {result.funding_note}"
    lines = ([warning, ""] if warning else []) + [
        f"model    {model_path} ({metadata.get('variant', '?')}, {kind}, window {prep.window}"
        + (f", temperature {model.temperature:.2f}" if strategy.calibrated and model.temperature != 1.0
           else ", uncalibrated probabilities") + ")",
        f"data     {data.what}",
        f"period   {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} UTC: {len(result.equity)} bars, "
        f"{len(decisions)} decisions ({int((decisions.fraction > 0).sum())} with a position)",
        f"strategy {strategy.describe()}",
        f"         confidence {threshold_from}; payoff ratio b {strategy.payoff_ratio:.2f} "
        f"({payoff_from}); initial equity {equity:,.0f}",
        f"funding  {funding_line}",
    ] + ([f"inputs   {decisions.normalizer_note}"] if decisions.normalizer_note else []) + [
        "",
        format_comparison_table(result.metrics, result.benchmark.metrics, "Strategy",
                                title="Metric (IN-SAMPLE)" if warning else "Metric"),
        "",
        f"trades   {len(trades)} ({n_long} long, {len(trades) - n_long} short), "
        f"fees paid {result.fees_paid:,.2f}, funding paid {result.funding_paid:,.2f} "
        f"(buy & hold: {result.benchmark.funding_paid:,.2f})",
        "",
        "monthly returns of the strategy (%)",
        _monthly_text(monthly_returns(result.equity)),
        "",
        f"wrote    {out}/ trades.csv equity.csv signals.csv monthly_returns.csv summary.json"
        + (" equity.png" if picture else ""),
    ]
    click.echo("\n".join(lines))


def _monthly_text(table) -> str:
    import math

    header = "year  " + " ".join(f"{c:>6}" for c in table.columns)
    rows = [header] + [f"{year}  " + " ".join(
        "      " if math.isnan(v) else f"{100 * v:+6.1f}" for v in row) for year, row in table.iterrows()]
    return "\n".join(rows)


def _write_backtest(out, result, decisions, metadata, warning, strategy, data, model_path,
                    model_precision: str) -> None:
    """trades.csv, equity.csv, signals.csv and monthly_returns.csv, each with an in_sample column,
    and summary.json (metrics, strategy, funding and the IN-SAMPLE ranges)."""
    import json

    from numpyconvnext.checkpoint import atomic_write
    from numpyconvnext.trading.insample import in_sample_mask, in_sample_overlaps
    from numpyconvnext.trading.metrics import monthly_returns

    out.mkdir(parents=True, exist_ok=True)
    trades = result.trades.copy()
    trades["in_sample"] = in_sample_mask(metadata, trades["entry_time"])
    trades.to_csv(out / "trades.csv", index=False)
    frame = result.equity_frame()
    frame["funding"] = result.funding.to_numpy()
    frame["in_sample"] = in_sample_mask(metadata, frame["timestamp"])
    frame.to_csv(out / "equity.csv", index=False)
    signals = decisions.frame()
    signals["in_sample"] = in_sample_mask(metadata, signals["timestamp"])
    signals.to_csv(out / "signals.csv", index=False)
    monthly_returns(result.equity).to_csv(out / "monthly_returns.csv")
    summary = {
        "model": str(model_path), "precision": model_precision, "data": data.what,
        "in_sample": bool(warning),
        "in_sample_ranges": [{"part": o.part, "first": o.first.isoformat(), "last": o.last.isoformat(),
                              "decisions": o.decisions}
                             for o in in_sample_overlaps(metadata, decisions.timestamp)],
        "warning": warning or None, "strategy": strategy.to_dict(),
        "normalizer": decisions.normalizer_note,
        "funding": data.funding_note, "fees_paid": result.fees_paid,
        "funding_paid": result.funding_paid, "metrics": result.metrics.to_dict(),
        "benchmark_metrics": result.benchmark.metrics.to_dict(),
    }
    text = json.dumps(summary, indent=2, default=lambda v: str(v))
    atomic_write(out / "summary.json", lambda handle: handle.write(text.encode()))


class _BacktestData:
    """What `backtest` trades: candles, decision bars, category, funding and descriptions."""

    def __init__(self, candles, end_index, what, category, symbol, funding, funding_note):
        self.candles, self.end_index, self.what = candles, end_index, what
        self.category, self.symbol = category, symbol
        self.funding, self.funding_note = funding, funding_note


def _backtest_data(metadata, prep, data_path, symbol, interval, days, category, funding_rate,
                   allow_in_sample, cache_dir, base_url, retry_time_s) -> _BacktestData:
    """Candles, decision bars and funding for `backtest`'s three data modes."""
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from numpyconvnext.data.intervals import normalize_interval
    from numpyconvnext.data.source import (
        file_market,
        funding_for_source,
        load_source,
        resolve_candles,
    )
    from numpyconvnext.data.store import load_candles
    from numpyconvnext.trading.inference import valid_decision_indices

    model_interval = metadata.get("interval")
    model_category = metadata.get("category")
    if data_path:
        category, data_symbol = file_market(data_path, category, model_category or "linear")
        candles = load_candles(data_path)
        funding, note = funding_for_source({"kind": "file", "path": str(data_path),
                                            "category": category}, candles, funding_rate)
        what = f"{Path(data_path).name} ({category}), all bars after warm-up"
        end_index = None
    elif symbol:
        category = category or model_category or "linear"
        interval = normalize_interval(interval or model_interval or "1h")
        days = 90.0 if days is None else days
        # the cache `fetch` and `train` keep, brought up to date (only what it lacks is
        # fetched; written as it arrives); Bybit unreachable is an error here, not stale data
        candles, description = resolve_candles(
            "bybit", symbol=symbol, interval=interval, days=days, cache_dir=cache_dir,
            base_url=base_url, retry_time_s=retry_time_s, category=category,
            notice=lambda line: click.echo(line, err=True))
        funding, note = funding_for_source(description, candles, funding_rate)
        data_symbol = symbol.upper()
        what = f"Bybit {symbol.upper()} {interval} {category} last {days:g} days, after warm-up"
        end_index = None
        if not allow_in_sample and (data_symbol == metadata.get("symbol") or metadata.get("symbols")):
            from numpyconvnext.trading.insample import first_out_of_sample_time

            start = first_out_of_sample_time(metadata)
            stamps = pd.DatetimeIndex(candles["timestamp"])
            if start is not None and len(stamps) and stamps[0] < start:
                every = valid_decision_indices(len(candles), prep)
                end_index = every[stamps[every] >= start]
                what += f", from {start:%Y-%m-%d %H:%M} (after the model's validation period)"
                if len(end_index) == 0:
                    raise ValueError(f"all {len(candles)} candles lie inside the model's training "
                                     "or validation period; fetch more --days, or pass "
                                     "--allow-in-sample")
    else:
        source, split = metadata.get("data_source"), (metadata.get("split") or {}).get("test")
        if source and source.get("kind") == "pool":
            raise ValueError(f"the model was trained on {len(source.get('sources', {}))} pooled "
                             f"symbols ({', '.join(source.get('sources', {}))}): pass --data FILE "
                             "(e.g. one of theirs) or --symbol to choose the market")
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
        recorded = model_category or source.get("category") or "linear"
        if category and category != recorded:
            raise ValueError(f"the model's test period is {recorded} data; --category {category} "
                             "needs --data or --symbol")
        category = recorded
        funding, note = funding_for_source({**source, "category": category}, candles, funding_rate)
        return _BacktestData(candles, end_index, "test period, held out in training", category,
                             metadata.get("symbol"), funding, note)
    if len(candles) < prep.min_candles + 1:
        raise ValueError(f"{len(candles)} candles are too few: need more than {prep.min_candles} "
                         f"(warm-up {prep.warmup_bars} + window {prep.window})")
    if model_interval and len(candles) > 1:
        from numpyconvnext.data.intervals import interval_to_timedelta

        spacing = pd.DatetimeIndex(candles["timestamp"][:50]).to_series().diff().median()
        if spacing != interval_to_timedelta(model_interval):
            click.echo(f"warning: the model was trained on {model_interval} candles, these are "
                       f"{spacing} apart", err=True)
    if end_index is None:
        end_index = valid_decision_indices(len(candles), prep)
    return _BacktestData(candles, end_index, what, category, data_symbol, funding, note)


@main.command()
@_symbol_option()
@click.option("--interval", help="Candle interval. [default: the model's, else 1h]")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="Checkpoint (.npz). [default: the newest models/*/model.npz]")
@click.option("--once", is_flag=True,
              help="One fetch, then exit: the newest closed candle, or every candle closed since "
                   "the last line of an earlier run.")
@click.option("--out", "out_dir", default="live", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the state file that lets a restart continue where it stopped.")
@click.option("--no-state", is_flag=True,
              help="Keep no state: start at the newest candle, remember nothing.")
@click.option("--base-url", default=None,
              help="Bybit URL, or mainnet/testnet (default $NUMPYCONVNEXT_BYBIT_URL or mainnet).")
@_category_option("the model's, else linear")
@_strategy_options("the threshold chosen on the validation block (stored in the checkpoint), "
                   "else 0.6; a regression model signals beyond its label threshold")
@click.option("--equity", default=10_000.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Account equity the suggested size refers to (with --paper: the paper "
                   "account's starting equity).")
@click.option("--paper", is_flag=True,
              help="Paper trading: also trade the strategy on a simulated account, with the "
                   "fills, stops, fees and funding of backtest, kept in the state file. "
                   "Simulated fills only: no orders.")
@click.option("--retry-time", "retry_time_s", type=click.FloatRange(min=0), default=60.0,
              show_default=True, help="Seconds one request keeps retrying before the loop backs off.")
@_precision_option("1.2-2x faster per signal")
def live(symbol, interval, model_path, once, out_dir, no_state, base_url, category, confidence,
         sizing, stop_loss, take_profit, max_risk, max_exposure, fee_rate, slippage,
         no_calibration, equity, paper, retry_time_s, precision) -> None:
    """Print a signal for every newly closed candle: one JSON line on stdout, a readable line on
    stderr. The signal and size follow the strategy backtest and evaluate trade. It never places
    orders: it reads public market data only and needs no API key.

    A state file in OUT remembers the last candle signalled: after a restart every candle that
    closed meanwhile is signalled (marked "late": true) and none twice. Ctrl-C stops.

    --paper trades each of those candles on a paper account exactly as backtest would (the
    same fills at the next open, stops, take-profit, fees and, on a perpetual, funding), prints
    its fills and equity, and keeps it in the state file: after Ctrl-C or a crash it continues
    where it was.
    """
    import os
    import sys
    from pathlib import Path

    from numpyconvnext import load
    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.data.bybit import BybitClient
    from numpyconvnext.data.intervals import normalize_interval
    from numpyconvnext.precompile import ready_for_batch1
    from numpyconvnext.trading.inference import preprocessing_of
    from numpyconvnext.trading.live import LiveError, LiveSettings, paper_account, run_live
    from numpyconvnext.trading.live_state import LiveState, state_path

    if model_path is None:
        found = sorted(Path("models").glob("*/model.npz"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError("no --model given and no models/*/model.npz found; "
                            "train one first: python cli.py train")
        model_path = str(found[-1])
    try:
        model = _model_at(precision, load(model_path))
        preprocessing_of(model)
        model_interval = model.metadata.get("interval")
        interval = normalize_interval(interval or model_interval or "1h")
        strategy = _strategy(category or model.metadata.get("category"), confidence, sizing,
                             stop_loss, take_profit, max_risk, max_exposure, fee_rate, slippage,
                             no_calibration)
        client = BybitClient(base_url, strategy.category, max_retry_time_s=retry_time_s)
        if paper and no_state:
            raise ValueError("--paper keeps its account in the state file: drop --no-state")
        state = None
        if not no_state:
            path = state_path(out_dir, model_path, symbol, interval, client.category)
            state = LiveState.load(path, model=model_path, symbol=symbol, interval=interval,
                                   category=client.category)
        settings = LiveSettings(strategy=strategy, equity=equity)
        account = paper_account(model, state, settings, paper)
    except (CheckpointError, ValueError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    if model_interval and normalize_interval(model_interval) != interval:
        click.echo(f"warning: the model was trained on {model_interval} candles, not {interval}",
                   err=True)
    click.echo(f"live: {symbol.upper()} {interval} {strategy.category} with {model_path}"
               + (" (bfloat16 weights)" if precision == "bfloat16" else "") + "; public "
               "data only, no orders" + ("" if once else "; Ctrl-C stops"), err=True)
    note = preprocessing_of(model, symbol).normalizer_note(symbol)
    if note:
        click.echo(note, err=True)
    if state is not None and state.last_emitted is not None:
        click.echo(f"state {state.path}: last signal for the candle of "
                   f"{state.last_emitted:%Y-%m-%d %H:%M} UTC", err=True)
    if account is not None:
        click.echo(_paper_summary(account, equity), err=True)
    try:
        # on an empty Numba cache: compile the batch-1 path now, half of it in a helper process
        ready_for_batch1(model)
        run_live(model, client, symbol, interval, settings=settings, once=once, state=state,
                 paper=paper)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    except BrokenPipeError:  # stdout closed (e.g. `| head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (ValueError, OSError) as error:  # a parameter error, a state file not writable
        raise UserError(str(error).splitlines()[0]) from None
    except LiveError as error:
        raise click.ClickException(str(error)) from None


def _paper_summary(account, equity: float) -> str:
    """One line: a new paper account, or where a kept one stands."""
    strategy = account.strategy.describe()
    if account.last_bar is None:
        return (f"paper account: new, equity {account.initial_equity:,.2f}, trading from the next "
                f"closed candle: {strategy}")
    trade = account.backtester.open_trade
    held = "flat" if trade is None else (
        f"{'long' if trade['side'] > 0 else 'short'} {trade['units']:.6g} from "
        f"{trade['entry_price']:,.6g}")
    line = (f"paper account since {account.first_bar:%Y-%m-%d %H:%M} UTC: equity "
            f"{account.equity:,.2f} ({100 * (account.equity / account.initial_equity - 1):+.2f}%) "
            f"at the {account.last_bar:%Y-%m-%d %H:%M} candle's close, {len(account.trades)} "
            f"trades, {held}")
    if equity != account.initial_equity:
        line += (f" (it started with {account.initial_equity:,.2f}; --equity {equity:,.2f} is "
                 "not used)")
    return line


# evaluate: defaults sized so the whole BTCUSDT 1h run fits in ~20 minutes on 2 busy cores
EVALUATE_DEFAULT_BARS = 26_280  # the most recent 3 years of 1h candles


@main.command()
@_source_options(days=1095.0, bars=EVALUATE_DEFAULT_BARS)
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False, exists=True),
              help="TOML grid of configurations (variant, window, horizon, epochs, learning_rate, "
                   "confidence); each fold's is chosen on its validation block. Basket only.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the basket's (configuration, fold) tasks run: local processes or a Ray "
                   'cluster (pip install -e ".[cluster]").')
@click.option("--jobs", type=click.IntRange(min=1),
              help="Local processes, one thread each [default: the core count]; 1 = in this "
                   "process. Basket only.")
@click.option("--address", help="Ray cluster address HOST:PORT or 'auto' (default: a local Ray).")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--model", "variant", default="atto", show_default=True, help="Variant (atto ... base).")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--window", default=128, show_default=True, type=click.IntRange(min=32),
              help="Bars per input window (multiple of 32).")
@click.option("--horizon", default=12, show_default=True, type=click.IntRange(min=1),
              help="Label horizon in bars (also the momentum baseline's lookback).")
@click.option("--seed", default=0, show_default=True, type=int)
@_category_option("the data file's, else linear")
@_strategy_options("chosen on each fold's validation block from 0.35 .. 0.6")
@_funding_rate_option
@click.option("--trials", type=click.IntRange(min=1),
              help="N of the deflated Sharpe, overriding the count in the trials log.")
@click.option("--trials-log", type=click.Path(dir_okay=False),
              help="Trials log this run is appended to and N is read from. "
                   "[default: $NUMPYCONVNEXT_TRIALS_LOG or reports/trials.jsonl]")
@click.option("--placebo", is_flag=True,
              help="Permute the training and validation labels of every fold: a control whose "
                   "edge must vanish.")
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Parent folder of the report folder <symbol>_<category>_<interval>_<last date>.")
@_bybit_options
@click.option("--quiet", is_flag=True, help="No progress bar or per-fold lines.")
@click.pass_context
def evaluate(ctx, data_path, source, symbol, symbols_text, interval, days, bars, grid_path, executor,
             jobs, address, folds, variant, epochs, window, horizon, seed, category, confidence,
             sizing, stop_loss, take_profit, max_risk, max_exposure, fee_rate, slippage,
             no_calibration, funding_rate, trials, trials_log, placebo, out_dir, cache_dir, base_url,
             retry_time_s, quiet) -> None:
    """Walk-forward evaluation of the traded strategy after costs and funding, against
    buy-and-hold, flat, momentum, a linear model and the model's own unsized directions.

    Each fold trains on the past only, keeps the best-validation checkpoint, calibrates it and
    chooses its confidence threshold on the validation block, and trades the next, never-seen
    block with the strategy backtest and live trade (same flags). Writes report.md,
    report.json, returns.csv and the pictures to OUT/<symbol>_<category>_<interval>_<last date>/
    and appends the run's trials to the trials log. Rerunning the same command after Ctrl-C or
    a crash resumes at the next unfinished fold.

    A basket (--symbols, or --data once per symbol) trains each (configuration, fold) once on
    the pooled symbols, trades it per symbol, and reports each symbol, an equal-weight portfolio
    and the grid's configurations (report.md, report.json, report.html); tasks run on --jobs
    local processes or --executor ray, and a rerun skips the finished ones.
    """
    import sys

    request = _pool_request(ctx, data_path, symbols_text, symbol)
    if request.pooled or grid_path:
        _evaluate_basket(request, locals())
        return
    if executor != "local" or jobs is not None or address:
        raise UserError("--executor, --jobs and --address apply to a basket (--symbols or several "
                        "--data)")

    from numpyconvnext.checkpoint import CheckpointError
    from numpyconvnext.data.source import funding_for_source
    from numpyconvnext.evaluate import EvaluationConfig
    from numpyconvnext.evaluate import evaluate as run_evaluation
    from numpyconvnext.train import TrainingDivergedError

    _check_funding_rate(category, funding_rate)
    try:
        candles, description = _resolve_candles(
            source, path=request.path, symbol=request.symbol, interval=interval, days=days,
            cache_dir=cache_dir,
            base_url=base_url, retry_time_s=retry_time_s, last_bars=bars, category=category)
        strategy = _strategy(description["category"], confidence, sizing, stop_loss, take_profit,
                             max_risk, max_exposure, fee_rate, slippage, no_calibration)
        _check_funding_rate(strategy.category, funding_rate)
        config = EvaluationConfig(folds=folds, variant=variant, epochs=epochs, window=window,
                                  horizon=horizon, seed=seed, strategy=strategy,
                                  funding_rate=funding_rate, trials=trials, placebo=placebo)
        funding, note = funding_for_source(description, candles, funding_rate)
        _notice(note)
        result = run_evaluation(candles, description, config, out_dir, quiet=quiet, funding=funding,
                                funding_note=note, trials_log=trials_log)
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
    click.echo(f"trials: {result.report['trials']['text']}")
    click.echo(f"report: {result.report_dir / 'report.md'}")


def _evaluate_basket(request, options: dict) -> None:
    """`evaluate` on a basket of symbols (numpyconvnext.research.basket)."""
    import shlex
    import sys

    from numpyconvnext.data.source import funding_for_source
    from numpyconvnext.evaluate import EvaluationConfig
    from numpyconvnext.research.basket import evaluate_basket
    from numpyconvnext.research.grid import load_grid

    o = options
    if o["address"] and o["executor"] != "ray":
        raise UserError("--address is a Ray cluster's: give --executor ray too")
    if o["jobs"] is not None and o["executor"] == "ray":
        raise UserError("--jobs is for --executor local (Ray runs as many tasks as the cluster has CPUs)")
    try:
        grid = load_grid(o["grid_path"]) if o["grid_path"] else None
        if request.pooled:
            candles, sources = _resolve_pool(
                o["source"], request, interval=o["interval"], days=o["days"],
                cache_dir=o["cache_dir"], base_url=o["base_url"], retry_time_s=o["retry_time_s"],
                last_bars=o["bars"], category=o["category"])
        else:  # a grid on one market: a basket of one
            one, description = _resolve_candles(
                o["source"], path=request.path, symbol=request.symbol, interval=o["interval"],
                days=o["days"], cache_dir=o["cache_dir"], base_url=o["base_url"],
                retry_time_s=o["retry_time_s"], last_bars=o["bars"], category=o["category"])
            candles, sources = {description["symbol"]: one}, {description["symbol"]: description}
        names = list(candles)
        category = next(iter(sources.values()))["category"]
        strategy = _strategy(category, o["confidence"], o["sizing"], o["stop_loss"],
                             o["take_profit"], o["max_risk"], o["max_exposure"], o["fee_rate"],
                             o["slippage"], o["no_calibration"])
        _check_funding_rate(strategy.category, o["funding_rate"])
        config = EvaluationConfig(folds=o["folds"], variant=o["variant"], epochs=o["epochs"],
                                  window=o["window"], horizon=o["horizon"], seed=o["seed"],
                                  strategy=strategy, funding_rate=o["funding_rate"],
                                  trials=o["trials"], placebo=o["placebo"])
        funding, notes = {}, {}
        for name in names:
            funding[name], notes[name] = funding_for_source(sources[name], candles[name],
                                                            o["funding_rate"])
        _notice("; ".join(sorted(set(notes.values()))))
        command = "python cli.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        result = evaluate_basket(candles, sources, config, grid, o["out_dir"], executor=o["executor"],
                                 jobs=o["jobs"], address=o["address"], quiet=o["quiet"],
                                 command=command, funding=funding, funding_notes=notes,
                                 trials_log=o["trials_log"])
    except (ValueError, OSError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    except KeyboardInterrupt:
        _notice("interrupted; rerun the same command to resume (finished tasks are kept)")
        sys.exit(130)
    if result.interrupted:
        for failure in result.failed:
            _notice(f"task {failure.key} failed after {failure.attempts} attempt(s): {failure.error}")
        _notice(f"{result.tasks_done} of {result.tasks_total} tasks done; rerun the same command to "
                "retry the others")
        sys.exit(1)
    click.echo(result.report["verdict"]["text"])
    click.echo(f"trials: {result.report['trials']['text']}")
    click.echo(f"report: {result.report_dir / 'report.md'} (and report.html)")


OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# glibc malloc: (environment variable, mallopt parameter, value): blocks up to 32 MB come from
# the heap, not from a mapping of their own, and up to 128 MB of freed heap stay with the process
MALLOC_SETTINGS = (("MALLOC_MMAP_THRESHOLD_", -3, 32 << 20), ("MALLOC_TRIM_THRESHOLD_", -1, 128 << 20))


def set_process_defaults(environ) -> None:
    """The CLI owns its process, so it may choose what a library must not: idle OpenMP threads
    spin ~50-120 us, not milliseconds, before they sleep (GNU: 3,000 spins; Intel/LLVM: sleep at
    once), set before anything loads an OpenMP runtime. A wait setting of the user's is left
    alone. Measured: training 3-4x faster than with GNU's default spin next to our matmul
    threads; batch 1 1.25-1.5x faster than with 300 spins, which let the threads fall asleep
    between a predict's parallel loops (AMD EPYC, bench/NOTES.md round 9); training the same
    with 300 or 3,000. numpyconvnext/threads.py has the whole policy.

    Numba compiles at LLVM -O2 instead of its -O3 (`NUMBA_OPT`, unless the user set it): the
    one-call batch-1 network compiles ~30 % faster on an empty cache, and neither batch-1
    predict nor a training step got slower (AVX-512 and AVX2 code; bench/NOTES.md, round 5).

    glibc's malloc keeps freed memory for the next step's arrays (`MALLOC_SETTINGS`, unless the
    user set a malloc variable or tunable; `keep_freed_memory` applies them to this process)."""
    if not any(environ.get(name) for name in OPENMP_WAIT_VARIABLES):
        environ["GOMP_SPINCOUNT"] = "3000"
        environ["KMP_BLOCKTIME"] = "0"
    if not environ.get("NUMBA_OPT"):
        environ["NUMBA_OPT"] = "2"
    if not (any(environ.get(name) for name, _, _ in MALLOC_SETTINGS)
            or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")):
        for name, _, value in MALLOC_SETTINGS:
            environ[name] = str(value)


def keep_freed_memory(environ) -> bool:
    """Apply the MALLOC_SETTINGS values of `environ` to this running process (glibc reads the
    variables only when a process starts; child processes get them from the environment).

    Freed memory stays with the process for the next step's arrays instead of going back to
    the kernel and being faulted in again, page by page: glibc's own thresholds adapt to the
    sizes freed, and with atto's activations (0.3-1.3 MB) they returned ~10 MB per training
    step, 2,600 page faults, 5-6 ms of a 38 ms step (bench/NOTES.md, round 12). False where
    the C library is not glibc (nothing done)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    done = True
    for name, parameter, _ in MALLOC_SETTINGS:
        value = environ.get(name, "")
        if value.isdigit():
            done = mallopt(parameter, int(value)) == 1 and done
    return done


def run() -> None:
    """The `numpyconvnext` console script and `python cli.py`: the process defaults, then the
    command line."""
    import os

    set_process_defaults(os.environ)
    keep_freed_memory(os.environ)
    main()


if __name__ == "__main__":
    run()
