"""Windows, purged splits, train-only normalisation, walk-forward folds, class weights."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyconvnext.data.dataset import (
    Fold,
    Normalizer,
    chronological_split,
    class_weights,
    prepare_dataset,
    sliding_windows,
    walk_forward_folds,
)
from numpyconvnext.data.features import FEATURE_NAMES, WARMUP_BARS, build_features
from numpyconvnext.data.labels import LabelConfig, make_labels
from numpyconvnext.data.synthetic import synthetic_candles

CONFIG = LabelConfig(horizon=6, vol_window=48)
WINDOW = 64


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return synthetic_candles(2500, "1h", seed=13)


@pytest.fixture(scope="module")
def data(candles):
    return prepare_dataset(candles, window=WINDOW, label_config=CONFIG)


def touched(part: range, window: int, horizon: int) -> tuple[int, int]:
    """First and last bar a part's windows and labels read."""
    return part.start - window + 1, part.stop - 1 + horizon


def test_parts_are_chronological_and_purged(data):
    parts = list(data.fold.parts().values())
    for earlier, later in zip(parts, parts[1:], strict=False):
        assert touched(earlier, WINDOW, CONFIG.horizon)[1] < touched(later, WINDOW, CONFIG.horizon)[0]
        assert later.start - earlier.stop >= WINDOW + CONFIG.horizon
    sizes = np.array([len(p) for p in parts], dtype=float)
    np.testing.assert_allclose(sizes / sizes.sum(), [0.7, 0.15, 0.15], atol=0.01)
    assert data.train.end_index[0] == WARMUP_BARS + WINDOW - 1  # after feature warm-up
    assert data.test.end_index[-1] == 2500 - 1 - CONFIG.horizon  # last bar with a label
    b = data.boundaries
    assert b["train"]["last_time"] < b["val"]["first_time"] < b["test"]["first_time"]


def test_windows_are_views_aligned_to_their_end_bar(candles, data):
    features = build_features(candles).to_numpy()
    for part in (data.train, data.val, data.test):
        assert part.X.shape == (len(part), len(FEATURE_NAMES), WINDOW)
        assert part.X.dtype == np.float32
        assert np.shares_memory(part.X, data.matrix) and not part.X.flags.writeable
        i = len(part) // 2
        e = part.end_index[i]
        expected = data.normalizer.apply(features[e - WINDOW + 1 : e + 1], channel_axis=-1).T
        np.testing.assert_allclose(part.X[i], expected, rtol=1e-5, atol=1e-5)
        assert part.end_time[i] == candles["timestamp"][e]
        labels = make_labels(candles, CONFIG)
        np.testing.assert_array_equal(part.y, labels["label"].to_numpy()[part.end_index])
        np.testing.assert_array_equal(part.forward_return,
                                      labels["forward_return"].to_numpy()[part.end_index])
    np.testing.assert_array_equal(data.windows(data.val.end_index[:3]), data.val.X[:3])


def test_normalizer_fitted_on_train_bars_only(candles, data):
    features = build_features(candles).to_numpy()
    rows = features[data.fold.train.start - WINDOW + 1 : data.fold.train.stop]
    np.testing.assert_allclose(data.normalizer.mean, rows.mean(axis=0))
    np.testing.assert_allclose(data.normalizer.std, rows.std(axis=0))
    train_x = data.train.X.transpose(1, 0, 2).reshape(len(FEATURE_NAMES), -1)
    assert np.abs(train_x.mean(axis=1)).max() < 0.1  # roughly standardised where it was fitted
    restored = Normalizer.from_dict(json.loads(json.dumps(data.normalizer.to_dict())))
    x = data.test.X[:2]
    np.testing.assert_array_equal(restored.apply(x), data.normalizer.apply(x))


def test_normalizer_apply_axes_and_constant_channel():
    norm = Normalizer.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(norm.mean, [2.0, 5.0])
    np.testing.assert_allclose(norm.std, [1.0, 1.0])  # constant channel: std 1, not 0
    ct = np.array([[1.0, 3.0], [5.0, 7.0]], dtype=np.float32)  # [C, T]
    np.testing.assert_allclose(norm.apply(ct), [[-1.0, 1.0], [0.0, 2.0]])
    np.testing.assert_allclose(norm.apply(ct.T, channel_axis=-1), [[-1.0, 0.0], [1.0, 2.0]])


