"""Metrics on hand-computed series."""

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from numpyconvnext.trading.metrics import (
    BacktestMetrics,
    cagr,
    calmar_ratio,
    compute_metrics,
    expectancy,
    exposure,
    format_comparison_table,
    longest_drawdown_bars,
    max_drawdown,
    monthly_returns,
    periods_per_year_from_index,
    profit_factor,
    returns_from_equity,
    sharpe_ratio,
    sortino_ratio,
    total_return,
    win_loss_ratio,
    win_rate,
)

EQUITY = np.array([100.0, 110.0, 99.0, 120.0])
# returns: +0.1, -0.1, 120/99 - 1 = 0.2121...
RETURNS = [0.1, -0.1, 21 / 99]


def test_returns_and_total_return():
    np.testing.assert_allclose(returns_from_equity(EQUITY), RETURNS, rtol=1e-14)
    assert total_return(EQUITY) == pytest.approx(0.2)


def test_sharpe_hand():
    expected = statistics.mean(RETURNS) / statistics.stdev(RETURNS) * math.sqrt(4)
    assert sharpe_ratio(np.array(RETURNS), 4) == pytest.approx(expected, rel=1e-12)
    assert sharpe_ratio(pd.Series(RETURNS), 4) == pytest.approx(expected, rel=1e-12)
    # by hand: mean = 0.0707071, stdev = 0.1581090, ratio 0.4472045, * sqrt(4)
    assert sharpe_ratio(np.array(RETURNS), 4) == pytest.approx(0.894409, abs=1e-6)


def test_sharpe_degenerate():
    assert sharpe_ratio(np.array([0.01, 0.01, 0.01]), 8760) == 0.0
    assert sharpe_ratio(np.array([0.01]), 8760) == 0.0


def test_sortino_hand():
    # downside deviation over ALL bars: sqrt((0 + 0.01 + 0) / 3)
    downside = math.sqrt(0.01 / 3)
    expected = (sum(RETURNS) / 3) / downside * math.sqrt(4)
    assert sortino_ratio(np.array(RETURNS), 4) == pytest.approx(expected, rel=1e-12)
    assert sortino_ratio(np.array([0.01, 0.02]), 4) == math.inf
    assert sortino_ratio(np.array([0.0, 0.0]), 4) == 0.0


def test_max_drawdown_hand():
    assert max_drawdown(EQUITY) == pytest.approx(-0.1)
    # peak 200 then trough 150 (-25%) beats the earlier 100 -> 90 (-10%)
    assert max_drawdown(np.array([100, 90, 200, 150, 180.0])) == pytest.approx(-0.25)
    assert max_drawdown(np.array([1.0, 2.0, 3.0])) == 0.0


def test_cagr_hand():
    # 3 bars with 3 bars a year: one year, +20%
    assert cagr(EQUITY, 3) == pytest.approx(0.2)
    # 3 bars with 6 bars a year: half a year, 1.2^2 - 1 = 0.44
    assert cagr(EQUITY, 6) == pytest.approx(0.44)
    assert cagr(np.array([100.0, 0.0]), 365) == -1.0


def test_trade_metrics_hand():
    pnl = np.array([10.0, -5.0, 0.0, 20.0])
    assert win_rate(pnl) == 0.5  # a zero trade is not a win
    assert profit_factor(pnl) == pytest.approx(30 / 5)
    assert profit_factor(np.array([1.0, 2.0])) == math.inf
    assert profit_factor(np.array([-1.0, 0.0])) == 0.0
    assert profit_factor(np.array([])) == 0.0
    assert win_rate(np.array([])) == 0.0
    assert exposure(np.array([0.0, 1.0, -0.5, 0.0])) == 0.5


def test_periods_per_year():
    hourly = pd.date_range("2024-01-01", periods=10, freq="h", tz="UTC")
    assert periods_per_year_from_index(hourly) == 365 * 24
    assert periods_per_year_from_index(pd.Series(hourly)) == 365 * 24
    assert periods_per_year_from_index(pd.date_range("2024", periods=5, freq="15min")) == 35040
    assert periods_per_year_from_index(pd.date_range("2024", periods=5, freq="D")) == 365
    # one missing bar does not change the median spacing
    assert periods_per_year_from_index(hourly.delete(4)) == 365 * 24
    with pytest.raises(ValueError):
        periods_per_year_from_index(hourly[:1])


