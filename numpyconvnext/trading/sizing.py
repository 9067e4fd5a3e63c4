"""Position sizing: fractional Kelly in risk units, bounded by a risk budget and an exposure cap.

Kelly for a bet won with probability ``q`` that pays ``b`` per unit risked (win/loss ratio):

    kelly(q, b) = (q * b - (1 - q)) / b = q - (1 - q) / b

is the fraction of equity to *risk*, i.e. to lose if the bet is lost. A trade with a stop is
such a bet: it risks ``stop_distance`` per unit (the loss if the stop is hit) and wins about
``b * stop_distance`` (b = take-profit / stop when a take-profit is set). So the units are

    risk     = min(kelly_fraction * max(kelly(q, b), 0), max_risk_per_trade)   (sizing "kelly")
             = max_risk_per_trade                                             (sizing "fixed")
    units    = min(risk * equity / stop_distance,  max_exposure * equity / price)
    fraction = units * price / equity          (the position's value over equity, <= max_exposure)

``kelly_fraction = 0.5`` is half Kelly; ``max_risk_per_trade = 0.02`` caps the loss at the stop
at 2 % of equity; ``max_exposure = 1.0`` means no leverage. Without a stop the whole position's
value is at risk (``stop_distance = price``), so the risk budget caps the position itself.

Which probability. A 3-class model gives p(Long), p(Short), p(Hold); a Long trade wins when
the price moves up, loses when it moves down, and about breaks even (pays costs) on Hold.
Maximising ``p_L log(1 + f b) + p_S log(1 - f)`` gives ``f = (p_L b - p_S) / (b (p_L + p_S))``:
Kelly with ``q = p_L / (p_L + p_S)`` (``win_probability``), the probability of the signalled
direction among the two directional outcomes.

Degenerate inputs never give a negative, NaN or infinite size; they give 0:
  * no edge (kelly <= 0), probability NaN;
  * stop_distance NaN (e.g. ATR warm-up), zero or negative: risk cannot be bounded, so we do
    not trade (pass ``stop_distance=None`` to size with the whole value at risk);
  * price or equity NaN, zero or negative.
Invalid *settings* (probability outside [0, 1], negative caps, win/loss ratio <= 0) raise
``ValueError``. Everything broadcasts over arrays; scalar inputs give a Python float.
"""

from __future__ import annotations

import numpy as np

SIZINGS = ("kelly", "fixed")


def _check_settings(
    win_loss_ratio: float, max_risk_per_trade: float, max_exposure: float, kelly_fraction: float,
    sizing: str = "kelly",
) -> None:
    if not (np.isfinite(win_loss_ratio) and win_loss_ratio > 0):
        raise ValueError(f"win_loss_ratio must be positive and finite, got {win_loss_ratio}")
    if not (np.isfinite(max_risk_per_trade) and max_risk_per_trade >= 0):
        raise ValueError(f"max_risk_per_trade must be >= 0, got {max_risk_per_trade}")
    if not (np.isfinite(max_exposure) and max_exposure >= 0):
        raise ValueError(f"max_exposure must be >= 0, got {max_exposure}")
    if not (np.isfinite(kelly_fraction) and kelly_fraction >= 0):
        raise ValueError(f"kelly_fraction must be >= 0, got {kelly_fraction}")
    if sizing not in SIZINGS:
        raise ValueError(f"sizing must be one of {', '.join(SIZINGS)}, got {sizing!r}")


def kelly_criterion(probability: np.ndarray | float, win_loss_ratio: float = 2.0) -> np.ndarray:
    """Full Kelly fraction ``(p*b - (1-p)) / b``; may be negative (no edge). Broadcasts."""
    p = np.asarray(probability, dtype=np.float64)
    b = float(win_loss_ratio)
    return (p * b - (1.0 - p)) / b


