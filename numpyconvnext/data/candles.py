"""The project's candle format, in one place.

A candle frame is a pandas DataFrame with a default RangeIndex and the columns
``timestamp`` (datetime64[ns, UTC], the bar's open time), ``open high low close volume turnover``
(float64), sorted ascending with unique timestamps. ``turnover`` (quote-currency volume) is NaN
where the source does not provide it (e.g. the Binance CSV); nothing downstream reads it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
VALUE_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume", "turnover")
CANDLE_COLUMNS: tuple[str, ...] = ("timestamp", *VALUE_COLUMNS)


def make_candles(timestamps_ms: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """Build a candle frame from open times in ms and a ``[N, 6]`` float array (OHLCV, turnover)."""
    values = np.asarray(values, dtype=np.float64)
    frame = pd.DataFrame(values, columns=list(VALUE_COLUMNS))
    stamps = pd.to_datetime(np.asarray(timestamps_ms, dtype=np.int64), unit="ms", utc=True)
    frame.insert(0, "timestamp", stamps.as_unit("ns"))
    return frame


def timestamps_ms(candles: pd.DataFrame) -> np.ndarray:
    """Open times as int64 milliseconds since the epoch."""
    stamps = pd.DatetimeIndex(candles["timestamp"]).as_unit("ns")
    return stamps.asi8 // 1_000_000


def candles_sha256(candles: pd.DataFrame) -> str:
    """SHA-256 of the open times and OHLC prices (float64 bytes): the content hash a checkpoint
    records of its training candles and a walk-forward report of its data."""
    import hashlib

    prices = np.ascontiguousarray(candles[list(PRICE_COLUMNS)].to_numpy(np.float64))
    digest = hashlib.sha256(timestamps_ms(candles).astype(np.int64).tobytes())
    digest.update(prices.tobytes())
    return digest.hexdigest()


def ohlc_violations(values: np.ndarray) -> np.ndarray:
    """Row mask of impossible candles in a ``[N, >=5]`` OHLCV array.

    A row is bad when any of OHLCV is not finite, a price is not positive,
    ``high < max(open, close)``, ``low > min(open, close)`` or ``volume < 0``.
    """
    o, h, low, c, v = (values[:, i] for i in range(5))
    finite = np.isfinite(values[:, :5]).all(axis=1)
    with np.errstate(invalid="ignore"):
        ok = (
            finite
            & (values[:, :4] > 0).all(axis=1)
            & (h >= np.maximum(o, c))
            & (low <= np.minimum(o, c))
            & (v >= 0)
        )
    return ~ok


def describe_violation(row: np.ndarray) -> str:
    """Human reason why one OHLCV row failed ``ohlc_violations``."""
    o, h, low, c, v = (float(x) for x in row[:5])
    if not np.isfinite(row[:5]).all():
        return "a value is not a finite number"
    if min(o, h, low, c) <= 0:
        return "a price is not positive"
    if h < max(o, c):
        return f"high {h} < max(open, close) {max(o, c)}"
    if low > min(o, c):
        return f"low {low} > min(open, close) {min(o, c)}"
    return f"volume {v} < 0"
