"""Where a run's candles come from: a file, Bybit (through the local cache), or the synthetic
market, with the `auto` chain `python cli.py train` uses on a fresh machine:

    auto = the cache file data/{SYMBOL}_{category}_{interval}.csv (or .json) if present,
           else Bybit (fetched into that cache, with the funding series for linear),
           else the synthetic market, with a notice saying so.

Every source returns the candles and a JSON-able description that is stored in checkpoints, so
`--resume`, `backtest` and `live` can get the very same candles back (`load_source`). The
description carries the market ``category`` (linear perpetual or spot); `funding_for_source`
finds the funding a perpetual's candles pay (the series cached beside them, the synthetic
market's own, or a stated constant-rate assumption).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .funding import (
    constant_funding,
    funding_path,
    load_funding,
    synthetic_funding,
    update_funding_cache,
)
from .intervals import interval_to_timedelta, normalize_interval
from .store import category_from_path, find_cache, load_candles, symbol_from_path

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
    (for quick runs). Errors are ValueError with one readable line (a missing file, an unknown
    symbol, Bybit unreachable with source="bybit").
    """
    from .candles import candles_sha256

    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose from {', '.join(SOURCES)}")
    interval = normalize_interval(interval)
    symbol = symbol.upper()
    if path is not None:
        source = "file"
    if source == "file":
        if path is None:
            raise ValueError("source 'file' needs a path")
        named = category_from_path(path)
        if category is not None and named is not None and named != category:
            raise ValueError(f"{Path(path).name} holds {named} candles, not {category}")
        category = category or named or "linear"
        candles = load_candles(path)
        description = {"kind": "file", "path": str(Path(path).resolve()),
                       "symbol": symbol_from_path(path) or symbol}
    elif source == "synthetic":
        category = category or "linear"
        candles, description = _synthetic(symbol, interval, days)
    else:
        category = category or "linear"
        cached = find_cache(cache_dir, symbol, interval, category, notice)
        if source == "auto" and cached is not None:
            notice(f"using cached candles {cached}")
            candles, description = load_candles(cached), {"kind": "file", "path": str(cached.resolve())}
        else:
            try:
                candles, description = _from_bybit(symbol, interval, days, cache_dir, base_url,
                                                   retry_time_s, notice, category)
            except Exception as error:  # noqa: BLE001 - auto falls back on any failure to fetch
                if source == "bybit":
                    raise ValueError(f"cannot fetch {symbol} {interval} from Bybit: "
                                     f"{str(error).splitlines()[0]}") from None
                notice(f"Bybit unreachable ({str(error).splitlines()[0][:120]}); training on the "
                       "SYNTHETIC market instead - results say nothing about real prices")
                candles, description = _synthetic(symbol, interval, days)
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

    Spot: none. The synthetic market: its own series (``funding.synthetic_funding``). A file:
    the series cached beside it (``SYM_linear_funding.csv``); without one, a constant
    ``funding_rate`` per 8 h when given (a stated assumption), else none - and the line says
    that funding is not charged.
    """
    category = description.get("category", "linear")
    if category == "spot":
        return None, "spot market: no funding"
    first, last = candles["timestamp"].iloc[0], candles["timestamp"].iloc[-1]
    if description.get("kind") == "synthetic":
        seed = int(description.get("seed", 0))
        return synthetic_funding(candles, seed), f"funding: the synthetic market's series (seed {seed})"
    beside = funding_path(description["path"]) if description.get("path") else None
    if beside is not None and beside.exists():
        funding = load_funding(beside)
        return funding, f"funding: {len(funding)} settlements from {beside.name}"
    if funding_rate is not None:
        return (constant_funding(first, last, funding_rate),
                f"funding: ASSUMED constant {100 * funding_rate:.4f}% per 8 h (no series for "
                f"this data; --funding-rate)")
    return None, ("funding: NOT charged - no funding series for this data (pass --funding-rate "
                  "R to assume a constant rate per 8 h, e.g. Bybit's base 0.0001)")


def _from_bybit(symbol, interval, days, cache_dir, base_url, retry_time_s, notice, category):
    from .bybit import BybitClient
    from .store import update_cache

    client = BybitClient(base_url, category, max_retry_time_s=retry_time_s, timeout_s=10.0)
    notice(f"fetching {days:g} days of {symbol} {interval} {category} candles from Bybit")
    update = update_cache(client, symbol, interval, days, cache_dir, notice=notice)
    if category == "linear" and len(update.candles):
        update_funding_cache(client, symbol, update.candles["timestamp"].iloc[0], cache_dir)
    return update.candles, {"kind": "file", "path": str(Path(update.path).resolve()),
                            "fetched_from": "bybit"}


def _synthetic(symbol: str, interval: str, days: float) -> tuple[pd.DataFrame, dict]:
    bars = max(int(days * 86_400 / interval_to_timedelta(interval).total_seconds()), 1)
    candles = _synthetic_frame(interval, bars, SYNTHETIC_SEED)
    return candles, {"kind": "synthetic", "symbol": f"SYNTHETIC-{symbol}", "seed": SYNTHETIC_SEED,
                     "generated_bars": bars}


def _synthetic_frame(interval: str, bars: int, seed: int) -> pd.DataFrame:
    from .synthetic import synthetic_candles

    return synthetic_candles(bars, interval=interval, seed=seed)
