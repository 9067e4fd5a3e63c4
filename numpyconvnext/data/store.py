"""Candle files: load and save CSV or JSON (chosen by extension), atomic writes, gap and grid
reports, ``repair_candles``, and an incremental, resumable cache
``{out_dir}/{SYMBOL}_{category}_{interval}.{csv|json}`` (``BTCUSDT_linear_1h.csv``): spot and
perpetual candles of one symbol never share a file. An old-style name without a category
(``BTCUSDT_1h.csv``, written when linear was the only default) is still read as linear, with a
notice.

CSV: a header with ``timestamp,open,high,low,close,volume[,turnover]`` (other named columns are
ignored); every line has exactly the header's number of fields. JSON: a list of objects
``{"timestamp": ms, "open": ..., ..., "turnover": ... | null}``, one per line when we write it.
Timestamps are ISO 8601 (``2017-08-18T00:00:00Z``, UTC unless an offset says otherwise) or an
integer count since the epoch whose unit (s, ms, us or ns) is told by its magnitude: every
timestamp must fall between 1980 and 2100, and one file uses one unit. A missing ``turnover``
loads as NaN.

A malformed file raises ``CandleFileError``: one line naming the file and line (wrong field
count, trailing comma, a bad number, an impossible or out-of-range timestamp, rows out of order
or duplicated; the last two ``repair_candles`` fixes). Bars missing from the time grid warn
``CandleGapWarning``, rows off the grid (01:30 in a 1h file) ``CandleGridWarning``, both with
counts.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .cache_names import cache_file, parse_cache_name
from .candles import (
    CANDLE_COLUMNS,
    VALUE_COLUMNS,
    describe_violation,
    make_candles,
    ohlc_violations,
    timestamps_ms,
)
from .intervals import interval_from_ms, interval_to_ms, next_open_ms, normalize_interval, on_grid

FORMATS = ("csv", "json")
_REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")
# an integer timestamp's unit is the one that puts it in [1980, 2100)
_EPOCH_S_RANGE = (315_532_800, 4_102_444_800)
_EPOCH_UNITS = (("seconds", 1), ("milliseconds", 10**3), ("microseconds", 10**6),
                ("nanoseconds", 10**9))
SAVE_EVERY_PAGES = 20
REPAIR_HINT = "run `python cli.py repair FILE` (or `fetch --repair`) to sort and de-duplicate it"


class CandleFileError(ValueError):
    """A candle file that cannot be read; the message names the file and the line."""


class CandleGapWarning(UserWarning):
    """Bars missing from a candle file's time grid."""


class CandleGridWarning(UserWarning):
    """Rows whose open time is off the interval's grid (01:30 in a 1h file)."""


@dataclass(frozen=True)
class GapReport:
    """Missing bars in a candle series: total count and the first few gaps ``(after, n_missing)``;
    and the rows off the interval's grid: their count and positions (``off_grid``)."""

    interval_ms: int
    n_missing: int
    gaps: tuple[tuple[pd.Timestamp, int], ...]
    n_off_grid: int = 0
    off_grid: tuple[int, ...] = ()
    interval: str | None = None

    def summary(self, max_listed: int = 5) -> str:
        """One line such as ``3 missing bars in 2 gaps: after 2020-03-01 04:00 (+2), ...``."""
        listed = ", ".join(f"after {t:%Y-%m-%d %H:%M} (+{n})" for t, n in self.gaps[:max_listed])
        more = f", ... {len(self.gaps) - max_listed} more" if len(self.gaps) > max_listed else ""
        return f"{self.n_missing} missing bars in {len(self.gaps)} gaps: {listed}{more}"


