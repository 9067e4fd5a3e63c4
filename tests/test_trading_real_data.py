"""Backtests on the real BTCUSDT 1h candles (skipped when the CSV is absent)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from numpyconvnext.trading.backtest import Backtester, backtest
from numpyconvnext.trading.metrics import periods_per_year_from_index
from numpyconvnext.trading.sizing import average_true_range

CSV = Path("/work/shared/data/BTCUSDT_1h.csv")
FEE, SLIP, E0 = 0.00055, 0.0002, 10_000.0


@pytest.fixture(scope="module")
def candles():
    if not CSV.exists():
        pytest.skip(f"real candles not found at {CSV}")
    frame = pd.read_csv(CSV)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["turnover"] = frame["close"] * frame["volume"]
    return frame


def momentum_signals(close: np.ndarray, lookback: int = 24) -> np.ndarray:
    """Causal: Long if close_t > close_{t-24}, Short if below, Hold in the warm-up."""
    signals = np.full(close.shape[0], 2, dtype=np.int64)
    up = close[lookback:] > close[:-lookback]
    signals[lookback:] = np.where(up, 0, 1)
    return signals


def test_buy_and_hold_matches_prices_with_costs(candles):
    signals = momentum_signals(candles["close"].to_numpy())
    r = backtest(candles, signals, fee_rate=FEE, slippage=SLIP)
    assert r.periods_per_year == periods_per_year_from_index(candles["timestamp"]) == 8760.0
    bench = r.benchmark.metrics
    gross = candles["close"].iloc[-1] / candles["open"].iloc[1]
    buy, sell = candles["open"].iloc[1] * (1 + SLIP), candles["close"].iloc[-1] * (1 - SLIP)
    assert bench.total_return == pytest.approx((1 - FEE) * sell / buy - FEE - 1, rel=1e-12)
    # the costs of two fills are a small, positive drag on the gross price ratio
    drag = gross - 1 - bench.total_return
    assert 0 < drag < 2 * (FEE + SLIP) * gross
    assert bench.total_trades == 1 and bench.exposure > 0.999
    assert r.metrics.total_trades > 100
    assert r.equity.iloc[-1] - E0 == pytest.approx(r.trades["pnl"].sum(), rel=1e-9)
    print("\n" + r.comparison_table())


def test_whole_series_stops_and_incremental_parity(candles):
    close = candles["close"].to_numpy()
    signals = momentum_signals(close)
    r = backtest(candles, signals, stop_loss=2.0, take_profit=4.0, stop_mode="atr")
    assert (r.trades["exit_reason"] == "stop_loss").any()

    tail = candles.iloc[-3000:].reset_index(drop=True)
    targets = np.where(signals[-3000:] == 0, 1.0, np.where(signals[-3000:] == 1, -1.0, 0.0))
    atr = average_true_range(tail["high"], tail["low"], tail["close"])
    whole = backtest(tail, targets, stop_loss=2.0, stop_mode="atr")
    bt = Backtester()
    for t, bar in enumerate(tail.to_dict("records")):
        bt.step(bar, targets[t], stop_distance=2.0 * atr[t])
    step = bt.result()
    pd.testing.assert_series_equal(whole.equity, step.equity, check_exact=True)
    pd.testing.assert_frame_equal(whole.trades, step.trades, check_exact=True)
