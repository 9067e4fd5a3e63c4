"""The evaluation report as people read it: report.md and the two pictures (equity.png,
sharpe_by_fold.png). Everything here is formatting of the dict ``evaluate.build_report`` makes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from numpyconvnext.plots import bar_chart, equity_and_drawdown

_TARGET_TEXT = {"direction_accuracy": ("Direction accuracy", "> 55%"),
                "sharpe": ("Sharpe (annualised)", "> 1.5"),
                "max_drawdown": ("Max drawdown", "better than -15%")}


def _pct(value, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:{'+' if sign else ''}.{digits}f}%"


def _num(value, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return "∞" if value == "inf" else value
    return f"{value:{'+' if sign else ''}.{digits}f}"


def _interval(ci, fmt) -> str:
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _rows() -> list[tuple[str, callable]]:
    return [
        ("Sharpe (ann.) [95% CI]", lambda f: _num(f["sharpe"]) + _interval(f["sharpe_ci"], _num)),
        ("Model − this Sharpe [95% CI]", lambda f: "—" if "sharpe_diff_vs_model" not in f else
         _num(f["sharpe_diff_vs_model"], sign=True) + _interval(f["sharpe_diff_vs_model_ci"], _num)),
        ("Deflated Sharpe P[SR>0]", lambda f: _num(f["deflated_sharpe"], 3)),
        ("PSR P[SR>0], no deflation", lambda f: _num(f["psr"], 3)),
        ("Direction accuracy [95% Wilson, n_eff]", lambda f: _pct(f["direction_accuracy"])
         + _interval(f["direction_accuracy_ci"], lambda v: f"{100 * v:.1f}")
         + (f" (n={f['direction_calls']}, n_eff={f['direction_calls_effective']:.0f})"
            if f["direction_calls"] else "")),
        ("Total return", lambda f: _pct(f["total_return"], sign=True)),
        ("Max drawdown", lambda f: _pct(f["max_drawdown"])),
        ("Calmar", lambda f: _num(f["calmar"])),
        ("Longest drawdown (bars)", lambda f: str(f["longest_drawdown_bars"])),
        ("Profit factor", lambda f: _num(f["profit_factor"])),
        ("Win rate", lambda f: _pct(f["win_rate"])),
        ("Avg win / avg loss", lambda f: _num(f["avg_win_loss"])),
        ("Expectancy (per trade, of its value)", lambda f: _pct(f["expectancy"], 3, sign=True)),
        ("Trades", lambda f: str(f["trades"])),
        ("Turnover (× equity / year)", lambda f: f"{f['turnover_per_year']:.0f}"),
        ("Fees paid (% of 10k start per block)", lambda f: _pct(f["fees_paid"])),
        ("Funding paid (% of 10k start per block)", lambda f: _pct(f["funding_paid"], 2)),
        ("Exposure (decisions in a position)", lambda f: _pct(f["exposure"], 0)),
    ]


def _target_cell(report: dict, label: str) -> str:
    for key, (name, text) in _TARGET_TEXT.items():
        if label.startswith(name.split(" (")[0]):
            met = report["targets"][key]["met"]
            return f"{text} {'✅ met' if met else '❌ not met'}"
    return ""


def _table(strategies: dict, labels: dict, report: dict | None = None) -> str:
    names = list(labels)
    header = ["Metric", *(labels[n] for n in names)] + (["Spec target (model)"] if report else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, fmt in _rows():
        cells = [label, *(fmt(strategies[n]) for n in names)]
        if report:
            cells.append(_target_cell(report, label))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _monthly_markdown(monthly: dict) -> str:
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    lines = ["| Year | " + " | ".join(months) + " | Year |", "|---|" + "---:|" * 13]
    for year, row in monthly.items():
        cells = [_pct(row.get(m), 1, sign=True) if row.get(m) is not None else "" for m in months]
        lines.append(f"| {year} | " + " | ".join(cells) + f" | {_pct(row.get('Year'), 1, sign=True)} |")
    return "\n".join(lines)


def _choice_line(choice: dict) -> str:
    if not choice:
        return ""
    grid = choice.get("grid") or []
    tried = ", ".join(f"{row['confidence']:g}: {row['sharpe']:+.2f}" for row in grid)
    temperature = choice.get("temperature")
    parts = [f"temperature {temperature:.2f}" if temperature is not None else "no calibration",
             f"confidence {choice['confidence_used']:g}"
             + (f" (validation Sharpe by threshold: {tried})" if tried else " (given)"),
             f"payoff ratio b {choice['win_loss_ratio_used']:.2f}"
             + (f" ({choice['payoff_source']})" if choice.get("payoff_source") else "")]
    return "Strategy: " + "; ".join(parts) + "."


def render_markdown(report: dict) -> str:
    """report.md: verdict, how to rerun, pooled table, monthly returns, targets, per-fold tables,
    definitions."""
    config, data, labels = report["config"], report["data"], report["strategies"]
    source = report["source"]
    symbol, interval = source.get("symbol", "data"), source.get("interval", "")
    model = config["variant"] if config["dims"] is None else \
        f"custom dims {config['dims']} depths {config['depths']}"
    version = report["version"]
    where = source.get("path") or f"{source.get('kind')} (seed {source.get('seed')})"
    trials = report.get("trials") or {}
    placebo = ("\n**PLACEBO RUN: training and validation labels were permuted in every fold; any "
               "edge shown here is luck.**\n" if config.get("placebo") else "")
    lines = [
        f"# Walk-forward evaluation: {symbol} {report.get('category', '')} {interval}",
        placebo,
        f"**Verdict.** {report['verdict']['text']}",
        "",
        "## How to rerun",
        "",
        f"```\n{report['command']}\n```",
        "",
        f"- Data: {where}, {data['bars']:,} candles {data['first'][:16]} .. {data['last'][:16]} UTC "
        f"(content sha256 {data['sha256'][:12]}…)",
        f"- Market: {report.get('category', 'linear')}; {report.get('funding', '')}",
        f"- Test blocks: {report['test_period'][0][:16]} .. {report['test_period'][1][:16]} UTC, "
        f"{config['folds']} walk-forward folds ({config['mode']} training window), each "
        f"train | purge | validation | purge | test with purge gaps of window + horizon = "
        f"{config['window'] + config['horizon']} bars",
        f"- Model: ConvNeXt1D {model}, {config['epochs']} epochs, batch {config['batch_size']}, "
        f"learning rate {config['learning_rate']:g}, window {config['window']} bars, label horizon "
        f"{config['horizon']} bars; each fold keeps the checkpoint with the lowest validation loss, "
        f"then calibrates it on the validation block (temperature scaling)",
        f"- Strategy (the one `backtest` and `live` trade): {report['strategy_description']}. "
        f"Decided at bar t's close, filled at bar t+1's open; each block starts flat with 10,000 "
        f"and ends flat",
        f"- Deflated Sharpe: {trials.get('text', 'N = 1')}",
        f"- Seed {config['seed']}; numpyconvnext {version['numpyconvnext']} (git "
        f"{version['git_commit']}), Python {version['python']}, NumPy {version['numpy']}; "
        f"created {report['created']}",
        "",
        f"## Pooled over all {config['folds']} test blocks",
        "",
        _table(report["pooled"], labels, report),
        "",
        "![Equity of the strategy and the baselines over the joined test blocks](equity.png)",
        "",
        "![Sharpe ratio per fold](sharpe_by_fold.png)",
        "",
        "## Monthly returns of the strategy (joined test blocks, after costs and funding)",
        "",
        _monthly_markdown(report.get("monthly_returns") or {}),
        "",
        "## Per fold",
    ]
    for fold in report["folds"]:
        times, training = fold["times"], fold["training"]
        lines += [
            "",
            f"### Fold {fold['fold']}: test {times['test'][0][:16]} .. {times['test'][1][:16]}",
            "",
            f"Train windows ending {times['train'][0][:10]} .. {times['train'][1][:10]}, validation "
            f"{times['val'][0][:10]} .. {times['val'][1][:10]}; best epoch {training['best_epoch']} of "
            f"{training['epochs_run']} (validation loss {training['best_val_loss']:.4f}), "
            f"3-class test accuracy {_pct(training['test_accuracy'])}. "
            + _choice_line(fold.get("strategy_choice") or {}),
            "",
            _table(fold["strategies"], labels),
        ]
    lines += ["", _DEFINITIONS.format(block=config["block_length"], n=config["bootstrap_samples"],
                                      trials=report["pooled"]["model"]["dsr_details"]["n_trials"],
                                      lookback=config["momentum_lookback"] or config["horizon"],
                                      l2=config["logistic_l2"], iters=config["logistic_iterations"]),
              "", _FILES]
    return "\n".join(lines) + "\n"


_DEFINITIONS = """## Definitions

