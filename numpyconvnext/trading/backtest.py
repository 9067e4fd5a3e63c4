"""Bar-by-bar backtest of target positions with fees, slippage, stops and a buy-and-hold benchmark.

Timing. The target decided from the window ending at bar t's close is filled at bar t+1's open.
Each bar ``t`` is processed in the order it happens in the market:

  1. open:     if the pending target (decided at t-1's close) differs from the last executed
               one, trade to it at ``open_t``;
  2. intrabar: an open position's stop-loss / take-profit is checked against ``low_t``/``high_t``;
  3. close:    equity is marked to market, ``E_t = cash + units * close_t``, and the target
               decided at this close becomes pending.
After the last bar any open position is closed at the last close (with costs), so the last
equity value is realised and the trade list is complete. Bar 0 can only decide, so
``E_0 = initial_equity``.

Targets are signed fractions of equity in ``[-max_leverage, max_leverage]`` (+ long, - short).
Class signals map Long -> +size, Short -> -size, Hold -> 0. NaN (no signal) means flat, like Hold.
The position changes only when the target changes: a held signal is one trade, not a daily
rebalance; a signal's size is fixed when the signal starts (a per-bar size array is read at
the bar where the signal changes). After a stop or take-profit exit the position stays flat
until the target changes.

Fills and costs. Every fill pays slippage adversely and the fee on its traded value:

    buy price  = p * (1 + slippage),   sell price = p * (1 - slippage)
    fee        = fee_rate * |qty| * fill_price,     cash -= qty * fill_price + fee

Sizing: opening (or growing) to target ``f`` buys/sells ``qty`` so that the position's value
at the fill price is ``|f| * base``, with ``base`` = equity marked at the open (compounding)
or the initial equity (``compounding=False``). The fee is paid on top, from cash. A flip
(long -> short) first closes the old trade completely, then opens the new one from the
resulting equity. With this accounting, for any run:

    final_equity - initial_equity = sum(trade.pnl)
                                  = sum(trade.gross_pnl) - sum(trade.fees) - sum(trade.funding)

and, without compounding and slippage, the quantities do not depend on the fee rate, so
``final(fee=0) - final(fee) = sum(trade.fees)`` exactly.

Funding (perpetuals). At a settlement time s the position held then pays
``rate_s * units * mark`` (units signed, so a positive rate charges longs and pays shorts),
mark = the open of the bar at s. It is settled at that bar's open on the position held going
into the bar, before the open fill (the fill happens a moment after the settlement), and
belongs to the trade open at that moment. See ``data.funding.funding_per_bar``.

Stops. ``stop_loss``/``take_profit`` are distances from the entry fill price, as fractions of
it (``stop_mode="fraction"``) or as multiples of the ATR at the decision bar
(``stop_mode="atr"``; ATR uses bars up to t only). Checked from the entry bar on:
  * the open is already through the stop (a gap) -> exit at the open;
  * else the open is already through the take-profit -> exit at the open;
  * else if the bar's range reaches the stop -> exit at the stop price (even if it also
    reached the take-profit: the bar's path is unknown, so we assume the worse outcome);
  * else if it reaches the take-profit -> exit at the take-profit price.
Stop and take-profit exits pay slippage and fees like any fill. A NaN or non-positive
distance (e.g. ATR warm-up) means no stop for that trade.

Trade times are the open times of the bars in which the entry and exit fills happened.
``duration_bars`` counts the bars the position was held in: exit at bar b's open -> b - a;
exit inside or at the close of bar b -> b - a + 1.

The core is one Numba-compiled ``_step``; ``Backtester.step`` calls it per bar (live or
paper trading) and ``backtest`` runs it in a compiled loop, so both give identical results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from numpyconvnext.data.funding import coverage_note, funding_per_bar, validate_funding

from .metrics import (
    BacktestMetrics,
    compute_metrics,
    format_comparison_table,
    periods_per_year_from_index,
)
from .signals import signal_direction
from .sizing import average_true_range

DEFAULT_FEE_RATE = 0.00055  # Bybit taker fee, 0.055%
DEFAULT_SLIPPAGE = 0.0002  # 2 bp adverse on every fill

# state vector
S_CASH, S_UNITS, S_EXEC, S_PEND, S_PEND_SL, S_PEND_TP = 0, 1, 2, 3, 4, 5
S_SIDE, S_ENTRY_BAR, S_ENTRY_QTY, S_ENTRY_VAL, S_EXIT_QTY, S_EXIT_VAL = 6, 7, 8, 9, 10, 11
S_FEES, S_STOP, S_TP, S_BAR, S_LAST_CLOSE, S_FUNDING = 12, 13, 14, 15, 16, 17
N_STATE = 18
# parameter vector
P_FEE, P_SLIP, P_SL_FRAC, P_TP_FRAC, P_INIT, P_COMPOUND = 0, 1, 2, 3, 4, 5
N_PARAMS = 6
# the names the state and parameter vectors have in a ``Backtester.snapshot``
STATE_NAMES = (
    "cash", "units", "executed_target", "pending_target", "pending_stop_distance",
    "pending_take_profit_distance", "trade_side", "trade_entry_bar", "trade_entry_units",
    "trade_entry_value", "trade_exit_units", "trade_exit_value", "trade_fees", "stop_price",
    "take_profit_price", "bars", "last_close", "trade_funding",
)
PARAM_NAMES = ("fee_rate", "slippage", "stop_loss", "take_profit", "initial_equity", "compounding")
# trade record
T_SIDE, T_ENTRY_BAR, T_EXIT_BAR, T_ENTRY_PRICE, T_EXIT_PRICE = 0, 1, 2, 3, 4
T_SIZE, T_GROSS, T_FEES, T_DURATION, T_REASON, T_FUNDING = 5, 6, 7, 8, 9, 10
N_TRADE = 11
EXIT_SIGNAL, EXIT_STOP, EXIT_TAKE_PROFIT, EXIT_END = 0, 1, 2, 3
EXIT_REASONS = ("signal", "stop_loss", "take_profit", "end")

TRADE_COLUMNS = [
    "side", "entry_time", "exit_time", "entry_price", "exit_price", "size", "gross_pnl",
    "fees", "funding", "pnl", "return", "duration_bars", "exit_reason", "entry_bar", "exit_bar",
]


# ----------------------------------------------------------------------------- numba core


@njit(cache=True)
def _fill(state, params, qty, raw_price, bar):
    """Trade ``qty`` units (+ buy, - sell) at ``raw_price`` with slippage and fee."""
    slip = params[P_SLIP]
    price = raw_price * (1.0 + slip) if qty > 0.0 else raw_price * (1.0 - slip)
    value = abs(qty) * price
    fee = params[P_FEE] * value
    state[S_CASH] -= qty * price + fee
    direction = 1.0 if qty > 0.0 else -1.0
    if state[S_SIDE] == 0.0:  # opening a new trade from flat
        state[S_SIDE] = direction
        state[S_ENTRY_BAR] = bar
        state[S_ENTRY_QTY] = 0.0
        state[S_ENTRY_VAL] = 0.0
        state[S_EXIT_QTY] = 0.0
        state[S_EXIT_VAL] = 0.0
        state[S_FEES] = 0.0
        state[S_FUNDING] = 0.0
        state[S_STOP] = np.nan
        state[S_TP] = np.nan
        sl_abs = state[S_PEND_SL]
        tp_abs = state[S_PEND_TP]
        if not (sl_abs > 0.0):  # NaN or <= 0: fall back to the fraction
            sl_abs = params[P_SL_FRAC] * price
        if not (tp_abs > 0.0):
            tp_abs = params[P_TP_FRAC] * price
        if sl_abs > 0.0:
            state[S_STOP] = price - direction * sl_abs
        if tp_abs > 0.0:
            state[S_TP] = price + direction * tp_abs
    if direction == state[S_SIDE]:
        state[S_ENTRY_QTY] += abs(qty)
        state[S_ENTRY_VAL] += value
    else:
        state[S_EXIT_QTY] += abs(qty)
        state[S_EXIT_VAL] += value
    state[S_FEES] += fee
    state[S_UNITS] += qty


@njit(cache=True)
def _close_trade(state, params, raw_price, bar, reason, through_bar, out, k):
    """Close the whole position at ``raw_price`` and write the trade record to ``out[k]``."""
    _fill(state, params, -state[S_UNITS], raw_price, bar)
    state[S_UNITS] = 0.0  # exact flat, whatever the rounding
    side = state[S_SIDE]
    out[k, T_SIDE] = side
    out[k, T_ENTRY_BAR] = state[S_ENTRY_BAR]
    out[k, T_EXIT_BAR] = bar
    out[k, T_ENTRY_PRICE] = state[S_ENTRY_VAL] / state[S_ENTRY_QTY]
    out[k, T_EXIT_PRICE] = state[S_EXIT_VAL] / state[S_EXIT_QTY]
    out[k, T_SIZE] = state[S_ENTRY_QTY]
    out[k, T_GROSS] = side * (state[S_EXIT_VAL] - state[S_ENTRY_VAL])
    out[k, T_FEES] = state[S_FEES]
    out[k, T_FUNDING] = state[S_FUNDING]
    out[k, T_DURATION] = bar - state[S_ENTRY_BAR] + through_bar
    out[k, T_REASON] = reason
    state[S_SIDE] = 0.0
    state[S_STOP] = np.nan
    state[S_TP] = np.nan


@njit(cache=True)
def _rebalance(state, params, o, target, bar, out, k):
    """Trade at the open ``o`` towards ``target``; returns the number of trades closed."""
    closed = 0
    units = state[S_UNITS]
    if units != 0.0 and (target == 0.0 or (target > 0.0) != (units > 0.0)):
        _close_trade(state, params, o, bar, EXIT_SIGNAL, 0.0, out, k)
        closed = 1
        units = 0.0
    if target == 0.0:
        return closed
    side = 1.0 if target > 0.0 else -1.0
    if params[P_COMPOUND] != 0.0:
        base = state[S_CASH] + units * o
    else:
        base = params[P_INIT]
    if not (base > 0.0):  # ruined: nothing left to trade with
        return closed
    notional = abs(target) * base
    held = abs(units)
    slip = params[P_SLIP]
    if notional > held * o:  # open or grow: buy for a long, sell for a short
        qty = notional / (o * (1.0 + side * slip)) - held
        if qty > 0.0:
            _fill(state, params, side * qty, o, bar)
    elif notional < held * o:  # shrink
        qty = min(held - notional / (o * (1.0 - side * slip)), held)
        if qty > 0.0:
            _fill(state, params, -side * qty, o, bar)
    return closed


@njit(cache=True)
def _check_exits(state, params, o, h, lo, bar, out, k):
    """Stop-loss / take-profit inside bar ``bar``; returns 1 if the trade was closed."""
    units = state[S_UNITS]
    if units == 0.0:
        return 0
    stop = state[S_STOP]
    tp = state[S_TP]
    price = np.nan
    reason = -1
    if units > 0.0:
        if o <= stop:
            price, reason = o, EXIT_STOP
        elif o >= tp:
            price, reason = o, EXIT_TAKE_PROFIT
        elif lo <= stop:
            price, reason = stop, EXIT_STOP
        elif h >= tp:
            price, reason = tp, EXIT_TAKE_PROFIT
    else:
        if o >= stop:
            price, reason = o, EXIT_STOP
        elif o <= tp:
            price, reason = o, EXIT_TAKE_PROFIT
        elif h >= stop:
            price, reason = stop, EXIT_STOP
        elif lo <= tp:
            price, reason = tp, EXIT_TAKE_PROFIT
    if reason < 0:  # comparisons with a NaN stop/tp are False: no exit
        return 0
    _close_trade(state, params, price, bar, reason, 1.0, out, k)
    return 1


@njit(cache=True)
def _settle_funding(state, o, rate):
    """Funding at this bar's open on the position held going in: ``rate * units * open``."""
    units = state[S_UNITS]
    if units == 0.0 or not (rate == rate) or rate == 0.0:
        return 0.0
    paid = rate * units * o
    state[S_CASH] -= paid
    state[S_FUNDING] += paid
    return paid