def gap_report(candles: pd.DataFrame, interval: str | None = None) -> GapReport:
    """Count rows off the interval's grid, and bars missing between consecutive grid rows.

    The interval is the given one, else the most common spacing. Monthly bars are checked for
    the grid (the 1st of a month) but not for gaps (months differ in length).
    """
    ts = timestamps_ms(candles)
    if interval is not None:
        interval = normalize_interval(interval)
    elif len(ts) >= 2:
        values, counts = np.unique(np.diff(ts), return_counts=True)
        interval = interval_from_ms(int(values[np.argmax(counts)]))
    off = np.flatnonzero(~on_grid(ts, interval)) if interval is not None else np.zeros(0, int)
    off_grid = dict(n_off_grid=len(off), off_grid=tuple(int(i) for i in off), interval=interval)
    on = np.ones(len(ts), dtype=bool)
    on[off] = False  # gaps are counted on the grid rows alone
    ts, stamps = ts[on], candles["timestamp"][on]
    if interval == "1M" or len(ts) < 2:
        return GapReport(0, 0, (), **off_grid)
    diffs = np.diff(ts)
    if interval is not None:
        step = interval_to_ms(interval)
    else:
        values, counts = np.unique(diffs, return_counts=True)
        step = int(values[np.argmax(counts)])
    missing = diffs // step - 1
    where = np.flatnonzero(missing > 0)
    gaps = tuple((stamps.iloc[i], int(missing[i])) for i in where)
    return GapReport(step, int(missing[where].sum()), gaps, **off_grid)


def load_candles(path: str | os.PathLike, *, warn_gaps: bool = True) -> pd.DataFrame:
    """Read a CSV or JSON candle file into the candle frame (see ``candles.py``).

    Checks every line (field count, numbers, timestamps and their unit, OHLC consistency,
    volume >= 0, strictly increasing timestamps) and raises ``CandleFileError`` naming file
    and line. Warns ``CandleGapWarning`` on gaps and ``CandleGridWarning`` on off-grid rows.
    """
    path = Path(path)
    ts, values, lines = _read_rows(path)
    steps = np.diff(ts)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        kind = "duplicate" if steps[i - 1] == 0 else "out-of-order"
        raise CandleFileError(f"{path}:{lines[i]}: {kind} timestamp (rows must be ascending); "
                              f"{REPAIR_HINT.replace('FILE', str(path))}")
    candles = make_candles(ts, values)
    if warn_gaps:
        warn_about_grid(candles, path, parse_cache_name(path).interval, lines)
    return candles


def warn_about_grid(candles: pd.DataFrame, path: str | os.PathLike, interval: str | None = None,
                    lines=None) -> GapReport:
    """Warn ``CandleGridWarning`` / ``CandleGapWarning`` (with counts) and return the report."""
    report = gap_report(candles, interval)
    if report.n_off_grid:
        i = report.off_grid[0]
        where = f"line {lines[i]}, " if lines is not None else ""
        warnings.warn(f"{path}: {report.n_off_grid} rows off the {report.interval} grid (first: "
                      f"{where}{candles['timestamp'].iloc[i]:%Y-%m-%d %H:%M})", CandleGridWarning,
                      stacklevel=3)
    if report.n_missing:
        warnings.warn(f"{path}: {report.summary()}", CandleGapWarning, stacklevel=3)
    return report


