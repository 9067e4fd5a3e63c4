"""Backtest: one compiled pass, costs, stops, incremental == whole series, no look-ahead."""

import importlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyconvnext.trading.backtest import Backtester, backtest, buy_and_hold
from numpyconvnext.trading.sizing import average_true_range

# the module (numpyconvnext.trading re-exports its function under the same name)
backtest_module = importlib.import_module("numpyconvnext.trading.backtest")
E0 = 10_000.0
ZERO_COST = {"fee_rate": 0.0, "slippage": 0.0}


def make_candles(opens, closes, highs=None, lows=None):
    o = np.asarray(opens, dtype=np.float64)
    c = np.asarray(closes, dtype=np.float64)
    h = np.maximum(o, c) + 0.5 if highs is None else np.asarray(highs, dtype=np.float64)
    lo = np.minimum(o, c) - 0.5 if lows is None else np.asarray(lows, dtype=np.float64)
    ts = pd.date_range("2024-01-01", periods=len(o), freq="h", tz="UTC")
    return pd.DataFrame({"timestamp": ts, "open": o, "high": h, "low": lo, "close": c,
                         "volume": 1.0, "turnover": c})


def random_candles(n, seed):
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    opens = np.empty(n)
    opens[0] = 100.0
    opens[1:] = close[:-1] * np.exp(rng.normal(0, 0.002, n - 1))  # small gaps
    spread = np.abs(rng.normal(0, 0.006, (2, n)))
    high = np.maximum(opens, close) * (1 + spread[0])
    low = np.minimum(opens, close) * (1 - spread[1])
    return make_candles(opens, close, high, low)


def random_targets(n, seed, levels=(-1.0, -0.5, 0.0, 0.5, 1.0, np.nan)):
    rng = np.random.default_rng(seed)
    values = np.asarray(levels)[rng.integers(0, len(levels), n)]
    keep = rng.random(n) < 0.6  # persistence, so trades last a few bars
    for t in range(1, n):
        if keep[t]:
            values[t] = values[t - 1]
    return values


# ------------------------------------------------------------------ hand cases


OPENS = [100.0, 102.0, 104.0, 103.0, 105.0]
CLOSES = [101.0, 103.0, 102.0, 104.0, 106.0]


def test_fills_at_next_open_zero_cost():
    r = backtest(make_candles(OPENS, CLOSES), np.array([1.0, 1.0, 0.0, 0.0, 0.0]), **ZERO_COST)
    u = E0 / 102.0  # decided at bar 0's close, bought at bar 1's open
    np.testing.assert_allclose(r.equity.to_numpy(), [E0, u * 103, u * 102, u * 103, u * 103],
                               rtol=1e-14)
    np.testing.assert_allclose(r.positions.to_numpy(), [0, 1, 1, 0, 0], rtol=1e-14)
    assert len(r.trades) == 1
    trade = r.trades.iloc[0]
    assert trade["side"] == "long"
    assert trade["entry_time"] == r.equity.index[1] and trade["exit_time"] == r.equity.index[3]
    assert trade["entry_price"] == pytest.approx(102.0, rel=1e-14)
    assert trade["exit_price"] == pytest.approx(103.0, rel=1e-14)
    assert trade["size"] == pytest.approx(u) and trade["pnl"] == pytest.approx(u)
    assert trade["duration_bars"] == 2 and trade["exit_reason"] == "signal"


def test_decision_at_last_bar_is_never_filled():
    r = backtest(make_candles(OPENS, CLOSES), np.array([0, 0, 0, 0, 1.0]))
    assert r.trades.empty
    assert (r.equity == E0).all()


