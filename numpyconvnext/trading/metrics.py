"""Performance metrics of an equity curve and a trade list.

Conventions:
  * ``returns`` are per-bar simple returns ``r_t = E_t / E_{t-1} - 1`` of the equity curve;
    the risk-free rate is 0; annualisation uses ``P = periods_per_year`` (1h crypto: 365*24).
  * Sharpe   = mean(r) / std(r, ddof=1) * sqrt(P)                   (0 if < 2 returns or std 0)
  * Sortino  = mean(r) / DD * sqrt(P),  DD = sqrt(mean(min(r, 0)^2)) over ALL bars
               (inf if DD = 0 and mean > 0, 0 if DD = 0 and mean <= 0, 0 for no returns)
  * Max drawdown = min_t (E_t / max_{s<=t} E_s - 1) <= 0, e.g. -0.124
  * Total return = E_last / E_first - 1
  * CAGR     = (E_last / E_first) ^ (P / (len(E) - 1)) - 1   (the curve spans len(E)-1 bars;
               -1 if the equity reached 0; 0 for fewer than 2 points)
  * Win rate = #(pnl > 0) / #trades                              (0 for no trades)
  * Profit factor = sum(pnl > 0) / |sum(pnl < 0)|  (inf if no losses but some profit,
               0 if no profit, which includes no trades: every metric is NaN-free)
  * Exposure = fraction of bars with a non-zero position (at the bar's close)
  * Calmar   = CAGR / |max drawdown|  (inf if no drawdown and CAGR > 0, 0 if no drawdown otherwise)
  * Avg win / avg loss = mean(trade returns > 0) / |mean(trade returns < 0)|  (inf if wins but
               no losses, 0 if no wins); trade return = net pnl / entry value of the position
  * Expectancy = mean trade return (net of costs), per trade, as a fraction of the position
  * Longest drawdown = the most bars spent below a previous equity high (from the bar after the
               peak to the bar before the new high, or to the end if never recovered)
  * Monthly returns: equity at each calendar month's last bar over the previous month's (the
               first month from the first equity value), compounded per year (``monthly_returns``)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

SECONDS_PER_YEAR = 365 * 24 * 3600


def _as_array(values: np.ndarray | pd.Series) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


def periods_per_year_from_index(timestamps: pd.DatetimeIndex | pd.Series | np.ndarray) -> float:
    """Bars per (365-day) year from the median spacing of the timestamps: 1h -> 8760."""
    ts = pd.DatetimeIndex(timestamps)
    if len(ts) < 2:
        raise ValueError("need at least two timestamps to infer the bar interval")
    step_s = float(np.median((ts[1:] - ts[:-1]).total_seconds()))
    if not step_s > 0:
        raise ValueError("timestamps must be strictly increasing")
    return SECONDS_PER_YEAR / step_s


def returns_from_equity(equity: np.ndarray | pd.Series) -> np.ndarray:
    """Per-bar simple returns ``E_t / E_{t-1} - 1`` (length len(E) - 1)."""
    e = _as_array(equity)
    return e[1:] / e[:-1] - 1.0


def total_return(equity: np.ndarray | pd.Series) -> float:
    """``E_last / E_first - 1``."""
    e = _as_array(equity)
    return float(e[-1] / e[0] - 1.0) if e.size else 0.0


def sharpe_ratio(returns: np.ndarray | pd.Series, periods_per_year: float) -> float:
    """``mean(r) / std(r, ddof=1) * sqrt(P)``; 0 for fewer than 2 returns or zero volatility."""
    r = _as_array(returns)
    if r.size < 2:
        return 0.0
    std = r.std(ddof=1)
    if not std > 0:
        return 0.0
    return float(r.mean() / std * math.sqrt(periods_per_year))


def sortino_ratio(returns: np.ndarray | pd.Series, periods_per_year: float) -> float:
    """``mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(P)``, downside deviation over ALL bars."""
    r = _as_array(returns)
    if r.size == 0:
        return 0.0
    mean = r.mean()
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if downside == 0.0:
        return math.inf if mean > 0 else 0.0
    return float(mean / downside * math.sqrt(periods_per_year))


def max_drawdown(equity: np.ndarray | pd.Series) -> float:
    """``min_t (E_t / running_max(E)_t - 1)``: 0 or negative (-0.124 is a 12.4% drawdown)."""
    e = _as_array(equity)
    if e.size == 0:
        return 0.0
    return float(np.min(e / np.maximum.accumulate(e) - 1.0))


def cagr(equity: np.ndarray | pd.Series, periods_per_year: float) -> float:
    """``(E_last / E_first) ^ (P / (len(E) - 1)) - 1``: the curve spans ``len(E) - 1`` bars."""
    e = _as_array(equity)
    if e.size < 2:
        return 0.0
    growth = e[-1] / e[0]
    if growth <= 0:
        return -1.0
    return float(growth ** (periods_per_year / (e.size - 1)) - 1.0)


def win_rate(trade_pnls: np.ndarray | pd.Series) -> float:
    """Share of trades with pnl > 0 (0 for no trades)."""
    p = _as_array(trade_pnls)
    return float(np.mean(p > 0)) if p.size else 0.0


def profit_factor(trade_pnls: np.ndarray | pd.Series) -> float:
    """Gross profit / gross loss; inf if no losses (but a profit), 0 if no profit or no trades."""
    p = _as_array(trade_pnls)
    gross_profit = float(p[p > 0].sum())
    gross_loss = float(-p[p < 0].sum())
    if gross_profit == 0.0:
        return 0.0
    if gross_loss == 0.0:
        return math.inf
    return gross_profit / gross_loss


def exposure(positions: np.ndarray | pd.Series) -> float:
    """Fraction of bars with a non-zero position."""
    x = _as_array(positions)
    return float(np.mean(x != 0)) if x.size else 0.0


def calmar_ratio(equity: np.ndarray | pd.Series, periods_per_year: float) -> float:
    """``CAGR / |max drawdown|``; inf for no drawdown with growth, 0 for no drawdown otherwise."""
    growth = cagr(equity, periods_per_year)
    drawdown = max_drawdown(equity)
    if drawdown == 0.0:
        return math.inf if growth > 0 else 0.0
    return growth / -drawdown


def win_loss_ratio(trade_returns: np.ndarray | pd.Series) -> float:
    """Average win over average loss (both positive numbers): ``mean(r > 0) / |mean(r < 0)|``;
    inf with wins and no losses, 0 with no wins (including no trades)."""
    r = _as_array(trade_returns)
    wins, losses = r[r > 0], r[r < 0]
    if wins.size == 0:
        return 0.0
    if losses.size == 0:
        return math.inf
    return float(wins.mean() / -losses.mean())


def expectancy(trade_returns: np.ndarray | pd.Series) -> float:
    """Mean net return per trade (0 for no trades)."""
    r = _as_array(trade_returns)
    return float(r.mean()) if r.size else 0.0


def longest_drawdown_bars(equity: np.ndarray | pd.Series) -> int:
    """The longest run of consecutive bars whose equity is below the running maximum."""
    e = _as_array(equity)
    if e.size == 0:
        return 0
    below = e < np.maximum.accumulate(e)
    if not below.any():
        return 0
    # lengths of the runs of True
    edges = np.diff(np.concatenate(([0], below.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((stops - starts).max())


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def monthly_returns(equity: pd.Series) -> pd.DataFrame:
    """Calendar-month returns of an equity curve indexed by timestamps: one row per year, columns
    ``Jan .. Dec`` and ``Year`` (the months compounded), NaN where a month has no bars.

    Month m's return is ``E(last bar of m) / E(last bar of the month before) - 1``; the first
    month is measured from the curve's first value.
    """
    index = pd.DatetimeIndex(equity.index)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    values = pd.Series(_as_array(equity), index=index)
    if values.empty:
        return pd.DataFrame(columns=[*MONTHS, "Year"], dtype=np.float64)
    month_end = values.groupby(index.to_period("M")).last()
    previous = month_end.shift(1)
    previous.iloc[0] = values.iloc[0]
    returns = month_end / previous - 1.0
    table = pd.DataFrame(np.nan, index=sorted({p.year for p in returns.index}),
                         columns=[*MONTHS, "Year"])
    for period, value in returns.items():
        table.loc[period.year, MONTHS[period.month - 1]] = value
    for year in table.index:
        months = table.loc[year, list(MONTHS)].dropna()
        table.loc[year, "Year"] = float(np.prod(1.0 + months.to_numpy()) - 1.0)
    table.index.name = "year"
    return table


@dataclass(frozen=True)
class BacktestMetrics:
    """Summary of one backtest. Ratios are fractions (0.05 = 5%); durations are in bars."""

    total_return: float
    cagr: float
    sharpe_ratio: float
    sortino_ratio: float
    max_drawdown: float
    win_rate: float
    profit_factor: float
    avg_trade_duration: float
    total_trades: int
    exposure: float
    calmar_ratio: float = 0.0
    avg_win_loss: float = 0.0
    expectancy: float = 0.0
    longest_drawdown_bars: int = 0

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict, field order preserved (JSON-safe except ``inf`` profit factor/Sortino)."""
        return asdict(self)