@njit(cache=True)
def _step(state, params, o, h, lo, c, target, sl_dist, tp_dist, funding_rate, out):
    """Process one bar; returns (equity at close, trades closed into ``out``, funding paid)."""
    bar = state[S_BAR]
    n_closed = 0
    paid = _settle_funding(state, o, funding_rate)
    pending = state[S_PEND]
    if pending != state[S_EXEC]:
        n_closed += _rebalance(state, params, o, pending, bar, out, n_closed)
        state[S_EXEC] = pending
    n_closed += _check_exits(state, params, o, h, lo, bar, out, n_closed)
    state[S_LAST_CLOSE] = c
    equity = state[S_CASH] + state[S_UNITS] * c
    state[S_PEND] = 0.0 if target != target else target
    state[S_PEND_SL] = sl_dist
    state[S_PEND_TP] = tp_dist
    state[S_BAR] = bar + 1.0
    return equity, n_closed, paid


@njit(cache=True)
def _finish(state, params, out):
    """Close any open position at the last close; returns (final equity, trades closed)."""
    n_closed = 0
    if state[S_UNITS] != 0.0:
        _close_trade(state, params, state[S_LAST_CLOSE], state[S_BAR] - 1.0, EXIT_END, 1.0,
                     out, 0)
        n_closed = 1
    return state[S_CASH], n_closed