def test_costs_hand_case():
    fee, slip = 0.001, 0.01
    r = backtest(make_candles(OPENS, CLOSES), np.array([1.0, 1.0, 0.0, 0.0, 0.0]),
                 fee_rate=fee, slippage=slip)
    buy = 102.0 * (1 + slip)
    u = E0 / buy
    fee_in = fee * E0  # the fee is paid on top of the position's value
    assert r.equity.iloc[1] == pytest.approx(-fee_in + u * 103.0, rel=1e-14)
    sell = 103.0 * (1 - slip)
    final = -fee_in + u * sell * (1 - fee)
    assert r.equity.iloc[-1] == pytest.approx(final, rel=1e-14)
    trade = r.trades.iloc[0]
    assert trade["entry_price"] == pytest.approx(buy) and trade["exit_price"] == pytest.approx(sell)
    assert trade["fees"] == pytest.approx(fee_in + fee * u * sell)
    assert trade["gross_pnl"] == pytest.approx(u * (sell - buy))
    assert trade["pnl"] == pytest.approx(final - E0)


def test_short_trade_pnl_sign():
    rising = backtest(make_candles(OPENS, CLOSES), np.array([-1.0, -1, 0, 0, 0]), **ZERO_COST)
    u = E0 / 102.0
    t = rising.trades.iloc[0]
    assert t["side"] == "short" and t["pnl"] == pytest.approx(-u)  # sold 102, bought back 103
    assert rising.equity.iloc[1] == pytest.approx(E0 - u * (103 - 102))
    assert rising.positions.iloc[1] < 0
    falling = backtest(make_candles([100, 102, 98, 95, 96], [101, 99, 96, 95, 97]),
                       np.array([-1.0, -1, 0, 0, 0]), **ZERO_COST)
    assert falling.trades.iloc[0]["pnl"] == pytest.approx(u * (102 - 95))
    assert falling.equity.iloc[-1] > E0
    # class signals: Short = 1, Hold = 2 give the same run
    as_signals = backtest(make_candles(OPENS, CLOSES), np.array([1, 1, 2, 2, 2]), **ZERO_COST)
    pd.testing.assert_series_equal(as_signals.equity, rising.equity)


def test_resize_within_a_trade():
    o = [100.0, 100.0, 125.0, 110.0, 111.0]
    r = backtest(make_candles(o, [100.0, 120.0, 115.0, 111.0, 112.0]),
                 np.array([0.5, 1.0, 0.0, 0.0, 0.0]), **ZERO_COST)
    # bar 1: 50 units (5000 of value) at 100, cash 5000. Bar 2: equity at the open is
    # 5000 + 50 * 125 = 11250 -> 90 units, so 40 more at 125 and cash 0. Bar 3: sell 90 at 110.
    assert len(r.trades) == 1
    t = r.trades.iloc[0]
    assert t["size"] == pytest.approx(90.0)
    assert t["entry_price"] == pytest.approx((5000.0 + 40 * 125.0) / 90.0)
    assert t["exit_price"] == pytest.approx(110.0)
    assert r.positions.iloc[2] == pytest.approx(1.0)
    assert r.equity.iloc[-1] == pytest.approx(90 * 110.0)
    assert r.equity.iloc[-1] - E0 == pytest.approx(r.trades["pnl"].sum())


def _bar_run(bar2, positions=(1.0, 1.0, 1.0, 1.0), **kwargs):
    bars = [(100, 101, 99, 100), (100, 102, 98, 101), bar2, (96, 97, 95, 96)]
    o, h, lo, c = (np.array(x, dtype=float) for x in zip(*bars, strict=True))
    return backtest(make_candles(o, c, h, lo), np.array(positions),
                    **{**ZERO_COST, **kwargs})


@pytest.mark.parametrize(
    ("bar2", "exit_price", "reason"),
    [
        ((101, 103, 94, 96), 95.0, "stop_loss"),  # low reaches the stop
        ((101, 111, 100, 108), 110.0, "take_profit"),  # high reaches the take-profit
        ((101, 111, 94, 100), 95.0, "stop_loss"),  # both in one bar: assume the stop
        ((90, 92, 88, 91), 90.0, "stop_loss"),  # gap through the stop: fill at the open
        ((112, 113, 111, 112), 112.0, "take_profit"),  # gap through the take-profit
    ],
)
def test_stop_and_take_profit_long(bar2, exit_price, reason):
    r = _bar_run(bar2, stop_loss=0.05, take_profit=0.10)
    t = r.trades.iloc[0]
    assert t["exit_price"] == pytest.approx(exit_price) and t["exit_reason"] == reason
    assert t["exit_bar"] == 2 and t["duration_bars"] == 2
    final = 100.0 * exit_price  # 100 units bought at 100
    assert r.equity.iloc[2] == pytest.approx(final)
    # the target did not change, so the position stays flat after the exit
    assert r.equity.iloc[3] == pytest.approx(final) and len(r.trades) == 1