def _read_rows(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """Timestamps (ms), values [N, 6] and line numbers of a file's rows, each row checked on
    its own (order is not checked here)."""
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
    return ts, values, lines


@dataclass(frozen=True)
class RepairReport:
    """What ``repair_candles`` found and did."""

    path: Path
    rows_read: int
    rows_written: int
    out_of_order: int
    duplicates: int
    conflicts: int
    gaps: GapReport
    backup: Path | None

    @property
    def changed(self) -> bool:
        return bool(self.out_of_order or self.duplicates or self.conflicts)

    def summary(self) -> str:
        """A few lines for people: what was fixed, what remains (gaps, off-grid rows)."""
        if self.changed:
            lines = [f"{self.path}: {self.rows_read} rows read, {self.rows_written} written: "
                     f"{self.out_of_order} out of order (sorted), {self.duplicates} exact "
                     f"duplicates dropped, {self.conflicts} conflicting duplicates (kept the later "
                     "line)"]
        else:
            lines = [f"{self.path}: {self.rows_read} rows, already sorted and unique; unchanged"]
        if self.backup is not None:
            lines.append(f"the original is kept as {self.backup}")
        if self.gaps.n_missing:
            lines.append(f"still: {self.gaps.summary()}")
        if self.gaps.n_off_grid:
            lines.append(f"still: {self.gaps.n_off_grid} rows off the {self.gaps.interval} grid "
                         "(left as they are)")
        return "\n".join(lines)


def repair_candles(path: str | os.PathLike, out: str | os.PathLike | None = None, *,
                   backup: bool = True) -> RepairReport:
    """Sort a candle file by time and drop duplicate timestamps, then write it atomically.

    Of rows sharing a timestamp the later line wins (a newer fetch appended after an older
    one). Rows that are wrong on their own (bad numbers, high < low, ...) still raise
    ``CandleFileError``: repairing them would be guessing. ``out`` writes elsewhere; else the
    file is replaced, its original kept as ``FILE.bak`` unless ``backup=False``. An already
    clean file is not rewritten.
    """
    path = Path(path)
    ts, values, _ = _read_rows(path)
    order = np.argsort(ts, kind="stable")  # ties keep file order: the last is the later line
    running_max = np.maximum.accumulate(ts) if len(ts) else ts
    out_of_order = int((ts[1:] < running_max[:-1]).sum()) if len(ts) else 0
    ts, values = ts[order], values[order]
    last_of_group = np.r_[ts[1:] != ts[:-1], True] if len(ts) else np.zeros(0, bool)
    keep_values = values[last_of_group]
    dropped = np.flatnonzero(~last_of_group)
    group_of = np.cumsum(last_of_group[::-1])[::-1]  # rows of one timestamp share a number
    kept_row = {int(g): i for i, g in enumerate(group_of) if last_of_group[i]}
    same = [np.array_equal(values[i], values[kept_row[int(group_of[i])]], equal_nan=True)
            for i in dropped]
    conflicts = len(same) - int(sum(same))
    candles = make_candles(ts[last_of_group], keep_values)
    target = Path(out) if out is not None else path
    report = dict(path=target, rows_read=len(order), rows_written=len(candles),
                  out_of_order=out_of_order, duplicates=int(sum(same)), conflicts=conflicts,
                  gaps=gap_report(candles, parse_cache_name(target).interval))
    saved_backup = None
    if out is not None or out_of_order or len(dropped):
        if out is None and backup:
            saved_backup = path.with_name(path.name + ".bak")
            shutil.copy2(path, saved_backup)
        save_candles(candles, target)
    return RepairReport(**report, backup=saved_backup)


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
    (``BTCUSDT_linear_1h.csv``; see ``cache_names``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use csv or json")
    if category is None:
        raise ValueError("a cache name needs a category")
    return cache_file(out_dir, symbol, interval, category, fmt)


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
        old = cache_file(out_dir, symbol, interval, None, fmt)  # the old name
        if old.exists():
            if notice is not None:
                notice(f"{old}: old-style cache name without a category, read as linear "
                       f"(rename it to {cache_path(out_dir, symbol, interval, fmt).name})")
            return old
    return None


@dataclass(frozen=True)
class CacheUpdate:
    """What ``update_cache`` did: the file, all candles now in it, and how many were new
    (``n_newer`` after the stored ones, ``n_older`` before them)."""

    path: Path
    candles: pd.DataFrame
    n_new: int
    n_newer: int = 0
    n_older: int = 0


class _ProgressWriter:
    """Collects fetched pages and merges them into the cache file every ``save_every`` pages."""

    def __init__(self, path: Path, stored: pd.DataFrame | None, save_every: int, *,
                 unsaved: bool = False) -> None:
        self.path, self.stored, self.save_every = path, stored, max(1, int(save_every))
        self.pending: list[pd.DataFrame] = []
        self.n_new = 0
        self.unsaved = unsaved or stored is None  # `path` does not hold `stored` yet

    def add(self, page: pd.DataFrame) -> None:
        self.pending.append(page)
        self.n_new += len(page)
        if len(self.pending) >= self.save_every:
            self.flush()

    def flush(self, *, always: bool = False) -> None:
        if not self.pending and not (always and self.unsaved):
            return
        parts = ([] if self.stored is None else [self.stored]) + self.pending
        merged = (pd.concat(parts, ignore_index=True) if parts
                  else make_candles(np.zeros(0, np.int64), np.zeros((0, 6))))
        merged = (merged.drop_duplicates("timestamp", keep="last").sort_values("timestamp")
                  .reset_index(drop=True))
        save_candles(merged, self.path)
        self.stored, self.pending, self.unsaved = merged, [], False


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
    repair: bool = False,
    save_every: int = SAVE_EVERY_PAGES,
) -> CacheUpdate:
    """Bring ``out_dir/SYMBOL_category_interval.fmt`` (the client's category) up to date from
    ``client`` (a ``BybitClient``).

    A new file gets the candles opened in the ``days`` days up to ``end`` (default now). An
    existing file is refreshed when a candle after its last one has closed (fetched forwards,
    from the last stored candle on) and extended backwards when it starts later than ``days``
    before ``end``; ``notice`` gets one line for either. Progress is merged into the file
    (atomically) every ``save_every`` pages and whenever the fetch fails or is interrupted, so
    a failure loses at most the page in flight and rerunning the call continues where it
    stopped. ``repair`` first sorts and de-duplicates a damaged file (see ``repair_candles``);
    without it such a file raises ``CandleFileError``. An old-style linear file without a
    category is read (with a notice) and continued under the new name.
    """
    say = notice or (lambda message: None)
    name = normalize_interval(interval)
    category = getattr(client, "category", "linear")
    path = cache_path(out_dir, symbol, name, fmt, category)
    end = pd.Timestamp.now(tz="UTC") if end is None else pd.Timestamp(end)
    end_ms = int(end.value // 1_000_000)
    start_ms = end_ms - int(round(days * 86_400_000)) + 1  # `days` bars, not one more
    step_ms = interval_to_ms(name)
    source = path if path.exists() else find_cache(out_dir, symbol, name, category, say)
    if source is not None and source.suffix.lower() != f".{fmt}":
        source = None  # a cache in the other format is not converted
    stored = None
    if source is not None:
        if repair:
            fixed = repair_candles(source)
            if fixed.changed:
                say(fixed.summary().splitlines()[0])
        stored = load_candles(source, warn_gaps=False)
        stored = stored if len(stored) else None
    writer = _ProgressWriter(path, stored, save_every, unsaved=source != path)
    n_newer = 0
    try:
        if stored is None:
            for page in client.kline_pages(symbol, name, start_ms, end_ms, progress=progress):
                writer.add(page)
            n_newer = writer.n_new
        else:
            first_ms, last_ms = (int(t.value // 1_000_000)
                                 for t in stored["timestamp"].iloc[[0, -1]])
            if next_open_ms(next_open_ms(last_ms, name), name) <= end_ms:
                say(f"{path.name} ends {_utc(last_ms)}: fetching the newer candles")
                for page in client.kline_pages(symbol, name, last_ms + 1, end_ms, ascending=True,
                                               progress=progress):
                    writer.add(page)
            n_newer = writer.n_new
            if first_ms - step_ms >= start_ms:
                say(f"{path.name} starts {_utc(first_ms)}, later than the {days:g} days asked: "
                    "fetching the older candles")
                for page in client.kline_pages(symbol, name, start_ms, first_ms - 1,
                                               progress=progress):
                    writer.add(page)
                if writer.n_new == n_newer:
                    say(f"Bybit has no {symbol.upper()} {name} candles before {_utc(first_ms)}")
    except BaseException:
        with contextlib.suppress(Exception):
            writer.flush()  # keep every page that arrived; a rerun continues from there
        raise
    writer.flush(always=True)
    return CacheUpdate(path, writer.stored, writer.n_new, n_newer, writer.n_new - n_newer)


def _utc(open_ms: int) -> str:
    return f"{pd.Timestamp(int(open_ms), unit='ms', tz='UTC'):%Y-%m-%d %H:%M} UTC"


# --- formats ------------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise CandleFileError(f"{path}: unknown extension {path.suffix!r}; use .csv or .json")
    return fmt


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = path.read_bytes().rstrip()
    if not data:
        raise CandleFileError(f"{path}:1: empty file, expected a header")
    data += b"\n"
    _check_field_counts(path, data)
    try:
        raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False,
                          skip_blank_lines=False, index_col=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise CandleFileError(f"{path}: malformed CSV: {str(error).strip()}") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    unnamed = [j for j, c in enumerate(raw.columns) if not c or c.startswith("unnamed:")]
    if unnamed:
        raise CandleFileError(f"{path}:1: header column {unnamed[0] + 1} has no name "
                              "(a trailing comma?)")
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise CandleFileError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
    lines = np.arange(len(raw)) + 2
    ts = _parse_timestamps(raw["timestamp"], path, lines)
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


def _check_field_counts(path: Path, data: bytes) -> None:
    """Every line must have as many fields as the header: no extra, missing or trailing ones."""
    if b'"' in data:  # quoted fields may hold commas: let the csv module count
        text = data.decode("utf-8-sig", errors="replace")
        counts = np.array([len(row) for row in csv.reader(io.StringIO(text))])
    else:
        arr = np.frombuffer(data, dtype=np.uint8)
        newlines = np.flatnonzero(arr == ord("\n"))
        commas = np.flatnonzero(arr == ord(","))
        counts = np.bincount(np.searchsorted(newlines, commas), minlength=len(newlines)) + 1
    wrong = np.flatnonzero(counts != counts[0])
    if not len(wrong):
        return
    i = int(wrong[0])
    line = data.split(b"\n")[i].rstrip(b"\r") if b'"' not in data else b"?"
    if not line.strip():
        raise CandleFileError(f"{path}:{i + 1}: empty line")
    why = " (a trailing comma)" if counts[i] > counts[0] and line.endswith(b",") else ""
    raise CandleFileError(f"{path}:{i + 1}: {counts[i]} fields, the header has {counts[0]}{why}")


def _parse_timestamps(text: pd.Series, path: Path, lines) -> np.ndarray:
    """Open times in ms from ISO strings or epoch integers (unit told by magnitude)."""
    text = text.astype(str).str.strip()
    is_int = text.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
    ts = np.zeros(len(text), dtype=np.int64)
    lo_s, hi_s = _EPOCH_S_RANGE
    if is_int.any():
        where = np.flatnonzero(is_int)
        digits = text.iloc[where]
        magnitude = digits.map(float).to_numpy()  # exact enough to tell units 1000x apart
        unit = np.full(len(where), -1)
        for k, (_, scale) in enumerate(_EPOCH_UNITS):
            unit[(magnitude >= lo_s * scale) & (magnitude < hi_s * scale)] = k
        if (unit < 0).any():
            i = int(where[np.flatnonzero(unit < 0)[0]])
            raise CandleFileError(
                f"{path}:{lines[i]}: timestamp {text.iloc[i]!r} is out of range: not a time "
                "between 1980 and 2100 in seconds, milliseconds, microseconds or nanoseconds "
                "since the epoch")
        if (unit != unit[0]).any():
            j = int(np.flatnonzero(unit != unit[0])[0])
            raise CandleFileError(
                f"{path}:{lines[where[j]]}: timestamp {text.iloc[where[j]]!r} is in "
                f"{_EPOCH_UNITS[unit[j]][0]}, line {lines[where[0]]} in "
                f"{_EPOCH_UNITS[unit[0]][0]}: one file must use one unit")
        scale = _EPOCH_UNITS[unit[0]][1]
        exact = digits.astype(np.int64).to_numpy()  # safe: below 4.1e18 once in range
        ts[where] = exact * 1000 // scale if scale < 1000 else exact // (scale // 1000)
    if (~is_int).any():
        where = np.flatnonzero(~is_int)
        parsed = pd.to_datetime(text.iloc[where], utc=True, errors="coerce", format="ISO8601")
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(where[np.flatnonzero(bad)[0]])
            raise CandleFileError(f"{path}:{lines[i]}: timestamp {text.iloc[i]!r} is not a time")
        stamps = pd.DatetimeIndex(parsed).as_unit("ns").asi8 // 1_000_000
        outside = (stamps < lo_s * 1000) | (stamps >= hi_s * 1000)
        if outside.any():
            i = int(where[np.flatnonzero(outside)[0]])
            raise CandleFileError(f"{path}:{lines[i]}: timestamp {text.iloc[i]!r} is out of "
                                  "range: not between 1980 and 2100")
        ts[where] = stamps
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
    stamps: list[str] = []
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
                raise ValueError(f"timestamp {stamp!r} is neither an epoch integer nor a time")
            stamps.append(str(stamp))
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
    lines = _LazyLines(text)
    return _parse_timestamps(pd.Series(stamps, dtype=object), path, lines), values, lines


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