@njit(cache=True)
def _run(state, params, o, h, lo, c, targets, sl_dist, tp_dist, funding_rates):
    """Drive ``_step`` over all bars, then ``_finish``. Returns equity (realised at the end),
    mark-to-market equity, units held at each close, funding paid per bar and the trade
    records."""
    n = o.shape[0]
    equity = np.empty(n)
    units = np.empty(n)
    funding = np.empty(n)
    trades = np.empty((2 * n + 1, N_TRADE))
    buf = np.empty((2, N_TRADE))
    n_trades = 0
    for t in range(n):
        eq, k, paid = _step(state, params, o[t], h[t], lo[t], c[t], targets[t], sl_dist[t],
                            tp_dist[t], funding_rates[t], buf)
        funding[t] = paid
        for j in range(k):
            trades[n_trades] = buf[j]
            n_trades += 1
        equity[t] = eq
        units[t] = state[S_UNITS]
    marked = equity.copy()
    if n > 0:
        eq, k = _finish(state, params, buf)
        for j in range(k):
            trades[n_trades] = buf[j]
            n_trades += 1
        equity[n - 1] = eq
    return equity, marked, units, funding, trades[:n_trades]


# ----------------------------------------------------------------------------- results


@dataclass
class BacktestResult:
    """What a backtest produced. All Series are indexed by the candle timestamp.

    equity     equity at each bar's close (the last value after closing any open position)
    returns    per-bar simple returns of ``equity`` (first bar dropped: it has no return)
    positions  signed exposure at each close: units * close / equity (0 = flat)
    trades     one row per round trip, columns ``TRADE_COLUMNS``; pnl is net of fees and
               funding: ``pnl = gross_pnl - fees - funding``
    metrics    ``BacktestMetrics`` of this run
    funding    funding paid at each bar's open (negative = received; 0 without a settlement)
    funding_note  None when funding was charged from a series covering the bars, else one line
               saying what was not charged (no series, spot, partial coverage)
    benchmark  buy-and-hold over the same bars with the same costs (None for the benchmark)

    Accounting identity (exact up to float rounding, tested):
    ``final - initial = sum(trades.gross_pnl) - fees_paid - funding_paid = sum(trades.pnl)``.
    """

    equity: pd.Series
    returns: pd.Series
    positions: pd.Series
    trades: pd.DataFrame
    metrics: BacktestMetrics
    periods_per_year: float
    initial_equity: float
    funding: pd.Series
    funding_note: str | None = None
    benchmark: BacktestResult | None = None

    @property
    def fees_paid(self) -> float:
        """Sum of all fees paid."""
        return float(self.trades["fees"].sum())

    total_fees = fees_paid

    @property
    def funding_paid(self) -> float:
        """Sum of all funding paid (negative: received on balance)."""
        return float(self.funding.sum())

    def equity_frame(self) -> pd.DataFrame:
        """timestamp, equity, position (and benchmark_equity): ready for ``to_csv``."""
        frame = pd.DataFrame({
            "timestamp": self.equity.index,
            "equity": self.equity.to_numpy(),
            "position": self.positions.to_numpy(),
        })
        if self.benchmark is not None:
            frame["benchmark_equity"] = self.benchmark.equity.to_numpy()
        return frame

    def comparison_table(self) -> str:
        """The model-vs-buy-and-hold table (needs a benchmark)."""
        if self.benchmark is None:
            raise ValueError("this result has no benchmark")
        return format_comparison_table(self.metrics, self.benchmark.metrics)


