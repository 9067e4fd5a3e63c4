"""The basket report as people read it: report.md and report.html. Formatting only, of the dict
``basket.build_basket_report`` makes."""

from __future__ import annotations

import pandas as pd

from numpyconvnext.evaluate_report import _num, _pct, _table

SUMMARY_COLUMNS = [
    ("Symbol", None),
    ("Sharpe", lambda m: _num(m["sharpe"])),
    ("95% CI", lambda m: f"[{_num(m['sharpe_ci'][0])}, {_num(m['sharpe_ci'][1])}]"),
    ("Deflated Sharpe", lambda m: _num(m["deflated_sharpe"], 3)),
    ("Total return", lambda m: _pct(m["total_return"], sign=True)),
    ("Max drawdown", lambda m: _pct(m["max_drawdown"])),
    ("Trades", lambda m: str(m["trades"])),
    ("Direction accuracy", lambda m: _pct(m["direction_accuracy"])),
]
BASELINE_NAMES = ("buy_and_hold", "momentum", "linear", "model_unsized")


def symbol_rows(report: dict) -> list[dict]:
    """Per symbol: the strategy's pooled figures and the baselines' Sharpes (for both tables)."""
    rows = []
    for symbol in report["symbols"]:
        pooled = report["symbols_reports"][symbol]["pooled"]
        rows.append({"symbol": symbol, "model": pooled["model"],
                     "baselines": {n: pooled[n]["sharpe"] for n in BASELINE_NAMES},
                     "beats_all": report["symbols_reports"][symbol]["verdict"]["beats_all_baselines"]})
    return rows


def _symbols_markdown(report: dict) -> str:
    labels = report["strategies"]
    header = [c for c, _ in SUMMARY_COLUMNS] + [f"{labels[n]} Sharpe" for n in BASELINE_NAMES] + \
        ["Beats all baselines"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in symbol_rows(report):
        cells = [row["symbol"]] + [fmt(row["model"]) for _, fmt in SUMMARY_COLUMNS[1:]] + \
            [_num(row["baselines"][n]) for n in BASELINE_NAMES] + ["yes" if row["beats_all"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _configurations_markdown(report: dict) -> str:
    folds = len(report["selection"])
    header = ["#", "Configuration", *(f"Val. score fold {k}" for k in range(1, folds + 1)),
              "Mean val. score", "Chosen in folds", "Test Sharpe if always used (portfolio)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in report["configurations"]:
        cells = [str(c["index"]), c["label"], *(_num(v) for v in c["validation_score"]),
                 _num(c["mean_validation_score"]),
                 ", ".join(map(str, c["chosen_in_folds"])) or "—",
                 _num(c["test_sharpe_if_always_used"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_basket_markdown(report: dict) -> str:
    """report.md: verdict, rerun command, symbols, portfolio table, selection and its cost,
    configurations, links to the per-symbol reports."""
    config = report["config"]
    symbols = report["symbols"]
    first = report["data"][symbols[0]]
    cost = report["cost"]
    portfolio = report["portfolio"]
    lines = [
        f"# Basket walk-forward evaluation: {len(symbols)} symbols, {report['category']}",
        "",
        f"**Verdict (equal-weight portfolio).** {report['verdict']['text']}",
        "",
        "## How to rerun",
        "",
        f"```\n{report['command']}\n```",
        "",
        f"- Symbols: {', '.join(symbols)}; {first['bars']:,} hourly candles each on the hours common "
        f"to all, {first['first'][:16]} .. {first['last'][:16]} UTC",
        f"- Test blocks: {report['test_period'][0][:16]} .. {report['test_period'][1][:16]} UTC, "
        f"{config['folds']} walk-forward folds ({config['mode']}), the same calendar blocks for "
        "every symbol and configuration (planned for the grid's largest window + horizon)",
        "- Training: one ConvNeXt1D per (configuration, fold) on the windows of all symbols pooled, "
        "each symbol's features normalised on its own training rows, class weights over the pool; "
        "calibrated and traded per symbol",
        f"- Strategy: {report['strategy_description']}",
        "- Portfolio: equal weight, the mean of the symbols' per-bar returns (rebalanced every bar; "
        "each symbol's own fees, slippage and funding are in its returns, rebalancing is not "
        "charged)",
        f"- Deflated Sharpe of the portfolio: {report['trials']['text']}",
        f"- Seed {config['seed']}; numpyconvnext {report['version']['numpyconvnext']} (git "
        f"{report['version']['git_commit']}); created {report['created']}",
        "",
        "## Model selection and its cost",
        "",
        report["selection_text"],
        "",
        f"Compute: {cost['tasks']} tasks, {cost['task_cpu_hours']:.2f} CPU-hours; "
        + (f"this run's {cost['ran_now']} new tasks took {cost['wall_seconds_now'] / 60:.1f} min on "
           f"{cost['executor']} ({cost['workers']} workers)." if cost["ran_now"] else
           "every task was stored by an earlier run (this one rebuilt the report)."),
        "",
        _configurations_markdown(report),
        "",
        "## Equal-weight portfolio (the selected configuration per fold)",
        "",
        _table(portfolio["pooled"], report["strategies"]),
        "",
        "Direction accuracy is per symbol (below); the portfolio's trades are all symbols' trades "
        "(pnl, fees and funding over the portfolio's 10,000).",
        "",
        "## Per symbol (pooled over the test blocks)",
        "",
        _symbols_markdown(report),
        "",
        "Each symbol's full report (all metrics, per fold, monthly returns, equity picture): "
        + ", ".join(f"[{s}](symbols/{s}/report.md)" for s in symbols) + ".",
        "",
        "`report.html` shows the same with sortable tables and the equity and drawdown charts.",
    ]
    return "\n".join(lines) + "\n"


def render_basket_html(report: dict, returns: pd.DataFrame) -> str:
    """report.html (see ``numpyconvnext.research.html``)."""
    from numpyconvnext.research.html import basket_html

    return basket_html(report, returns)


__all__ = ["render_basket_html", "render_basket_markdown", "symbol_rows"]
