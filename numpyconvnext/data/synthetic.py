"""An offline market: synthetic candles with the stylised facts of crypto, deterministic by seed.

Model (``kind="market"``), per bar t with log return r_t:

    regime s_t in {calm, turbulent}: a Markov chain; mean stays ``regime_days`` (60 d, 20 d)
    sigma_t^2 = omega + alpha * e_{t-1}^2 + beta * sigma_{t-1}^2          GARCH(1,1)
    omega = sigma_bar^2 (1 - alpha - beta),  sigma_bar = annual_vol / sqrt(bars per year)
    e_t   = sigma_t * z_t,   z_t ~ Student-t(df), rescaled to unit variance
    r_t   = drift[s_t] + a * sigma_t * tanh(m_t) + vol_mult[s_t] * e_t
    m_t   = (r_{t-L} + ... + r_{t-1}) / (sigma_t * sqrt(L))                  the planted signal

``a = planted_signal_strength`` (default 0: no pattern) plants a *momentum* pattern: the
expected next return is a·sigma_t·tanh(m_t), where m_t is the volatility-scaled return of the
previous ``signal_lookback`` bars, a quantity any model sees in its input window (negative ``a``
plants mean reversion). Over a horizon of h bars the forward return's mean is about
h·a·sigma·tanh(m) against noise sigma·sqrt(h), so a = 0.2 with h = 8 is clearly learnable.

Candles: open = previous close; high/low are the extremes of a 16-step Brownian bridge from open
to close with the bar's volatility (so low <= min(open, close) <= max(open, close) <= high);
volume = base · (bar vol / sigma_bar) · (0.5 + |z_t|) · LogNormal(0, 0.3), so volume rises with
volatility; turnover = volume · (o + h + l + c) / 4.

``kind="random_walk"``: i.i.d. Gaussian returns with constant volatility and no regimes (the
planted signal still applies when ``a != 0``): the "nothing to learn" control.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

from .candles import make_candles
from .intervals import bar_range, interval_to_timedelta, periods_per_year

_BRIDGE_STEPS = 16


@njit(cache=True)
def _simulate_returns(z, u, omega, alpha, beta, drift, vol_mult, p_leave, strength, lookback):
    """Sequential part of the model: regimes, GARCH variance, planted momentum, returns."""
    n = z.shape[0]
    r = np.empty(n)
    bar_vol = np.empty(n)
    regime = np.empty(n, dtype=np.int8)
    var = omega / max(1.0 - alpha - beta, 1e-12)
    shock = 0.0
    state = 0
    window_sum = 0.0
    for t in range(n):
        if t > 0:
            var = omega + alpha * shock * shock + beta * var
            if u[t] < p_leave[state]:
                state = 1 - state
        sigma = np.sqrt(var)
        k = min(t, lookback)
        momentum = 0.0
        if k > 0:
            momentum = window_sum / (sigma * np.sqrt(k))
        shock = sigma * z[t]  # GARCH sees the regime-free shock, so regimes cannot make it explode
        r[t] = drift[state] + strength * sigma * np.tanh(momentum) + vol_mult[state] * shock
        bar_vol[t] = vol_mult[state] * sigma
        regime[t] = state
        window_sum += r[t]
        if t >= lookback:
            window_sum -= r[t - lookback]
    return r, bar_vol, regime


def synthetic_candles(
    n_bars: int,
    interval: str = "1h",
    seed: int = 0,
    start: str | pd.Timestamp = "2020-01-01",
    *,
    kind: str = "market",
    planted_signal_strength: float = 0.0,
    signal_lookback: int = 24,
    start_price: float = 30_000.0,
    annual_vol: float = 0.65,
    garch_alpha: float = 0.08,
    garch_beta: float = 0.90,
    student_df: float = 4.5,
    regime_days: tuple[float, float] = (60.0, 20.0),
    regime_drift_annual: tuple[float, float] = (0.6, -0.9),
    regime_vol_mult: tuple[float, float] = (0.8, 1.6),
    base_volume: float = 1_000.0,
    return_regimes: bool = False,
) -> pd.DataFrame:
    """``n_bars`` synthetic candles in the project's candle format (see the module docstring).

    Same ``seed`` and arguments give identical candles. With ``return_regimes`` the frame has an
    extra int8 column ``regime`` (0 calm, 1 turbulent) for tests and plots.
    """
    if kind not in ("market", "random_walk"):
        raise ValueError(f"unknown kind {kind!r}; use 'market' or 'random_walk'")
    if n_bars < 1:
        raise ValueError("n_bars must be >= 1")
    rng = np.random.default_rng(seed)
    bars_per_year = periods_per_year(interval)
    sigma_bar = annual_vol / np.sqrt(bars_per_year)
    if kind == "market":
        z = rng.standard_t(student_df, n_bars) / np.sqrt(student_df / (student_df - 2.0))
        alpha, beta = garch_alpha, garch_beta
        bar_days = interval_to_timedelta(interval) / pd.Timedelta(days=1)
        p_leave = np.minimum(bar_days / np.asarray(regime_days, dtype=np.float64), 1.0)
        drift = np.asarray(regime_drift_annual, dtype=np.float64) / bars_per_year
        vol_mult = np.asarray(regime_vol_mult, dtype=np.float64)
    else:
        z = rng.standard_normal(n_bars)
        alpha = beta = 0.0
        p_leave, drift, vol_mult = np.zeros(2), np.zeros(2), np.ones(2)
    u = rng.random(n_bars)
    omega = sigma_bar**2 * (1.0 - alpha - beta)
    r, bar_vol, regime = _simulate_returns(
        z, u, omega, alpha, beta, drift, vol_mult, p_leave, float(planted_signal_strength),
        int(signal_lookback),
    )
    close = start_price * np.exp(np.cumsum(r))
    open_ = np.concatenate(([start_price], close[:-1]))

    # Brownian bridge in log price from 0 (open) to r_t (close), with the bar's volatility
    steps = rng.standard_normal((n_bars, _BRIDGE_STEPS)) * (bar_vol / np.sqrt(_BRIDGE_STEPS))[:, None]
    walk = np.cumsum(steps, axis=1)
    frac = np.arange(1, _BRIDGE_STEPS + 1) / _BRIDGE_STEPS
    bridge = walk - frac * (walk[:, -1:] - r[:, None])
    high = open_ * np.exp(np.maximum(bridge.max(axis=1), 0.0))
    low = open_ * np.exp(np.minimum(bridge.min(axis=1), 0.0))
    high = np.maximum(high, np.maximum(open_, close))  # exp rounding must not break OHLC order
    low = np.minimum(low, np.minimum(open_, close))

    noise = rng.lognormal(0.0, 0.3, n_bars)
    volume = base_volume * (bar_vol / sigma_bar) * (0.5 + np.abs(z)) * noise
    turnover = volume * (open_ + high + low + close) / 4.0

    stamps = bar_range(pd.Timestamp(start), n_bars, interval)
    candles = make_candles(
        stamps.as_unit("ns").asi8 // 1_000_000,
        np.column_stack([open_, high, low, close, volume, turnover]),
    )
    if return_regimes:
        candles["regime"] = regime
    return candles