def _trades_frame(records: np.ndarray, timestamps: pd.Index) -> pd.DataFrame:
    if records.shape[0] == 0:
        return trades_frame(records, timestamps[:0], timestamps[:0])
    return trades_frame(records, timestamps[records[:, T_ENTRY_BAR].astype(np.int64)],
                        timestamps[records[:, T_EXIT_BAR].astype(np.int64)])


def trades_frame(records: np.ndarray, entry_times: pd.Index, exit_times: pd.Index) -> pd.DataFrame:
    """Trade records ``[N, N_TRADE]`` as the ``TRADE_COLUMNS`` frame, with the open times of
    their entry and exit bars given."""
    timestamps = pd.Index(entry_times)
    if records.shape[0] == 0:
        frame = pd.DataFrame({name: pd.Series(dtype=np.float64) for name in TRADE_COLUMNS})
        frame["side"] = frame["side"].astype(object)
        frame["exit_reason"] = frame["exit_reason"].astype(object)
        frame["entry_time"] = pd.Series(dtype=timestamps.dtype)
        frame["exit_time"] = pd.Series(dtype=timestamps.dtype)
        for name in ("duration_bars", "entry_bar", "exit_bar"):
            frame[name] = frame[name].astype(np.int64)
        return frame
    entry_bar = records[:, T_ENTRY_BAR].astype(np.int64)
    exit_bar = records[:, T_EXIT_BAR].astype(np.int64)
    gross = records[:, T_GROSS]
    fees = records[:, T_FEES]
    funding = records[:, T_FUNDING]
    pnl = gross - fees - funding
    return pd.DataFrame({
        "side": np.where(records[:, T_SIDE] > 0, "long", "short"),
        "entry_time": timestamps,
        "exit_time": pd.Index(exit_times),
        "entry_price": records[:, T_ENTRY_PRICE],
        "exit_price": records[:, T_EXIT_PRICE],
        "size": records[:, T_SIZE],
        "gross_pnl": gross,
        "fees": fees,
        "funding": funding,
        "pnl": pnl,
        "return": pnl / (records[:, T_ENTRY_PRICE] * records[:, T_SIZE]),
        "duration_bars": records[:, T_DURATION].astype(np.int64),
        "exit_reason": np.asarray(EXIT_REASONS, dtype=object)[records[:, T_REASON].astype(int)],
        "entry_bar": entry_bar,
        "exit_bar": exit_bar,
    })


def _build_result(
    timestamps: pd.Index,
    close: np.ndarray,
    equity: np.ndarray,
    marked: np.ndarray,
    units: np.ndarray,
    funding: np.ndarray,
    records: np.ndarray,
    periods_per_year: float,
    initial_equity: float,
) -> BacktestResult:
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.where(marked > 0, units * close / marked, 0.0)
    position = np.where(units == 0.0, 0.0, position)
    trades = _trades_frame(records, timestamps)
    eq = pd.Series(equity, index=timestamps, name="equity")
    metrics = compute_metrics(eq.to_numpy(), position, trades["pnl"].to_numpy(),
                              trades["duration_bars"].to_numpy(), periods_per_year,
                              trades["return"].to_numpy())
    return BacktestResult(
        equity=eq,
        returns=eq.pct_change().iloc[1:].rename("returns"),
        positions=pd.Series(position, index=timestamps, name="position"),
        trades=trades,
        metrics=metrics,
        periods_per_year=float(periods_per_year),
        initial_equity=float(initial_equity),
        funding=pd.Series(funding, index=timestamps, name="funding"),
    )