def test_compute_metrics_and_table():
    m = compute_metrics(EQUITY, [0, 1, 1, 0], [10.0, -5.0], [2, 3], 3)
    assert m.total_return == pytest.approx(0.2)
    assert m.cagr == pytest.approx(0.2)
    assert m.max_drawdown == pytest.approx(-0.1)
    assert m.win_rate == 0.5 and m.profit_factor == 2.0
    assert m.avg_trade_duration == 2.5 and m.total_trades == 2 and m.exposure == 0.5
    assert m.calmar_ratio == pytest.approx(2.0) and m.longest_drawdown_bars == 1
    assert m.avg_win_loss == 2.0 and m.expectancy == 2.5  # pnl stands in for returns
    d = m.to_dict()
    assert list(d) == [
        "total_return", "cagr", "sharpe_ratio", "sortino_ratio", "max_drawdown", "win_rate",
        "profit_factor", "avg_trade_duration", "total_trades", "exposure", "calmar_ratio",
        "avg_win_loss", "expectancy", "longest_drawdown_bars",
    ]
    bench = BacktestMetrics(0.5, 0.4, 1.0, 1.5, -0.3, 1.0, math.inf, 10.0, 1, 1.0)
    table = format_comparison_table(m, bench, title="Metric (IN-SAMPLE)")
    lines = table.splitlines()
    assert "Model" in lines[0] and "Buy & hold" in lines[0] and "IN-SAMPLE" in lines[0]
    labels = [line.split("  ")[0].strip() for line in lines[2:]]
    assert labels == ["Total return", "CAGR", "Sharpe", "Sortino", "Max drawdown", "Win rate",
                      "Profit factor", "Calmar", "Avg win / avg loss", "Expectancy / trade",
                      "Trades", "Avg duration", "Longest drawdown", "Exposure"]
    assert "+20.00%" in lines[2] and "+50.00%" in lines[2]
    assert "-10.00%" in table and "inf" in table
    assert len({len(line) for line in lines}) == 1  # aligned


def test_calmar_win_loss_expectancy_hand():
    # EQUITY spans 3 bars; with 3 bars a year CAGR = 20 %, max drawdown -10 % -> Calmar 2
    assert calmar_ratio(EQUITY, 3) == pytest.approx(2.0)
    assert calmar_ratio(np.array([1.0, 1.1, 1.2]), 2) == math.inf
    assert calmar_ratio(np.array([1.0, 1.0]), 2) == 0.0
    r = np.array([0.02, -0.01, 0.04, -0.03, 0.0])
    assert win_loss_ratio(r) == pytest.approx(0.03 / 0.02)  # mean win 3 %, mean loss 2 %
    assert expectancy(r) == pytest.approx(0.004)
    assert win_loss_ratio(np.array([0.01])) == math.inf and win_loss_ratio(np.array([])) == 0.0
    assert expectancy(np.array([])) == 0.0


def test_longest_drawdown_hand():
    # below the high at bars 2, 3 (peak 110), then a new high, then bars 6, 7, 8 to the end
    e = np.array([100, 110, 105, 108, 120, 125, 124, 100, 110.0])
    assert longest_drawdown_bars(e) == 3
    assert longest_drawdown_bars(np.array([1.0, 2.0, 3.0])) == 0
    assert longest_drawdown_bars(np.array([3.0, 2.0, 1.0])) == 2


def test_monthly_returns_table():
    stamps = pd.DatetimeIndex(["2023-12-05", "2023-12-31", "2024-01-10", "2024-01-31",
                               "2024-03-15"], tz="UTC")
    equity = pd.Series([100.0, 110.0, 99.0, 121.0, 133.1], index=stamps)
    table = monthly_returns(equity)
    assert list(table.index) == [2023, 2024] and list(table.columns)[-1] == "Year"
    assert table.loc[2023, "Dec"] == pytest.approx(0.10)  # from the first value
    assert table.loc[2024, "Jan"] == pytest.approx(121 / 110 - 1)
    assert math.isnan(table.loc[2024, "Feb"])
    assert table.loc[2024, "Mar"] == pytest.approx(0.10)
    assert table.loc[2024, "Year"] == pytest.approx(133.1 / 110 - 1)
    assert table.loc[2023, "Year"] == pytest.approx(0.10)
