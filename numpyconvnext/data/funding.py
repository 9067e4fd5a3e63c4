"""Funding of perpetual futures: the series format, files beside the candle cache, a constant-rate
assumption for data without a series, a synthetic series, and alignment to candle bars.

A funding frame has two columns: ``timestamp`` (datetime64[ns, UTC], the settlement time) and
``rate`` (float64, per settlement; 0.0001 = 0.01 %), ascending with unique timestamps. At each
settlement a position of ``units`` (signed: + long, - short) marked at ``mark`` pays

    funding = rate * units * mark        (the trader's pnl is -side * rate * |units| * mark)

so with a positive rate longs pay and shorts receive. Bybit settles linear perpetuals every 8 h
at 00:00, 08:00 and 16:00 UTC (some symbols more often); its base rate is 0.01 % per 8 h.

Files: ``{SYMBOL}_{category}_funding.csv`` beside ``{SYMBOL}_{category}_{interval}.csv`` (one
funding file serves every interval of a symbol), CSV with ``timestamp`` (ISO 8601 UTC) and
``rate``, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .cache_names import FUNDING, cache_file, parse_cache_name

FUNDING_COLUMNS = ("timestamp", "rate")
SETTLEMENT_HOURS = 8
BYBIT_BASE_RATE = 0.0001  # 0.01 % per 8 h
MAX_ABS_RATE = 0.05  # no exchange caps funding above a few percent per settlement


class FundingFileError(ValueError):
    """A funding file or frame that cannot be used; the message names the file and the row."""


def make_funding(timestamps_ms: np.ndarray, rates: np.ndarray) -> pd.DataFrame:
    """A funding frame from settlement times in ms and rates (validated, sorted, de-duplicated)."""
    stamps = pd.to_datetime(np.asarray(timestamps_ms, dtype=np.int64), unit="ms", utc=True)
    frame = pd.DataFrame({"timestamp": stamps.as_unit("ns"),
                          "rate": np.asarray(rates, dtype=np.float64)})
    frame = frame.sort_values("timestamp", kind="stable")
    frame = frame.drop_duplicates("timestamp", keep="last").reset_index(drop=True)
    return validate_funding(frame)


def validate_funding(funding: pd.DataFrame, where: str = "funding") -> pd.DataFrame:
    """Check columns, finite rates within ``MAX_ABS_RATE`` and strictly ascending times."""
    missing = [c for c in FUNDING_COLUMNS if c not in funding.columns]
    if missing:
        raise FundingFileError(f"{where}: missing column(s) {', '.join(missing)}")
    rates = funding["rate"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(rates) | (np.abs(rates) > MAX_ABS_RATE)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FundingFileError(f"{where}: row {i + 1}: funding rate {rates[i]} is not a rate "
                               f"(finite, |rate| <= {MAX_ABS_RATE})")
    stamps = pd.DatetimeIndex(funding["timestamp"])
    if len(stamps) > 1 and not (np.diff(stamps.asi8) > 0).all():
        raise FundingFileError(f"{where}: settlement times must be strictly ascending")
    return funding


def funding_path(candle_path: str | os.PathLike) -> Path | None:
    """The funding file beside a category-named perpetual candle file, ``SYM_linear_1h.csv`` ->
    ``SYM_linear_funding.csv``; None for spot or a name without a category (a user's CSV)."""
    name = parse_cache_name(candle_path)
    if name.symbol is None or name.category not in ("linear", "inverse") or name.funding:
        return None
    return funding_cache_path(Path(candle_path).parent, name.symbol, name.category)


def funding_cache_path(out_dir: str | os.PathLike, symbol: str, category: str) -> Path:
    """``out_dir/SYMBOL_category_funding.csv`` (see ``cache_names``)."""
    return cache_file(out_dir, symbol, FUNDING, category)


def load_funding(path: str | os.PathLike) -> pd.DataFrame:
    """Read a funding CSV (``timestamp`` ISO or ms, ``rate``)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no funding file at {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise FundingFileError(f"{path}: malformed funding CSV: {str(error).splitlines()[0]}") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    if list(raw.columns[:2]) != list(FUNDING_COLUMNS):
        raise FundingFileError(f"{path}:1: header must be timestamp,rate")
    text = raw["timestamp"].str.strip()
    is_int = text.str.fullmatch(r"\d+").to_numpy(dtype=bool)
    stamps = pd.to_datetime(text.where(~is_int), utc=True, errors="coerce", format="ISO8601")
    if is_int.any():
        stamps[is_int] = pd.to_datetime(text[is_int].astype(np.int64), unit="ms", utc=True)
    rates = pd.to_numeric(raw["rate"].str.strip(), errors="coerce")
    bad = stamps.isna().to_numpy() | rates.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FundingFileError(f"{path}:{i + 2}: not a time and a rate: "
                               f"{raw['timestamp'].iloc[i]!r}, {raw['rate'].iloc[i]!r}")
    frame = pd.DataFrame({"timestamp": pd.DatetimeIndex(stamps).as_unit("ns"),
                          "rate": rates.to_numpy(dtype=np.float64)})
    return validate_funding(frame, str(path))


def save_funding(funding: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a funding frame as CSV atomically."""
    from numpyconvnext.checkpoint import atomic_write

    path = Path(path)
    frame = validate_funding(funding).loc[:, list(FUNDING_COLUMNS)].copy()
    frame["timestamp"] = pd.DatetimeIndex(frame["timestamp"]).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = frame.to_csv(index=False, lineterminator="\n", float_format="%.10g")
    atomic_write(path, lambda handle: handle.write(text.encode()))
    return path


def constant_funding(first: pd.Timestamp, last: pd.Timestamp, rate: float,
                     every_hours: int = SETTLEMENT_HOURS) -> pd.DataFrame:
    """Settlements every ``every_hours`` h (00:00 UTC-aligned) in ``[first, last]`` at one rate:
    the stated assumption for data without a series (e.g. Bybit's base 0.01 % per 8 h)."""
    if not np.isfinite(rate) or abs(rate) > MAX_ABS_RATE:
        raise ValueError(f"funding rate {rate} is not a rate (|rate| <= {MAX_ABS_RATE})")
    first, last = pd.Timestamp(first), pd.Timestamp(last)
    start = first.ceil(f"{every_hours}h")
    stamps = pd.date_range(start, last, freq=f"{every_hours}h") if start <= last else \
        pd.DatetimeIndex([], tz="UTC")
    return pd.DataFrame({"timestamp": pd.DatetimeIndex(stamps).as_unit("ns"),
                         "rate": np.full(len(stamps), float(rate))})


def synthetic_funding(candles: pd.DataFrame, seed: int = 0, base_rate: float = BYBIT_BASE_RATE,
                      premium_weight: float = 0.005, noise: float = 0.00005,
                      cap: float = 0.00375) -> pd.DataFrame:
    """A plausible funding series for synthetic candles, causal (a settlement reads only bars
    that opened before it), deterministic by seed:

        rate_s = clip(base + premium_weight * r_24h(s) + noise * z_s, -cap, cap)

    ``r_24h(s)`` is the log return of the 24 h of closes before the settlement: perpetuals trade
    at a premium after rallies (longs pay more) and at a discount after sell-offs.
    """
    stamps = pd.DatetimeIndex(candles["timestamp"])
    if len(stamps) < 2:
        return pd.DataFrame({"timestamp": stamps[:0].as_unit("ns"), "rate": np.zeros(0)})
    settle = constant_funding(stamps[0], stamps[-1], 0.0)["timestamp"]
    settle_ns = pd.DatetimeIndex(settle).as_unit("ns").asi8
    open_ns = stamps.as_unit("ns").asi8
    close = candles["close"].to_numpy(np.float64)
    # the newest bar that closed by the settlement: open + step <= s, i.e. the bar before the
    # first bar opening at or after s
    step = int(np.median(np.diff(open_ns)))
    last_closed = np.searchsorted(open_ns, settle_ns - step, side="right") - 1
    lag = max(int(round(24 * 3600e9 / step)), 1)
    earlier = np.maximum(last_closed - lag, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        momentum = np.where(last_closed >= 0, np.log(close[np.maximum(last_closed, 0)]
                                                     / close[earlier]), 0.0)
    z = np.random.default_rng([seed, 0xF0]).standard_normal(len(settle_ns))
    rates = np.clip(base_rate + premium_weight * momentum + noise * z, -cap, cap)
    return pd.DataFrame({"timestamp": pd.DatetimeIndex(settle).as_unit("ns"), "rate": rates})


def funding_per_bar(timestamps: pd.DatetimeIndex, funding: pd.DataFrame | None) -> np.ndarray:
    """The funding rate charged at each bar's open (0 where no settlement).

    A settlement at time s is charged at the first bar whose open is at or after s, on the
    position held going into that bar (before its open fill), marked at that bar's open. With
    bars of 8 h or shorter aligned to the hour (1h, 4h, 8h), s is exactly a bar's open. Several
    settlements falling before one bar's open (bars longer than 8 h) add up. Settlements before
    the first bar or after the last bar's open are outside the run and ignored.
    """
    n = len(timestamps)
    rates = np.zeros(n)
    if funding is None or n == 0 or len(funding) == 0:
        return rates
    opens = pd.DatetimeIndex(timestamps).as_unit("ns").asi8
    settle = pd.DatetimeIndex(funding["timestamp"]).as_unit("ns").asi8
    values = funding["rate"].to_numpy(np.float64)
    inside = (settle > opens[0]) & (settle <= opens[-1])
    bar = np.searchsorted(opens, settle[inside], side="left")
    np.add.at(rates, bar, values[inside])
    return rates


def coverage_note(timestamps: pd.DatetimeIndex, funding: pd.DataFrame | None) -> str | None:
    """None when the series covers the bars; else one line saying which part is not covered."""
    if funding is None:
        return "no funding series: funding is not charged"
    stamps = pd.DatetimeIndex(timestamps)
    if len(funding) == 0:
        return "the funding series is empty: funding is not charged"
    first, last = pd.Timestamp(funding["timestamp"].iloc[0]), pd.Timestamp(funding["timestamp"].iloc[-1])
    gap = pd.Timedelta(hours=SETTLEMENT_HOURS)
    parts = []
    if first - gap > stamps[0]:
        parts.append(f"before {first:%Y-%m-%d %H:%M}")
    if last + gap < stamps[-1]:
        parts.append(f"after {last:%Y-%m-%d %H:%M}")
    if not parts:
        return None
    return "the funding series does not cover the bars " + " and ".join(parts) + \
        ": no funding charged there"


def update_funding_cache(client, symbol: str, start: pd.Timestamp, out_dir: str | os.PathLike,
                         *, end: pd.Timestamp | None = None, progress=None
                         ) -> tuple[Path, pd.DataFrame, int]:
    """Bring ``out_dir/SYMBOL_category_funding.csv`` (the client's category) up to date: a new
    file gets the settlements from ``start`` to ``end`` (default now); an existing one only
    those after its last row, once the next settlement time has passed (the shortest spacing
    in the file after its last row), and those before its first when ``start`` is earlier, so
    a rerun asks Bybit for little or nothing. Returns (path, the whole series, rows added)."""
    category = getattr(client, "category", "linear")
    path = funding_cache_path(out_dir, symbol, category)
    end = pd.Timestamp.now(tz="UTC") if end is None else pd.Timestamp(end)
    start = pd.Timestamp(start)
    old = load_funding(path) if path.exists() else None
    pieces = [] if old is None else [old]
    if old is None or len(old) == 0:
        pieces.append(client.get_funding_history(symbol, start, end, category, progress=progress))
    else:
        first, last = old["timestamp"].iloc[0], old["timestamp"].iloc[-1]
        if start < first - pd.Timedelta(hours=SETTLEMENT_HOURS):
            pieces.append(client.get_funding_history(symbol, start, first - pd.Timedelta(
                milliseconds=1), category, progress=progress))
        if last + _settlement_step(old) <= end:  # else no settlement can be newer
            pieces.append(client.get_funding_history(symbol, last + pd.Timedelta(milliseconds=1),
                                                     end, category, progress=progress))
    merged = pd.concat(pieces, ignore_index=True) if pieces else old
    merged = merged.sort_values("timestamp", kind="stable")
    merged = merged.drop_duplicates("timestamp", keep="last").reset_index(drop=True)
    save_funding(merged, path)
    return path, merged, len(merged) - (0 if old is None else len(old))


def _settlement_step(funding: pd.DataFrame) -> pd.Timedelta:
    """The shortest spacing of a funding series' settlements (8 h with fewer than two)."""
    stamps = pd.DatetimeIndex(funding["timestamp"]).as_unit("ns").asi8
    steps = np.diff(stamps)
    steps = steps[steps > 0]
    return pd.Timedelta(int(steps.min()) if len(steps) else SETTLEMENT_HOURS * 3_600 * 10**9, "ns")