def test_stop_on_entry_bar_and_no_stop_without_setting():
    bars_o, bars_c = [100, 100, 99, 98], [100, 97, 98, 99]
    lows = [99, 94, 97, 97]
    highs = [101, 101, 100, 100]
    r = backtest(make_candles(bars_o, bars_c, highs, lows), np.ones(4), stop_loss=0.05,
                 **ZERO_COST)
    t = r.trades.iloc[0]
    assert (t["entry_bar"], t["exit_bar"], t["duration_bars"]) == (1, 1, 1)
    assert t["exit_price"] == pytest.approx(95.0, rel=1e-14)
    r2 = backtest(make_candles(bars_o, bars_c, highs, lows), np.ones(4), **ZERO_COST)
    assert r2.trades.iloc[0]["exit_reason"] == "end"


def test_stop_short_and_slippage_on_stop():
    r = _bar_run((101, 106, 99, 104), positions=(-1.0,) * 4, stop_loss=0.05, take_profit=0.1)
    t = r.trades.iloc[0]
    assert t["side"] == "short" and t["exit_price"] == pytest.approx(105.0)
    assert t["pnl"] == pytest.approx(-100 * 5.0)
    r = _bar_run((101, 103, 94, 96), stop_loss=0.05, slippage=0.01)
    entry = 100 * 1.01
    t = r.trades.iloc[0]
    assert t["entry_price"] == pytest.approx(entry)
    assert t["exit_price"] == pytest.approx(entry * 0.95 * 0.99)  # stop level, then slippage


def test_atr_stop_uses_decision_bar_atr():
    # atr_period=1: ATR_t is the true range of bar t; bar 0's range is 2 -> stop 2*2 below entry
    r = _bar_run((101, 103, 95.5, 97), stop_loss=2.0, stop_mode="atr", atr_period=1)
    assert r.trades.iloc[0]["exit_price"] == pytest.approx(96.0)
    assert r.trades.iloc[0]["exit_reason"] == "stop_loss"


def test_reentry_after_stop_needs_a_new_target():
    bars = [(100, 101, 99, 100), (100, 101, 94, 96), (96, 97, 95, 96), (96, 97, 95, 96),
            (96, 98, 95, 97)]
    o, h, lo, c = (np.array(x, dtype=float) for x in zip(*bars, strict=True))
    r = backtest(make_candles(o, c, h, lo), np.array([1.0, 1.0, 0.0, 1.0, 1.0]),
                 stop_loss=0.05, **ZERO_COST)
    assert list(r.trades["entry_bar"]) == [1, 4]
    assert list(r.trades["exit_reason"]) == ["stop_loss", "end"]


# ------------------------------------------------------------------ identities


def test_always_long_equals_buy_and_hold_minus_two_fills():
    candles = random_candles(400, seed=1)
    fee, slip = 0.00055, 0.0002
    model = backtest(candles, np.ones(400), fee_rate=fee, slippage=slip)
    as_signals = backtest(candles, np.zeros(400, dtype=np.int64), fee_rate=fee, slippage=slip)
    bench = model.benchmark
    buy = candles["open"].iloc[1] * (1 + slip)
    sell = candles["close"].iloc[-1] * (1 - slip)
    units = E0 / buy
    expected = units * sell - fee * E0 - fee * units * sell  # gross B&H minus the two fees
    assert model.equity.iloc[-1] == pytest.approx(expected, rel=1e-13)
    assert bench.equity.iloc[-1] == pytest.approx(expected, rel=1e-13)
    np.testing.assert_allclose(model.equity.to_numpy(), bench.equity.to_numpy(), rtol=1e-13)
    np.testing.assert_array_equal(as_signals.equity.to_numpy(), model.equity.to_numpy())
    assert len(bench.trades) == 1 and bench.trades["fees"].iloc[0] == pytest.approx(
        fee * E0 + fee * units * sell)
    assert bench.metrics.exposure == pytest.approx(399 / 400)  # flat during bar 0 only


