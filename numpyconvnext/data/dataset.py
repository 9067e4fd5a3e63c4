"""Windows, chronological splits with purge gaps, train-only normalisation, walk-forward folds.

API
---
``prepare_dataset(candles, window=256, label_config=None, split=(0.7, 0.15, 0.15), *,
fold=None, purge_bars=None, dtype=np.float32) -> PreparedData``, the trainer's one entry:

- ``data.train``, ``data.val``, ``data.test`` (``SplitPart``):
  ``X [N, C, T]`` normalised windows, read-only strided views into ``data.matrix`` (no copies);
  ``y [N]`` int64 classes (0 Long, 1 Short, 2 Hold); ``forward_return [N]`` float64 (the
  regression target); ``end_index [N]`` the candle row of each window's last bar (a signal is
  executed at the next bar's open); ``end_time`` those bars' timestamps.
- ``data.normalizer`` (``Normalizer``: per-channel mean/std fitted on train bars only;
  ``apply``, ``to_dict``/``from_dict``), ``data.feature_names``, ``data.label_config``,
  ``data.window``, ``data.class_weights`` (from train), ``data.fold`` (index ranges),
  ``data.boundaries`` (first/last end index and time per part), ``data.preprocessing()`` (a
  JSON-able dict for checkpoints), ``data.windows(end_indices)`` (windows ending anywhere).

``chronological_split(n_bars, window, label_config, split, purge_bars) -> Fold`` and
``walk_forward_folds(n_bars, window, label_config, n_folds=5, mode="expanding", ...) ->
list[Fold]`` give ``Fold(train, val, test)``: ``range``s of window-end bar indices. Pass a fold
to ``prepare_dataset(..., fold=fold)`` to build that fold's data (normaliser refitted on it).

Purge: consecutive parts are separated by ``purge_bars`` (default ``window + horizon``) end
indices, so the bars a part touches, ``[first_end - window + 1, last_end + horizon]`` (inputs and
label), never overlap another part's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .features import FEATURE_NAMES, WARMUP_BARS, build_features
from .labels import NUM_CLASSES, LabelConfig, make_labels

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    """Window-end bar indices of each part (``range``s; a window ends with bar ``end``)."""

    train: range
    val: range
    test: range

    def parts(self) -> dict[str, range]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def to_dict(self) -> dict:
        """``{part: [start, stop]}`` (stop exclusive)."""
        return {k: [r.start, r.stop] for k, r in self.parts().items()}


@dataclass
class Normalizer:
    """Per-channel standardisation ``(x - mean) / std``; std below 1e-12 counts as 1."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Normalizer:
        """Fit on feature rows ``[T, C]`` (the training bars only)."""
        rows = np.asarray(rows, dtype=np.float64)
        mean = rows.mean(axis=0)
        std = rows.std(axis=0)
        return cls(mean, np.where(std > 1e-12, std, 1.0))

    def apply(self, x: np.ndarray, channel_axis: int = -2) -> np.ndarray:
        """Normalise ``x`` whose channels lie on ``channel_axis`` (-2 for ``[N, C, T]`` or
        ``[C, T]``; use -1 for rows ``[T, C]``). Keeps ``x``'s float dtype."""
        x = np.asarray(x)
        shape = [1] * x.ndim
        shape[channel_axis] = -1
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        mean = self.mean.reshape(shape).astype(dtype)
        std = self.std.reshape(shape).astype(dtype)
        return ((x - mean) / std).astype(dtype, copy=False)

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Normalizer:
        """Inverse of ``to_dict``."""
        return cls(np.asarray(data["mean"], dtype=np.float64),
                   np.asarray(data["std"], dtype=np.float64))


