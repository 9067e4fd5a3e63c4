"""Where a run's candles come from: a file, Bybit (through the local cache), or the synthetic
market, with the `auto` chain `python cli.py train` uses on a fresh machine:

    auto = Bybit through the cache file data/{SYMBOL}_{category}_{interval}.csv (or .json, an
           old-style linear data/{SYMBOL}_{interval}.csv is read with a notice): the file is
           refreshed when a newer candle has closed and extended back when it holds less than
           `days`, one notice line either way (nothing is fetched when it is up to date); a
           linear cache's funding series (data/{SYMBOL}_linear_funding.csv) is refreshed with
           it. When Bybit cannot be reached at all (connection, DNS, timeout after the retry
           budget): the cache as it is, else the synthetic market, with a notice saying so.

Anything else is an error, never a silent fallback: an unknown symbol or bad parameters
(Bybit's retCode 10001), an answer that keeps failing, a cache that cannot be read or written.
The run uses the last `days` of the candles.

Every source returns the candles and a JSON-able description that is stored in checkpoints, so
`--resume`, `backtest` and `live` can get the very same candles back (`load_source`). The
description carries the market ``category`` (linear perpetual or spot); `funding_for_source`
finds the funding a perpetual's candles pay (the series cached beside them, the synthetic
market's own, or a stated constant-rate assumption).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from .cache_names import parse_cache_name
from .funding import (
    constant_funding,
    funding_path,
    load_funding,
    synthetic_funding,
    update_funding_cache,
)
from .intervals import interval_from_ms, interval_to_timedelta, normalize_interval
from .store import find_cache, load_candles
from .symbols import validate_symbol

SOURCES = ("auto", "file", "bybit", "synthetic")
SYNTHETIC_SEED = 7


def resolve_candles(
    source: str = "auto",
    *,
    path: str | Path | None = None,
    symbol: str = "BTCUSDT",
    interval: str = "1h",
    days: float = 365.0,
    cache_dir: str | Path = "data",
    base_url: str | None = None,
    retry_time_s: float = 20.0,
    last_bars: int | None = None,
    notice: Callable[[str], None] = print,
    category: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Candles and their description {"kind", "symbol", "interval", "category", "path"|"seed",
    "first", "last", "bars", "sha256"}.

    `category` None means the one in the file's name, else linear; a file named for another
    category than the one asked for is an error. `last_bars` keeps only the most recent bars
    (for quick runs). Errors are ValueError with one readable line (a missing file, a bad or
    unknown symbol, a cache that cannot be written, Bybit unreachable with source="bybit").
    """
    from .candles import candles_sha256

    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose from {', '.join(SOURCES)}")
    interval = normalize_interval(interval)
    symbol = validate_symbol(symbol)
    if path is not None:
        source = "file"
    if source == "file":
        if path is None:
            raise ValueError("source 'file' needs a path")
        category, named_symbol = file_market(path, category)
        candles = load_candles(path)
        check_file_interval(candles, path, interval)
        description = {"kind": "file", "path": str(Path(path).resolve()),
                       "symbol": named_symbol or symbol}
    elif source == "synthetic":
        category = category or "linear"
        candles, description = _synthetic(symbol, interval, days)
    else:
        category = category or "linear"
        candles, description = _through_cache(source, symbol, interval, days, cache_dir, base_url,
                                              retry_time_s, notice, category)
    if last_bars is not None:
        if last_bars < 1:
            raise ValueError("last_bars must be >= 1")
        candles = candles.iloc[-last_bars:].reset_index(drop=True)
    if len(candles) == 0:
        raise ValueError("no candles in the data source")
    description.update(symbol=description.get("symbol", symbol), interval=interval,
                       category=category, first=candles["timestamp"].iloc[0].isoformat(),
                       last=candles["timestamp"].iloc[-1].isoformat(), bars=len(candles),
                       sha256=candles_sha256(candles))
    return candles, description