- **Strategies.** *ConvNeXt strategy*: what `backtest` and `live` trade - the network's
  calibrated class probabilities through the signal rule (the most probable class, Long/Short
  only at or above the confidence threshold), half-Kelly sizing in risk units on
  q = p(side) / (p(Long) + p(Short)) with the payoff ratio b, an ATR stop (and take-profit if
  set), a position keeping its size until its signal changes. *ConvNeXt ±1 (unsized)*: the same
  signals, all in long or short, no stops. *Logistic regression*: multinomial, on the same
  normalised features at the last bar of each window, fitted on the fold's train part
  (full-batch gradient descent, {iters} steps, L2 {l2:g}, class-balanced like the network), same
  signal rule, ±1. *Momentum*: the sign of the last {lookback}-bar return. *Buy & hold*: always
  long. *Always flat*: never trades. All trade the same test bars with the same fees, slippage
  and funding; on spot nothing is ever short.
- **Sharpe**: mean / standard deviation of per-bar returns × √(bars per year), risk-free rate 0. The
  95% interval is a stationary block bootstrap (Politis & Romano) over bars, mean block length
  {block} bars, {n} resamples, seeded; the model-minus-strategy row resamples both series with the
  same indices (paired).
- **Deflated Sharpe** (Bailey & López de Prado 2014): Φ((SR − SR₀)·√(T−1) / √(1 − γ₃·SR + (γ₄−1)/4·SR²)),
  per-bar SR, skewness γ₃, kurtosis γ₄, with SR₀ = √V·((1−γ)Φ⁻¹(1−1/N) + γΦ⁻¹(1−1/(Ne))) the expected
  best Sharpe of N = {trials} worthless trials (γ = 0.5772…). N counts every configuration logged
  for this data set in the trials log (each confidence threshold tried on a validation block by
  `train`, each threshold of the grid and the strategy itself by `evaluate`); V is the variance of
  the logged trials' per-bar Sharpes, at least 1/(T−1), the variance of a Sharpe estimate from T
  bars when the true Sharpe is 0. Below 0.95 = no evidence of skill. PSR is the same with SR₀ = 0
  (no deflation).
