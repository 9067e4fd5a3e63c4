"""Technical indicators (TA-Lib definitions) and the model's scale-free input channels.

``compute_indicators`` returns raw indicators aligned to the candles (NaN during each one's
warm-up). ``build_features`` turns them into ``FEATURE_NAMES``: ~20 channels without price
units, finite from row ``WARMUP_BARS`` on. Everything is strictly causal: row t reads only
candles 0..t (exponential averages start from a seed taken at a fixed offset from the series'
start, so appending candles never changes earlier rows).

Conventions (as TA-Lib): EMA(n) is seeded with the SMA of its first n inputs, then
``y_t = y_{t-1} + 2/(n+1) (x_t - y_{t-1})``; Wilder smoothing is the same with ``1/n``.
RSI, ATR, +DI/-DI and ADX use Wilder smoothing; MACD 12/26/9 (the fast EMA is seeded on the
slow one's start, as TA-Lib does); Stochastic 14 with a 3-bar SMA slow %K and a 3-bar SMA %D;
Bollinger 20 with 2 population standard deviations; Keltner = EMA 20 +- 2 ATR 10.
Degenerate cases where TA-Lib returns 0 (RSI or Stochastic with no price movement) give the
neutral 50 here. VWAP is rolling over ``VWAP_WINDOW`` = 24 bars of typical price (h+l+c)/3;
where those bars have no volume it falls back to the typical price.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

VWAP_WINDOW = 24

INDICATOR_NAMES: tuple[str, ...] = (
    "vwap", "volume_sma_20", "rsi_14", "macd", "macd_signal", "macd_hist", "stoch_k", "stoch_d",
    "atr_14", "bb_upper", "bb_middle", "bb_lower", "kc_upper", "kc_middle", "kc_lower",
    "ema_9", "ema_21", "ema_50", "ema_200", "adx_14", "plus_di_14", "minus_di_14",
)

FEATURE_NAMES: tuple[str, ...] = (
    "log_ret_1",        # log(c_t / c_{t-1})
    "log_ret_4",        # log(c_t / c_{t-4})
    "log_ret_16",       # log(c_t / c_{t-16})
    "log_ret_64",       # log(c_t / c_{t-64})
    "log_range",        # log(h / l)
    "log_body",         # log(c / o)
    "upper_wick",       # log(h / max(o, c))
    "lower_wick",       # log(min(o, c) / l)
    "atr_rel",          # atr_14 / c
    "rsi",              # rsi_14 / 50 - 1
    "stoch_k",          # stoch_k / 50 - 1
    "stoch_d",          # stoch_d / 50 - 1
    "macd_atr",         # macd / atr_14
    "macd_hist_atr",    # macd_hist / atr_14
    "bb_position",      # (c - bb_middle) / (bb_upper - bb_middle), ~[-1, 1] inside the bands
    "bb_width",         # (bb_upper - bb_lower) / bb_middle
    "kc_position",      # (c - kc_middle) / (kc_upper - kc_middle)
    "ema_9_21_atr",     # (ema_9 - ema_21) / atr_14
    "ema_50_dist_atr",  # (c - ema_50) / atr_14
    "ema_200_log",      # log(c / ema_200)
    "vwap_dist_atr",    # (c - vwap) / atr_14
    "adx",              # adx_14 / 50 - 1
    "di_balance",       # (plus_di - minus_di) / 100
    "volume_ratio",     # log1p(volume / volume_sma_20)
)

# first row where every feature is finite: EMA 200 is the longest warm-up (row 199)
WARMUP_BARS = 199


def _seeded_ewm(x: np.ndarray, n: int, alpha: float, seed_at: int | None = None) -> np.ndarray:
    """TA-Lib-style exponential average: SMA seed of n inputs, then ``y += alpha (x - y)``.

    The seed sits at ``first_valid + n - 1`` (or at ``seed_at`` if later) and is the mean of the
    n inputs ending there; earlier outputs are NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(x))
    if len(valid) == 0:
        return out
    seed = valid[0] + n - 1 if seed_at is None else max(valid[0] + n - 1, seed_at)
    if seed >= len(x):
        return out
    tail = x[seed:].copy()
    tail[0] = x[seed - n + 1 : seed + 1].mean()
    out[seed:] = pd.Series(tail).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    return out


def ema(x: np.ndarray, n: int, seed_at: int | None = None) -> np.ndarray:
    """Exponential moving average, ``alpha = 2 / (n + 1)``, SMA-seeded (TA-Lib EMA)."""
    return _seeded_ewm(x, n, 2.0 / (n + 1.0), seed_at)


