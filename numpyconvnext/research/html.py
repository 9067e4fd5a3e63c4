"""report.html: one self-contained page (no network fetch: styles, script and charts inline; the
charts are SVG drawn here, no matplotlib needed): the verdict at the top on a coloured band,
sortable tables per symbol and per configuration, the portfolio's table, equity and drawdown
charts of the portfolio and every symbol.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from numpyconvnext.evaluate_report import _num, _rows
from numpyconvnext.research.report import BASELINE_NAMES, SUMMARY_COLUMNS, symbol_rows

# verdict band colours: evidence of skill (beats every baseline and deflated Sharpe >= 0.95),
# beats the baselines without that evidence, does not beat them
BAND_GOOD, BAND_MIXED, BAND_BAD = "#1a7f37", "#b08800", "#c62828"
LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf")

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;
background:#fff}
main{max-width:1200px;margin:0 auto;padding:0 20px 40px}
.verdict{color:#fff;padding:18px 24px;font-size:17px;line-height:1.45}
.verdict b{font-size:20px;display:block;margin-bottom:4px}
h1{font-size:24px;margin:20px 0 6px}h2{font-size:19px;margin:28px 0 8px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f4f6;cursor:pointer;user-select:none}th.sorted-asc:after{content:" \\25B2"}
th.sorted-desc:after{content:" \\25BC"}td:first-child,th:first-child{text-align:left}
.meta{color:#57606a;font-size:13px}code,pre{background:#f6f8fa;padding:2px 4px;font-size:12px}
pre{padding:8px;white-space:pre-wrap;word-break:break-all}.scroll{overflow-x:auto}
svg{display:block;margin:4px 0 12px}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:14px;height:3px;vertical-align:middle;margin-right:4px}
"""

