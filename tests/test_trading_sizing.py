"""Half-Kelly sizing bounded by the risk at the stop and by the exposure cap."""

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
)

probabilities = st.floats(0.0, 1.0, allow_subnormal=False)
positive = st.floats(1e-6, 1e6)
anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.just(0.0), st.just(-1.0)
)


def test_hand_case():
    # p = 0.6, b = 2: kelly = (1.2 - 0.4) / 2 = 0.4, half Kelly = 0.2
    assert kelly_criterion(0.6, 2.0) == pytest.approx(0.4)
    # stop 2 away at price 100: risk cap = 0.02 * 100 / 2 = 1.0 -> Kelly binds
    assert position_fraction(0.6, 100.0, stop_distance=2.0) == pytest.approx(0.2)
    # stop 20 away: risk cap = 0.02 * 100 / 20 = 0.1 -> risk binds
    assert position_fraction(0.6, 100.0, stop_distance=20.0) == pytest.approx(0.1)
    units = position_size(10_000.0, 100.0, 0.6, stop_distance=20.0)
    assert units == pytest.approx(10.0)
    assert units * 20.0 == pytest.approx(0.02 * 10_000.0)  # the loss at the stop is 2% of equity
    # full Kelly with a loose stop: the exposure cap binds
    assert position_fraction(0.99, 100.0, 1.0, kelly_fraction=1.0, max_exposure=0.5) == 0.5


def test_degenerate_inputs_give_zero():
    assert position_fraction(0.6, 100.0, stop_distance=0.0) == 0.0
    assert position_fraction(0.6, 100.0, stop_distance=np.nan) == 0.0  # ATR warm-up
    assert position_fraction(0.6, 100.0, stop_distance=-1.0) == 0.0
    assert position_fraction(np.nan, 100.0, stop_distance=1.0) == 0.0
    assert position_fraction(0.6, np.nan, stop_distance=1.0) == 0.0
    assert position_size(0.0, 100.0, 0.6, stop_distance=1.0) == 0.0
    assert position_size(-5.0, 100.0, 0.6, stop_distance=1.0) == 0.0
    assert position_size(1e4, 0.0, 0.6) == 0.0
    # no stop given: only Kelly and exposure apply
    assert position_fraction(0.6, 100.0) == pytest.approx(0.2)


def test_invalid_settings_raise():
    with pytest.raises(ValueError):
        position_fraction(1.5)
    with pytest.raises(ValueError):
        position_fraction(0.6, win_loss_ratio=0.0)
    with pytest.raises(ValueError):
        position_fraction(0.6, max_risk_per_trade=-0.1)


@settings(max_examples=200, deadline=None)
@given(
    p=probabilities, b=st.floats(0.1, 10.0), equity=positive, price=positive, stop=positive,
    risk=st.floats(0.0, 0.2, allow_subnormal=False), cap=st.floats(0.0, 5.0, allow_subnormal=False),
    kf=st.floats(0.0, 1.0, allow_subnormal=False),
)
@example(p=1.0, b=1.0, equity=1.0, price=18924.0, stop=1.0, risk=0.125, cap=1.0,
         kf=2.2250738585072014e-308)  # units underflow to a subnormal (seed 107)
@example(p=1.0, b=1.0, equity=5.0, price=1.25, stop=35439.0, risk=2.2250738585072014e-308,
         cap=1.0, kf=1.0)  # the fraction of equity underflows, then is scaled up (seed 150)
@example(p=1.0, b=1.0, equity=0.0625, price=0.0625, stop=475707.0,
         risk=8.311405457757034e-305, cap=1.0, kf=1.0)  # and fraction * equity too (seed 263)
def test_bounded_by_risk_and_exposure(p, b, equity, price, stop, risk, cap, kf):
    units = position_size(equity, price, p, b, stop, risk, cap, kf)
    assert math.isfinite(units) and units >= 0.0
    # below the normal range a result is rounded to a multiple of 2^-1074, not relatively.
    # units = (fraction * equity) / price rounds three times: the fraction (then scaled by
    # equity / price), fraction * equity (scaled by 1 / price) and the units themselves
    subnormal_units = 2.0**-1074 * (1.0 + (1.0 + equity) / price)

    def at_most(units_times: float, bound: float) -> bool:
        return units * units_times <= bound * (1 + 1e-12) + units_times * subnormal_units

    assert at_most(price, cap * equity)  # exposure
    assert at_most(stop, risk * equity)  # loss if the stop is hit
    assert at_most(price, max(kf * kelly_criterion(p, b), 0.0) * equity)


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