def compute_metrics(
    equity: np.ndarray | pd.Series,
    positions: np.ndarray | pd.Series,
    trade_pnls: np.ndarray | pd.Series,
    trade_durations: np.ndarray | pd.Series,
    periods_per_year: float,
    trade_returns: np.ndarray | pd.Series | None = None,
) -> BacktestMetrics:
    """All metrics from an equity curve, per-bar positions and the trades' net pnl/duration
    (and net returns, for the win/loss ratio and expectancy; the pnl stands in without them)."""
    returns = returns_from_equity(equity)
    durations = _as_array(trade_durations)
    per_trade = trade_pnls if trade_returns is None else trade_returns
    return BacktestMetrics(
        total_return=total_return(equity),
        cagr=cagr(equity, periods_per_year),
        sharpe_ratio=sharpe_ratio(returns, periods_per_year),
        sortino_ratio=sortino_ratio(returns, periods_per_year),
        max_drawdown=max_drawdown(equity),
        win_rate=win_rate(trade_pnls),
        profit_factor=profit_factor(trade_pnls),
        avg_trade_duration=float(durations.mean()) if durations.size else 0.0,
        total_trades=int(_as_array(trade_pnls).size),
        exposure=exposure(positions),
        calmar_ratio=calmar_ratio(equity, periods_per_year),
        avg_win_loss=win_loss_ratio(per_trade),
        expectancy=expectancy(per_trade),
        longest_drawdown_bars=longest_drawdown_bars(equity),
    )