@dataclass
class SplitPart:
    """One part of the data: windows, targets and where each window ends."""

    X: np.ndarray
    y: np.ndarray
    forward_return: np.ndarray
    end_index: np.ndarray
    end_time: pd.DatetimeIndex

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class PreparedData:
    """What ``prepare_dataset`` returns (see the module docstring)."""

    train: SplitPart
    val: SplitPart
    test: SplitPart
    normalizer: Normalizer
    feature_names: tuple[str, ...]
    label_config: LabelConfig
    window: int
    fold: Fold
    class_weights: np.ndarray
    matrix: np.ndarray = field(repr=False)
    timestamps: pd.DatetimeIndex = field(repr=False)

    @property
    def boundaries(self) -> dict[str, dict]:
        """Per part: first/last window-end bar index and timestamp (None for an empty part)."""
        out = {}
        for name in PARTS:
            part = getattr(self, name)
            if len(part):
                out[name] = {"first_index": int(part.end_index[0]),
                             "last_index": int(part.end_index[-1]),
                             "first_time": part.end_time[0], "last_time": part.end_time[-1]}
            else:
                out[name] = None
        return out

    def windows(self, end_index: np.ndarray) -> np.ndarray:
        """Normalised windows ``[N, C, T]`` ending at the given bar indices (a copy)."""
        end_index = np.asarray(end_index, dtype=np.int64)
        if (end_index < self.window - 1).any() or (end_index >= self.matrix.shape[1]).any():
            raise IndexError("a window would start before the first candle or end after the last")
        return sliding_windows(self.matrix, self.window)[end_index - self.window + 1]

    def preprocessing(self) -> dict:
        """Everything needed to rebuild the inputs: features, window, labels, normalisation."""
        return {"feature_names": list(self.feature_names), "window": self.window,
                "warmup_bars": WARMUP_BARS, "label_config": self.label_config.to_dict(),
                "normalizer": self.normalizer.to_dict()}


def sliding_windows(matrix: np.ndarray, window: int) -> np.ndarray:
    """All windows of a ``[C, T_total]`` array as a read-only ``[T_total - window + 1, C, window]``
    view (window k covers columns ``k .. k + window - 1``)."""
    view = np.lib.stride_tricks.sliding_window_view(matrix, window, axis=1)
    return view.transpose(1, 0, 2)


