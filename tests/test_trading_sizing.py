"""Half-Kelly in risk units: units = f * equity / stop_distance, bounded by the risk budget and
the exposure cap; the three-outcome win probability."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from numpyconvnext.trading.sizing import (
    average_true_range,
    kelly_criterion,
    position_fraction,
    position_size,
    risk_fraction,
    win_probability,
)

probabilities = st.floats(0.0, 1.0, allow_subnormal=False)
positive = st.floats(1e-6, 1e6)
anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.just(0.0), st.just(-1.0)
)


def test_hand_case():
    # p = 0.52, b = 1: kelly = 0.52 - 0.48 = 0.04, half Kelly = 0.02 of equity risked
    assert kelly_criterion(0.52, 1.0) == pytest.approx(0.04)
    assert risk_fraction(0.52, 1.0) == pytest.approx(0.02)
    # 10,000 equity, stop 500 away: units = 0.02 * 10,000 / 500 = 0.4; at price 20,000 that is
    # 8,000 of value, 0.8 of equity
    units = position_size(10_000.0, 20_000.0, 0.52, 1.0, stop_distance=500.0)
    assert units == pytest.approx(0.4)
    assert units * 500.0 == pytest.approx(200.0)  # the loss at the stop is 2% of equity
    assert position_fraction(0.52, 20_000.0, 500.0, 1.0) == pytest.approx(0.8)
    # a smaller edge risks less: p = 0.51 -> kelly 0.02, half 0.01 -> 0.2 units
    assert position_size(10_000.0, 20_000.0, 0.51, 1.0, stop_distance=500.0) == pytest.approx(0.2)
    # p = 0.6, b = 2: half Kelly 0.2 is capped by the 2% risk budget
    assert risk_fraction(0.6, 2.0) == pytest.approx(0.02)
    # a tight stop would need 4x leverage: the exposure cap (1x) binds
    assert position_fraction(0.6, 100.0, stop_distance=0.5) == 1.0
    assert position_size(10_000.0, 100.0, 0.6, stop_distance=0.5) == pytest.approx(100.0)
    # no stop: the whole value is at risk, so the risk budget caps the position at 2%
    assert position_fraction(0.6, 100.0) == pytest.approx(0.02)
    # fixed sizing risks the budget whatever the probability
    assert position_fraction(0.3, 100.0, 5.0, sizing="fixed") == pytest.approx(0.4)


def test_win_probability_is_the_share_of_the_directional_outcomes():
    p = np.array([[0.5, 0.2, 0.3], [0.2, 0.4, 0.4], [0.0, 0.0, 1.0], [0.3, 0.3, 0.4]])
    q = win_probability(p, np.array([0, 1, 0, 2]))
    np.testing.assert_allclose(q[:2], [0.5 / 0.7, 0.4 / 0.6])
    assert np.isnan(q[2]) and np.isnan(q[3])
    # Kelly with q maximises p_L log(1 + f b) + p_S log(1 - f) (checked on a grid)
    p_long, p_short, b = 0.45, 0.3, 1.5
    f = np.linspace(0, 0.99, 100_001)
    best = f[np.argmax(p_long * np.log1p(f * b) + p_short * np.log1p(-f))]
    assert best == pytest.approx(kelly_criterion(p_long / (p_long + p_short), b), abs=1e-4)


def test_degenerate_inputs_give_zero():
    assert position_fraction(0.6, 100.0, stop_distance=0.0) == 0.0
    assert position_fraction(0.6, 100.0, stop_distance=np.nan) == 0.0  # ATR warm-up
    assert position_fraction(0.6, 100.0, stop_distance=-1.0) == 0.0
    assert position_fraction(np.nan, 100.0, stop_distance=1.0) == 0.0
    assert position_fraction(np.nan, 100.0, stop_distance=1.0, sizing="fixed") == 0.0
    assert position_fraction(0.6, np.nan, stop_distance=1.0) == 0.0
    assert position_size(0.0, 100.0, 0.6, stop_distance=1.0) == 0.0
    assert position_size(-5.0, 100.0, 0.6, stop_distance=1.0) == 0.0
    assert position_size(1e4, 0.0, 0.6) == 0.0


def test_invalid_settings_raise():
    with pytest.raises(ValueError):
        position_fraction(1.5)
    with pytest.raises(ValueError):
        position_fraction(0.6, win_loss_ratio=0.0)
    with pytest.raises(ValueError):
        position_fraction(0.6, max_risk_per_trade=-0.1)
    with pytest.raises(ValueError, match="sizing"):
        position_fraction(0.6, sizing="martingale")


caps = st.one_of(st.just(0.0), st.floats(1e-9, 5.0))  # (products of tiny caps go subnormal)


@settings(max_examples=200, deadline=None)
@given(
    p=probabilities, b=st.floats(0.1, 10.0), equity=positive, price=positive, stop=positive,
    risk=st.one_of(st.just(0.0), st.floats(1e-9, 0.2)), cap=caps,
    kf=st.floats(0.0, 1.0, allow_subnormal=False), sizing=st.sampled_from(["kelly", "fixed"]),
)
@example(p=1.0, b=1.0, equity=1.0, price=18924.0, stop=1.0, risk=0.125, cap=1.0,
         kf=2.2250738585072014e-308, sizing="kelly")  # units underflow to a subnormal (seed 107)
@example(p=1.0, b=1.0, equity=5.0, price=1.25, stop=35439.0, risk=2.2250738585072014e-308,
         cap=1.0, kf=1.0, sizing="kelly")  # the fraction underflows, then is scaled up (seed 150)
@example(p=1.0, b=1.0, equity=0.0625, price=0.0625, stop=475707.0,
         risk=8.311405457757034e-305, cap=1.0, kf=1.0, sizing="kelly")  # and fraction * equity (263)
def test_units_equal_the_hand_formula_and_never_exceed_the_caps(p, b, equity, price, stop, risk,
                                                               cap, kf, sizing):
    units = position_size(equity, price, p, b, stop, risk, cap, kf, sizing)
    assert math.isfinite(units) and units >= 0.0
    kelly = max(p - (1 - p) / b, 0.0)
    f = kf * kelly if sizing == "kelly" else risk
    expected = min(min(f, risk) * equity / stop, cap * equity / price)
    # Below the normal range a result is rounded to a multiple of 2^-1074, not relatively. The
    # library computes units = (min(f, risk) * price / stop) * equity / price and the hand
    # formula min(f, risk) * equity / stop: every intermediate that may go subnormal (f, the
    # risked fraction, its notional fraction, fraction * equity, the units, cap * equity)
    # carries an absolute error scaled by at most the factors applied after it, all below
    # (1 + (1 + equity) / price) * (1 + (1 + equity) / stop), twice over for both sides.
    subnormal_units = 2.0**-1074 * 2 * (1 + (1 + equity) / price) * (1 + (1 + equity) / stop)
    # p * b - (1 - p) and p - (1 - p) / b cancel differently near a zero edge: a few ulps of
    # the terms, times kf * equity / stop, apart
    cancellation = (8 * 2.0**-52 * kf * (p + (1 - p) / b) * equity / stop
                    if sizing == "kelly" else 0.0)
    assert units == pytest.approx(expected, rel=1e-12, abs=subnormal_units + cancellation)

    def at_most(units_times: float, bound: float) -> bool:
        return units * units_times <= bound * (1 + 1e-12) + units_times * subnormal_units

    assert at_most(price, cap * equity)  # exposure
    assert at_most(stop, risk * equity)  # loss if the stop is hit
    if sizing == "kelly":  # the loss at the stop is the Kelly share of equity, in risk units
        assert at_most(stop, kf * max(kelly_criterion(p, b), 0.0) * equity)


@settings(max_examples=100, deadline=None)
@given(p=probabilities, b=st.floats(0.1, 10.0))
def test_zero_without_edge(p, b):
    fraction = position_fraction(p, 100.0, 1.0, win_loss_ratio=b)
    if p * b - (1 - p) <= 0:
        assert fraction == 0.0
    else:
        assert fraction > 0.0


@settings(max_examples=200, deadline=None)
@given(equity=anything, price=anything, p=st.one_of(probabilities, st.just(math.nan)),
       stop=st.one_of(anything, st.none()))
def test_never_negative_nan_or_inf(equity, price, p, stop):
    units = position_size(equity, price, p, stop_distance=stop)
    fraction = position_fraction(p, price, stop)
    for x in (units, fraction):
        assert math.isfinite(x) and x >= 0.0


@settings(max_examples=100, deadline=None)
@given(p1=probabilities, p2=probabilities, stop=positive, b=st.floats(0.1, 10.0))
def test_monotone_in_probability(p1, p2, stop, b):
    lo, hi = sorted((p1, p2))
    assert position_fraction(lo, 100.0, stop, b) <= position_fraction(hi, 100.0, stop, b)


def test_vectorised_equals_scalar():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 50)
    price = rng.uniform(10, 100, 50)
    stop = rng.uniform(-1, 5, 50)
    stop[::7] = np.nan
    equity = rng.uniform(-100, 1e4, 50)
    vec = position_size(equity, price, p, 1.5, stop)
    assert vec.shape == (50,)
    for i in range(50):
        assert vec[i] == position_size(equity[i], price[i], p[i], 1.5, stop[i])


def test_atr_hand_case_and_causal():
    high = np.array([10.0, 12.0, 11.0, 13.0])
    low = np.array([8.0, 9.0, 9.5, 10.0])
    close = np.array([9.0, 11.0, 10.0, 12.0])
    # TR = [2, max(3, 3, 0)=3, max(1.5, 0, 1.5)=1.5, max(3, 3, 0)=3]
    atr = average_true_range(high, low, close, period=2)
    assert np.isnan(atr[0])
    assert atr[1] == pytest.approx(2.5)
    assert atr[2] == pytest.approx((2.5 * 1 + 1.5) / 2)
    assert atr[3] == pytest.approx((2.0 * 1 + 3.0) / 2)
    high2, low2, close2 = high.copy(), low.copy(), close.copy()
    high2[3], low2[3], close2[3] = 50.0, 1.0, 20.0
    np.testing.assert_array_equal(average_true_range(high2, low2, close2, 2)[:3], atr[:3])
