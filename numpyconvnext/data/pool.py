"""Pooled data: windows from several symbols, split on the same calendar dates for all of them.

API
---
``calendar_split(candles_by_symbol, window, label_config, split=(0.7, 0.15, 0.15),
purge_bars=None) -> CalendarFold`` and ``calendar_walk_forward(candles_by_symbol, window,
label_config, n_folds=5, mode="expanding", ...) -> list[CalendarFold]`` choose the part
boundaries as calendar times, once for the whole pool; ``prepare_pooled(candles_by_symbol,
window, label_config, calendar) -> PooledData`` builds every symbol's ``PreparedData`` on them
and pools the parts; ``symbol_fold(timestamps, calendar, window, label_config)`` is the one
mapping of a calendar fold to one symbol's window-end indices.

The calendar. The timeline is the union of every symbol's valid window-end times (a time at
which at least one symbol has a full window of features and a defined label). The single-symbol
rules (``split_ends``, ``walk_forward_ends``: fractions or blocks, ``gap = purge_bars`` ends,
default ``window + horizon``, between parts) are applied to that timeline, and each part is kept
as a half-open time range ``[start, stop)`` of window-end times (stop None: open-ended). Then,
for every symbol, a window ending at bar ``i`` (time ``t_i``) belongs to a part when

    start <= t_i < stop,  i is a valid end of that symbol,  and, for train and val,
    t_{i + horizon} < start_of_next_part - (gap - horizon) * bar

so the bars a training window's label reads end at least ``window`` bars before the next
part's first window end: the validation inputs of EVERY symbol start after the last bar any
symbol's training label reads, whatever each symbol's own dates and gaps. With one symbol on a
regular grid this gives exactly ``chronological_split`` / ``walk_forward_folds`` (so one symbol
pooled is bit for bit the single-symbol data).

Normalisation. Each symbol's features are standardised with statistics fitted on its own
training rows (``PreparedData.normalizer``); ``PooledData.normalizer`` is fitted on the training
rows of all symbols together, for symbols the model has not seen. Class weights are over the
pooled training labels. A symbol with no training window in a fold (its history starts later)
is left out of that fold, with the reason in ``PooledData.skipped``.

``PooledData`` offers what the trainer reads from ``PreparedData`` (``train``/``val``/``test``
parts whose ``X`` gathers windows from the symbols' own matrices without copying them all,
``class_weights``, ``preprocessing()`` with ``normalizers`` per symbol and ``symbols``,
``boundaries``, ``fold``), so ``Trainer(model, pooled, ...)`` trains on the pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .dataset import (
    PARTS,
    Fold,
    Normalizer,
    PreparedData,
    SplitPart,
    _purge,
    class_weights,
    prepare_dataset,
    split_ends,
    valid_end_range,
    walk_forward_ends,
)
from .features import WARMUP_BARS, build_features
from .labels import LabelConfig
from .symbols import validate_symbol


@dataclass(frozen=True)
class CalendarFold:
    """Each part's window-end times ``[start, stop)`` (stop None: to the end of the data), the
    same for every symbol; ``purge`` is ``(gap - horizon) * bar``: how far before the next
    part's start a training or validation label must end (see the module docstring)."""

    train: tuple[pd.Timestamp, pd.Timestamp | None]
    val: tuple[pd.Timestamp, pd.Timestamp | None]
    test: tuple[pd.Timestamp, pd.Timestamp | None] | None
    purge: pd.Timedelta

    def parts(self) -> dict[str, tuple | None]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def to_dict(self) -> dict:
        """JSON-able: ISO times (None for open ends) and the purge in seconds."""
        def text(bound):
            return None if bound is None else [None if t is None else pd.Timestamp(t).isoformat()
                                               for t in bound]
        return {**{name: text(bound) for name, bound in self.parts().items()},
                "purge_seconds": self.purge.total_seconds()}

    @classmethod
    def from_dict(cls, data: dict) -> CalendarFold:
        def times(bound):
            return None if bound is None else tuple(None if t is None else pd.Timestamp(t)
                                                    for t in bound)
        return cls(times(data["train"]), times(data["val"]), times(data.get("test")),
                   pd.Timedelta(seconds=float(data["purge_seconds"])))