def wilder(x: np.ndarray, n: int) -> np.ndarray:
    """Wilder's smoothing (RMA): ``alpha = 1 / n``, SMA-seeded on the first n valid inputs."""
    return _seeded_ewm(x, n, 1.0 / n)


def _sma(x: np.ndarray, n: int) -> np.ndarray:
    return pd.Series(x).rolling(n, min_periods=n).mean().to_numpy()


def _ratio(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den > 0, out, np.where(np.isnan(den) | np.isnan(num), np.nan, fill))


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """``max(h - l, |h - c_{t-1}|, |l - c_{t-1}|)``; NaN on the first bar (TA-Lib TRANGE)."""
    prev = np.concatenate(([np.nan], close[:-1]))
    return np.fmax(high - low, np.fmax(np.abs(high - prev), np.abs(low - prev))) + prev * 0.0


def rsi(close: np.ndarray, n: int = 14) -> np.ndarray:
    """RSI = 100 · G / (G + L), G and L Wilder averages of gains and losses; first at row n."""
    diff = np.diff(close, prepend=np.nan)
    gain = wilder(np.where(diff > 0, diff, 0.0) + diff * 0.0, n)
    loss = wilder(np.where(diff < 0, -diff, 0.0) + diff * 0.0, n)
    return _ratio(100.0 * gain, gain + loss, 50.0)


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> np.ndarray:
    """Average true range: Wilder average of the true range, first value at row n."""
    return wilder(true_range(high, low, close), n)


def directional(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14):
    """+DI, -DI (first at row n) and ADX (first at row 2n - 1), as TA-Lib.

    +DM = up move h_t - h_{t-1} when it beats the down move l_{t-1} - l_t and is positive
    (-DM symmetric). DM and TR are Wilder-summed from a seed of their first n - 1 values;
    DI = 100 · DM_s / TR_s, DX = 100 · |+DI - -DI| / (+DI + -DI), ADX = Wilder average of DX.
    """
    up = np.diff(high, prepend=np.nan)
    down = -np.diff(low, prepend=np.nan)
    plus_dm = np.where((up > down) & (up > 0), up, 0.0) + up * 0.0
    minus_dm = np.where((down > up) & (down > 0), down, 0.0) + up * 0.0
    tr = true_range(high, low, close)

    def wilder_sum(x: np.ndarray) -> np.ndarray:
        # TA-Lib: S = sum of x over rows 1..n-1, then S += x_t - S / n; as an average S / n
        # this is an ewm with alpha 1/n seeded at row n - 1 with sum(x[1:n]) / n
        out = np.full(len(x), np.nan)
        if len(x) > n:
            seeded = x[n - 1 :].copy()
            seeded[0] = x[1:n].sum() / n
            out[n - 1 :] = pd.Series(seeded).ewm(alpha=1.0 / n, adjust=False).mean().to_numpy()
        return out

    tr_s = wilder_sum(tr)
    plus_di = _ratio(100.0 * wilder_sum(plus_dm), tr_s, 0.0)
    minus_di = _ratio(100.0 * wilder_sum(minus_dm), tr_s, 0.0)
    plus_di[:n] = np.nan
    minus_di[:n] = np.nan
    dx = _ratio(100.0 * np.abs(plus_di - minus_di), plus_di + minus_di, 0.0)
    return plus_di, minus_di, wilder(dx, n)


def stochastic(high, low, close, n: int = 14, slow_k: int = 3, slow_d: int = 3):
    """Slow stochastic: fast %K = 100 (c - LL_n) / (HH_n - LL_n); %K = SMA_3(fast), %D = SMA_3(%K)."""
    hh = pd.Series(high).rolling(n, min_periods=n).max().to_numpy()
    ll = pd.Series(low).rolling(n, min_periods=n).min().to_numpy()
    fast = _ratio(100.0 * (close - ll), hh - ll, 50.0)
    # clip: pandas' running rolling sums drift by an ulp, and callers rely on [0, 100]
    k = np.clip(_sma(fast, slow_k), 0.0, 100.0)
    return k, np.clip(_sma(k, slow_d), 0.0, 100.0)


