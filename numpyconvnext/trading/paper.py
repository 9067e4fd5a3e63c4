"""Paper trading: the strategy ``backtest`` trades, run one closed candle at a time on a simulated
account that survives restarts. Nothing here places an order.

For each closed candle t, in order (``PaperAccount.step``):

  1. the hold rule (``strategy.next_target``) turns the decision at t (signal, fraction) into
     the target to hold from t+1's open: a new direction takes the new size, the same
     direction keeps the size it started with;
  2. ``Backtester.step`` processes candle t exactly as ``backtest`` does: the funding settled
     at its open on the position held going in (perpetuals, when the series is known), the
     target decided at t-1 filled at its open with fees and slippage, the stop and
     take-profit checked against its range, equity marked at its close; the new target is
     then pending, with the stop ``stop_loss * ATR_t`` and take-profit ``take_profit * ATR_t``
     for a trade it opens.

The account is a ``Backtester.snapshot()`` plus what the Backtester does not keep: the hold
rule's (direction, target), the open trade's entry time, the trades closed so far and running
totals. ``to_dict()`` is JSON-able and exact (floats round-trip through JSON), so
``PaperAccount.from_dict(account.to_dict())`` continues bit for bit. ``live --paper`` keeps it in
the live state file, written in the same atomic write that records the candle as done, so
after Ctrl-C or a crash it continues exactly where it was.

Over the same candles, decisions and funding the account's equity and trades equal
``strategy.run_strategy``'s (the backtest) bar for bar; the backtest then closes the position
at the last close, which a paper account does only when its strategy says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .backtest import T_ENTRY_BAR, T_SIDE, Backtester, trades_frame
from .strategy import Strategy, next_target

PAPER_VERSION = 1


def _iso(stamp) -> str | None:
    return None if stamp is None else pd.Timestamp(stamp).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: str | None) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text).tz_convert("UTC")


@dataclass
class PaperStep:
    """What one candle did to the account: the equity marked at its close, the fills (in the
    order they happened), the trades it closed and the funding paid at its open."""

    time: pd.Timestamp
    equity: float
    fills: list[dict]
    trades: list[dict]
    funding_paid: float


class PaperAccount:
    """A simulated account trading ``strategy`` from ``initial_equity`` (see the module
    docstring). Make one with ``start`` or ``from_dict``; feed it ``step``; keep ``to_dict``."""

    def __init__(self, strategy: Strategy, initial_equity: float, backtester: Backtester, *,
                 held: tuple[int, float] = (0, 0.0), entry_time: pd.Timestamp | None = None,
                 first_bar: pd.Timestamp | None = None, last_bar: pd.Timestamp | None = None,
                 equity: float | None = None, trades: list[dict] | None = None,
                 funding_paid: float = 0.0) -> None:
        self.strategy, self.initial_equity, self.backtester = strategy, float(initial_equity), backtester
        self.held = (int(held[0]), float(held[1]))
        self.entry_time, self.first_bar, self.last_bar = entry_time, first_bar, last_bar
        self.equity = float(initial_equity if equity is None else equity)
        self.trades = list(trades or [])
        self.funding_paid = float(funding_paid)

    @classmethod
    def start(cls, strategy: Strategy, initial_equity: float) -> PaperAccount:
        """A new account, flat, holding ``initial_equity`` in cash."""
        if not (math.isfinite(initial_equity) and initial_equity > 0):
            raise ValueError(f"initial equity must be positive, got {initial_equity}")
        return cls(strategy, initial_equity, Backtester(initial_equity, **strategy.costs))

    @classmethod
    def from_dict(cls, data: Mapping) -> PaperAccount:
        """The account ``to_dict`` wrote; ValueError (one line) for anything else."""
        try:
            if int(data["version"]) > PAPER_VERSION:
                raise ValueError(f"version {data['version']}; this program reads "
                                 f"{PAPER_VERSION}")
            strategy = Strategy.from_dict(data["strategy"])
            return cls(strategy, float(data["initial_equity"]),
                       Backtester.restore(data["backtester"]), held=tuple(data["held"]),
                       entry_time=_time(data["entry_time"]), first_bar=_time(data["first_bar"]),
                       last_bar=_time(data["last_bar"]), equity=float(data["equity"]),
                       trades=data["trades"], funding_paid=float(data["funding_paid"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a paper account: {error}") from None

    def to_dict(self) -> dict:
        """Everything needed to continue exactly, JSON-able (see the module docstring)."""
        return {"version": PAPER_VERSION, "strategy": self.strategy.to_dict(),
                "initial_equity": self.initial_equity, "equity": self.equity,
                "first_bar": _iso(self.first_bar), "last_bar": _iso(self.last_bar),
                "held": list(self.held), "entry_time": _iso(self.entry_time),
                "funding_paid": self.funding_paid, "trades": self.trades,
                "backtester": self.backtester.snapshot()}

    @property
    def fees_paid(self) -> float:
        """Fees of the closed trades and of the open one so far."""
        open_trade = self.backtester.open_trade
        return float(sum(t["fees"] for t in self.trades) + (open_trade["fees"] if open_trade else 0.0))

    def step(self, bar: Mapping, signal: int, fraction: float, stop_distance: float, atr: float,
             funding_rate: float = 0.0) -> PaperStep:
        """Process the closed candle ``bar`` (timestamp, open, high, low, close) and the decision
        made at its close (``signal`` 0 Long / 1 Short / 2 Hold, ``fraction`` of equity, the
        stop distance and the ATR at the bar); ``funding_rate``: the settlements at its open
        (``data.funding.funding_per_bar``)."""
        time = pd.Timestamp(bar["timestamp"])
        if self.last_bar is not None and time <= self.last_bar:
            raise ValueError(f"candle {_iso(time)} is not after the account's last one "
                             f"({_iso(self.last_bar)})")
        bt = self.backtester
        bar_number = bt.bars
        n_before = bt.n_trades
        entry_before = self.entry_time
        held = next_target(self.held, int(signal), float(fraction))
        take_profit = (atr * self.strategy.take_profit if self.strategy.take_profit is not None
                       else np.nan)
        self.equity = bt.step(bar, held[1], stop_distance, take_profit, funding_rate)
        self.held = held
        closed = bt.trade_records(n_before)
        trades = []
        if len(closed):
            entry_times = [time if int(r[T_ENTRY_BAR]) == bar_number else entry_before
                           for r in closed]
            rows = trades_frame(closed, pd.DatetimeIndex(entry_times).tz_convert("UTC"),
                                pd.DatetimeIndex([time] * len(closed)).tz_convert("UTC"))
            trades = [_jsonable_trade(row) for row in rows.to_dict("records")]
        fills = []
        for record, trade in zip(closed, trades, strict=True):
            if int(record[T_ENTRY_BAR]) == bar_number:  # opened at this open, closed inside
                fills.append(_fill(int(record[T_SIDE]), trade["size"], trade["entry_price"],
                                   "signal"))
            fills.append(_fill(-int(record[T_SIDE]), trade["size"], trade["exit_price"],
                               trade["exit_reason"]))
        open_trade = bt.open_trade
        if open_trade is None:
            self.entry_time = None
        elif open_trade["entry_bar"] == bar_number:
            self.entry_time = time
            fills.append(_fill(open_trade["side"], open_trade["units"], open_trade["entry_price"],
                               "signal"))
        if self.first_bar is None:
            self.first_bar = time
        self.last_bar = time
        self.trades.extend(trades)
        paid = bt.funding_paid_last_step
        self.funding_paid += paid
        return PaperStep(time, self.equity, fills, trades, paid)

    def record(self, step: PaperStep) -> dict:
        """The ``"paper"`` object of a live line: the account after ``step``."""
        open_trade = self.backtester.open_trade
        position = None
        if open_trade is not None:
            position = {"side": "long" if open_trade["side"] > 0 else "short",
                        "units": open_trade["units"], "entry_price": open_trade["entry_price"],
                        "entry_time": _iso(self.entry_time),
                        "stop_price": open_trade["stop_price"],
                        "take_profit_price": open_trade["take_profit_price"]}
        return {"equity": step.equity, "cash": self.backtester.cash, "position": position,
                "target": self.held[1], "fills": step.fills, "trades_closed": step.trades,
                "funding_paid": step.funding_paid, "trades": len(self.trades),
                "fees_paid_total": self.fees_paid, "funding_paid_total": self.funding_paid,
                "return": step.equity / self.initial_equity - 1.0,
                "since": _iso(self.first_bar)}

    def trades_frame(self) -> pd.DataFrame:
        """The closed trades as ``backtest``'s trades frame (``backtest.TRADE_COLUMNS``)."""
        if not self.trades:
            return trades_frame(np.empty((0, 11)), pd.DatetimeIndex([], tz="UTC"),
                                pd.DatetimeIndex([], tz="UTC"))
        frame = pd.DataFrame(self.trades)
        for column in ("entry_time", "exit_time"):
            frame[column] = pd.to_datetime(frame[column], utc=True).dt.as_unit("ns")
        return frame