def bar_spacing(candles_by_symbol: Mapping[str, pd.DataFrame]) -> pd.Timedelta:
    """The candles' common spacing (median step); ValueError when symbols differ."""
    spacings = {}
    for symbol, candles in candles_by_symbol.items():
        stamps = pd.DatetimeIndex(candles["timestamp"])
        if len(stamps) < 2:
            raise ValueError(f"{symbol}: {len(stamps)} candles are too few")
        spacings[symbol] = stamps.to_series().diff().median()
    if len(set(spacings.values())) > 1:
        shown = ", ".join(f"{s} {v}" for s, v in spacings.items())
        raise ValueError(f"the symbols' candles have different intervals ({shown}); pool one "
                         "interval")
    return next(iter(spacings.values()))


def _valid_timeline(candles_by_symbol, window: int, label_config: LabelConfig) -> pd.DatetimeIndex:
    """Sorted union of the symbols' valid window-end times."""
    times = []
    for candles in candles_by_symbol.values():
        ends = valid_end_range(len(candles), window, label_config)
        times.append(pd.DatetimeIndex(candles["timestamp"])[ends.start : ends.stop])
    union = times[0]
    for more in times[1:]:
        union = union.union(more)
    return union.sort_values()


def _to_calendar(timeline: pd.DatetimeIndex, fold: Fold, gap: int, horizon: int,
                 bar: pd.Timedelta) -> CalendarFold:
    def bound(part: range):
        if not len(part):
            return None
        return (timeline[part.start], timeline[part.stop] if part.stop < len(timeline) else None)

    return CalendarFold(bound(fold.train), bound(fold.val), bound(fold.test), (gap - horizon) * bar)


def _check_pool(candles_by_symbol: Mapping[str, pd.DataFrame]) -> None:
    if not candles_by_symbol:
        raise ValueError("no symbols to pool")
    for symbol in candles_by_symbol:
        validate_symbol(symbol)


def calendar_split(candles_by_symbol: Mapping[str, pd.DataFrame], window: int,
                   label_config: LabelConfig | None = None,
                   split: tuple[float, float, float] = (0.7, 0.15, 0.15),
                   purge_bars: int | None = None) -> CalendarFold:
    """Train/val/test calendar boundaries for the pool (``chronological_split`` on the union
    timeline; see the module docstring)."""
    _check_pool(candles_by_symbol)
    label_config = label_config or LabelConfig()
    bar = bar_spacing(candles_by_symbol)
    gap = _purge(window, label_config, purge_bars)
    timeline = _valid_timeline(candles_by_symbol, window, label_config)
    fold = split_ends(range(len(timeline)), gap, split,
                      f"the pooled candles ({len(timeline)} valid window ends) are too few for "
                      f"window {window}, horizon {label_config.horizon} and split {tuple(split)}")
    return _to_calendar(timeline, fold, gap, label_config.horizon, bar)


def calendar_walk_forward(candles_by_symbol: Mapping[str, pd.DataFrame], window: int,
                          label_config: LabelConfig | None = None, n_folds: int = 5,
                          mode: str = "expanding", *, test_size: int | None = None,
                          val_size: int | None = None, train_size: int | None = None,
                          purge_bars: int | None = None) -> list[CalendarFold]:
    """Walk-forward folds on calendar dates for the pool (``walk_forward_folds`` on the union
    timeline; sizes count timeline ends, i.e. bars)."""
    _check_pool(candles_by_symbol)
    label_config = label_config or LabelConfig()
    bar = bar_spacing(candles_by_symbol)
    gap = _purge(window, label_config, purge_bars)
    timeline = _valid_timeline(candles_by_symbol, window, label_config)
    folds = walk_forward_ends(range(len(timeline)), gap, n_folds, mode, test_size=test_size,
                              val_size=val_size, train_size=train_size,
                              too_few=f"the pooled candles ({len(timeline)} valid window ends) "
                                      f"are too few for {n_folds} folds with window {window} "
                                      f"and horizon {label_config.horizon}")
    return [_to_calendar(timeline, fold, gap, label_config.horizon, bar) for fold in folds]


