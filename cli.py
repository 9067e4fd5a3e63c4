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


if __name__ == "__main__":
    main()
