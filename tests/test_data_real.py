"""The whole data pipeline on real BTCUSDT 1h candles (skipped when ../shared/data is absent)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from numpyconvnext.data.dataset import prepare_dataset, walk_forward_folds
from numpyconvnext.data.features import WARMUP_BARS, build_features, compute_indicators
from numpyconvnext.data.labels import LabelConfig, class_balance, make_labels
from numpyconvnext.data.store import gap_report, load_candles

SHARED = Path(os.environ.get("NUMPYCONVNEXT_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
CSV = SHARED / "BTCUSDT_1h.csv"


@pytest.fixture(scope="module")
def candles():
    if not CSV.exists():
        reason = f"real candles not found at {CSV} (set NUMPYCONVNEXT_SHARED_DATA)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file has no gaps: loading must not warn
        return load_candles(CSV)


def test_real_file_loads_as_is(candles):
    assert len(candles) == 39_937
    assert candles["timestamp"].iloc[0].isoformat() == "2017-08-18T00:00:00+00:00"
    assert candles["timestamp"].is_monotonic_increasing and candles["timestamp"].is_unique
    assert candles["turnover"].isna().all()  # Binance export has no turnover
    assert (candles["volume"] == 0).sum() == 121  # the filled outage candles
    assert gap_report(candles, "1h").n_missing == 0


def test_real_pipeline_is_finite(candles):
    indicators = compute_indicators(candles)
    assert np.isfinite(indicators.iloc[WARMUP_BARS:].to_numpy()).all()
    features = build_features(candles, indicators)
    assert np.isfinite(features.iloc[WARMUP_BARS:].to_numpy()).all()
    labels = make_labels(candles, LabelConfig())
    balance = class_balance(labels)
    print(f"default label balance on BTCUSDT 1h (long, short, hold): {np.round(balance, 3)}")
    assert (balance > 0.25).all() and (balance < 0.42).all()
    data = prepare_dataset(candles, window=256)
    for part in (data.train, data.val, data.test):
        assert len(part) > 4000 and np.isfinite(part.X).all()
        assert set(np.unique(part.y)) == {0, 1, 2}
    assert np.isfinite(data.normalizer.mean).all() and (data.normalizer.std > 0).all()
    assert data.test.end_time[-1].year == 2022


def test_real_walk_forward(candles):
    folds = walk_forward_folds(len(candles), 256, n_folds=5)
    last = prepare_dataset(candles, 256, fold=folds[-1])
    assert np.isfinite(last.test.X).all() and len(last.test) == len(folds[-1].test)
