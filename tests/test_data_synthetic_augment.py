"""Synthetic market (determinism, stylised facts, planted signal) and augmentations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from numpyconvnext.data.augment import (
    AugmentConfig,
    augment,
    jitter,
    magnitude_scale,
    time_warp,
    window_slice,
)
from numpyconvnext.data.candles import CANDLE_COLUMNS
from numpyconvnext.data.synthetic import synthetic_candles


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    return synthetic_candles(20_000, "1h", seed=3, return_regimes=True)


def log_returns(candles: pd.DataFrame) -> np.ndarray:
    return np.diff(np.log(candles["close"].to_numpy()))


def test_deterministic_by_seed_and_format():
    a = synthetic_candles(500, "15m", seed=4)
    pd.testing.assert_frame_equal(a, synthetic_candles(500, "15m", seed=4), check_exact=True)
    assert not np.allclose(a["close"], synthetic_candles(500, "15m", seed=5)["close"])
    assert tuple(a.columns) == CANDLE_COLUMNS
    assert str(a["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert (a[list(CANDLE_COLUMNS[1:])].dtypes == np.float64).all()
    assert (a["timestamp"].diff().dropna() == pd.Timedelta(minutes=15)).all()
    assert isinstance(a.index, pd.RangeIndex)


def test_ohlc_consistent(market):
    o, h, low, c, v = (market[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    assert (h >= np.maximum(o, c)).all() and (low <= np.minimum(o, c)).all() and (v > 0).all()
    assert (h > np.maximum(o, c)).mean() > 0.5  # intrabar path reaches beyond open and close


def test_stylised_facts(market):
    r = log_returns(market)
    z = (r - r.mean()) / r.std()
    assert np.mean(z**4) > 6  # fat tails (normal: 3)
    a = np.abs(r)
    acf = np.corrcoef(a[:-1], a[1:])[0, 1]
    assert acf > 0.1  # volatility clustering
    assert abs(np.corrcoef(r[:-1], r[1:])[0, 1]) < 0.05  # returns themselves barely predictable
    volume = market["volume"].to_numpy()[1:]
    assert np.corrcoef(np.log(volume), np.log(a + 1e-12))[0, 1] > 0.2  # volume follows volatility
    regime = market["regime"].to_numpy()[1:]
    assert 0.05 < regime.mean() < 0.6
    assert r[regime == 1].std() > 1.5 * r[regime == 0].std()  # turbulent regime is wilder
    annual = r.std() * np.sqrt(365 * 24)
    assert 0.4 < annual < 1.2


def test_random_walk_is_plain():
    r = log_returns(synthetic_candles(20_000, "1h", seed=3, kind="random_walk"))
    z = (r - r.mean()) / r.std()
    assert abs(np.mean(z**4) - 3) < 0.3
    a = np.abs(r)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.05


@pytest.mark.parametrize("kind", ["market", "random_walk"])
def test_planted_momentum_is_visible(kind):
    """With the signal, the past 24-bar return predicts the next 8 bars' return; without, not."""

    def predictability(strength: float) -> float:
        c = np.log(synthetic_candles(20_000, "1h", seed=8, kind=kind,
                                     planted_signal_strength=strength)["close"].to_numpy())
        past = c[24:-8] - c[:-32]
        future = c[32:] - c[24:-8]
        return np.corrcoef(past, future)[0, 1]

    assert abs(predictability(0.0)) < 0.05
    assert predictability(0.3) > 0.15


def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3, 64)).astype(np.float32)


@pytest.mark.parametrize("transform", [jitter, magnitude_scale, time_warp, window_slice])
def test_identity_at_zero_and_shape_preserving(transform):
    x = batch()
    out = transform(x, 0.0, np.random.default_rng(1))
    np.testing.assert_array_equal(out, x)
    assert out is not x
    changed = transform(x, 0.3, np.random.default_rng(1))
    assert changed.shape == x.shape and changed.dtype == np.float32
    assert not np.allclose(changed, x)
    again = transform(x, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(changed, again)  # driven only by the generator


def test_warp_and_slice_keep_the_last_step_and_small_strength_is_near_identity():
    x = batch()
    for transform in (time_warp, window_slice):
        out = transform(x, 0.5, np.random.default_rng(2))
        np.testing.assert_allclose(out[..., -1], x[..., -1], rtol=1e-5, atol=1e-6)
        near = transform(x, 1e-4, np.random.default_rng(2))
        np.testing.assert_allclose(near, x, atol=0.05)


def test_time_warp_on_a_ramp_stays_monotone():
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (5, 2, 1))
    out = time_warp(ramp, 0.8, np.random.default_rng(3))
    assert (np.diff(out, axis=-1) >= -1e-6).all()
    np.testing.assert_allclose(out[..., 0], 0.0, atol=1e-6)


def test_jitter_and_scale_statistics():
    x = np.zeros((64, 4, 256), dtype=np.float32)
    noise = jitter(x, 0.1, np.random.default_rng(4))
    assert noise.std() == pytest.approx(0.1, rel=0.05)
    ones = np.ones_like(x)
    scaled = magnitude_scale(ones, 0.2, np.random.default_rng(4))
    assert (scaled.std(axis=-1) < 1e-6).all()  # one factor per (sample, channel)
    assert scaled[:, :, 0].std() == pytest.approx(0.2, rel=0.2)


def test_augment_composes_and_config_round_trips():
    x = batch()
    config = AugmentConfig(jitter=0.05, scale=0.1, time_warp=0.2, window_slice=0.1)
    assert AugmentConfig.from_dict(config.to_dict()) == config
    out = augment(x, np.random.default_rng(0), config)
    assert out.shape == x.shape and out.dtype == np.float32 and not np.allclose(out, x)
    np.testing.assert_array_equal(augment(x, np.random.default_rng(0), AugmentConfig()), x)
