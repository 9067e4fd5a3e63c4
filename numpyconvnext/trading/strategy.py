"""The strategy that is traded: one definition shared by ``backtest``, ``live`` (and its paper
mode) and ``evaluate``.

``Strategy`` holds every setting (market, signal rule, sizing, stops, costs) with one set of
defaults; ``plan_positions`` is the one place that turns calibrated class probabilities into
target positions; ``run_strategy`` trades a plan through the backtester with those costs.

For a decision at bar t (window ending with bar t's close, filled at bar t+1's open):

  1. signal   the most probable class; Long/Short only if its probability >= ``confidence``,
              else Hold (``signals.generate_signals``). Spot is long-only: Short means flat.
  2. stop     ``stop_distance_t = stop_loss * ATR_t`` (Wilder ATR(``atr_period``) of bars
              0..t), take-profit ``take_profit * ATR_t``; the backtester places both from the
              entry fill (``stop_mode="atr"``).
  3. size     half Kelly in risk units on the win probability ``q = p_side / (p_L + p_S)``
              (``sizing``): ``risk = min(kelly_fraction * max(q - (1 - q) / b, 0), max_risk)``,
              ``units = min(risk * equity / stop_distance, max_exposure * equity / close_t)``,
              ``fraction = units * close_t / equity``. ``sizing="fixed"`` risks ``max_risk``
              on every signal. A signal whose size is 0 (no edge) is Hold.
  4. hold     a position keeps the size it got when its signal started until the signal
              changes (``backtest.targets_from_signals``); after a stop it stays flat until then.

``b`` (payoff ratio) is ``take_profit / stop_loss`` when a take-profit is set, else the value
estimated on the validation block after training (stored in the checkpoint), else
``DEFAULT_WIN_LOSS_RATIO``. ``confidence`` None means the threshold chosen on the validation
block (stored in the checkpoint), else ``DEFAULT_CONFIDENCE``.

Costs: ``fee_rate`` (None: the category's taker fee, ``DEFAULT_FEE_RATES``) and ``slippage`` on
every fill; funding on a perpetual at each settlement (``backtest``'s ``funding``); none on spot.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pandas as pd

from .backtest import DEFAULT_SLIPPAGE, BacktestResult, backtest
from .signals import Signal, generate_signals
from .sizing import SIZINGS, average_true_range, position_fraction, win_probability

CATEGORIES = ("linear", "spot")
DEFAULT_FEE_RATES = {"linear": 0.00055, "spot": 0.001}  # Bybit taker: perpetual 0.055 %, spot 0.1 %
DEFAULT_CONFIDENCE = 0.6
DEFAULT_WIN_LOSS_RATIO = 1.0
# thresholds tried on the validation block (every one is a trial of the deflated Sharpe)
CONFIDENCE_GRID = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


@dataclass(frozen=True)
class Strategy:
    """Every setting of the traded strategy (see the module docstring). ``stop_loss`` and
    ``take_profit`` are ATR multiples (None: no stop / no take-profit); ``max_risk`` is the
    fraction of equity lost at the stop; ``calibrated`` False uses the raw softmax instead of
    the checkpoint's temperature-scaled probabilities."""

    category: str = "linear"
    confidence: float | None = None
    sizing: str = "kelly"
    kelly_fraction: float = 0.5
    max_risk: float = 0.02
    max_exposure: float = 1.0
    stop_loss: float | None = 2.0
    take_profit: float | None = None
    atr_period: int = 14
    win_loss_ratio: float | None = None
    fee_rate: float | None = None
    slippage: float = DEFAULT_SLIPPAGE
    calibrated: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.category in CATEGORIES, f"category must be one of {', '.join(CATEGORIES)}"),
            (self.confidence is None or 0.0 <= self.confidence <= 1.0, "confidence must be in [0, 1]"),
            (self.sizing in SIZINGS, f"sizing must be one of {', '.join(SIZINGS)}"),
            (0.0 <= self.kelly_fraction <= 1.0, "kelly_fraction must be in [0, 1]"),
            (0.0 < self.max_risk <= 1.0, "max_risk must be in (0, 1]"),
            (0.0 < self.max_exposure <= 10.0, "max_exposure must be in (0, 10]"),
            (self.stop_loss is None or self.stop_loss > 0, "stop_loss must be positive (or None)"),
            (self.take_profit is None or self.take_profit > 0,
             "take_profit must be positive (or None)"),
            (self.atr_period >= 1, "atr_period must be >= 1"),
            (self.win_loss_ratio is None or (math.isfinite(self.win_loss_ratio)
                                             and self.win_loss_ratio > 0),
             "win_loss_ratio must be positive"),
            (self.fee_rate is None or 0.0 <= self.fee_rate < 0.1, "fee_rate must be in [0, 0.1)"),
            (0.0 <= self.slippage < 0.1, "slippage must be in [0, 0.1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def long_only(self) -> bool:
        """Spot cannot be shorted: a Short signal means flat."""
        return self.category == "spot"

    @property
    def fee(self) -> float:
        """The fee per fill: ``fee_rate``, else the category's taker fee."""
        return DEFAULT_FEE_RATES[self.category] if self.fee_rate is None else float(self.fee_rate)

    @property
    def threshold(self) -> float:
        """The confidence threshold in force (``DEFAULT_CONFIDENCE`` when none was chosen)."""
        return DEFAULT_CONFIDENCE if self.confidence is None else float(self.confidence)

    @property
    def payoff_ratio(self) -> float:
        """Kelly's b: take-profit / stop when both are set, else ``win_loss_ratio``, else 1."""
        if self.take_profit is not None and self.stop_loss is not None:
            return float(self.take_profit / self.stop_loss)
        return DEFAULT_WIN_LOSS_RATIO if self.win_loss_ratio is None else float(self.win_loss_ratio)

    @property
    def costs(self) -> dict:
        """What every fill costs and the leverage cap, as ``backtest`` and ``Backtester`` take
        them (``fee_rate``, ``slippage``, ``max_leverage``)."""
        return {"fee_rate": self.fee, "slippage": self.slippage,
                "max_leverage": max(1.0, self.max_exposure)}

    def with_checkpoint(self, metadata: dict | None) -> Strategy:
        """Fill what is left open (``confidence``, ``win_loss_ratio``) from the choices stored
        in a checkpoint by ``numpyconvnext.calibration``; explicit settings win."""
        chosen = (metadata or {}).get("strategy") or {}
        changes = {}
        if self.confidence is None and chosen.get("confidence") is not None:
            changes["confidence"] = float(chosen["confidence"])
        if self.win_loss_ratio is None and chosen.get("win_loss_ratio") is not None:
            changes["win_loss_ratio"] = float(chosen["win_loss_ratio"])
        return replace(self, **changes)

    def with_overrides(self, **values) -> Strategy:
        """A copy with the given (non-None) settings changed."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Strategy:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def describe(self) -> str:
        """One line: signal rule, sizing, stops and costs."""
        stops = (f"stop {self.stop_loss:g} ATR" if self.stop_loss else "no stop") + (
            f", take-profit {self.take_profit:g} ATR" if self.take_profit else ", no take-profit")
        estimated = self.win_loss_ratio is None and not (self.take_profit and self.stop_loss)
        payoff = "b estimated on the validation block" if estimated else f"b {self.payoff_ratio:.2f}"
        kelly = "half Kelly" if self.kelly_fraction == 0.5 else f"{self.kelly_fraction:g} Kelly"
        sizing = (f"{kelly} of equity risked at the stop ({payoff}, at most {100 * self.max_risk:g}%)"
                  if self.sizing == "kelly" else
                  f"fixed risk of {100 * self.max_risk:g}% of equity at the stop")
        side = "long only" if self.long_only else "long/short"
        return (f"{self.category}, {side}, confidence >= {self.threshold:.2f}, {sizing}, "
                f"exposure <= {self.max_exposure:g}x, {stops}; fee {100 * self.fee:.3f}% + "
                f"slippage {100 * self.slippage:.3f}% per fill")


@dataclass
class PositionPlan:
    """Per decision bar: the signal after the strategy's rules (0 Long, 1 Short, 2 Hold), the win
    probability fed to Kelly, the stop distance (price units, NaN = none) and the fraction of
    equity to hold (>= 0; 0 for Hold)."""

    signal: np.ndarray
    win_probability: np.ndarray
    stop_distance: np.ndarray
    fraction: np.ndarray

    @property
    def direction(self) -> np.ndarray:
        """+1 long, -1 short, 0 flat."""
        return np.where(self.signal == Signal.LONG, 1, np.where(self.signal == Signal.SHORT, -1, 0))


def stop_distances(candles: pd.DataFrame, end_index: np.ndarray, strategy: Strategy) -> np.ndarray:
    """``stop_loss * ATR_t`` at each decision bar (NaN without a stop or in the ATR warm-up)."""
    end_index = np.asarray(end_index, dtype=np.int64)
    if strategy.stop_loss is None:
        return np.full(len(end_index), np.nan)
    atr = average_true_range(candles["high"].to_numpy(np.float64), candles["low"].to_numpy(np.float64),
                             candles["close"].to_numpy(np.float64), strategy.atr_period)
    return strategy.stop_loss * atr[end_index]


def plan_positions(
    strategy: Strategy,
    close: np.ndarray,
    stop_distance: np.ndarray,
    probabilities: np.ndarray | None = None,
    *,
    signal: np.ndarray | None = None,
    win_prob: np.ndarray | None = None,
) -> PositionPlan:
    """The one function from model outputs to target positions.

    Classifiers pass ``probabilities [N, 3]`` (calibrated: the caller applies the checkpoint's
    temperature); models without probabilities (regression) pass ``signal`` and ``win_prob``
    themselves. ``close`` and ``stop_distance`` are at the decision bars.
    """
    close = np.asarray(close, dtype=np.float64)
    if probabilities is not None:
        signal, _ = generate_signals(probabilities, strategy.threshold)
        win_prob = win_probability(probabilities, signal)
    elif signal is None or win_prob is None:
        raise ValueError("pass probabilities, or signal and win_prob")
    signal = np.asarray(signal, dtype=np.int64).copy()
    if strategy.long_only:
        signal[signal == Signal.SHORT] = Signal.HOLD
    win_prob = np.asarray(win_prob, dtype=np.float64)
    stop = None if strategy.stop_loss is None else np.asarray(stop_distance, dtype=np.float64)
    fraction = np.asarray(position_fraction(
        np.where(signal == Signal.HOLD, np.nan, np.clip(win_prob, 0.0, 1.0)), close, stop,
        strategy.payoff_ratio, strategy.max_risk, strategy.max_exposure, strategy.kelly_fraction,
        strategy.sizing), dtype=np.float64).reshape(-1)
    fraction = np.where(signal == Signal.HOLD, 0.0, fraction)
    signal = np.where(fraction > 0.0, signal, np.int64(Signal.HOLD))
    return PositionPlan(signal=signal, win_probability=win_prob,
                        stop_distance=np.asarray(stop_distance, dtype=np.float64), fraction=fraction)


def next_target(held: tuple[int, float], signal: int, fraction: float) -> tuple[int, float]:
    """One step of the hold rule (4. in the module docstring) for bar-by-bar trading through
    ``Backtester.step`` (paper trading): from the (direction, target) in force and the new bar's
    signal and fraction, the new (direction, target). A new direction takes the new size; the
    same direction keeps the size it started with. ``run_strategy`` over a whole series gives
    the same targets (``backtest.targets_from_signals``)."""
    direction = 1 if signal == Signal.LONG else -1 if signal == Signal.SHORT else 0
    if direction != held[0]:
        return direction, direction * float(fraction)
    return held


def run_strategy(
    candles: pd.DataFrame,
    decision_times: pd.DatetimeIndex,
    plan: PositionPlan,
    strategy: Strategy,
    *,
    funding: pd.DataFrame | None = None,
    initial_equity: float = 10_000.0,
    periods_per_year: float | None = None,
    with_benchmark: bool = True,
) -> BacktestResult:
    """Trade ``plan`` (decided at ``decision_times``, filled at the next opens) over ``candles``
    with the strategy's stops and costs, and funding on a perpetual (``funding``; ignored on
    spot). The benchmark, buy-and-hold, pays the same costs and funding."""
    index = pd.DatetimeIndex(decision_times)
    result = backtest(
        candles, pd.Series(plan.signal, index=index), kind="signal",
        size=pd.Series(plan.fraction, index=index), stop_loss=strategy.stop_loss,
        take_profit=strategy.take_profit, stop_mode="atr", atr_period=strategy.atr_period,
        initial_equity=initial_equity, periods_per_year=periods_per_year,
        with_benchmark=with_benchmark, **strategy.costs,
        funding=None if strategy.long_only else funding)
    if strategy.long_only:
        result.funding_note = "spot: no funding"
        if result.benchmark is not None:
            result.benchmark.funding_note = result.funding_note
    return result


def run_directions(
    candles: pd.DataFrame,
    decision_times: pd.DatetimeIndex,
    direction: np.ndarray,
    strategy: Strategy,
    *,
    funding: pd.DataFrame | None = None,
    initial_equity: float = 10_000.0,
    periods_per_year: float | None = None,
) -> BacktestResult:
    """All-in ``+-1`` positions (unsized, no stops) with the strategy's costs and funding: the
    baselines' way of trading and the model's unsized row. Spot: shorts are flat."""
    direction = np.asarray(direction, dtype=np.float64)
    if strategy.long_only:
        direction = np.maximum(direction, 0.0)
    return backtest(candles, pd.Series(direction, index=pd.DatetimeIndex(decision_times)),
                    kind="position", fee_rate=strategy.fee, slippage=strategy.slippage,
                    initial_equity=initial_equity, periods_per_year=periods_per_year,
                    with_benchmark=False, funding=None if strategy.long_only else funding)