# ----------------------------------------------------------------------------- incremental


def _check_costs(fee_rate: float, slippage: float, initial_equity: float) -> None:
    if not (np.isfinite(fee_rate) and 0.0 <= fee_rate < 1.0):
        raise ValueError(f"fee_rate must be in [0, 1), got {fee_rate}")
    if not (np.isfinite(slippage) and 0.0 <= slippage < 1.0):
        raise ValueError(f"slippage must be in [0, 1), got {slippage}")
    if not (np.isfinite(initial_equity) and initial_equity > 0.0):
        raise ValueError(f"initial_equity must be positive, got {initial_equity}")


def _distance_or_nan(value: float | None, name: str) -> float:
    if value is None:
        return np.nan
    value = float(value)
    if not value > 0.0:
        raise ValueError(f"{name} must be positive or None, got {value}")
    return value


def _bar_prices(bar: Any) -> tuple[float, float, float, float]:
    if isinstance(bar, Mapping | pd.Series):
        return (float(bar["open"]), float(bar["high"]), float(bar["low"]), float(bar["close"]))
    if isinstance(bar, Sequence | np.ndarray) and len(bar) == 4:
        o, h, lo, c = bar
        return float(o), float(h), float(lo), float(c)
    raise TypeError("bar must be a mapping with open/high/low/close or a 4-sequence (o, h, l, c)")


