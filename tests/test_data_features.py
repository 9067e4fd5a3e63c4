"""Indicators against hand-computed values and loop references; properties; no look-ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyconvnext.data.features import (
    FEATURE_NAMES,
    INDICATOR_NAMES,
    WARMUP_BARS,
    atr,
    build_features,
    compute_indicators,
    directional,
    ema,
    rsi,
)
from numpyconvnext.data.synthetic import synthetic_candles


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return synthetic_candles(3000, "1h", seed=21)


@pytest.fixture(scope="module")
def indicators(candles) -> pd.DataFrame:
    return compute_indicators(candles)


def test_ema_by_hand():
    # seed = SMA(2, 4, 6) = 4; alpha = 0.5: 4 + .5 (10 - 4) = 7; 7 + .5 (4 - 7) = 5.5
    out = ema(np.array([2.0, 4.0, 6.0, 10.0, 4.0]), 3)
    np.testing.assert_allclose(out, [np.nan, np.nan, 4.0, 7.0, 5.5], equal_nan=True)


def test_rsi_by_hand():
    # gains 1, 1, 0, 2 and losses 0, 0, 1, 0; n = 2: G = 1, L = 0 -> 100; G = .5, L = .5 -> 50;
    # G = (.5 + 2) / 2 = 1.25, L = .25 -> 100 * 1.25 / 1.5
    out = rsi(np.array([10.0, 11.0, 12.0, 11.0, 13.0]), 2)
    np.testing.assert_allclose(out, [np.nan, np.nan, 100.0, 50.0, 250.0 / 3.0], equal_nan=True)


def test_atr_by_hand():
    high = np.array([10.0, 11.0, 12.0, 11.5])
    low = np.array([8.0, 9.0, 10.5, 9.0])
    close = np.array([9.0, 10.0, 11.0, 9.5])
    # TR = [nan, 2, 2, 2.5]; ATR(2): mean(2, 2) = 2, then (2 * 1 + 2.5) / 2 = 2.25
    np.testing.assert_allclose(atr(high, low, close, 2), [np.nan, np.nan, 2.0, 2.25],
                               equal_nan=True)


def _loop_rsi(close, n):
    d = np.diff(close)
    gain, loss = np.maximum(d, 0), np.maximum(-d, 0)
    out = np.full(len(close), np.nan)
    g, lo = gain[:n].mean(), loss[:n].mean()
    out[n] = 100 * g / (g + lo)
    for t in range(n + 1, len(close)):
        g = (g * (n - 1) + gain[t - 1]) / n
        lo = (lo * (n - 1) + loss[t - 1]) / n
        out[t] = 100 * g / (g + lo)
    return out


def _loop_directional(h, low, c, n):
    """TA-Lib's PLUS_DI / MINUS_DI / ADX written as its C loops (running sums)."""
    T = len(c)
    pdi, mdi, adx = (np.full(T, np.nan) for _ in range(3))
    sp = sm = st_ = 0.0
    dxs = []
    for t in range(1, T):
        up, down = h[t] - h[t - 1], low[t - 1] - low[t]
        p = up if (up > down and up > 0) else 0.0
        m = down if (down > up and down > 0) else 0.0
        tr = max(h[t] - low[t], abs(h[t] - c[t - 1]), abs(low[t] - c[t - 1]))
        if t < n:
            sp, sm, st_ = sp + p, sm + m, st_ + tr
            continue
        sp, sm, st_ = sp - sp / n + p, sm - sm / n + m, st_ - st_ / n + tr
        pdi[t], mdi[t] = 100 * sp / st_, 100 * sm / st_
        dxs.append(100 * abs(pdi[t] - mdi[t]) / (pdi[t] + mdi[t]))
        if len(dxs) == n:
            adx[t] = np.mean(dxs)
        elif len(dxs) > n:
            adx[t] = (adx[t - 1] * (n - 1) + dxs[-1]) / n
    return pdi, mdi, adx