def win_probability(probabilities: np.ndarray, side: np.ndarray) -> np.ndarray:
    """``q = p[side] / (p_long + p_short)`` per row of ``[N, 3]`` probabilities (side 0 Long,
    1 Short; other sides give NaN). NaN where both directional probabilities are 0."""
    p = np.asarray(probabilities, dtype=np.float64)
    side = np.asarray(side, dtype=np.int64)
    directional = p[..., 0] + p[..., 1]
    chosen = np.where(side == 0, p[..., 0], np.where(side == 1, p[..., 1], np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(directional > 0, chosen / directional, np.nan)


def risk_fraction(
    probability: np.ndarray | float,
    win_loss_ratio: float = 2.0,
    max_risk_per_trade: float = 0.02,
    kelly_fraction: float = 0.5,
    sizing: str = "kelly",
) -> np.ndarray | float:
    """The fraction of equity risked at the stop: ``min(kelly_fraction * max(kelly, 0),
    max_risk_per_trade)`` (sizing "kelly") or ``max_risk_per_trade`` (sizing "fixed", where a
    NaN probability still means no trade); 0 for a NaN probability."""
    _check_settings(win_loss_ratio, max_risk_per_trade, 1.0, kelly_fraction, sizing)
    p = np.asarray(probability, dtype=np.float64)
    finite_p = p[np.isfinite(p)]
    if finite_p.size and (finite_p.min() < 0.0 or finite_p.max() > 1.0):
        raise ValueError("probability must be in [0, 1]")
    with np.errstate(invalid="ignore"):
        if sizing == "fixed":
            risk = np.where(np.isfinite(p), max_risk_per_trade, 0.0)
        else:
            kelly = kelly_fraction * np.maximum(kelly_criterion(p, win_loss_ratio), 0.0)
            risk = np.minimum(np.where(np.isfinite(kelly), kelly, 0.0), max_risk_per_trade)
    risk = np.maximum(risk, 0.0)
    return float(risk) if risk.ndim == 0 else risk


def position_fraction(
    probability: np.ndarray | float,
    price: np.ndarray | float = 1.0,
    stop_distance: np.ndarray | float | None = None,
    win_loss_ratio: float = 2.0,
    max_risk_per_trade: float = 0.02,
    max_exposure: float = 1.0,
    kelly_fraction: float = 0.5,
    sizing: str = "kelly",
) -> np.ndarray | float:
    """Fraction of equity to hold (notional / equity), in ``[0, max_exposure]``:
    ``min(risk * price / stop_distance, max_exposure)`` with ``risk = risk_fraction(...)`` and
    ``stop_distance = price`` when None; 0 for degenerate inputs (see the module docstring)."""
    _check_settings(win_loss_ratio, max_risk_per_trade, max_exposure, kelly_fraction, sizing)
    risk = np.asarray(risk_fraction(probability, win_loss_ratio, max_risk_per_trade,
                                    kelly_fraction, sizing))
    px = np.asarray(price, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        stop = px if stop_distance is None else np.asarray(stop_distance, dtype=np.float64)
        fraction = np.minimum(risk * px / stop, max_exposure)
        valid = (np.isfinite(px) & (px > 0.0) & np.isfinite(stop) & (stop > 0.0)
                 & np.isfinite(fraction))
        fraction = np.where(valid, fraction, 0.0)
    fraction = np.maximum(fraction, 0.0)  # also turns -0.0 into 0.0
    return float(fraction) if fraction.ndim == 0 else fraction


def position_size(
    equity: np.ndarray | float,
    price: np.ndarray | float,
    probability: np.ndarray | float,
    win_loss_ratio: float = 2.0,
    stop_distance: np.ndarray | float | None = None,
    max_risk_per_trade: float = 0.02,
    max_exposure: float = 1.0,
    kelly_fraction: float = 0.5,
    sizing: str = "kelly",
) -> np.ndarray | float:
    """Units to hold: ``min(risk * equity / stop_distance, max_exposure * equity / price)``
    (``position_fraction(...) * equity / price``); 0 if equity or price invalid."""
    fraction = position_fraction(
        probability, price, stop_distance, win_loss_ratio, max_risk_per_trade, max_exposure,
        kelly_fraction, sizing,
    )
    eq = np.asarray(equity, dtype=np.float64)
    px = np.asarray(price, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        units = np.asarray(fraction) * eq / px
        ok = np.isfinite(eq) & (eq > 0.0) & np.isfinite(px) & (px > 0.0) & np.isfinite(units)
    units = np.maximum(np.where(ok, units, 0.0), 0.0)
    return float(units) if units.ndim == 0 else units


def average_true_range(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14
) -> np.ndarray:
    """Wilder's ATR, causal: value t uses bars 0..t only; NaN for the first ``period - 1`` bars.

    TR_0 = high_0 - low_0
    TR_t = max(high_t - low_t, |high_t - close_{t-1}|, |low_t - close_{t-1}|)
    ATR_{period-1} = mean(TR_0..TR_{period-1})
    ATR_t = (ATR_{t-1} * (period - 1) + TR_t) / period
    """
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    n = h.shape[0]
    tr = h - lo
    if n > 1:
        prev = c[:-1]
        tr[1:] = np.maximum(tr[1:], np.maximum(np.abs(h[1:] - prev), np.abs(lo[1:] - prev)))
    atr = np.full(n, np.nan)
    if n < period:
        return atr
    atr[period - 1] = tr[:period].mean()
    for t in range(period, n):  # a recursion; 40k steps of plain float math is a few ms
        atr[t] = (atr[t - 1] * (period - 1) + tr[t]) / period
    return atr
