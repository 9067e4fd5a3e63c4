"""Funding on perpetuals: exact charges at settlements, the accounting identity, buy-and-hold
pays it too, incremental == whole series, and the funding frame helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyconvnext.data.funding import (
    FundingFileError,
    constant_funding,
    funding_path,
    funding_per_bar,
    load_funding,
    save_funding,
    synthetic_funding,
)
from numpyconvnext.data.synthetic import synthetic_candles
from numpyconvnext.trading.backtest import Backtester, backtest, buy_and_hold

E0 = 10_000.0
ZERO_COST = {"fee_rate": 0.0, "slippage": 0.0}
RATES = (0.0001, 0.0003, -0.0002)  # at 08:00, 16:00 and 00:00 the next day


def flat_candles(n: int = 40, price: float = 100.0, start="2024-01-01") -> pd.DataFrame:
    stamps = pd.date_range(start, periods=n, freq="h", tz="UTC")
    prices = np.full(n, price)
    return pd.DataFrame({"timestamp": stamps, "open": prices, "high": prices + 1,
                         "low": prices - 1, "close": prices, "volume": 1.0, "turnover": prices})


def three_settlements() -> pd.DataFrame:
    stamps = pd.DatetimeIndex(["2024-01-01 08:00", "2024-01-01 16:00", "2024-01-02 00:00"],
                              tz="UTC")
    return pd.DataFrame({"timestamp": stamps, "rate": list(RATES)})


def held(side: float, n: int = 40) -> np.ndarray:
    """Enter at bar 1's open (decided at bar 0), exit at bar 30's open (01:00 .. 06:00 next day)."""
    targets = np.zeros(n)
    targets[:29] = side
    return targets


@pytest.mark.parametrize("side", [1.0, -1.0, 0.0])
def test_three_settlements_charge_exactly_their_sum_times_notional(side):
    candles = flat_candles()
    r = backtest(candles, held(side), funding=three_settlements(), **ZERO_COST)
    units = E0 / 100.0 * abs(side)
    expected = side * sum(RATES) * units * 100.0  # long pays, short receives, flat nothing
    assert r.funding_paid == pytest.approx(expected, rel=1e-12, abs=1e-12)
    charged = r.funding[r.funding != 0]
    if side:
        assert list(charged.index.hour) == [8, 16, 0]
        np.testing.assert_allclose(charged.to_numpy(), side * np.array(RATES) * units * 100.0,
                                   rtol=1e-12)
        assert r.trades["funding"].iloc[0] == pytest.approx(expected, rel=1e-12)
    else:
        assert charged.empty and r.trades.empty
    # flat prices, no costs: funding is the whole change of equity
    assert r.equity.iloc[-1] - E0 == pytest.approx(-expected, rel=1e-12, abs=1e-9)


def test_funding_marks_the_settlement_bars_open():
    candles = flat_candles()
    opens = 100.0 + np.arange(40.0)  # rising opens: the mark is the open of the settlement bar
    candles["open"] = opens
    candles["close"] = opens + 0.5
    candles["high"] = opens + 1.0
    candles["low"] = opens - 1.0
    r = backtest(candles, held(1.0), funding=three_settlements(), **ZERO_COST)
    units = E0 / opens[1]
    bars = [8, 16, 24]  # 08:00, 16:00 and 00:00 the next day
    assert r.funding_paid == pytest.approx(sum(rate * units * opens[b] for rate, b in
                                               zip(RATES, bars, strict=True)), rel=1e-12)


def test_position_entered_at_the_settlement_open_does_not_pay_it():
    candles = flat_candles()
    targets = np.zeros(40)
    targets[7:12] = 1.0  # decided at 07:00's close, filled at 08:00's open: after the settlement
    r = backtest(candles, targets, funding=three_settlements(), **ZERO_COST)
    assert r.funding_paid == 0.0
    targets[6] = 1.0  # filled at 07:00: held going into 08:00
    r = backtest(candles, targets, funding=three_settlements(), **ZERO_COST)
    assert r.funding_paid == pytest.approx(RATES[0] * E0, rel=1e-12)


def test_buy_and_hold_on_a_perpetual_pays_funding():
    candles = flat_candles()
    plain = buy_and_hold(candles, **ZERO_COST)
    perp = buy_and_hold(candles, funding=three_settlements(), **ZERO_COST)
    assert plain.funding_paid == 0.0
    assert perp.funding_paid == pytest.approx(sum(RATES) * E0, rel=1e-12)
    assert perp.equity.iloc[-1] == pytest.approx(plain.equity.iloc[-1] - sum(RATES) * E0)
    model = backtest(candles, held(0.0), funding=three_settlements(), **ZERO_COST)
    assert model.benchmark.funding_paid == pytest.approx(perp.funding_paid)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), compounding=st.booleans(), stops=st.booleans())
def test_accounting_identity_with_fees_slippage_stops_and_funding(seed, compounding, stops):
    rng = np.random.default_rng(seed)
    candles = synthetic_candles(400, "1h", seed=seed, start="2024-01-01")
    levels = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    targets = levels[rng.integers(0, 5, 400)]
    for t in range(1, 400):
        if rng.random() < 0.8:
            targets[t] = targets[t - 1]
    funding = synthetic_funding(candles, seed=seed)
    funding["rate"] *= 20  # large rates so that funding is not lost in the rounding
    r = backtest(candles, targets, funding=funding, fee_rate=0.00055, slippage=0.0002,
                 compounding=compounding, stop_loss=0.01 if stops else None,
                 take_profit=0.02 if stops else None)
    t = r.trades
    change = r.equity.iloc[-1] - E0
    assert change == pytest.approx(t["gross_pnl"].sum() - r.fees_paid - r.funding_paid,
                                   rel=1e-10, abs=1e-8)
    assert change == pytest.approx(t["pnl"].sum(), rel=1e-10, abs=1e-8)
    assert r.funding_paid == pytest.approx(t["funding"].sum(), rel=1e-10, abs=1e-10)
    assert r.funding_paid != 0.0


def test_incremental_backtester_charges_the_same_funding():
    candles = synthetic_candles(300, "1h", seed=3, start="2024-02-01")
    funding = synthetic_funding(candles, seed=3)
    rng = np.random.default_rng(1)
    targets = np.repeat(rng.choice([-1.0, 0.0, 1.0], 30), 10)
    whole = backtest(candles, targets, funding=funding, stop_loss=0.02)
    rates = funding_per_bar(pd.DatetimeIndex(candles["timestamp"]), funding)
    stepper = Backtester(stop_loss=0.02)
    for t, bar in enumerate(candles.to_dict("records")):
        stepper.step(bar, targets[t], funding_rate=rates[t])
    inc = stepper.result()
    pd.testing.assert_series_equal(inc.equity, whole.equity, check_exact=True)
    pd.testing.assert_series_equal(inc.funding, whole.funding, check_exact=True)
    pd.testing.assert_frame_equal(inc.trades, whole.trades, check_exact=True)


def test_funding_per_bar_alignment():
    stamps = pd.date_range("2024-01-01 00:00", periods=10, freq="4h", tz="UTC")
    funding = pd.DataFrame({"timestamp": pd.DatetimeIndex(
        ["2023-12-31 16:00", "2024-01-01 08:00", "2024-01-01 16:00", "2024-01-02 00:00",
         "2024-01-03 00:00"], tz="UTC"), "rate": [9.0, 1.0, 2.0, 3.0, 9.0]})
    rates = funding_per_bar(stamps, funding)
    np.testing.assert_array_equal(rates, [0, 0, 1, 0, 2, 0, 3, 0, 0, 0])  # outside the run: none
    daily = pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC")
    np.testing.assert_array_equal(funding_per_bar(daily, funding), [0, 6.0, 9.0])  # summed


def test_constant_and_synthetic_series_and_files(tmp_path):
    constant = constant_funding(pd.Timestamp("2024-01-01 03:00", tz="UTC"),
                                pd.Timestamp("2024-01-02 08:00", tz="UTC"), 0.0001)
    assert list(constant["timestamp"].dt.hour) == [8, 16, 0, 8]
    assert (constant["rate"] == 0.0001).all()
    candles = synthetic_candles(2000, "1h", seed=4)
    series = synthetic_funding(candles, seed=4)
    assert len(series) == 250  # hours 0, 8, ..., 1992 of the 2,000 bars
    assert 0.00005 < series["rate"].mean() < 0.0003 and series["rate"].std() > 0
    assert series["rate"].abs().max() <= 0.00375
    # causal: later candles do not change earlier rates
    moved = candles.copy()
    moved.loc[1000:, ["open", "high", "low", "close"]] *= 1.3
    again = synthetic_funding(moved, seed=4)
    early = series["timestamp"] <= candles["timestamp"].iloc[1000]
    np.testing.assert_array_equal(series["rate"][early], again["rate"][early])
    path = save_funding(series, tmp_path / "BTCUSDT_linear_funding.csv")
    pd.testing.assert_frame_equal(load_funding(path), series, check_exact=False, rtol=1e-9)
    assert funding_path(tmp_path / "BTCUSDT_linear_1h.csv") == path
    assert funding_path(tmp_path / "BTCUSDT_spot_1h.csv") is None
    assert funding_path(tmp_path / "my_candles.csv") is None
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,rate\n2024-01-01T00:00:00Z,0.0001\n2024-01-01T08:00:00Z,lots\n")
    with pytest.raises(FundingFileError, match="bad.csv:3"):
        load_funding(bad)