class Backtester:
    """Incremental backtest: feed one closed bar and the target decided at its close.

    ``stop_loss`` / ``take_profit`` are fractions of the entry price; a per-step
    ``stop_distance`` / ``take_profit_distance`` (price units, e.g. 2 * ATR) overrides them for
    a trade entered at the next open. Call ``finish()`` after the last bar to close the
    position; ``result()`` then gives the same ``BacktestResult`` as ``backtest``.

    ``snapshot()`` is the account after the last step (cash, position, the open trade with its
    stop and take-profit, the pending target) and the settings, as JSON-able numbers;
    ``Backtester.restore(snapshot)`` continues from it bit for bit, as if never stopped (paper
    trading across restarts). Bars are numbered from the first step ever (``bars``);
    ``result()``, which needs every bar, is not available after a restore.
    """

    def __init__(
        self,
        initial_equity: float = 10_000.0,
        fee_rate: float = DEFAULT_FEE_RATE,
        slippage: float = DEFAULT_SLIPPAGE,
        stop_loss: float | None = None,
        take_profit: float | None = None,
        compounding: bool = True,
        max_leverage: float = 1.0,
    ) -> None:
        _check_costs(fee_rate, slippage, initial_equity)
        self.max_leverage = float(max_leverage)
        self._params = _make_params(fee_rate, slippage, stop_loss, take_profit, initial_equity,
                                    compounding)
        self._state = _initial_state(initial_equity)
        self._buf = np.empty((2, N_TRADE))
        self._timestamps: list[Any] = []
        self._close: list[float] = []
        self._equity: list[float] = []
        self._units: list[float] = []
        self._funding: list[float] = []
        self._records: list[np.ndarray] = []
        self._final_equity: float | None = None
        self._first_bar = 0  # the bar number of the first step of this object

    @classmethod
    def restore(cls, snapshot: Mapping) -> Backtester:
        """A Backtester that continues from ``snapshot()`` exactly."""
        try:
            settings, account = snapshot["settings"], snapshot["account"]
            params = np.array([_from_json(settings[name]) for name in PARAM_NAMES])
            state = np.array([_from_json(account[name]) for name in STATE_NAMES])
            max_leverage = float(settings["max_leverage"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a Backtester snapshot ({error!r} missing or wrong)") from None
        restored = cls(float(params[P_INIT]), float(params[P_FEE]), float(params[P_SLIP]),
                       max_leverage=max_leverage)
        restored._params, restored._state = params, state
        restored._first_bar = int(state[S_BAR])
        return restored

    def snapshot(self) -> dict:
        """The account after the last step and the settings (see the class docstring)."""
        if self._final_equity is not None:
            raise RuntimeError("finish() was called: the account is closed")
        return {"settings": {**{n: _to_json(v) for n, v in zip(PARAM_NAMES, self._params,
                                                                strict=True)},
                             "max_leverage": self.max_leverage},
                "account": {n: _to_json(v) for n, v in zip(STATE_NAMES, self._state, strict=True)}}

    @property
    def bars(self) -> int:
        """Bars stepped since the first step ever (a restore keeps counting)."""
        return int(self._state[S_BAR])

    @property
    def open_trade(self) -> dict | None:
        """The open trade: side (+1 / -1), entry bar, units, average entry price, fees and
        funding so far, stop and take-profit prices (None when not set); None when flat."""
        st = self._state
        if st[S_SIDE] == 0.0:
            return None
        return {"side": int(st[S_SIDE]), "entry_bar": int(st[S_ENTRY_BAR]),
                "units": abs(float(st[S_UNITS])),
                "entry_price": float(st[S_ENTRY_VAL] / st[S_ENTRY_QTY]),
                "fees": float(st[S_FEES]), "funding": float(st[S_FUNDING]),
                "stop_price": _to_json(st[S_STOP]), "take_profit_price": _to_json(st[S_TP])}

    @property
    def pending_target(self) -> float:
        """The target decided at the last close, to be filled at the next open."""
        return float(self._state[S_PEND])

    @property
    def n_trades(self) -> int:
        """Trades closed since this object was made (or restored)."""
        return len(self._records)

    def trade_records(self, start: int = 0) -> np.ndarray:
        """Records ``[N, N_TRADE]`` of the trades closed since this object was made (or
        restored), from the ``start``-th on; ``trades_frame`` turns them into rows."""
        rows = self._records[start:]
        return np.vstack(rows) if rows else np.empty((0, N_TRADE))

    @property
    def funding_paid_last_step(self) -> float:
        """Funding paid at the last step's open (negative: received)."""
        return self._funding[-1] if self._funding else 0.0

    @property
    def cash(self) -> float:
        """Cash after the last processed fill."""
        return float(self._state[S_CASH])

    @property
    def units(self) -> float:
        """Signed units held now (+ long, - short)."""
        return float(self._state[S_UNITS])

    def step(
        self,
        bar: Any,
        target: float,
        stop_distance: float | None = None,
        take_profit_distance: float | None = None,
        funding_rate: float = 0.0,
    ) -> float:
        """Process a closed ``bar`` (open/high/low/close[/timestamp]) and record ``target``
        (signed fraction of equity, NaN = flat) to be filled at the next bar's open.
        ``funding_rate``: the rate settled at this bar's open (0 if none; see
        ``data.funding.funding_per_bar``), charged on the position held going into the bar.
        Returns the equity marked at this bar's close."""
        if self._final_equity is not None:
            raise RuntimeError("finish() was called; create a new Backtester")
        target = float(target)
        if abs(target) > self.max_leverage + 1e-12:
            raise ValueError(f"|target| must be <= max_leverage={self.max_leverage}, got {target}")
        o, h, lo, c = _bar_prices(bar)
        if not (np.isfinite([o, h, lo, c]).all() and min(o, h, lo, c) > 0):
            raise ValueError(f"bar prices must be finite and positive, got {(o, h, lo, c)}")
        sl = np.nan if stop_distance is None else float(stop_distance)
        tp = np.nan if take_profit_distance is None else float(take_profit_distance)
        equity, n_closed, paid = _step(self._state, self._params, o, h, lo, c, target, sl, tp,
                                       float(funding_rate), self._buf)
        self._funding.append(float(paid))
        for j in range(n_closed):
            self._records.append(self._buf[j].copy())
        timestamp = bar.get("timestamp") if isinstance(bar, Mapping | pd.Series) else None
        self._timestamps.append(timestamp)
        self._close.append(c)
        self._equity.append(float(equity))
        self._units.append(float(self._state[S_UNITS]))
        return float(equity)

    def finish(self) -> float:
        """Close any open position at the last close (with costs); returns the final equity."""
        if self._final_equity is None:
            if self.bars == 0:
                raise RuntimeError("no bars were processed")
            equity, n_closed = _finish(self._state, self._params, self._buf)
            for j in range(n_closed):
                self._records.append(self._buf[j].copy())
            self._final_equity = float(equity)
        return self._final_equity

    def result(self, periods_per_year: float | None = None) -> BacktestResult:
        """The ``BacktestResult`` of the bars processed so far (calls ``finish()``); it needs
        every bar from the first, so not after a ``restore``."""
        if self._first_bar:
            raise RuntimeError(f"restored at bar {self._first_bar}: result() needs every bar "
                               "from the first; use trade_records() and snapshot()")
        self.finish()
        marked = np.asarray(self._equity)
        equity = marked.copy()
        equity[-1] = self._final_equity
        if any(ts is None for ts in self._timestamps):
            if periods_per_year is None:
                raise ValueError("bars without a 'timestamp' need periods_per_year")
            timestamps = pd.RangeIndex(len(self._close), name="bar")
        else:
            timestamps = pd.DatetimeIndex(self._timestamps, name="timestamp")
            if periods_per_year is None:
                periods_per_year = periods_per_year_from_index(timestamps)
        records = (np.vstack(self._records) if self._records else np.empty((0, N_TRADE)))
        return _build_result(timestamps, np.asarray(self._close), equity, marked,
                             np.asarray(self._units), np.asarray(self._funding), records,
                             periods_per_year, float(self._params[P_INIT]))


def _to_json(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None  # NaN: not set (JSON has no NaN)


def _from_json(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _make_params(fee_rate, slippage, stop_loss, take_profit, initial_equity, compounding):
    params = np.empty(N_PARAMS)
    params[P_FEE] = fee_rate
    params[P_SLIP] = slippage
    params[P_SL_FRAC] = _distance_or_nan(stop_loss, "stop_loss")
    params[P_TP_FRAC] = _distance_or_nan(take_profit, "take_profit")
    params[P_INIT] = initial_equity
    params[P_COMPOUND] = 1.0 if compounding else 0.0
    return params


def _initial_state(initial_equity: float) -> np.ndarray:
    state = np.zeros(N_STATE)
    state[S_CASH] = initial_equity
    state[S_PEND_SL] = np.nan
    state[S_PEND_TP] = np.nan
    state[S_STOP] = np.nan
    state[S_TP] = np.nan
    return state


# ----------------------------------------------------------------------------- whole series


def targets_from_signals(signals: np.ndarray, size: np.ndarray | float = 1.0) -> np.ndarray:
    """Class signals (0 Long / 1 Short / 2 Hold, or their names) -> per-bar target fractions.

    ``target_t = direction_t * size_s`` where ``s <= t`` is the bar where the current signal
    started: the size is fixed for the life of a signal. Float class ids may hold NaN (no
    signal), which means Hold (flat). A NaN size means 0; a negative size raises.
    """
    values = np.asarray(signals)
    if values.dtype.kind == "f":
        missing = np.isnan(values)
        if np.any(values[~missing] != np.round(values[~missing])):
            raise ValueError("float signals must be whole class ids 0, 1, 2 (or NaN)")
        values = np.where(missing, 2.0, values).astype(np.int64)
    direction = signal_direction(values).astype(np.float64)
    n = direction.shape[0]
    size_arr = np.broadcast_to(np.asarray(size, dtype=np.float64), (n,))
    if np.any(size_arr < 0):
        raise ValueError("size must be non-negative")
    wanted = direction * np.nan_to_num(size_arr, nan=0.0)
    if n == 0:
        return wanted
    change = np.empty(n, dtype=bool)
    change[0] = True
    change[1:] = direction[1:] != direction[:-1]
    start = np.maximum.accumulate(np.where(change, np.arange(n), 0))
    return wanted[start]


def _candle_arrays(
    candles: pd.DataFrame,
) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    missing = {"timestamp", "open", "high", "low", "close"} - set(candles.columns)
    if missing:
        raise ValueError(f"candles are missing columns {sorted(missing)}")
    timestamps = pd.DatetimeIndex(candles["timestamp"], name="timestamp")
    arrays = [np.ascontiguousarray(candles[k].to_numpy(dtype=np.float64))
              for k in ("open", "high", "low", "close")]
    stacked = np.stack(arrays)
    if not (np.isfinite(stacked).all() and (stacked > 0).all()):
        raise ValueError("candle prices must be finite and positive")
    if len(timestamps) > 1 and not timestamps.is_monotonic_increasing:
        raise ValueError("candles must be in ascending time order")
    return (timestamps, *arrays)


def _infer_kind(values: np.ndarray) -> str:
    return "signal" if values.dtype.kind in "iubUSO" else "position"


def backtest(
    candles: pd.DataFrame,
    positions_or_signals: np.ndarray | pd.Series,
    *,
    kind: str = "auto",
    size: np.ndarray | pd.Series | float | None = None,
    fee_rate: float = DEFAULT_FEE_RATE,
    slippage: float = DEFAULT_SLIPPAGE,
    stop_loss: float | None = None,
    take_profit: float | None = None,
    stop_mode: str = "fraction",
    atr_period: int = 14,
    initial_equity: float = 10_000.0,
    compounding: bool = True,
    max_leverage: float = 1.0,
    periods_per_year: float | None = None,
    with_benchmark: bool = True,
    funding: pd.DataFrame | None = None,
) -> BacktestResult:
    """Backtest targets or class signals over ``candles``; see the module docstring.

    ``positions_or_signals``: an array aligned with ``candles`` (same length) or a Series
    indexed by candle timestamps. With a Series the run covers the candles from its first
    timestamp to the bar after its last one (where its last decision is filled); missing
    bars are NaN = flat. ``kind``: "signal" (int class ids 0 Long / 1 Short / 2 Hold or
    their names), "position" (float targets in [-max_leverage, max_leverage]) or "auto"
    (integer/string dtype -> signal, float -> position). ``size``: fraction of equity per
    signal, a scalar or per-bar array/Series aligned like the signals (e.g. from
    ``sizing.position_fraction``); only for signals. ``stop_mode``: "fraction" (``stop_loss``
    and ``take_profit`` are fractions of the entry price) or "atr" (multiples of the ATR at
    the decision bar). ``periods_per_year``: inferred from the timestamp spacing if None.
    ``funding``: a frame of settlement ``timestamp`` and ``rate`` (``data.funding``), charged
    at each settlement on the position held then, ``rate * units * open`` (None: no funding,
    as for spot; the result's ``funding_note`` says so).
    """
    timestamps, o, h, lo, c = _candle_arrays(candles)
    if funding is not None:
        validate_funding(funding)
    funding_rates = funding_per_bar(timestamps, funding)
    _check_costs(fee_rate, slippage, initial_equity)
    if stop_mode not in ("fraction", "atr"):
        raise ValueError(f"stop_mode must be 'fraction' or 'atr', got {stop_mode!r}")
    if kind not in ("auto", "signal", "position"):
        raise ValueError(f"kind must be 'auto', 'signal' or 'position', got {kind!r}")
    raw = positions_or_signals
    values = np.asarray(raw.to_numpy() if isinstance(raw, pd.Series) else raw)
    if values.ndim != 1:
        raise ValueError(f"positions_or_signals must be 1-D, got shape {values.shape}")
    if kind == "auto":
        kind = _infer_kind(values)

    if kind == "signal":
        if isinstance(size, pd.Series) and not isinstance(raw, pd.Series):
            raise ValueError("a size Series needs signals given as a Series too")
        if isinstance(raw, pd.Series) and isinstance(size, pd.Series):
            size = size.reindex(raw.index).to_numpy(dtype=np.float64)
        targets = targets_from_signals(values, 1.0 if size is None else size)
    else:
        if size is not None:
            raise ValueError("size applies to signals only; scale float positions yourself")
        targets = values.astype(np.float64)
    finite = targets[np.isfinite(targets)]
    if np.isinf(targets).any() or (finite.size and np.abs(finite).max() > max_leverage + 1e-12):
        raise ValueError(f"targets must be within [-{max_leverage}, {max_leverage}]")

    if periods_per_year is None:
        periods_per_year = periods_per_year_from_index(timestamps)

    if stop_mode == "atr" and (stop_loss is not None or take_profit is not None):
        atr = average_true_range(h, lo, c, atr_period)
        sl_dist = atr * _distance_or_nan(stop_loss, "stop_loss")
        tp_dist = atr * _distance_or_nan(take_profit, "take_profit")
        sl_frac = tp_frac = None
    else:
        sl_dist = np.full(len(o), np.nan)
        tp_dist = np.full(len(o), np.nan)
        sl_frac, tp_frac = stop_loss, take_profit

    # align to the candles
    if isinstance(raw, pd.Series):
        index = pd.DatetimeIndex(raw.index)
        pos = timestamps.get_indexer(index)
        if (pos < 0).any():
            raise ValueError(f"signal timestamp {index[pos < 0][0]} is not a candle timestamp")
        first, last = int(pos.min()), min(int(pos.max()) + 1, len(o) - 1)
        aligned = np.full(len(o), np.nan)
        aligned[pos] = targets
        sl = slice(first, last + 1)
        timestamps, o, h, lo, c = timestamps[sl], o[sl], h[sl], lo[sl], c[sl]
        targets, sl_dist, tp_dist = aligned[sl], sl_dist[sl], tp_dist[sl]
        funding_rates = funding_rates[sl]
    elif len(targets) != len(o):
        raise ValueError(f"an array of targets/signals must match the candles: "
                         f"{len(targets)} != {len(o)}; pass a Series indexed by timestamp")
    if len(o) < 2:
        raise ValueError("need at least two bars: one to decide, one to fill")

    params = _make_params(fee_rate, slippage, sl_frac, tp_frac, initial_equity, compounding)
    # writable too: pandas may hand out read-only views (copy-on-write), and each pattern of
    # read-only arguments would be another compiled `_run` (~3.5 s on an empty cache)
    arrays = [np.require(x, dtype=np.float64, requirements=["C", "W"])
              for x in (o, h, lo, c, targets, sl_dist, tp_dist, funding_rates)]
    equity, marked, units, paid, records = _run(_initial_state(initial_equity), params, *arrays)
    result = _build_result(timestamps, arrays[3], equity, marked, units, paid, records,
                           periods_per_year, initial_equity)
    result.funding_note = coverage_note(timestamps, funding)
    if with_benchmark:
        period = pd.DataFrame({"timestamp": timestamps, "open": o, "high": h, "low": lo,
                               "close": c})
        result.benchmark = buy_and_hold(period, fee_rate=fee_rate, slippage=slippage,
                                        initial_equity=initial_equity,
                                        periods_per_year=periods_per_year, funding=funding)
    return result


def buy_and_hold(
    candles: pd.DataFrame,
    *,
    fee_rate: float = DEFAULT_FEE_RATE,
    slippage: float = DEFAULT_SLIPPAGE,
    initial_equity: float = 10_000.0,
    periods_per_year: float | None = None,
    funding: pd.DataFrame | None = None,
) -> BacktestResult:
    """Buy all-in at bar 1's open (the first fillable bar), sell at the last close, with costs.

    final_equity = E0 * (1 - fee) * sell / buy - fee * E0,  buy = open_1 * (1 + slippage),
    sell = close_last * (1 - slippage)  (the buy fee is paid on top of the position's value),
    minus the funding of a perpetual held all along when ``funding`` is given.
    """
    ones = np.ones(len(candles))
    return backtest(candles, ones, kind="position", fee_rate=fee_rate, slippage=slippage,
                    initial_equity=initial_equity, periods_per_year=periods_per_year,
                    with_benchmark=False, funding=funding)
