"""Pooled data (numpyconvnext/data/pool.py): calendar splits shared by every symbol, per-symbol
normalisation, and one symbol pooled equal to the single-symbol path bit for bit."""

import numpy as np
import pandas as pd
import pytest

from numpyconvnext.data.dataset import (
    Normalizer,
    chronological_split,
    prepare_dataset,
    walk_forward_folds,
)
from numpyconvnext.data.features import build_features
from numpyconvnext.data.labels import LabelConfig
from numpyconvnext.data.pool import (
    CalendarFold,
    PooledWindows,
    calendar_split,
    calendar_walk_forward,
    pick_normalizer,
    prepare_pooled,
    symbol_fold,
)
from numpyconvnext.data.synthetic import synthetic_candles

WINDOW = 64
LABELS = LabelConfig(horizon=6)


def shifted(bars: int, seed: int, start_hours: int, drop: slice | None = None) -> pd.DataFrame:
    """Synthetic 1h candles starting ``start_hours`` after the default start."""
    candles = synthetic_candles(bars, seed=seed)
    candles["timestamp"] = candles["timestamp"] + pd.Timedelta(hours=start_hours)
    if drop is not None:  # a hole in the history
        candles = candles.drop(candles.index[drop]).reset_index(drop=True)
    return candles


@pytest.fixture(scope="module")
def basket():
    """Three symbols with different first dates (and one with a hole) on the same 1h grid."""
    return {"AAAUSDT": shifted(2400, 1, 0), "BBBUSDT": shifted(1700, 2, 700),
            "CCCUSDT": shifted(2100, 3, 250, drop=slice(1500, 1530))}


def test_one_symbol_pooled_is_the_single_symbol_path_bit_for_bit():
    candles = synthetic_candles(2500, seed=4)
    old = prepare_dataset(candles, window=WINDOW, label_config=LABELS)
    pooled = prepare_pooled({"BTCUSDT": candles}, WINDOW, LABELS)
    assert pooled.fold.by_symbol["BTCUSDT"] == old.fold
    for name in ("train", "val", "test"):
        a, b = getattr(old, name), getattr(pooled, name)
        assert np.asarray(a.X).tobytes() == np.asarray(b.X[:]).tobytes()
        assert np.array_equal(a.y, b.y) and np.array_equal(a.end_index, b.end_index)
        assert a.forward_return.tobytes() == b.forward_return.tobytes()
        assert (b.symbol == 0).all()
    assert np.array_equal(old.class_weights, pooled.class_weights)
    assert pooled.normalizer.mean.tobytes() == old.normalizer.mean.tobytes()
    assert pooled.preprocessing()["normalizer"] == old.preprocessing()["normalizer"]


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_calendar_walk_forward_of_one_symbol_is_walk_forward_folds(mode):
    candles = synthetic_candles(3000, seed=5)
    folds = walk_forward_folds(len(candles), WINDOW, LABELS, n_folds=3, mode=mode)
    calendars = calendar_walk_forward({"X": candles}, WINDOW, LABELS, n_folds=3, mode=mode)
    assert [symbol_fold(candles["timestamp"], c, WINDOW, LABELS) for c in calendars] == folds
    split = chronological_split(len(candles), WINDOW, LABELS, (0.6, 0.4, 0.0))
    calendar = calendar_split({"X": candles}, WINDOW, LABELS, (0.6, 0.4, 0.0))
    assert calendar.test is None
    assert symbol_fold(candles["timestamp"], calendar, WINDOW, LABELS) == split


def test_calendar_boundaries_are_the_same_dates_for_every_symbol(basket):
    pooled = prepare_pooled(basket, WINDOW, LABELS)
    calendar = pooled.fold.calendar
    for symbol, candles in basket.items():
        fold = pooled.fold.by_symbol[symbol]
        stamps = pd.DatetimeIndex(candles["timestamp"])
        # each part's first window ends at the calendar start or, later, at the symbol's start
        for name, bound in (("val", calendar.val), ("test", calendar.test)):
            part = getattr(fold, name)
            assert stamps[part.start] >= bound[0]
            assert stamps[part.start - 1] < bound[0] or part.start == 0
        assert stamps[fold.train.stop - 1] < calendar.val[0]
        assert stamps[fold.val.stop - 1] < calendar.test[0]
    assert calendar.val[0] > basket["AAAUSDT"]["timestamp"].iloc[0]
    assert set(pooled.symbols) == set(basket)
    # the later symbols do start later in the pooled training data
    assert pooled.per_symbol["BBBUSDT"].train.end_time[0] > pooled.per_symbol["AAAUSDT"].train.end_time[0]