def test_flipping_every_bar_loses_exactly_its_fees():
    n, fee = 200, 0.00055
    candles = random_candles(n, seed=2)
    flips = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    kwargs = {"slippage": 0.0, "compounding": False}
    costly = backtest(candles, flips, fee_rate=fee, **kwargs)
    free = backtest(candles, flips, fee_rate=0.0, **kwargs)
    assert len(costly.trades) == n - 1
    # without compounding and slippage the quantities do not depend on the fee
    np.testing.assert_array_equal(costly.trades["size"], free.trades["size"])
    # the fee total, by hand: trade k opens E0 of value at open[k], closes at the next open
    o, c = candles["open"].to_numpy(), candles["close"].to_numpy()
    exit_px = np.append(o[2:], c[-1])
    by_hand = fee * np.sum(E0 + E0 / o[1:] * exit_px)
    assert costly.total_fees == pytest.approx(by_hand, rel=1e-12)
    loss = free.equity.iloc[-1] - costly.equity.iloc[-1]
    assert loss == pytest.approx(costly.total_fees, rel=1e-10)
    assert free.trades["fees"].sum() == 0.0


@pytest.mark.parametrize("compounding", [True, False])
def test_equity_change_is_sum_of_trade_pnl(compounding):
    candles = random_candles(600, seed=3)
    targets = random_targets(600, seed=4)
    r = backtest(candles, targets, stop_loss=0.01, take_profit=0.02, compounding=compounding)
    t = r.trades
    assert len(t) > 50 and set(t["exit_reason"]) >= {"signal", "stop_loss", "take_profit"}
    assert r.equity.iloc[-1] - E0 == pytest.approx(t["pnl"].sum(), rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(t["pnl"], t["gross_pnl"] - t["fees"], rtol=1e-15)
    assert (t["fees"] > 0).all() and (t["duration_bars"] >= 1).all()
    assert (t["exit_bar"] >= t["entry_bar"]).all()


# ------------------------------------------------------------------ incremental == whole


def _run_incremental(candles, targets, stop_distances=None, **kwargs):
    bt = Backtester(**kwargs)
    for t, bar in enumerate(candles.to_dict("records")):
        dist = None if stop_distances is None else stop_distances[t]
        bt.step(bar, targets[t], stop_distance=dist)
    return bt.result()


def _assert_same(a, b):
    pd.testing.assert_series_equal(a.equity, b.equity, check_exact=True)
    pd.testing.assert_series_equal(a.positions, b.positions, check_exact=True)
    pd.testing.assert_frame_equal(a.trades, b.trades, check_exact=True)
    assert a.metrics == b.metrics


def test_incremental_equals_whole_series_fraction_stops():
    candles = random_candles(500, seed=5)
    targets = random_targets(500, seed=6)
    whole = backtest(candles, targets, stop_loss=0.01, take_profit=0.015)
    step = _run_incremental(candles, targets, stop_loss=0.01, take_profit=0.015)
    assert len(whole.trades) > 30
    _assert_same(whole, step)


def test_incremental_equals_whole_series_atr_stops():
    candles = random_candles(500, seed=7)
    targets = random_targets(500, seed=8)
    whole = backtest(candles, targets, stop_loss=1.5, stop_mode="atr", atr_period=10,
                     compounding=False)
    atr = average_true_range(candles["high"], candles["low"], candles["close"], 10)
    step = _run_incremental(candles, targets, stop_distances=1.5 * atr, compounding=False)
    assert (whole.trades["exit_reason"] == "stop_loss").sum() > 5
    _assert_same(whole, step)


# ------------------------------------------------------------------ no look-ahead


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31), cut=st.integers(0, 58), atr_stops=st.booleans(),
    scale=st.floats(0.8, 1.25),
)
def test_no_look_ahead(seed, cut, atr_stops, scale):
    n = 60
    candles = random_candles(n, seed)
    targets = random_targets(n, seed + 1)
    rng = np.random.default_rng(seed + 2)
    changed = candles.copy()
    after = np.arange(n) > cut
    # prices after bar `cut` move (a different future); valid OHLC is kept. The moves stay
    # moderate: a gap large enough to wipe out a 1x short legitimately changes whether the
    # next decided entry can be funded at all (equity <= 0 trades nothing).
    factor = scale * np.exp(rng.normal(0, 0.05, n))
    for col in ("open", "high", "low", "close"):
        changed.loc[after, col] = candles.loc[after, col] * factor[after]
    changed.loc[after, "high"] *= 1.01
    changed.loc[after, "low"] *= 0.99
    kw = ({"stop_loss": 1.0, "take_profit": 2.0, "stop_mode": "atr", "atr_period": 5}
          if atr_stops else {"stop_loss": 0.01, "take_profit": 0.02})
    a = backtest(candles, targets, **kw)
    b = backtest(changed, targets, **kw)
    k = cut + 1
    np.testing.assert_array_equal(a.equity.to_numpy()[:k], b.equity.to_numpy()[:k])
    np.testing.assert_array_equal(a.positions.to_numpy()[:k], b.positions.to_numpy()[:k])
    np.testing.assert_array_equal(a.benchmark.equity.to_numpy()[:k],
                                  b.benchmark.equity.to_numpy()[:k])
    closed_a = a.trades[a.trades["exit_bar"] <= cut]
    closed_b = b.trades[b.trades["exit_bar"] <= cut]
    pd.testing.assert_frame_equal(closed_a, closed_b, check_exact=True)
    # every trade decided at or before `cut` (filled by bar cut+1's open) is still there
    started_a = a.trades.loc[a.trades["entry_bar"] <= cut + 1, ["entry_bar", "side"]]
    started_b = b.trades.loc[b.trades["entry_bar"] <= cut + 1, ["entry_bar", "side"]]
    pd.testing.assert_frame_equal(started_a.reset_index(drop=True),
                                  started_b.reset_index(drop=True))