def symbol_fold(timestamps, calendar: CalendarFold, window: int,
                label_config: LabelConfig | None = None) -> Fold:
    """One symbol's window-end index ranges for ``calendar`` (rules in the module docstring)."""
    label_config = label_config or LabelConfig()
    stamps = pd.DatetimeIndex(timestamps)
    h = label_config.horizon
    valid = valid_end_range(len(stamps), window, label_config)
    parts = calendar.parts()
    following = {"train": calendar.val, "val": calendar.test, "test": None}
    ranges = {}
    for name in PARTS:
        bound = parts[name]
        if bound is None or valid.stop <= valid.start:
            ranges[name] = range(valid.start, valid.start)
            continue
        start, stop = bound
        lo = max(valid.start, int(stamps.searchsorted(start, side="left")))
        hi = valid.stop if stop is None else min(valid.stop, int(stamps.searchsorted(stop, "left")))
        if following[name] is not None:
            limit = following[name][0] - calendar.purge  # label end t_{i+h} < limit
            hi = min(hi, int(stamps.searchsorted(limit, side="left")) - h)
        ranges[name] = range(lo, max(lo, hi))
    return Fold(ranges["train"], ranges["val"], ranges["test"])


class PooledWindows:
    """Read-only ``[N, C, T]`` windows concatenated from several symbols' window views; indexing
    with an int, a slice or an int array gathers a new array (only the rows asked for)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        first = parts[0]
        self.shape = (int(self.offsets[-1]),) + tuple(first.shape[1:])
        self.dtype = first.dtype
        self.ndim = first.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            source = int(np.searchsorted(self.offsets, k, side="right")) - 1
            return self.parts[source][k - self.offsets[source]]
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        index = np.asarray(key, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError("pooled window index out of range")
        index = np.where(index < 0, index + len(self), index)
        out = np.empty((len(index),) + self.shape[1:], dtype=self.dtype)
        source = np.searchsorted(self.offsets, index, side="right") - 1
        for s in np.unique(source):
            rows = source == s
            out[rows] = self.parts[s][index[rows] - self.offsets[s]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


@dataclass
class PooledPart(SplitPart):
    """A pooled part: ``SplitPart`` fields over all symbols (symbol after symbol, each in time
    order; ``end_index`` is the row in that symbol's own candles) and ``symbol [N]``, the
    position of each window's symbol in ``PooledData.symbols``."""

    symbol: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def of(self, k: int) -> slice:
        """The rows of the k-th symbol (contiguous)."""
        rows = np.flatnonzero(self.symbol == k)
        return slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)


@dataclass
class PooledFold:
    """The calendar fold and each symbol's index fold (what ``PreparedData.fold`` is for one)."""

    calendar: CalendarFold
    by_symbol: dict[str, Fold]

    def to_dict(self) -> dict:
        return {"calendar": self.calendar.to_dict(),
                "by_symbol": {s: f.to_dict() for s, f in self.by_symbol.items()}}


@dataclass
class PooledData:
    """What ``prepare_pooled`` returns (see the module docstring)."""

    symbols: tuple[str, ...]
    per_symbol: dict[str, PreparedData]
    train: PooledPart
    val: PooledPart
    test: PooledPart
    normalizer: Normalizer
    feature_names: tuple[str, ...]
    label_config: LabelConfig
    window: int
    fold: PooledFold
    class_weights: np.ndarray
    skipped: dict[str, str]

    @property
    def normalizers(self) -> dict[str, Normalizer]:
        """Each symbol's own normaliser (fitted on its training rows)."""
        return {s: d.normalizer for s, d in self.per_symbol.items()}

    @property
    def boundaries(self) -> dict[str, dict]:
        """Per part: first/last window-end time over the pool, and per symbol (indices too)."""
        out = {}
        for name in PARTS:
            part = getattr(self, name)
            if not len(part):
                out[name] = None
                continue
            by_symbol = {s: d.boundaries[name] for s, d in self.per_symbol.items()
                         if d.boundaries[name] is not None}
            out[name] = {"first_time": min(b["first_time"] for b in by_symbol.values()),
                         "last_time": max(b["last_time"] for b in by_symbol.values()),
                         "by_symbol": by_symbol}
        return out

    def preprocessing(self) -> dict:
        """As ``PreparedData.preprocessing``, with ``normalizer`` the pooled one (for symbols
        not in the pool), ``normalizers`` per symbol and the list of ``symbols``."""
        first = self.per_symbol[self.symbols[0]].preprocessing()
        return {**first, "normalizer": self.normalizer.to_dict(),
                "normalizers": {s: n.to_dict() for s, n in self.normalizers.items()},
                "symbols": list(self.symbols)}