def test_no_training_label_reaches_any_symbols_validation_period(basket):
    pooled = prepare_pooled(basket, WINDOW, LABELS)
    first_val_input = min(d.val.end_time[0] for d in pooled.per_symbol.values()) \
        - (WINDOW - 1) * pd.Timedelta(hours=1)
    first_test_input = min(d.test.end_time[0] for d in pooled.per_symbol.values()) \
        - (WINDOW - 1) * pd.Timedelta(hours=1)
    for symbol, data in pooled.per_symbol.items():
        stamps = data.timestamps
        label_end = stamps[data.train.end_index + LABELS.horizon]
        assert label_end.max() < first_val_input, symbol
        val_label_end = stamps[data.val.end_index + LABELS.horizon]
        assert val_label_end.max() < first_test_input, symbol


def test_each_symbols_normaliser_is_fitted_on_its_own_training_rows_alone(basket):
    pooled = prepare_pooled(basket, WINDOW, LABELS)
    rows = []
    for symbol, candles in basket.items():
        fold = pooled.fold.by_symbol[symbol]
        alone = prepare_dataset(candles, WINDOW, LABELS, fold=fold)
        assert np.array_equal(pooled.normalizers[symbol].mean, alone.normalizer.mean)
        assert np.array_equal(pooled.normalizers[symbol].std, alone.normalizer.std)
        assert np.array_equal(np.asarray(pooled.per_symbol[symbol].train.X), np.asarray(alone.train.X))
        features = build_features(candles).to_numpy(np.float64)
        rows.append(features[fold.train.start - WINDOW + 1 : fold.train.stop])
    together = Normalizer.fit(np.concatenate(rows))
    assert np.allclose(pooled.normalizer.mean, together.mean)
    assert not np.allclose(pooled.normalizer.mean, pooled.normalizers["AAAUSDT"].mean)


def test_pooled_parts_gather_every_symbols_windows_and_weigh_classes_over_the_pool(basket):
    pooled = prepare_pooled(basket, WINDOW, LABELS)
    assert len(pooled.train) == sum(len(d.train) for d in pooled.per_symbol.values())
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(pooled.train), 50)
    batch = pooled.train.X[index]
    for row, i in zip(batch, index, strict=True):
        k = pooled.train.symbol[i]
        data = pooled.per_symbol[pooled.symbols[k]]
        local = pooled.train.end_index[i] - data.train.end_index[0]
        assert np.array_equal(row, data.train.X[local])
    assert np.array_equal(pooled.train.X[-1], pooled.train.X[len(pooled.train) - 1])
    assert pooled.train.X[3:7].shape == (4, 24, WINDOW)
    counts = np.bincount(pooled.train.y, minlength=3)
    assert np.allclose(pooled.class_weights, counts.sum() / (3 * counts))
    with pytest.raises(IndexError):
        pooled.train.X[np.array([len(pooled.train)])]
    assert isinstance(pooled.train.X, PooledWindows)
    assert pooled.train.of(1) == slice(len(pooled.per_symbol["AAAUSDT"].train),
                                       len(pooled.per_symbol["AAAUSDT"].train)
                                       + len(pooled.per_symbol["BBBUSDT"].train))


def test_a_symbol_that_starts_after_the_training_period_is_left_out_with_a_reason(basket):
    late = {**basket, "LATEUSDT": shifted(700, 9, 1700)}
    pooled = prepare_pooled(late, WINDOW, LABELS)
    assert "LATEUSDT" not in pooled.symbols and "LATEUSDT" in pooled.skipped
    with pytest.raises(ValueError, match="different intervals"):
        prepare_pooled({**basket, "DAY": synthetic_candles(800, interval="1d", seed=1)}, WINDOW, LABELS)


def test_calendar_round_trips_and_normaliser_choice():
    candles = synthetic_candles(1500, seed=6)
    calendar = calendar_split({"X": candles}, WINDOW, LABELS)
    assert CalendarFold.from_dict(calendar.to_dict()) == calendar
    pooled = prepare_pooled({"AUSDT": candles, "BUSDT": shifted(1500, 7, 0)}, WINDOW, LABELS)
    pre = pooled.preprocessing()
    assert pre["symbols"] == ["AUSDT", "BUSDT"]
    assert pick_normalizer(pre, "busdt") == (pre["normalizers"]["BUSDT"], "BUSDT")
    assert pick_normalizer(pre, "ETHUSDT") == (pre["normalizer"], None)
    assert pick_normalizer(pre, None) == (pre["normalizer"], None)
