"""Bar intervals: one canonical spelling, Bybit's codes, durations and the time grid.

Canonical names: ``1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d 1w 1M`` (``M`` is the month, ``m`` the
minute). Bybit's own codes ``1 3 5 15 30 60 120 240 360 720 D W M`` are accepted everywhere.
Grid: minute/hour/day bars open on multiples of their length since the Unix epoch, weekly bars on
Mondays 00:00 UTC (Bybit's convention), monthly bars on the 1st of the month 00:00 UTC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_CANONICAL_TO_BYBIT = {
    "1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30",
    "1h": "60", "2h": "120", "4h": "240", "6h": "360", "12h": "720",
    "1d": "D", "1w": "W", "1M": "M",
}
_BYBIT_TO_CANONICAL = {v: k for k, v in _CANONICAL_TO_BYBIT.items()}
_MINUTES = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
    "6h": 360, "12h": 720, "1d": 1440, "1w": 10080,
}
INTERVALS: tuple[str, ...] = tuple(_CANONICAL_TO_BYBIT)
MINUTES_PER_YEAR = 365 * 24 * 60
_MONTH_MS_APPROX = int(round(365.25 / 12 * 86_400_000))
_WEEK_ORIGIN_MS = 4 * 86_400_000  # 1970-01-05 was the first Monday after the epoch


def normalize_interval(interval: str | int) -> str:
    """Return the canonical name (e.g. ``"1h"``) of a canonical name or Bybit code (``"60"``).

    Upper-case ``H``/``D``/``W`` suffixes are accepted (``"4H"``); ``"1M"`` is always a month.
    Raises ValueError listing the accepted forms for anything else.
    """
    text = str(interval).strip()
    if text in _CANONICAL_TO_BYBIT:
        return text
    if text in _BYBIT_TO_CANONICAL:
        return _BYBIT_TO_CANONICAL[text]
    if text[-1:] in ("H", "D", "W") and text[:-1].isdigit():
        lowered = text[:-1] + text[-1].lower()
        if lowered in _CANONICAL_TO_BYBIT:
            return lowered
    raise ValueError(
        f"unknown interval {interval!r}; use one of {' '.join(INTERVALS)} "
        f"or Bybit's {' '.join(_BYBIT_TO_CANONICAL)}"
    )


def to_bybit_interval(interval: str | int) -> str:
    """Bybit's code for an interval: ``"1h" -> "60"``, ``"1d" -> "D"``, ``"1M" -> "M"``."""
    return _CANONICAL_TO_BYBIT[normalize_interval(interval)]


def interval_to_timedelta(interval: str | int) -> pd.Timedelta:
    """Length of one bar. A month is taken as its mean length, 365.25 / 12 days."""
    name = normalize_interval(interval)
    if name == "1M":
        return pd.Timedelta(milliseconds=_MONTH_MS_APPROX)
    return pd.Timedelta(minutes=_MINUTES[name])


def interval_to_ms(interval: str | int) -> int:
    """Length of one bar in milliseconds (month: mean length, see interval_to_timedelta)."""
    return int(interval_to_timedelta(interval) // pd.Timedelta(milliseconds=1))


def interval_from_ms(step_ms: int) -> str | None:
    """The canonical interval whose bar lasts ``step_ms`` milliseconds (not months), else None."""
    for name, minutes in _MINUTES.items():
        if minutes * 60_000 == int(step_ms):
            return name
    return None


def periods_per_year(interval: str | int) -> float:
    """Bars per year used to annualise metrics: 365 days a year, so ``1h -> 8760``, ``1M -> 12``."""
    name = normalize_interval(interval)
    if name == "1M":
        return 12.0
    return MINUTES_PER_YEAR / _MINUTES[name]


def on_grid(timestamps_ms: np.ndarray, interval: str | int) -> np.ndarray:
    """Boolean mask: which open times (ms since the epoch, UTC) sit on the interval's grid."""
    name = normalize_interval(interval)
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    if name == "1M":
        stamps = pd.to_datetime(ts, unit="ms", utc=True)
        return np.asarray((stamps.day == 1) & (stamps.normalize() == stamps))
    step = _MINUTES[name] * 60_000
    origin = _WEEK_ORIGIN_MS if name == "1w" else 0
    return (ts - origin) % step == 0


def next_open_ms(open_ms: int, interval: str | int) -> int:
    """Open time of the bar after the one opening at ``open_ms`` (exact for months)."""
    if normalize_interval(interval) == "1M":
        stamp = pd.Timestamp(open_ms, unit="ms", tz="UTC") + pd.DateOffset(months=1)
        return int(stamp.value // 1_000_000)
    return int(open_ms) + interval_to_ms(interval)


def bar_range(start: pd.Timestamp, n_bars: int, interval: str | int) -> pd.DatetimeIndex:
    """``n_bars`` consecutive open times from ``start`` (UTC) at the interval's spacing."""
    name = normalize_interval(interval)
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    if name == "1M":
        return pd.date_range(start, periods=n_bars, freq="MS", tz="UTC")
    return pd.date_range(start, periods=n_bars, freq=pd.Timedelta(minutes=_MINUTES[name]))