- **Direction accuracy**: among decisions where the strategy is long or short, the share where the
  label's forward log return over the horizon has that sign. Consecutive calls share most of
  their horizon, so they are not independent: the Wilson interval uses the effective number of
  calls n_eff = p(1−p)n² / Var(hits), Var from the hits' autocovariances up to the horizon with
  Bartlett weights (Newey-West).
- **Max drawdown**, **total return**, **Calmar** (CAGR / |max drawdown|), **longest drawdown**
  (most bars below a previous high): of the equity compounded over the block's bars (pooled: over
  all blocks joined). **Profit factor** = gross profit / gross loss of closed trades; **win rate**
  = share of trades with pnl > 0; **avg win / avg loss** and **expectancy** from the trades' net
  returns (pnl over the position's entry value); **turnover** = Σ|change of target position| (from
  flat to the final close, in multiples of equity) per year; **fees paid**, **funding paid** =
  over the 10,000 starting equity, summed over blocks (funding: positive = paid)."""

_FILES = """## Files

`report.json` (every figure), `returns.csv` (per-bar returns of every strategy, the pooled figures
are recomputable from it), `decisions.csv` (per decision: every strategy's target position, as a
signed fraction of equity, and the label's forward return), `trades.csv`, `equity.png`,
`sharpe_by_fold.png`, `folds/` (per-fold results and the calibrated best checkpoints),
`state.json` (settings; rerunning the command resumes an unfinished evaluation). The trials of
this run are appended to the trials log named above."""


def write_plots(report_dir: Path, report: dict, returns: pd.DataFrame) -> dict[str, Path | None]:
    """equity.png (model and baselines over the joined test blocks, drawdowns below) and
    sharpe_by_fold.png; None values when matplotlib is missing."""
    labels = report["strategies"]
    source = report["source"]
    stamps = pd.DatetimeIndex(returns["timestamp"])
    curves = {labels[n]: pd.Series(np.cumprod(1.0 + returns[n].to_numpy()), index=stamps)
              for n in labels}
    title = (f"{source.get('symbol', '')} {source.get('interval', '')}: growth of 1 over the "
             f"{report['config']['folds']} walk-forward test blocks, after costs")
    equity = equity_and_drawdown(curves, Path(report_dir) / "equity.png", title=title)
    folds = report["folds"]
    fold_labels = [f"fold {f['fold']}\n{f['times']['test'][0][:10]}" for f in folds]
    values = {labels[n]: [f["strategies"][n]["sharpe"] for f in folds] for n in labels
              if n not in ("flat", "model_unsized")}
    sharpe = bar_chart(values, fold_labels, Path(report_dir) / "sharpe_by_fold.png",
                       ylabel="Sharpe (annualised, after costs)",
                       title="Sharpe per test block (always flat = 0)")
    return {"equity": equity, "sharpe_by_fold": sharpe}