# ------------------------------------------------------------------ inputs


def test_series_signals_define_the_period():
    candles = random_candles(50, seed=9)
    ts = candles["timestamp"]
    signals = pd.Series(np.zeros(20, dtype=np.int64), index=pd.DatetimeIndex(ts[10:30]))
    signals = signals.drop(signals.index[5])  # a missing bar is flat
    r = backtest(candles, signals, **ZERO_COST)
    assert r.equity.index[0] == ts[10] and r.equity.index[-1] == ts[30]
    assert r.equity.iloc[0] == E0
    # bars are counted from the period's first bar; bar 5 has no signal: flat at bar 6's open,
    # long again at bar 7's open
    assert list(r.trades["entry_bar"]) == [1, 7]
    assert r.trades["exit_bar"].iloc[0] == 6
    bench = r.benchmark
    assert bench.equity.index.equals(r.equity.index)
    assert bench.trades["entry_price"].iloc[0] == pytest.approx(candles["open"].iloc[11])
    assert bench.trades["exit_price"].iloc[0] == pytest.approx(candles["close"].iloc[30])
    bad = pd.Series([0], index=pd.DatetimeIndex([ts[3] + pd.Timedelta(minutes=30)]))
    with pytest.raises(ValueError, match="not a candle timestamp"):
        backtest(candles, bad)


def test_size_is_fixed_at_signal_start():
    candles = make_candles([100.0, 100.0, 120.0, 90.0, 95.0], [100.0, 110.0, 100.0, 95.0, 96.0])
    size = np.array([0.5, 0.9, 0.1, 0.7, 0.7])
    r = backtest(candles, np.array([0, 0, 0, 2, 2]), size=size, **ZERO_COST)
    assert len(r.trades) == 1
    assert r.trades["size"].iloc[0] == pytest.approx(0.5 * E0 / 100.0)