def resolve_pool(
    source: str = "auto",
    *,
    paths: Sequence[str | Path] = (),
    symbols: Sequence[str] = (),
    notice: Callable[[str], None] = print,
    **options,
) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """Candles and descriptions per symbol for pooled training (``resolve_candles`` for each,
    in the order given): one file per symbol (``paths``; the symbol from the file name
    ``SYMBOL_[category_]interval.csv``, or from ``symbols`` in the same order), else each of
    ``symbols`` from ``source``. ``options`` go to ``resolve_candles`` (interval, days,
    last_bars, category, cache_dir, ...). ValueError (one line) for a file whose name does not
    say its symbol, a count mismatch, or a symbol named twice."""
    paths, symbols = list(paths), [validate_symbol(s) for s in symbols]
    if paths:
        if symbols and len(symbols) != len(paths):
            raise ValueError(f"{len(paths)} data files but {len(symbols)} symbols: give one "
                             "symbol per file, in the same order, or none")
        if not symbols:
            for path in paths:
                named = parse_cache_name(path).symbol
                if named is None:
                    raise ValueError(f"cannot tell the symbol of {Path(path).name}: name the file "
                                     "SYMBOL_1h.csv (e.g. BTCUSDT_linear_1h.csv) or pass --symbols")
                symbols.append(named)
    elif not symbols:
        raise ValueError("no symbols to pool: pass symbols or candle files")
    twice = sorted({s for s in symbols if symbols.count(s) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given twice: one candle file per symbol")
    candles_by_symbol, descriptions = {}, {}
    for k, symbol in enumerate(symbols):
        candles, description = resolve_candles(
            source, path=paths[k] if paths else None, symbol=symbol, notice=notice, **options)
        description["symbol"] = symbol
        candles_by_symbol[symbol], descriptions[symbol] = candles, description
    return candles_by_symbol, descriptions


def file_market(path: str | Path, category: str | None = None,
                default: str = "linear") -> tuple[str, str | None]:
    """The (category, symbol) of a candle file: ``category`` when given (a file whose name says
    another is an error), else the one its name says, else ``default``; the symbol its name
    says, or None (see ``cache_names``)."""
    name = parse_cache_name(path)
    if category is not None and name.category is not None and name.category != category:
        raise ValueError(f"{Path(path).name} holds {name.category} candles, not {category}")
    return category or name.category or default, name.symbol


def check_file_interval(candles: pd.DataFrame, path: str | Path, interval: str) -> None:
    """A ValueError when a file's bars are not ``interval`` long: its name's interval, else the
    most common spacing of its timestamps, names another one (a 4h file read as 1h would be
    annualised, labelled and traded live as 1h)."""
    stated = parse_cache_name(path).interval
    if stated is None and len(candles) > 1:
        steps = candles["timestamp"].diff().dropna()
        steps = steps[steps > pd.Timedelta(0)].mode()
        if len(steps):
            stated = interval_from_ms(int(steps.iloc[0] // pd.Timedelta(milliseconds=1)))
    if stated is not None and stated != interval:
        raise ValueError(f"{Path(path).name} holds {stated} candles, not {interval}: pass "
                         f"--interval {stated}")


def load_source(description: dict) -> pd.DataFrame:
    """The candles a stored description names, cut to its [first, last] range."""
    kind = description.get("kind")
    if kind == "synthetic":
        candles = _synthetic_frame(description["interval"], description["generated_bars"],
                                   description["seed"])
    elif kind == "file":
        candles = load_candles(description["path"])
    else:
        raise ValueError(f"unknown data source kind {kind!r} in checkpoint")
    first, last = pd.Timestamp(description["first"]), pd.Timestamp(description["last"])
    stamps = candles["timestamp"]
    selected = candles[(stamps >= first) & (stamps <= last)].reset_index(drop=True)
    if len(selected) != description["bars"]:
        raise ValueError(f"the data source now holds {len(selected)} candles between {first} and "
                         f"{last}, the run used {description['bars']}")
    return selected


def funding_for_source(description: dict, candles: pd.DataFrame,
                       funding_rate: float | None = None) -> tuple[pd.DataFrame | None, str]:
    """The funding the candles of ``description`` pay, and one line saying where it comes from.

    The synthetic market: its own series (``funding.synthetic_funding``). A file: the series
    cached beside it (``SYM_linear_funding.csv``). Then as ``choose_funding``.
    """
    series, origin = None, ""
    if description.get("category", "linear") != "spot":
        beside = funding_path(description["path"]) if description.get("path") else None
        if description.get("kind") == "synthetic":
            seed = int(description.get("seed", 0))
            series = synthetic_funding(candles, seed)
            origin = f"the synthetic market's series (seed {seed})"
        elif beside is not None and beside.exists():
            series = load_funding(beside)
            origin = f"{len(series)} settlements from {beside.name}"
    return choose_funding(description.get("category", "linear"), series, origin, candles,
                          funding_rate)


def choose_funding(category: str, series: pd.DataFrame | None, origin: str,
                   candles: pd.DataFrame, funding_rate: float | None = None
                   ) -> tuple[pd.DataFrame | None, str]:
    """The funding a run over ``candles`` charges, and one line saying where it comes from.

    Spot: none. A perpetual: ``series`` (found at ``origin``, words for the line) when it holds
    settlements; else a constant ``funding_rate`` per 8 h when given (a stated assumption); else
    none, and the line says funding is not charged.
    """
    if category == "spot":
        return None, "spot market: no funding"
    if series is not None and len(series):
        return series, f"funding: {origin}"
    if funding_rate is not None:
        first, last = candles["timestamp"].iloc[0], candles["timestamp"].iloc[-1]
        return (constant_funding(first, last, funding_rate),
                f"funding: ASSUMED constant {100 * funding_rate:.4f}% per 8 h (no series for "
                f"this data; --funding-rate)")
    return None, ("funding: NOT charged - no funding series for this data (pass --funding-rate "
                  "R to assume a constant rate per 8 h, e.g. Bybit's base 0.0001)")


def _through_cache(source, symbol, interval, days, cache_dir, base_url, retry_time_s, notice,
                   category="linear"):
    """`auto` / `bybit`: the cache brought up to date from Bybit, with the funding series of a
    linear market (see the module docstring)."""
    from .bybit import BybitClient, BybitError, BybitParameterError, BybitUnreachableError
    from .store import update_cache, warn_about_grid

    cached = find_cache(cache_dir, symbol, interval, category)  # update_cache notes an old name
    client = BybitClient(base_url, category, max_retry_time_s=retry_time_s, timeout_s=10.0)
    if cached is None:
        notice(f"fetching {days:g} days of {symbol} {interval} {category} candles from Bybit")
    try:
        update = update_cache(client, symbol, interval, days, cache_dir,
                              cached.suffix[1:] if cached is not None else "csv", notice=notice)
    except BybitParameterError as error:
        raise ValueError(f"Bybit rejected {symbol} {interval}: {error.ret_msg}") from None
    except BybitUnreachableError as error:
        reason = str(error).splitlines()[0]
        if source == "bybit":
            raise ValueError(f"cannot fetch {symbol} {interval} from Bybit: {reason}") from None
        if cached is not None:
            notice(f"Bybit unreachable ({reason[:120]}); using {cached} as it is")
            candles = _last_days(load_candles(cached), days)
            return candles, {"kind": "file", "path": str(cached.resolve())}
        notice(f"Bybit unreachable ({reason[:120]}); training on the SYNTHETIC market instead - "
               "results say nothing about real prices")
        return _synthetic(symbol, interval, days)
    except BybitError as error:
        raise ValueError(f"cannot fetch {symbol} {interval} from Bybit: "
                         f"{str(error).splitlines()[0]}") from None
    except OSError as error:
        raise ValueError(f"cannot write the candle cache in {cache_dir}: "
                         f"{error.strerror or error}") from None
    if cached is not None and not update.n_new:
        notice(f"using cached candles {update.path}")
    warn_about_grid(update.candles, update.path, interval)
    candles = _last_days(update.candles, days)
    if category == "linear" and len(candles):
        try:
            update_funding_cache(client, symbol, candles["timestamp"].iloc[0], cache_dir)
        except BybitError as error:  # the candles are good; the run says what funding it has
            notice(f"funding history not updated ({str(error).splitlines()[0][:120]})")
        except OSError as error:
            raise ValueError(f"cannot write the funding cache in {cache_dir}: "
                             f"{error.strerror or error}") from None
    return candles, {"kind": "file", "path": str(Path(update.path).resolve()),
                     "fetched_from": "bybit"}


def _last_days(candles: pd.DataFrame, days: float) -> pd.DataFrame:
    """The candles opened in the last `days` before the newest one's open (inclusive)."""
    if not len(candles):
        return candles
    start = candles["timestamp"].iloc[-1] - pd.Timedelta(days=days)
    return candles[candles["timestamp"] > start].reset_index(drop=True)


def _synthetic(symbol: str, interval: str, days: float) -> tuple[pd.DataFrame, dict]:
    bars = max(int(days * 86_400 / interval_to_timedelta(interval).total_seconds()), 1)
    candles = _synthetic_frame(interval, bars, SYNTHETIC_SEED)
    return candles, {"kind": "synthetic", "symbol": f"SYNTHETIC-{symbol}", "seed": SYNTHETIC_SEED,
                     "generated_bars": bars}


def _synthetic_frame(interval: str, bars: int, seed: int) -> pd.DataFrame:
    from .synthetic import synthetic_candles

    return synthetic_candles(bars, interval=interval, seed=seed)