def _fill(side: int, units: float, price: float, reason: str) -> dict:
    return {"side": "buy" if side > 0 else "sell", "units": float(units), "price": float(price),
            "reason": reason}


def _jsonable_trade(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, pd.Timestamp):
            out[key] = _iso(value)
        elif isinstance(value, np.integer):
            out[key] = int(value)
        elif isinstance(value, np.floating | float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def format_paper(record: dict) -> str:
    """One line for people: the fills of this candle, then equity and the position."""
    parts = []
    for fill in record["fills"]:
        verb = "bought" if fill["side"] == "buy" else "sold"
        why = "" if fill["reason"] == "signal" else f" ({fill['reason'].replace('_', '-')})"
        parts.append(f"{verb} {fill['units']:.6g} @ {fill['price']:,.6g}{why}")
    for trade in record["trades_closed"]:
        parts.append(f"closed {trade['side']} pnl {trade['pnl']:+,.2f} (fees {trade['fees']:,.2f}, "
                     f"funding {trade['funding']:,.2f})")
    if record["funding_paid"]:
        parts.append(f"funding {-record['funding_paid']:+,.4f}")
    position = record["position"]
    held = "flat" if position is None else (
        f"{position['side']} {position['units']:.6g} from {position['entry_price']:,.6g}"
        + (f", stop {position['stop_price']:,.6g}" if position["stop_price"] is not None else "")
        + (f", take-profit {position['take_profit_price']:,.6g}"
           if position["take_profit_price"] is not None else ""))
    parts.append(f"equity {record['equity']:,.2f} ({100 * record['return']:+.2f}%), {held}")
    return "paper: " + "; ".join(parts)