# click a header to sort by that column (numbers by value, text alphabetically; again: reverse)
_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
      function key(row){var c = row.cells[col]; var v = c.getAttribute('data-v');
        if (v === null) v = c.textContent; var n = parseFloat(v);
        return isNaN(n) ? v.toLowerCase() : n;}
      rows.sort(function(a, b){var x = key(a), y = key(b);
        if (typeof x !== typeof y) {x = String(x); y = String(y);}
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def verdict_colour(verdict: dict) -> str:
    """The band colour of a verdict (module constants)."""
    dsr = verdict.get("deflated_sharpe")
    if verdict.get("beats_all_baselines") and dsr is not None and dsr >= 0.95:
        return BAND_GOOD
    if verdict.get("beats_all_baselines"):
        return BAND_MIXED
    return BAND_BAD


def _e(text) -> str:
    return html.escape(str(text))


def _cell(text: str, value=None) -> str:
    data = "" if value is None or isinstance(value, str) else f' data-v="{float(value):.10g}"'
    return f"<td{data}>{_e(text)}</td>"


def _sortable(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def symbols_table(report: dict) -> str:
    labels = report["strategies"]
    header = [c for c, _ in SUMMARY_COLUMNS] + [f"{labels[n]} Sharpe" for n in BASELINE_NAMES] + \
        ["Beats all baselines"]
    keys = [None, "sharpe", None, "deflated_sharpe", "total_return", "max_drawdown", "trades",
            "direction_accuracy"]
    rows = []
    for row in symbol_rows(report):
        model = row["model"]
        cells = [_cell(row["symbol"])]
        for (_, fmt), key in zip(SUMMARY_COLUMNS[1:], keys[1:], strict=True):
            cells.append(_cell(fmt(model), model.get(key) if key else None))
        cells += [_cell(_num(row["baselines"][n]), row["baselines"][n]) for n in BASELINE_NAMES]
        cells.append(_cell("yes" if row["beats_all"] else "no"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _sortable(header, rows)


def configurations_table(report: dict) -> str:
    folds = len(report["selection"])
    header = ["#", "Configuration", *(f"Val. score fold {k}" for k in range(1, folds + 1)),
              "Mean val. score", "Chosen in folds", "Test Sharpe if always used", "Task minutes"]
    rows = []
    for c in report["configurations"]:
        minutes = sum(c.get("task_seconds", [])) / 60
        cells = [_cell(str(c["index"]), c["index"]), _cell(c["label"]),
                 *(_cell(_num(v), v) for v in c["validation_score"]),
                 _cell(_num(c["mean_validation_score"]), c["mean_validation_score"]),
                 _cell(", ".join(map(str, c["chosen_in_folds"])) or "—", len(c["chosen_in_folds"])),
                 _cell(_num(c["test_sharpe_if_always_used"]), c["test_sharpe_if_always_used"]),
                 _cell(f"{minutes:.1f}", minutes)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _sortable(header, rows)


def metrics_table(strategies: dict, labels: dict) -> str:
    names = list(labels)
    header = ["Metric", *(labels[n] for n in names)]
    rows = ["<tr>" + _cell(label) + "".join(_cell(fmt(strategies[n])) for n in names) + "</tr>"
            for label, fmt in _rows()]
    return _sortable(header, rows)


def equity_svg(curves: dict[str, np.ndarray], stamps: pd.DatetimeIndex, title: str,
               width: int = 1100, height: int = 300, drawdown_height: int = 110) -> str:
    """Growth of 1 of each curve (log scale) and, below, the drawdown of the first curve, as an
    inline SVG."""
    pad_l, pad_r, pad_t, gap = 56, 12, 24, 26
    n = len(stamps)
    x = np.linspace(pad_l, width - pad_r, max(n, 2))
    logs = {k: np.log(np.maximum(v, 1e-12)) for k, v in curves.items()}
    low = min(float(v.min()) for v in logs.values())
    high = max(float(v.max()) for v in logs.values())
    if high - low < 1e-9:
        low, high = low - 0.01, high + 0.01
    bottom = pad_t + height

    def y(v):
        return bottom - (v - low) / (high - low) * height

    step = max(1, n // 1500)  # at most ~1500 points per line
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{pad_t + height + gap + drawdown_height + 30}" role="img">',
             f'<text x="{pad_l}" y="16" font-size="13" fill="#1b1f24">{_e(title)}</text>']
    for level in np.linspace(low, high, 5):
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(level):.1f}" y2="{y(level):.1f}" '
                     'stroke="#e5e7eb"/>')
        parts.append(f'<text x="{pad_l - 6}" y="{y(level) + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#57606a">{np.exp(level):.2f}</text>')
    for j, (name, v) in enumerate(logs.items()):
        points = " ".join(f"{x[i]:.1f},{y(v[i]):.1f}" for i in range(0, n, step))
        colour = LINE_COLOURS[j % len(LINE_COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{2 if j == 0 else 1.2}" '
                     f'points="{points}"><title>{_e(name)}</title></polyline>')
    first = next(iter(curves.values()))
    drawdown = first / np.maximum.accumulate(first) - 1.0
    top = bottom + gap
    worst = min(float(drawdown.min()), -1e-9)

    def yd(v):
        return top + v / worst * drawdown_height

    area = f"{x[0]:.1f},{top:.1f} " + " ".join(f"{x[i]:.1f},{yd(drawdown[i]):.1f}"
                                             for i in range(0, n, step)) + f" {x[-1]:.1f},{top:.1f}"
    parts.append(f'<text x="{pad_l}" y="{top - 6}" font-size="12" fill="#57606a">Drawdown of '
                 f'{_e(next(iter(curves)))} (worst {100 * worst:.1f}%)</text>')
    parts.append(f'<polygon fill="#c6282855" stroke="#c62828" points="{area}"/>')
    parts.append(f'<text x="{pad_l - 6}" y="{top + drawdown_height + 4:.1f}" font-size="11" '
                 f'text-anchor="end" fill="#57606a">{100 * worst:.0f}%</text>')
    ticks = np.linspace(0, n - 1, 6).astype(int)
    for j, i in enumerate(ticks):
        anchor = "start" if j == 0 else "end" if j == len(ticks) - 1 else "middle"
        parts.append(f'<text x="{x[i]:.1f}" y="{top + drawdown_height + 20}" font-size="11" '
                     f'text-anchor="{anchor}" fill="#57606a">{stamps[i]:%Y-%m-%d}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{LINE_COLOURS[j % len(LINE_COLOURS)]}"></i>'
                     f"{_e(name)}</span>" for j, name in enumerate(curves))
    return f'<div class="legend">{legend}</div>' + "".join(parts)


def basket_html(report: dict, returns: pd.DataFrame) -> str:
    """The page (see the module docstring). ``returns``: the basket's returns.csv frame."""
    labels = report["strategies"]
    symbols = report["symbols"]
    stamps = pd.DatetimeIndex(pd.to_datetime(returns["timestamp"], utc=True))
    portfolio = {labels[n]: np.cumprod(1.0 + returns[f"portfolio_{n}"].to_numpy(np.float64))
                 for n in ("model", "buy_and_hold", "momentum", "linear")}
    per_symbol = {s: np.cumprod(1.0 + returns[f"{s}_model"].to_numpy(np.float64)) for s in symbols}
    verdict = report["verdict"]
    colour = verdict_colour(verdict)
    cost = report["cost"]
    first = report["data"][symbols[0]]
    body = [
        f'<div class="verdict" id="verdict" style="background:{colour}"><b>Verdict: equal-weight '
        f"portfolio of {len(symbols)} symbols</b>{_e(verdict['text'])}</div>",
        "<main>",
        f"<h1>Basket walk-forward evaluation: {_e(', '.join(symbols))} ({_e(report['category'])})</h1>",
        f'<p class="meta">{first["bars"]:,} hourly candles per symbol, {_e(first["first"][:16])} .. '
        f'{_e(first["last"][:16])} UTC; test blocks {_e(report["test_period"][0][:16])} .. '
        f'{_e(report["test_period"][1][:16])} UTC; {report["config"]["folds"]} folds; '
        f'{cost["tasks"]} trainings, {cost["task_cpu_hours"]:.2f} CPU-hours. Created '
        f'{_e(report["created"])}, numpyconvnext git {_e(report["version"]["git_commit"])}.</p>',
        f"<pre>{_e(report['command'])}</pre>",
        "<h2>Equal-weight portfolio</h2>",
        equity_svg(portfolio, stamps, "Growth of 1 over the joined test blocks, after costs "
                   "(log scale)"),
        metrics_table(report["portfolio"]["pooled"], labels),
        f'<p class="meta">Deflated Sharpe: {_e(report["trials"]["text"])}</p>',
        "<h2>Per symbol</h2>",
        symbols_table(report),
        equity_svg(per_symbol, stamps, "ConvNeXt strategy per symbol: growth of 1 (log scale)"),
        "<h2>Model selection and its cost</h2>",
        f"<p>{_e(report['selection_text'])}</p>",
        configurations_table(report),
        '<p class="meta">Full per-symbol reports: '
        + ", ".join(f'<a href="symbols/{_e(s)}/report.md">{_e(s)}</a>' for s in symbols)
        + ". Strategy: " + _e(report["strategy_description"]) + "</p>",
        "</main>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Basket evaluation: {_e(', '.join(symbols))}</title><style>{_STYLE}</style></head>"
            "<body>" + "\n".join(body) + f"<script>{_SCRIPT}</script></body></html>\n")


__all__ = ["BAND_BAD", "BAND_GOOD", "BAND_MIXED", "basket_html", "equity_svg", "verdict_colour"]

