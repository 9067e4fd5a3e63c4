"""Trading library: the strategy (signals from calibrated probabilities, Kelly sizing in risk
units, stops, costs), backtest with funding, paper trading, metrics and the IN-SAMPLE check.

Class order everywhere: 0 = Long, 1 = Short, 2 = Hold. A decision made at bar t's close is
filled at bar t+1's open.
"""

from .backtest import (
    DEFAULT_FEE_RATE,
    DEFAULT_SLIPPAGE,
    Backtester,
    BacktestResult,
    backtest,
    buy_and_hold,
    targets_from_signals,
)
from .metrics import (
    BacktestMetrics,
    cagr,
    calmar_ratio,
    compute_metrics,
    expectancy,
    exposure,
    format_comparison_table,
    longest_drawdown_bars,
    max_drawdown,
    monthly_returns,
    periods_per_year_from_index,
    profit_factor,
    sharpe_ratio,
    sortino_ratio,
    total_return,
    win_loss_ratio,
    win_rate,
)
from .paper import PaperAccount
from .signals import Signal, generate_signal, generate_signals, signal_direction
from .sizing import (
    average_true_range,
    kelly_criterion,
    position_fraction,
    position_size,
    risk_fraction,
    win_probability,
)
from .strategy import (
    CATEGORIES,
    DEFAULT_FEE_RATES,
    PositionPlan,
    Strategy,
    plan_positions,
    run_directions,
    run_strategy,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_FEE_RATE",
    "DEFAULT_FEE_RATES",
    "PaperAccount",
    "PositionPlan",
    "Strategy",
    "calmar_ratio",
    "expectancy",
    "longest_drawdown_bars",
    "monthly_returns",
    "plan_positions",
    "risk_fraction",
    "run_directions",
    "run_strategy",
    "win_loss_ratio",
    "win_probability",
    "DEFAULT_SLIPPAGE",
    "Backtester",
    "BacktestMetrics",
    "BacktestResult",
    "Signal",
    "average_true_range",
    "backtest",
    "buy_and_hold",
    "cagr",
    "compute_metrics",
    "exposure",
    "format_comparison_table",
    "generate_signal",
    "generate_signals",
    "kelly_criterion",
    "max_drawdown",
    "periods_per_year_from_index",
    "position_fraction",
    "position_size",
    "profit_factor",
    "sharpe_ratio",
    "signal_direction",
    "sortino_ratio",
    "targets_from_signals",
    "total_return",
    "win_rate",
]