def _pool_parts(per_symbol: dict[str, PreparedData], name: str) -> PooledPart:
    parts = [getattr(d, name) for d in per_symbol.values()]
    xs = [p.X for p in parts]
    X = xs[0] if len(xs) == 1 else PooledWindows(xs)
    return PooledPart(
        X=X, y=np.concatenate([p.y for p in parts]),
        forward_return=np.concatenate([p.forward_return for p in parts]),
        end_index=np.concatenate([p.end_index for p in parts]),
        end_time=parts[0].end_time.append([p.end_time for p in parts[1:]]),
        symbol=np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)]))


def prepare_pooled(candles_by_symbol: Mapping[str, pd.DataFrame], window: int = 256,
                   label_config: LabelConfig | None = None, calendar: CalendarFold | None = None,
                   *, split: tuple[float, float, float] = (0.7, 0.15, 0.15),
                   purge_bars: int | None = None, dtype: np.dtype = np.float32) -> PooledData:
    """Every symbol's ``PreparedData`` on the same calendar (default ``calendar_split`` with
    ``split``), pooled. Symbols keep the order given."""
    _check_pool(candles_by_symbol)
    label_config = label_config or LabelConfig()
    if calendar is None:
        calendar = calendar_split(candles_by_symbol, window, label_config, split, purge_bars)
    per_symbol, folds, skipped, train_rows = {}, {}, {}, []
    for symbol, candles in candles_by_symbol.items():
        symbol = validate_symbol(symbol)
        fold = symbol_fold(candles["timestamp"], calendar, window, label_config)
        if len(fold.train) < 1:
            skipped[symbol] = "no training window before the validation period"
            continue
        features = build_features(candles).to_numpy(np.float64)
        per_symbol[symbol] = prepare_dataset(candles, window, label_config, fold=fold,
                                             dtype=dtype, features=features)
        folds[symbol] = fold
        train_rows.append(features[fold.train.start - window + 1 : fold.train.stop])
    if not per_symbol:
        raise ValueError("no symbol has a training window before the validation period")
    pooled = {name: _pool_parts(per_symbol, name) for name in PARTS}
    normalizer = (per_symbol[next(iter(per_symbol))].normalizer if len(train_rows) == 1
                  else Normalizer.fit(np.concatenate(train_rows)))
    first = next(iter(per_symbol.values()))
    return PooledData(
        symbols=tuple(per_symbol), per_symbol=per_symbol, **pooled, normalizer=normalizer,
        feature_names=first.feature_names, label_config=label_config, window=window,
        fold=PooledFold(calendar, folds), class_weights=class_weights(pooled["train"].y),
        skipped=skipped)


def pick_normalizer(preprocessing: dict, symbol: str | None) -> tuple[dict, str | None]:
    """The stored normaliser dict for ``symbol`` from a checkpoint's ``preprocessing``, and
    which: the symbol's own (its name), or the pooled/only one (None). A single-symbol
    checkpoint has only the one normaliser."""
    own = (preprocessing.get("normalizers") or {})
    if symbol is not None and symbol.upper() in own:
        return own[symbol.upper()], symbol.upper()
    return preprocessing["normalizer"], None


__all__ = ["CalendarFold", "PooledData", "PooledFold", "PooledPart", "PooledWindows",
           "WARMUP_BARS", "bar_spacing", "calendar_split", "calendar_walk_forward",
           "pick_normalizer", "prepare_pooled", "symbol_fold"]
