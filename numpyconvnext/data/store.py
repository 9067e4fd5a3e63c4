"""Candle files: load and save CSV or JSON (chosen by extension), atomic writes, gap reports,
and an incremental cache ``{out_dir}/{SYMBOL}_{category}_{interval}.{csv|json}``
(``BTCUSDT_linear_1h.csv``): spot and perpetual candles of one symbol never share a file. An
old-style name without a category (``BTCUSDT_1h.csv``, written when linear was the only
default) is still read as linear, with a notice.

CSV: a header with ``timestamp,open,high,low,close,volume[,turnover]``; timestamps ISO 8601
UTC (``2017-08-18T00:00:00Z``) or integer milliseconds. JSON: a list of objects
``{"timestamp": ms, "open": ..., ..., "turnover": ... | null}``, one per line when we write it.
A missing ``turnover`` loads as NaN. A malformed file raises ``CandleFileError`` naming the file
and line; gaps in the time grid only warn (``CandleGapWarning``).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .candles import (
    CANDLE_COLUMNS,
    VALUE_COLUMNS,
    describe_violation,
    make_candles,
    ohlc_violations,
    timestamps_ms,
)
from .intervals import interval_to_ms, normalize_interval

FORMATS = ("csv", "json")
_REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")


class CandleFileError(ValueError):
    """A candle file that cannot be read; the message names the file and the line."""


class CandleGapWarning(UserWarning):
    """Bars missing from a candle file's time grid."""


@dataclass(frozen=True)
class GapReport:
    """Missing bars in a candle series: total count and the first few gaps ``(after, n_missing)``."""

    interval_ms: int
    n_missing: int
    gaps: tuple[tuple[pd.Timestamp, int], ...]

    def summary(self, max_listed: int = 5) -> str:
        """One line such as ``3 missing bars in 2 gaps: after 2020-03-01 04:00 (+2), ...``."""
        listed = ", ".join(f"after {t:%Y-%m-%d %H:%M} (+{n})" for t, n in self.gaps[:max_listed])
        more = f", ... {len(self.gaps) - max_listed} more" if len(self.gaps) > max_listed else ""
        return f"{self.n_missing} missing bars in {len(self.gaps)} gaps: {listed}{more}"


def gap_report(candles: pd.DataFrame, interval: str | None = None) -> GapReport:
    """Count bars missing between consecutive candles.

    The interval is the given one, else the most common spacing. Monthly bars are not checked
    (months differ in length).
    """
    ts = timestamps_ms(candles)
    if interval is not None and normalize_interval(interval) == "1M" or len(ts) < 2:
        return GapReport(0, 0, ())
    diffs = np.diff(ts)
    if interval is not None:
        step = interval_to_ms(interval)
    else:
        values, counts = np.unique(diffs, return_counts=True)
        step = int(values[np.argmax(counts)])
    missing = diffs // step - 1
    where = np.flatnonzero(missing > 0)
    gaps = tuple((candles["timestamp"].iloc[i], int(missing[i])) for i in where)
    return GapReport(step, int(missing[where].sum()), gaps)


CATEGORIES = ("linear", "spot", "inverse")


def category_from_path(path: str | os.PathLike) -> str | None:
    """The category in a ``SYMBOL_category_interval.ext`` file name, or None."""
    parts = Path(path).stem.split("_")
    return parts[-2] if len(parts) >= 3 and parts[-2] in CATEGORIES else None


def symbol_from_path(path: str | os.PathLike) -> str | None:
    """The symbol of a ``SYMBOL[_category]_interval.ext`` file name (upper case), or None."""
    parts = Path(path).stem.split("_")
    if len(parts) < 2 or not parts[0].isalnum() or interval_from_path(path) is None:
        return None
    return parts[0].upper()


def interval_from_path(path: str | os.PathLike) -> str | None:
    """The interval in a ``SYMBOL_interval.ext`` file name, or None when the name has none."""
    stem = Path(path).stem
    if "_" not in stem:
        return None
    try:
        return normalize_interval(stem.rsplit("_", 1)[1])
    except ValueError:
        return None