def class_weights(y: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Inverse-frequency weights ``n / (K * n_c)`` (sklearn's 'balanced'); 0 for absent classes."""
    y = np.asarray(y)
    counts = np.bincount(y[y >= 0], minlength=num_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = counts.sum() / (num_classes * counts)
    return np.where(counts > 0, weights, 0.0)


def valid_end_range(n_bars: int, window: int, label_config: LabelConfig) -> range:
    """Window-end indices with finite features in the whole window and a defined label."""
    first = max(WARMUP_BARS + window - 1, label_config.warmup_bars)
    return range(first, n_bars - label_config.horizon)


def _purge(window: int, label_config: LabelConfig, purge_bars: int | None) -> int:
    gap = window + label_config.horizon if purge_bars is None else int(purge_bars)
    if gap < window + label_config.horizon - 1:
        raise ValueError(f"purge_bars {gap} < window + horizon - 1: windows or labels would overlap")
    return gap


def chronological_split(
    n_bars: int,
    window: int,
    label_config: LabelConfig | None = None,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    purge_bars: int | None = None,
) -> Fold:
    """Split the valid window ends into train, val, test in time order, with purge gaps."""
    label_config = label_config or LabelConfig()
    ends = valid_end_range(n_bars, window, label_config)
    gap = _purge(window, label_config, purge_bars)
    return split_ends(ends, gap, split, f"{n_bars} candles are too few for window {window}, "
                                        f"horizon {label_config.horizon} and split {tuple(split)}")


def split_ends(ends: range, gap: int, split: tuple[float, float, float], too_few: str) -> Fold:
    """``chronological_split`` on any run of window ends: train, val, test in order by the
    ``split`` fractions, ``gap`` ends apart; ValueError(``too_few``) when a part would be empty."""
    fractions = np.asarray(split, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError("split must be three non-negative fractions")
    fractions = fractions / fractions.sum()
    available = len(ends) - 2 * gap
    n_train, n_val = (int(available * f) for f in fractions[:2])
    n_test = available - n_train - n_val
    if min(n_train, n_val if fractions[1] else 1, n_test if fractions[2] else 1) < 1:
        raise ValueError(too_few)
    if not fractions[2]:
        n_val, n_test = n_val + n_test, 0
    a = ends.start
    train = range(a, a + n_train)
    val = range(train.stop + gap, train.stop + gap + n_val)
    test = range(val.stop + gap, val.stop + gap + n_test)
    return Fold(train, val, test)


def walk_forward_folds(
    n_bars: int,
    window: int,
    label_config: LabelConfig | None = None,
    n_folds: int = 5,
    mode: str = "expanding",
    *,
    test_size: int | None = None,
    val_size: int | None = None,
    train_size: int | None = None,
    purge_bars: int | None = None,
) -> list[Fold]:
    """Walk-forward folds: the last ``n_folds`` test blocks tile the end of the data; each is
    preceded by a purge gap, a validation block, another gap and the training range.

    ``mode="expanding"`` trains from the first valid end; ``"rolling"`` uses the last
    ``train_size`` ends (default 3 blocks). Block size default: valid ends minus two gaps, over
    ``n_folds + 4`` (so the first fold trains on about 3 blocks).
    """
    label_config = label_config or LabelConfig()
    ends = valid_end_range(n_bars, window, label_config)
    gap = _purge(window, label_config, purge_bars)
    return walk_forward_ends(ends, gap, n_folds, mode, test_size=test_size, val_size=val_size,
                             train_size=train_size,
                             too_few=f"{n_bars} candles are too few for {n_folds} folds with "
                                     f"window {window} and horizon {label_config.horizon}")


def walk_forward_ends(ends: range, gap: int, n_folds: int = 5, mode: str = "expanding", *,
                      test_size: int | None = None, val_size: int | None = None,
                      train_size: int | None = None, too_few: str = "too few window ends"
                      ) -> list[Fold]:
    """``walk_forward_folds`` on any run of window ends, ``gap`` ends between parts."""
    if mode not in ("expanding", "rolling"):
        raise ValueError(f"unknown mode {mode!r}; use 'expanding' or 'rolling'")
    block = (len(ends) - 2 * gap) // (n_folds + 4)
    test_size = test_size or block
    val_size = val_size or block
    train_size = train_size or 3 * block
    folds = []
    for k in range(n_folds):
        test_start = ends.stop - (n_folds - k) * test_size
        val = range(test_start - gap - val_size, test_start - gap)
        train_stop = val.start - gap
        train_start = ends.start if mode == "expanding" else max(ends.start, train_stop - train_size)
        if min(test_size, val_size) < 1 or train_stop - train_start < 1:
            raise ValueError(too_few)
        folds.append(Fold(range(train_start, train_stop), val,
                          range(test_start, test_start + test_size)))
    return folds


def prepare_dataset(
    candles: pd.DataFrame,
    window: int = 256,
    label_config: LabelConfig | None = None,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    *,
    fold: Fold | None = None,
    purge_bars: int | None = None,
    dtype: np.dtype = np.float32,
    features: np.ndarray | None = None,
) -> PreparedData:
    """Features, labels, purged chronological split and train-only normalisation in one call.

    With ``fold`` the given index ranges are used instead of ``split``. ``features`` may pass
    ``build_features(candles)`` rows ``[T, C]`` (float64) already built, to skip rebuilding them.
    """
    label_config = label_config or LabelConfig()
    n_bars = len(candles)
    if fold is None:
        fold = chronological_split(n_bars, window, label_config, split, purge_bars)
    valid = valid_end_range(n_bars, window, label_config)
    for name, part in fold.parts().items():
        if len(part) and (part.start < valid.start or part.stop > valid.stop):
            raise ValueError(f"{name} ends {part.start}..{part.stop - 1} leave the valid range "
                             f"{valid.start}..{valid.stop - 1}")
    if features is None:
        features = build_features(candles).to_numpy(np.float64)
    labels = make_labels(candles, label_config)
    train_rows = features[fold.train.start - window + 1 : fold.train.stop]
    normalizer = Normalizer.fit(train_rows)
    matrix = np.zeros((features.shape[1], n_bars), dtype=dtype)
    usable = slice(WARMUP_BARS, n_bars)  # warm-up rows are NaN and never inside a valid window
    matrix[:, usable] = normalizer.apply(features[usable], channel_axis=-1).T
    all_windows = sliding_windows(matrix, window)
    timestamps = pd.DatetimeIndex(candles["timestamp"])
    y_all = labels["label"].to_numpy()
    r_all = labels["forward_return"].to_numpy()
    parts = {}
    for name, ends in fold.parts().items():
        end_index = np.arange(ends.start, ends.stop, dtype=np.int64)
        y = y_all[ends.start : ends.stop]
        if (y < 0).any():
            raise ValueError(f"masked labels inside the {name} part")
        parts[name] = SplitPart(
            X=all_windows[ends.start - window + 1 : ends.stop - window + 1],
            y=y,
            forward_return=r_all[ends.start : ends.stop],
            end_index=end_index,
            end_time=timestamps[end_index],
        )
    return PreparedData(
        **parts, normalizer=normalizer, feature_names=FEATURE_NAMES, label_config=label_config,
        window=window, fold=fold, class_weights=class_weights(parts["train"].y),
        matrix=matrix, timestamps=timestamps,
    )