def test_rsi_and_directional_match_loop_references(candles):
    h, low, c = (candles[k].to_numpy()[:400] for k in ("high", "low", "close"))
    np.testing.assert_allclose(rsi(c, 14), _loop_rsi(c, 14), rtol=1e-9, equal_nan=True)
    for mine, ref in zip(directional(h, low, c, 14), _loop_directional(h, low, c, 14), strict=True):
        np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_stochastic_bollinger_keltner_macd_at_a_bar(candles, indicators):
    h, low, c = (candles[k].to_numpy() for k in ("high", "low", "close"))
    t = 1234
    fast = [100 * (c[j] - low[j - 13 : j + 1].min()) / (h[j - 13 : j + 1].max() - low[j - 13 : j + 1].min())
            for j in range(t - 4, t + 1)]
    slow_k = [np.mean(fast[i : i + 3]) for i in range(3)]
    assert indicators["stoch_k"][t] == pytest.approx(slow_k[-1])
    assert indicators["stoch_d"][t] == pytest.approx(np.mean(slow_k))
    window = c[t - 19 : t + 1]
    assert indicators["bb_middle"][t] == pytest.approx(window.mean())
    assert indicators["bb_upper"][t] == pytest.approx(window.mean() + 2 * window.std(ddof=0))
    assert indicators["kc_upper"][t] == pytest.approx(ema(c, 20)[t] + 2 * atr(h, low, c, 10)[t])
    macd = ema(c, 12, seed_at=25) - ema(c, 26)
    assert indicators["macd"][t] == pytest.approx(macd[t])
    assert indicators["macd_signal"][t] == pytest.approx(ema(macd, 9)[t])
    # TA-Lib MACD: the fast EMA is seeded at the slow one's first bar with its last 12 closes
    assert ema(c, 12, seed_at=25)[25] == pytest.approx(c[14:26].mean())
    assert np.isnan(indicators["macd_signal"][32]) and np.isfinite(indicators["macd_signal"][33])


def test_indicator_ranges(indicators):
    ind = indicators.iloc[WARMUP_BARS:]
    assert list(indicators.columns) == list(INDICATOR_NAMES)
    assert np.isfinite(ind.to_numpy()).all()
    for name in ("rsi_14", "stoch_k", "stoch_d", "adx_14", "plus_di_14", "minus_di_14"):
        assert ind[name].between(0, 100).all(), name
    assert (ind["bb_lower"] <= ind["bb_middle"]).all() and (ind["bb_middle"] <= ind["bb_upper"]).all()
    assert (ind["kc_lower"] <= ind["kc_middle"]).all() and (ind["kc_middle"] <= ind["kc_upper"]).all()
    assert (ind["atr_14"] > 0).all()
    np.testing.assert_allclose(ind["macd_hist"], ind["macd"] - ind["macd_signal"])


def test_features_finite_after_warmup_and_named(candles):
    features = build_features(candles)
    assert tuple(features.columns) == FEATURE_NAMES and len(FEATURE_NAMES) >= 18
    assert np.isfinite(features.iloc[WARMUP_BARS:].to_numpy()).all()
    assert np.isnan(features.iloc[WARMUP_BARS - 1].to_numpy()).any()
    bounded = features.iloc[WARMUP_BARS:][["rsi", "stoch_k", "stoch_d", "adx"]]
    assert bounded.abs().max().max() <= 1.0


def test_zero_volume_and_flat_candles_stay_finite(candles):
    flat = candles.iloc[:600].copy()
    rows = slice(300, 340)  # an exchange outage: 40 filled candles
    price = flat["close"].iloc[299]
    for column in ("open", "high", "low", "close"):
        flat.loc[rows, column] = price
    flat.loc[rows, "volume"] = 0.0
    ind = compute_indicators(flat)
    features = build_features(flat)
    assert np.isfinite(features.iloc[WARMUP_BARS:].to_numpy()).all()
    typical = price  # no volume in the VWAP window: the typical price
    assert ind["vwap"].iloc[335] == pytest.approx(typical)


def _perturb_after(candles: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    changed = candles.copy()
    n = len(candles) - t - 1
    factor = np.exp(rng.normal(0.0, 0.05, n))
    for column in ("open", "high", "low", "close"):
        changed.loc[t + 1 :, column] = changed[column].to_numpy()[t + 1 :] * factor
    changed.loc[t + 1 :, "volume"] = changed["volume"].to_numpy()[t + 1 :] * rng.uniform(0.2, 3, n)
    return changed


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.integers(0, 598))
def test_no_look_ahead_in_features(seed, t):
    candles = synthetic_candles(600, "1h", seed=seed % 97)
    base = build_features(candles).to_numpy()[: t + 1]
    changed = build_features(_perturb_after(candles, t, seed)).to_numpy()[: t + 1]
    truncated = build_features(candles.iloc[: t + 1]).to_numpy()
    np.testing.assert_array_equal(changed, base)
    np.testing.assert_array_equal(truncated, base)