def test_input_validation():
    candles = make_candles(OPENS, CLOSES)
    with pytest.raises(ValueError):
        backtest(candles, np.array([1.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError):
        backtest(candles, np.ones(4))
    with pytest.raises(ValueError):
        backtest(candles, np.ones(5), size=0.5)
    with pytest.raises(ValueError):
        backtest(candles, np.array([0, 3, 0, 0, 0]))
    bad = candles.copy()
    bad.loc[2, "close"] = np.nan
    with pytest.raises(ValueError):
        backtest(bad, np.ones(5))
    # leverage is allowed only when asked for
    r = backtest(candles, np.full(5, 2.0), max_leverage=2.0, **ZERO_COST)
    assert r.trades["size"].iloc[0] == pytest.approx(2 * E0 / 102.0)


def test_result_outputs():
    candles = random_candles(100, seed=10)
    r = backtest(candles, random_targets(100, seed=11))
    assert len(r.returns) == 99
    np.testing.assert_allclose(r.returns.to_numpy(),
                               r.equity.to_numpy()[1:] / r.equity.to_numpy()[:-1] - 1)
    frame = r.equity_frame()
    assert list(frame.columns) == ["timestamp", "equity", "position", "benchmark_equity"]
    assert r.periods_per_year == 8760.0
    assert "Buy & hold" in r.comparison_table()
    assert r.benchmark.benchmark is None
    assert buy_and_hold(candles).equity.iloc[-1] == r.benchmark.equity.iloc[-1]


def test_whole_series_is_one_compiled_pass(monkeypatch):
    """40,000 bars go through the compiled loop once, never bar by bar from Python (the speed
    itself is measured by bench/backtest_speed.py, not asserted here)."""
    calls = []
    compiled = backtest_module._run

    def counting_run(*args):
        calls.append(args[2].shape[0])
        return compiled(*args)

    def no_python_steps(*args, **kwargs):
        raise AssertionError("the whole-series backtest must not step bar by bar")

    monkeypatch.setattr(backtest_module, "_run", counting_run)
    monkeypatch.setattr(Backtester, "step", no_python_steps)
    candles = random_candles(40_000, seed=12)
    r = backtest(candles, random_targets(40_000, seed=13), stop_loss=0.01)
    # one pass for the strategy and one for the buy-and-hold benchmark beside it
    assert calls == [40_000, 40_000] and len(r.equity) == 40_000


def test_float_signals_with_nan_mean_hold():
    candles = make_candles(OPENS, CLOSES)
    r = backtest(candles, np.array([1.0, np.nan, 2.0, 0.0, 0.0]), kind="signal", **ZERO_COST)
    # short filled at bar 1, flat at bar 2 (NaN = Hold), long at bar 4
    assert list(r.trades["side"]) == ["short", "long"]
    assert list(r.trades["entry_bar"]) == [1, 4] and r.trades["exit_bar"].iloc[0] == 2
    with pytest.raises(ValueError):
        backtest(candles, np.array([0.5, 0, 0, 0, 0]), kind="signal")


@pytest.mark.parametrize("compounding", [True, False])
def test_a_restored_backtester_continues_bit_for_bit(compounding):
    """snapshot() -> JSON -> restore() mid-run: the same equity, trades and final close as a
    run never stopped, with fraction stops, leverage and no compounding restored too."""
    import json

    candles = random_candles(400, seed=21)
    targets = random_targets(400, seed=22)
    settings = dict(stop_loss=0.01, take_profit=0.015, compounding=compounding, fee_rate=0.001,
                    slippage=0.0003, initial_equity=5_000.0)
    whole = backtest(candles, targets, **settings)
    bars = candles.to_dict("records")
    bt, equity, trades = Backtester(**settings), [], []
    for t, bar in enumerate(bars):
        if t in (1, 137, 250, 251):
            trades.append(bt.trade_records())
            bt = Backtester.restore(json.loads(json.dumps(bt.snapshot(), allow_nan=False)))
            assert bt.bars == t and bt.n_trades == 0
        equity.append(bt.step(bar, targets[t]))
    final = bt.finish()
    np.testing.assert_array_equal(equity[:-1], whole.equity.to_numpy()[:-1])
    assert final == whole.equity.iloc[-1]
    records = np.vstack([*trades, bt.trade_records()])
    np.testing.assert_array_equal(records[:, 2], whole.trades["exit_bar"].to_numpy())
    np.testing.assert_array_equal(records[:, 6], whole.trades["gross_pnl"].to_numpy())
    assert len(whole.trades) > 30
    with pytest.raises(RuntimeError, match="restored at bar 251"):
        bt.result()
    with pytest.raises(ValueError, match="not a Backtester snapshot"):
        Backtester.restore({"settings": {}, "account": {}})


def test_backtester_with_plain_tuples():
    candles = random_candles(50, seed=14)
    targets = random_targets(50, seed=15)
    bt = Backtester()
    rows = candles[["open", "high", "low", "close"]].to_numpy()
    for t in range(50):
        bt.step(tuple(rows[t]), targets[t])
    with pytest.raises(ValueError, match="periods_per_year"):
        bt.result()
    r = bt.result(periods_per_year=8760.0)
    whole = backtest(candles, targets)
    np.testing.assert_array_equal(r.equity.to_numpy(), whole.equity.to_numpy())
    assert r.metrics == whole.metrics
    with pytest.raises(RuntimeError):
        bt.step(tuple(rows[0]), 0.0)


# ------------------------------------------------------------------ next-open fills, property


def _reference_equity(candles, directions):
    """A plain-Python model of the timing rule with zero costs and all-in +-1 positions: the
    direction decided at bar t's close is traded at bar t+1's open; equity is marked at closes.
    Also returns the fills as (bar, price)."""
    o, c = candles["open"].to_numpy(), candles["close"].to_numpy()
    cash, units, held = E0, 0.0, 0
    equity, fills = [], []
    pending = 0
    for t in range(len(o)):
        if pending != held:
            if units:
                cash += units * o[t]
                fills.append((t, o[t]))
                units = 0.0
            if pending:
                units = pending * cash / o[t]
                cash -= units * o[t]
                fills.append((t, o[t]))
            held = pending
        equity.append(cash + units * c[t])
        pending = int(directions[t])
    if units:  # closed at the last close
        equity[-1] = cash + units * c[-1]
    return np.asarray(equity), fills


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fills_happen_at_the_next_open_for_any_signals(data):
    """Over random candles and random class signals: every fill is at the open of the bar after
    the decision, and the equity curve equals a plain reference of that rule. A fill at the
    signal bar's close (or any other price) breaks both."""
    n = data.draw(st.integers(3, 80), label="bars")
    candles = random_candles(n, seed=data.draw(st.integers(0, 10_000), label="seed"))
    signals = np.asarray(data.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=n, max_size=n),
                                   label="signals"), dtype=np.int64)
    r = backtest(candles, signals, **ZERO_COST)
    directions = np.array([1, -1, 0])[signals]
    reference, fills = _reference_equity(candles, directions)
    np.testing.assert_allclose(r.equity.to_numpy(), reference, rtol=1e-12)
    o = candles["open"].to_numpy()
    change = np.flatnonzero(np.diff(np.concatenate(([0], directions))) != 0)  # decision bars
    for trade in r.trades.itertuples():
        assert trade.entry_price == pytest.approx(o[trade.entry_bar], rel=1e-14)
        assert trade.entry_bar - 1 in change  # decided at the close before
        if trade.exit_reason == "signal":
            assert trade.exit_price == pytest.approx(o[trade.exit_bar], rel=1e-14)
            assert trade.exit_bar - 1 in change
    opened = [bar for bar, _ in fills]
    assert sorted(set(opened)) == sorted(set(r.trades["entry_bar"]) | set(
        r.trades.loc[r.trades["exit_reason"] == "signal", "exit_bar"]))