def load_candles(path: str | os.PathLike, *, warn_gaps: bool = True) -> pd.DataFrame:
    """Read a CSV or JSON candle file into the candle frame (see ``candles.py``).

    Checks every row (numbers, OHLC consistency, volume >= 0, strictly increasing timestamps)
    and raises ``CandleFileError`` naming file and line. Warns ``CandleGapWarning`` on gaps.
    """
    path = Path(path)
    fmt = _format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"no candle file at {path}")
    ts, values, lines = _read_json(path) if fmt == "json" else _read_csv(path)
    bad = ohlc_violations(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CandleFileError(f"{path}:{lines[i]}: invalid candle: {describe_violation(values[i])}")
    turnover = values[:, 5]
    with np.errstate(invalid="ignore"):
        if (turnover < 0).any():
            i = int(np.flatnonzero(turnover < 0)[0])
            raise CandleFileError(f"{path}:{lines[i]}: turnover {turnover[i]} < 0")
    steps = np.diff(ts)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        kind = "duplicate" if steps[i - 1] == 0 else "out-of-order"
        raise CandleFileError(f"{path}:{lines[i]}: {kind} timestamp (rows must be ascending)")
    candles = make_candles(ts, values)
    if warn_gaps:
        report = gap_report(candles, interval_from_path(path))
        if report.n_missing:
            warnings.warn(f"{path}: {report.summary()}", CandleGapWarning, stacklevel=2)
    return candles


def save_candles(candles: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write candles atomically (temp file in the same folder, fsync, ``os.replace``).

    The format follows the extension (``.csv`` or ``.json``). On any failure the previous file,
    if any, is left untouched and no temporary file remains.
    """
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _to_json_text(candles) if fmt == "json" else _to_csv_text(candles)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def cache_path(out_dir: str | os.PathLike, symbol: str, interval: str, fmt: str = "csv",
               category: str = "linear") -> Path:
    """``out_dir/SYMBOL_category_interval.fmt`` with the canonical interval name
    (``BTCUSDT_linear_1h.csv``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use csv or json")
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
    return Path(out_dir) / f"{symbol.upper()}_{category}_{normalize_interval(interval)}.{fmt}"


def legacy_cache_path(out_dir: str | os.PathLike, symbol: str, interval: str,
                      fmt: str = "csv") -> Path:
    """The old cache name without a category, ``out_dir/SYMBOL_interval.fmt``."""
    return Path(out_dir) / f"{symbol.upper()}_{normalize_interval(interval)}.{fmt}"


def find_cache(out_dir: str | os.PathLike, symbol: str, interval: str, category: str = "linear",
               notice: Callable[[str], None] | None = None) -> Path | None:
    """The existing cache file of (symbol, interval, category), csv before json; else, for
    linear only, an old-style file without a category (read as linear, the old default, with a
    notice); else None. A spot cache is never an old-style file."""
    for fmt in FORMATS:
        path = cache_path(out_dir, symbol, interval, fmt, category)
        if path.exists():
            return path
    if category != "linear":
        return None
    for fmt in FORMATS:
        old = legacy_cache_path(out_dir, symbol, interval, fmt)
        if old.exists():
            if notice is not None:
                notice(f"{old}: old-style cache name without a category, read as linear "
                       f"(rename it to {cache_path(out_dir, symbol, interval, fmt).name})")
            return old
    return None


@dataclass(frozen=True)
class CacheUpdate:
    """What ``update_cache`` did: the file, all candles now in it, and how many were new."""

    path: Path
    candles: pd.DataFrame
    n_new: int


def update_cache(
    client,
    symbol: str,
    interval: str,
    days: float,
    out_dir: str | os.PathLike = "data",
    fmt: str = "csv",
    *,
    end: pd.Timestamp | None = None,
    progress: Callable[[int], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> CacheUpdate:
    """Bring ``out_dir/SYMBOL_category_interval.fmt`` (the client's category) up to date from
    ``client`` (a ``BybitClient``).

    A new file gets the candles opened in the ``days`` days up to ``end`` (default now). An
    existing file is only extended: candles after its last stored one are fetched and appended
    (earlier history is not back-filled; delete the file to refetch). An old-style linear file
    without a category is read (with a notice) and continued under the new name. The file is
    rewritten atomically.
    """
    category = getattr(client, "category", "linear")
    path = cache_path(out_dir, symbol, interval, fmt, category)
    end = pd.Timestamp.now(tz="UTC") if end is None else pd.Timestamp(end)
    source = path if path.exists() else find_cache(out_dir, symbol, interval, category, notice)
    if source is not None and source.suffix.lower() != f".{fmt}":
        source = path if path.exists() else None
    old = load_candles(source, warn_gaps=False) if source is not None else None
    if old is not None and len(old):
        start = old["timestamp"].iloc[-1] + pd.Timedelta(milliseconds=1)
    else:
        start = end - pd.Timedelta(days=days) + pd.Timedelta(milliseconds=1)  # `days` bars, not +1
    new = client.get_klines(symbol, interval, start, end, progress=progress)
    if old is not None and len(old):
        merged = pd.concat([old, new], ignore_index=True)
        merged = merged.drop_duplicates("timestamp", keep="last").reset_index(drop=True)
    else:
        merged = new
    save_candles(merged, path)
    return CacheUpdate(path, merged, len(merged) - (0 if old is None else len(old)))


# --- formats ------------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise CandleFileError(f"{path}: unknown extension {path.suffix!r}; use .csv or .json")
    return fmt


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.ParserError as error:
        raise CandleFileError(f"{path}: malformed CSV: {error}") from None
    except pd.errors.EmptyDataError:
        raise CandleFileError(f"{path}:1: empty file, expected a header") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise CandleFileError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
    lines = np.arange(len(raw)) + 2
    ts = _parse_timestamps(raw["timestamp"].str.strip(), path, lines)
    values = np.full((len(raw), 6), np.nan)
    for j, column in enumerate(VALUE_COLUMNS):
        if column not in raw.columns:
            continue
        text = raw[column].str.strip()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(numbers) & ((text != "") | (column != "turnover")).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CandleFileError(f"{path}:{lines[i]}: {column} {text.iloc[i]!r} is not a number")
        values[:, j] = numbers
    return ts, values, lines


def _parse_timestamps(text: pd.Series, path: Path, lines: np.ndarray) -> np.ndarray:
    is_int = text.str.fullmatch(r"-?\d+").to_numpy(dtype=bool)
    ts = np.zeros(len(text), dtype=np.int64)
    if is_int.any():
        ts[is_int] = text[is_int].astype(np.int64).to_numpy()
    if (~is_int).any():
        parsed = pd.to_datetime(text[~is_int], utc=True, errors="coerce", format="ISO8601")
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(~is_int)[np.flatnonzero(bad)[0]])
            raise CandleFileError(f"{path}:{lines[i]}: timestamp {text.iloc[i]!r} is not a time")
        ts[~is_int] = pd.DatetimeIndex(parsed).as_unit("ns").asi8 // 1_000_000
    return ts


def _read_json(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise CandleFileError(f"{path}:{error.lineno}: malformed JSON: {error.msg}") from None
    if not isinstance(records, list):
        raise CandleFileError(f"{path}:1: expected a JSON list of candle objects")
    n = len(records)
    ts = np.zeros(n, dtype=np.int64)
    values = np.full((n, 6), np.nan)
    for i, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise ValueError("not an object")
            missing = [c for c in _REQUIRED if c not in record]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            stamp = record["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, (int, str)):
                raise ValueError(f"timestamp {stamp!r} is not milliseconds")
            ts[i] = int(stamp)
            for j, column in enumerate(VALUE_COLUMNS):
                value = record.get(column)
                if value is None and column == "turnover":
                    continue
                if isinstance(value, bool) or value is None:
                    raise ValueError(f"{column} {value!r} is not a number")
                values[i, j] = float(value)
        except (TypeError, ValueError) as error:
            line = _json_element_lines(text)[i]
            raise CandleFileError(f"{path}:{line}: candle {i}: {error}") from None
    return ts, values, _LazyLines(text)


class _LazyLines:
    """Line numbers of a JSON list's elements, computed only when an error needs one."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: list[int] | None = None

    def __getitem__(self, i: int) -> int:
        if self._lines is None:
            self._lines = _json_element_lines(self._text)
        return self._lines[i]


def _json_element_lines(text: str) -> list[int]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)
    lines = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            line += text[pos] == "\n"
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(line)
        _, end = decoder.raw_decode(text, pos)
        line += text.count("\n", pos, end)
        pos = end


def _to_csv_text(candles: pd.DataFrame) -> str:
    frame = candles.loc[:, list(CANDLE_COLUMNS)].copy()
    frame["timestamp"] = pd.DatetimeIndex(frame["timestamp"]).strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame.to_csv(index=False, lineterminator="\n", float_format=None)


def _to_json_text(candles: pd.DataFrame) -> str:
    ts = timestamps_ms(candles)
    values = candles.loc[:, list(VALUE_COLUMNS)].to_numpy(dtype=np.float64)
    parts = []
    for stamp, row in zip(ts.tolist(), values.tolist(), strict=True):
        record = {"timestamp": stamp}
        record.update({c: (None if v != v else v) for c, v in zip(VALUE_COLUMNS, row, strict=True)})
        parts.append(json.dumps(record))
    return "[\n" + ",\n".join(parts) + "\n]\n" if parts else "[]\n"