def test_class_weights_balanced():
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1, 2, 2])), [6 / 9, 2.0, 1.0])
    np.testing.assert_allclose(class_weights(np.array([0, 2, 2, -1])), [1.0, 0.0, 0.5])


def test_class_weights_come_from_train(data):
    counts = np.bincount(data.train.y, minlength=3)
    np.testing.assert_allclose(data.class_weights, len(data.train.y) / (3 * counts))


def test_sliding_windows_layout():
    m = np.arange(12, dtype=np.float32).reshape(2, 6)
    w = sliding_windows(m, 3)
    assert w.shape == (4, 2, 3)
    np.testing.assert_array_equal(w[1], [[1, 2, 3], [7, 8, 9]])
    assert np.shares_memory(w, m)


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_walk_forward_folds(candles, mode):
    folds = walk_forward_folds(len(candles), WINDOW, CONFIG, n_folds=4, mode=mode)
    assert len(folds) == 4
    for fold in folds:
        parts = list(fold.parts().values())
        for earlier, later in zip(parts, parts[1:], strict=False):
            assert touched(earlier, WINDOW, CONFIG.horizon)[1] < touched(later, WINDOW,
                                                                         CONFIG.horizon)[0]
    for a, b in zip(folds, folds[1:], strict=False):
        assert b.test.start == a.test.stop  # test blocks tile the tail
        assert b.train.stop > a.train.stop
        if mode == "expanding":
            assert b.train.start == a.train.start == WARMUP_BARS + WINDOW - 1
        else:
            assert len(b.train) == len(a.train)
    assert folds[-1].test.stop == len(candles) - CONFIG.horizon
    data = prepare_dataset(candles, WINDOW, CONFIG, fold=folds[1])
    assert data.fold == folds[1] and len(data.test) == len(folds[1].test)
    assert np.isfinite(data.test.X).all()


def test_explicit_fold_outside_valid_range_and_too_few_candles(candles):
    bad = Fold(range(10, 400), range(500, 600), range(700, 800))
    with pytest.raises(ValueError, match="valid range"):
        prepare_dataset(candles, WINDOW, CONFIG, fold=bad)
    with pytest.raises(ValueError, match="too few"):
        chronological_split(400, WINDOW, CONFIG)
    with pytest.raises(ValueError, match="purge"):
        chronological_split(2500, WINDOW, CONFIG, purge_bars=10)


def _perturb_after(candles: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    changed = candles.copy()
    factor = np.exp(rng.normal(0.0, 0.05, len(candles) - t - 1))
    for column in ("open", "high", "low", "close"):
        changed.loc[t + 1 :, column] = changed[column].to_numpy()[t + 1 :] * factor
    return changed


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), offset=st.floats(0.0, 1.0))
def test_no_look_ahead_in_windows_labels_and_normalisation(seed, offset):
    candles = synthetic_candles(900, "1h", seed=seed % 31)
    config = LabelConfig(horizon=4, vol_window=24)
    base = prepare_dataset(candles, 32, config, split=(0.5, 0.25, 0.25))
    last_train_bar = base.fold.train.stop - 1
    t = last_train_bar + int(offset * (len(candles) - 1 - last_train_bar))
    changed = prepare_dataset(_perturb_after(candles, t, seed), 32, config, split=(0.5, 0.25, 0.25))
    assert changed.fold == base.fold
    np.testing.assert_array_equal(changed.normalizer.mean, base.normalizer.mean)
    np.testing.assert_array_equal(changed.normalizer.std, base.normalizer.std)
    np.testing.assert_array_equal(changed.matrix[:, : t + 1], base.matrix[:, : t + 1])
    for name in ("train", "val", "test"):
        b, c = getattr(base, name), getattr(changed, name)
        upto = b.end_index <= t
        np.testing.assert_array_equal(c.X[upto], b.X[upto])
        known = b.end_index + config.horizon <= t  # labels whose horizon ends by t
        np.testing.assert_array_equal(c.y[known], b.y[known])
