"""After training, on the validation block only: calibrate the probabilities, choose the confidence
threshold and estimate the payoff ratio that the traded strategy uses.

1. Temperature scaling (Guo et al. 2017). One scalar T > 0 divides the logits,
   ``p = softmax(z / T)``, fitted by minimising the mean negative log-likelihood of the
   validation labels, ``NLL(T) = -mean_i log softmax(z_i / T)[y_i]``. NLL is convex in
   ``beta = 1 / T`` (a log-sum-exp minus a linear term), so a golden-section search over
   ``beta`` in ``[1/20, 20]`` finds it. T > 1 softens over-confident probabilities; argmax (the
   class) never changes, only how sure the model says it is - which is what Kelly reads.
2. Payoff ratio b (when no take-profit fixes it as take-profit / stop): the average win over the
   average loss of the validation trades at each threshold, traded with fixed-risk sizing
   (``metrics.win_loss_ratio`` of the trades' returns); fewer than ``MIN_PAYOFF_TRADES`` trades
   fall back to ``DEFAULT_WIN_LOSS_RATIO``.
3. Confidence threshold: each value of ``CONFIDENCE_GRID`` is traded over the validation block
   with the full strategy (calibrated probabilities, its b, half-Kelly risk sizing, ATR stop,
   fees, slippage, funding); the one with the highest annualised Sharpe after costs is kept
   (ties: more trades, then the lower threshold). Every value tried is returned as a trial for
   the trials log.

Nothing here reads the test block, except ``trading_activity``, which only counts how often the
chosen strategy would trade there (for the training report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from numpyconvnext.scoring import predict_in_batches
from numpyconvnext.stats import sharpe_per_bar
from numpyconvnext.trading.metrics import periods_per_year_from_index, sharpe_ratio, win_loss_ratio
from numpyconvnext.trading.strategy import (
    CONFIDENCE_GRID,
    DEFAULT_WIN_LOSS_RATIO,
    Strategy,
    plan_positions,
    run_strategy,
    stop_distances,
)

MIN_PAYOFF_TRADES = 10
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def softmax_rows(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(z / T)`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """``-mean_i log softmax(z_i / T)[y_i]``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    shifted = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    rows = np.arange(len(labels))
    return float(np.mean(log_norm - shifted[rows, np.asarray(labels, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The T minimising the validation NLL (golden section over beta = 1/T in [1/20, 20])."""
    if len(labels) == 0:
        return 1.0
    lo, hi = 1.0 / 20.0, 20.0
    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa = negative_log_likelihood(logits, labels, 1.0 / a)
    fb = negative_log_likelihood(logits, labels, 1.0 / b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = negative_log_likelihood(logits, labels, 1.0 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = negative_log_likelihood(logits, labels, 1.0 / b)
    return float(1.0 / ((lo + hi) / 2.0))


def _trade(candles, end_index, probabilities, strategy, funding, periods):
    stamps = pd.DatetimeIndex(candles["timestamp"])[end_index]
    close = candles["close"].to_numpy(np.float64)[end_index]
    plan = plan_positions(strategy, close, stop_distances(candles, end_index, strategy), probabilities)
    result = run_strategy(candles, stamps, plan, strategy, funding=funding, periods_per_year=periods,
                          with_benchmark=False)
    return plan, result


def evaluate_thresholds(probabilities: np.ndarray, candles: pd.DataFrame, end_index: np.ndarray,
                        strategy: Strategy, funding: pd.DataFrame | None,
                        grid: tuple[float, ...] = CONFIDENCE_GRID) -> list[dict]:
    """Trade each threshold of ``grid`` over the decision bars ``end_index`` (see the module
    docstring): per value its payoff ratio b (and where it came from), Sharpe after costs,
    trades and exposure."""
    return evaluate_thresholds_pooled({"": probabilities}, {"": candles}, {"": end_index},
                                      strategy, {"": funding}, grid)


def evaluate_thresholds_pooled(probabilities: dict[str, np.ndarray],
                               candles: dict[str, pd.DataFrame], end_index: dict[str, np.ndarray],
                               strategy: Strategy, funding: dict[str, pd.DataFrame | None],
                               grid: tuple[float, ...] = CONFIDENCE_GRID) -> list[dict]:
    """``evaluate_thresholds`` over several symbols (dicts keyed by symbol) traded as one
    equal-weight portfolio: b from the fixed-risk trades of all symbols together; the Sharpe of
    the portfolio's per-bar return, the mean over the symbols trading at that bar (one symbol:
    exactly ``evaluate_thresholds``)."""
    symbols = list(probabilities)
    periods = periods_per_year_from_index(candles[symbols[0]]["timestamp"])
    rows = []
    for confidence in grid:
        at = strategy.with_overrides(confidence=float(confidence))
        if strategy.take_profit is not None and strategy.stop_loss is not None:
            b, source = at.payoff_ratio, "take-profit / stop"
        elif strategy.win_loss_ratio is not None:
            b, source = float(strategy.win_loss_ratio), "given"
        else:
            fixed = [_trade(candles[s], end_index[s], probabilities[s],
                            at.with_overrides(sizing="fixed"), funding[s], periods)[1].trades
                     for s in symbols]
            trade_returns = np.concatenate([t["return"].to_numpy() for t in fixed])
            n = len(trade_returns)
            ratio = win_loss_ratio(trade_returns)
            if n >= MIN_PAYOFF_TRADES and math.isfinite(ratio) and ratio > 0:
                b, source = float(ratio), f"validation trades (n={n})"
            else:
                b, source = DEFAULT_WIN_LOSS_RATIO, f"default: {n} validation trades are too few"
        at = at.with_overrides(win_loss_ratio=b)
        traded = [_trade(candles[s], end_index[s], probabilities[s], at, funding[s], periods)
                  for s in symbols]
        if len(traded) == 1:
            returns = traded[0][1].returns.to_numpy()
        else:
            returns = pd.concat([result.returns for _, result in traded], axis=1).mean(axis=1)
            returns = returns.to_numpy()
        positions = np.concatenate([result.positions.to_numpy() for _, result in traded])
        rows.append({"confidence": float(confidence), "win_loss_ratio": b, "payoff_source": source,
                     "sharpe": sharpe_ratio(returns, periods), "sharpe_per_bar": sharpe_per_bar(returns),
                     "bars": int(len(returns)),
                     "trades": int(sum(len(result.trades) for _, result in traded)),
                     "exposure": float(np.mean(positions != 0)),
                     "signals": int(sum(np.sum(plan.fraction > 0) for plan, _ in traded))})
    return rows


def choose_threshold(rows: list[dict]) -> dict:
    """The row with the highest Sharpe; ties: more trades, then the lower threshold."""
    return max(rows, key=lambda r: (round(r["sharpe"], 12), r["trades"], -r["confidence"]))


def calibrate(model, data, candles, strategy: Strategy, funding=None,
              grid: tuple[float, ...] = CONFIDENCE_GRID) -> dict:
    """Fit the temperature on ``data.val``, set ``model.temperature``, choose the threshold and b
    there. Returns the checkpoint metadata ``{"calibration": ..., "strategy": ...}`` (empty for
    a regression model, which has no probabilities).

    A pool (``data`` a ``PooledData``, ``candles`` and ``funding`` dicts by symbol): one
    temperature on the pooled validation windows; thresholds traded as an equal-weight portfolio
    of the symbols with validation windows (``evaluate_thresholds_pooled``)."""
    if model.config["num_classes"] == 1 or len(data.val) == 0:
        return {}
    model.eval()
    logits = predict_in_batches(model, data.val.X).astype(np.float64)
    temperature = fit_temperature(logits, data.val.y)
    model.temperature = temperature
    probabilities = softmax_rows(logits, temperature)
    if isinstance(candles, Mapping):
        funding = funding or {}
        rows_of = {s: data.val.of(k) for k, s in enumerate(data.symbols)}
        rows_of = {s: r for s, r in rows_of.items() if r.stop > r.start}
        rows = evaluate_thresholds_pooled(
            {s: probabilities[r] for s, r in rows_of.items()}, {s: candles[s] for s in rows_of},
            {s: data.val.end_index[r] for s, r in rows_of.items()}, strategy,
            {s: funding.get(s) for s in rows_of}, grid)
    else:
        rows = evaluate_thresholds(probabilities, candles, data.val.end_index, strategy, funding,
                                   grid)
    best = choose_threshold(rows)
    return {
        "calibration": {
            "temperature": temperature, "method": "temperature scaling on the validation block",
            "validation_nll": negative_log_likelihood(logits, data.val.y),
            "validation_nll_calibrated": negative_log_likelihood(logits, data.val.y, temperature),
            "validation_windows": int(len(data.val)),
        },
        "strategy": {
            "confidence": best["confidence"], "win_loss_ratio": best["win_loss_ratio"],
            "payoff_source": best["payoff_source"], "chosen_on": "validation",
            "validation_sharpe": best["sharpe"], "grid": rows, "base": strategy.to_dict(),
        },
    }


def pooled_trading_activity(model, data, name: str, candles: Mapping[str, pd.DataFrame],
                            strategy: Strategy, funding: Mapping | None = None) -> dict | None:
    """``trading_activity`` of part ``name`` of a ``PooledData``, per symbol (``by_symbol``) and
    summed (decisions, positions, trades; exposure over all decisions; ``sharpe`` the mean of the
    symbols' Sharpe ratios)."""
    funding = funding or {}
    by_symbol = {s: trading_activity(model, getattr(d, name), candles[s], strategy, funding.get(s))
                 for s, d in data.per_symbol.items()}
    by_symbol = {s: a for s, a in by_symbol.items() if a}
    if not by_symbol:
        return None
    total = {key: int(sum(a[key] for a in by_symbol.values()))
             for key in ("decisions", "in_position", "trades")}
    total["exposure"] = float(sum(a["exposure"] * a["decisions"] for a in by_symbol.values())
                              / total["decisions"])
    total["sharpe"] = float(np.mean([a["sharpe"] for a in by_symbol.values()]))
    return {**total, "by_symbol": by_symbol}


def trading_activity(model, part, candles: pd.DataFrame, strategy: Strategy,
                     funding: pd.DataFrame | None = None) -> dict | None:
    """How often ``strategy`` (resolved: its threshold and b set) trades over one data part:
    decisions, decisions with a position, trades, exposure. None for an empty part."""
    if len(part) == 0 or model.config["num_classes"] == 1:
        return None
    model.eval()
    logits = predict_in_batches(model, part.X).astype(np.float64)
    probabilities = softmax_rows(logits, model.temperature if strategy.calibrated else 1.0)
    periods = periods_per_year_from_index(candles["timestamp"])
    plan, result = _trade(candles, part.end_index, probabilities, strategy, funding, periods)
    return {"decisions": int(len(part)), "in_position": int(np.sum(plan.fraction > 0)),
            "trades": int(len(result.trades)),
            "exposure": float(np.mean(result.positions.to_numpy() != 0)),
            "sharpe": sharpe_ratio(result.returns.to_numpy(), periods)}