def _pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}"


_ROWS = (
    ("Total return", "total_return", _pct),
    ("CAGR", "cagr", _pct),
    ("Sharpe", "sharpe_ratio", _num),
    ("Sortino", "sortino_ratio", _num),
    ("Max drawdown", "max_drawdown", lambda x: f"{x * 100:.2f}%"),
    ("Win rate", "win_rate", lambda x: f"{x * 100:.1f}%"),
    ("Profit factor", "profit_factor", _num),
    ("Calmar", "calmar_ratio", _num),
    ("Avg win / avg loss", "avg_win_loss", _num),
    ("Expectancy / trade", "expectancy", lambda x: f"{x * 100:+.3f}%"),
    ("Trades", "total_trades", lambda x: f"{int(x)}"),
    ("Avg duration", "avg_trade_duration", lambda x: f"{x:.1f} bars"),
    ("Longest drawdown", "longest_drawdown_bars", lambda x: f"{int(x)} bars"),
    ("Exposure", "exposure", lambda x: f"{x * 100:.1f}%"),
)


def format_comparison_table(
    model_metrics: BacktestMetrics,
    benchmark_metrics: BacktestMetrics,
    model_name: str = "Model",
    benchmark_name: str = "Buy & hold",
    title: str = "Metric",
) -> str:
    """A fixed-width text table: one row per metric, columns Model and Buy & hold. ``title``
    heads the first column (e.g. ``"Metric (IN-SAMPLE)"``)."""
    rows = [(title, model_name, benchmark_name)]
    for label, field, fmt in _ROWS:
        rows.append((label, fmt(getattr(model_metrics, field)),
                     fmt(getattr(benchmark_metrics, field))))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in rows]
    lines.insert(1, "-" * (w0 + w1 + w2 + 4))
    return "\n".join(lines)