def compute_indicators(candles: pd.DataFrame) -> pd.DataFrame:
    """Raw indicators ``INDICATOR_NAMES`` for a candle frame, same index, NaN during warm-up."""
    o, h, low, c, v = (candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close",
                                                                 "volume"))
    del o
    out: dict[str, np.ndarray] = {}
    typical = (h + low + c) / 3.0
    pv = pd.Series(typical * v).rolling(VWAP_WINDOW, min_periods=VWAP_WINDOW).sum().to_numpy()
    vol_sum = pd.Series(v).rolling(VWAP_WINDOW, min_periods=VWAP_WINDOW).sum().to_numpy()
    out["vwap"] = np.where(vol_sum > 0, pv / np.where(vol_sum > 0, vol_sum, 1.0),
                           np.where(np.isnan(vol_sum), np.nan, typical))
    out["volume_sma_20"] = _sma(v, 20)
    out["rsi_14"] = rsi(c, 14)
    slow = ema(c, 26)
    fast = ema(c, 12, seed_at=25)
    out["macd"] = fast - slow
    out["macd_signal"] = ema(out["macd"], 9)
    out["macd_hist"] = out["macd"] - out["macd_signal"]
    out["stoch_k"], out["stoch_d"] = stochastic(h, low, c, 14, 3, 3)
    out["atr_14"] = atr(h, low, c, 14)
    middle = _sma(c, 20)
    std = pd.Series(c).rolling(20, min_periods=20).std(ddof=0).to_numpy()
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = middle + 2 * std, middle, middle - 2 * std
    kc_mid = ema(c, 20)
    atr10 = atr(h, low, c, 10)
    out["kc_upper"], out["kc_middle"], out["kc_lower"] = kc_mid + 2 * atr10, kc_mid, kc_mid - 2 * atr10
    for n in (9, 21, 50, 200):
        out[f"ema_{n}"] = ema(c, n)
    out["plus_di_14"], out["minus_di_14"], out["adx_14"] = directional(h, low, c, 14)
    return pd.DataFrame({name: out[name] for name in INDICATOR_NAMES}, index=candles.index)


def build_features(candles: pd.DataFrame, indicators: pd.DataFrame | None = None) -> pd.DataFrame:
    """The model's input channels ``FEATURE_NAMES`` (float64, same index as the candles).

    Rows before ``WARMUP_BARS`` contain NaN; later rows are finite for any valid candles
    (divisions by a zero ATR, band width or volume average give 0).
    """
    ind = compute_indicators(candles) if indicators is None else indicators
    o, h, low, c, v = (candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close",
                                                                 "volume"))
    log_c = np.log(c)

    def lagged_return(k: int) -> np.ndarray:
        out = np.full(len(c), np.nan)
        out[k:] = log_c[k:] - log_c[:-k]
        return out

    a = ind["atr_14"].to_numpy()
    col = {name: ind[name].to_numpy() for name in INDICATOR_NAMES}
    f = {
        "log_ret_1": lagged_return(1),
        "log_ret_4": lagged_return(4),
        "log_ret_16": lagged_return(16),
        "log_ret_64": lagged_return(64),
        "log_range": np.log(h / low),
        "log_body": np.log(c / o),
        "upper_wick": np.log(h / np.maximum(o, c)),
        "lower_wick": np.log(np.minimum(o, c) / low),
        "atr_rel": a / c,
        "rsi": col["rsi_14"] / 50.0 - 1.0,
        "stoch_k": col["stoch_k"] / 50.0 - 1.0,
        "stoch_d": col["stoch_d"] / 50.0 - 1.0,
        "macd_atr": _ratio(col["macd"], a, 0.0),
        "macd_hist_atr": _ratio(col["macd_hist"], a, 0.0),
        "bb_position": _ratio(c - col["bb_middle"], col["bb_upper"] - col["bb_middle"], 0.0),
        "bb_width": (col["bb_upper"] - col["bb_lower"]) / col["bb_middle"],
        "kc_position": _ratio(c - col["kc_middle"], col["kc_upper"] - col["kc_middle"], 0.0),
        "ema_9_21_atr": _ratio(col["ema_9"] - col["ema_21"], a, 0.0),
        "ema_50_dist_atr": _ratio(c - col["ema_50"], a, 0.0),
        "ema_200_log": np.log(c / col["ema_200"]),
        "vwap_dist_atr": _ratio(c - col["vwap"], a, 0.0),
        "adx": col["adx_14"] / 50.0 - 1.0,
        "di_balance": (col["plus_di_14"] - col["minus_di_14"]) / 100.0,
        "volume_ratio": np.log1p(_ratio(v, col["volume_sma_20"], 0.0)),
    }
    return pd.DataFrame({name: f[name] for name in FEATURE_NAMES}, index=candles.index)
