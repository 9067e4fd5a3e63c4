"""Walk-forward evaluation of a basket of symbols and a grid of configurations.

    candles of every symbol (the hours common to all) -> walk-forward folds planned once for the
    largest window and horizon of the grid (the same calendar blocks for every symbol and every
    configuration) -> one task per (configuration, fold):
        windows of every symbol, each symbol normalised on its own training rows, pooled
        (class weights over the pool) -> train one ConvNeXt1D -> per symbol: calibrate on that
        symbol's validation block and trade its test block (``evaluate.trade_fold``: the
        strategy and every baseline, same code as the single-symbol evaluation)
    -> per fold, the configuration with the best validation score (the mean over symbols of the
       validation-block Sharpe of the calibrated strategy; never a test figure) is the one
       traded on that fold's test block
    -> per symbol the usual report (``evaluate.build_report``), an equal-weight portfolio of the
       symbols, a table per configuration, the trials of every configuration in the trials log
       (N and V of every deflated Sharpe) -> report.md, report.json, report.html, returns.csv,
       symbols/<SYMBOL>/ (each symbol's single-symbol report files)

Tasks run through ``executors.run_tasks`` (local processes, in-process, or Ray) and are stored as
``tasks/<key>.json``: a rerun skips the finished ones, whichever executor ran them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from numpyconvnext import evaluate as single
from numpyconvnext.calibration import evaluate_thresholds, softmax_rows
from numpyconvnext.checkpoint import atomic_write
from numpyconvnext.data.dataset import (
    Fold,
    Normalizer,
    PreparedData,
    SplitPart,
    class_weights,
    prepare_dataset,
    walk_forward_folds,
)
from numpyconvnext.data.labels import LabelConfig
from numpyconvnext.data.pool import PooledWindows
from numpyconvnext.evaluate import EvaluationConfig
from numpyconvnext.jsonable import jsonable
from numpyconvnext.research import grid as grids
from numpyconvnext.research.executors import RunSummary, TaskStore, run_tasks
from numpyconvnext.scoring import predict_in_batches
from numpyconvnext.trading.metrics import periods_per_year_from_index, sharpe_ratio
from numpyconvnext.trials import dataset_key

TASK_DIR = "tasks"
SYMBOL_DIR = "symbols"
PORTFOLIO = "portfolio"


@dataclass
class BasketResult:
    """Where the report is; ``interrupted`` when tasks are missing or failed (rerun to retry)."""

    report_dir: Path
    report: dict | None
    tasks_done: int
    tasks_total: int
    run: RunSummary | None = None
    failed: list = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.report is None


# --- data ------------------------------------------------------------------------------------------


def align_candles(candles: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every symbol's candles on the hours common to all (inner join on the timestamp), so one
    set of fold boundaries is the same calendar period for every symbol."""
    if len(candles) < 1:
        raise ValueError("a basket needs at least one symbol")
    common = None
    for frame in candles.values():
        stamps = pd.DatetimeIndex(frame["timestamp"])
        common = stamps if common is None else common.intersection(stamps)
    if common is None or len(common) == 0:
        raise ValueError("the symbols' candles share no timestamp")
    out = {}
    for symbol, frame in candles.items():
        keep = pd.DatetimeIndex(frame["timestamp"]).isin(common)
        out[symbol] = frame.loc[keep].reset_index(drop=True)
    return out


def pool_parts(datas: dict[str, PreparedData]) -> PreparedData:
    """One training set from several symbols' prepared folds on the same index ranges (candles
    aligned on common hours): their train, validation and test windows stacked without a copy
    (``data.pool.PooledWindows``; each symbol already normalised on its own training rows),
    class weights over the pooled training labels."""
    first = next(iter(datas.values()))

    def stacked(name: str) -> SplitPart:
        parts = [getattr(d, name) for d in datas.values()]
        return SplitPart(X=PooledWindows([p.X for p in parts]), y=np.concatenate([p.y for p in parts]),
                         forward_return=np.concatenate([p.forward_return for p in parts]),
                         end_index=np.concatenate([p.end_index for p in parts]),
                         end_time=parts[0].end_time.append([p.end_time for p in parts[1:]]))

    train = stacked("train")
    channels = len(first.feature_names)
    # inputs are normalised per symbol already: the pooled model's own normaliser is the identity
    identity = Normalizer(np.zeros(channels), np.ones(channels))
    return replace(first, train=train, val=stacked("val"), test=stacked("test"), normalizer=identity,
                   class_weights=class_weights(train.y))


def plan_basket_folds(n_bars: int, configs: list[EvaluationConfig]) -> list[Fold]:
    """Walk-forward folds valid for every configuration: planned with the largest window and
    horizon (purge gaps of the largest window + horizon)."""
    window = max(c.window for c in configs)
    horizon = max(c.horizon for c in configs)
    return walk_forward_folds(n_bars, window, LabelConfig(horizon=horizon),
                              n_folds=configs[0].folds, mode=configs[0].mode)


# --- one task --------------------------------------------------------------------------------------


def basket_task(spec: dict, shared: dict) -> dict:
    """Train configuration ``spec["config"]`` on fold ``spec["fold"]`` of the pooled symbols,
    then calibrate and trade it per symbol. A pure function of ``spec`` and ``shared``
    ({"symbols", "candles", "funding"}); returns JSON-able results."""
    from numpyconvnext.train import Trainer

    config = EvaluationConfig.from_dict(spec["config"])
    fold = Fold(**{name: range(*bounds) for name, bounds in spec["fold_ranges"].items()})
    k = spec["fold"]
    symbols = shared["symbols"]
    label_config = LabelConfig(horizon=config.horizon)
    datas = {s: prepare_dataset(shared["candles"][s], window=config.window, label_config=label_config,
                                fold=fold) for s in symbols}
    pooled = pool_parts(datas)
    if config.placebo:
        pooled = single._placebo(pooled, config.seed * 1000 + k)
    model = single.make_model(config, len(pooled.feature_names))
    metadata = {"variant": config.variant, "symbols": list(symbols), "evaluation_fold": k,
                "configuration": spec["configuration"]}
    per_symbol, scores = {}, {}
    with tempfile.TemporaryDirectory(prefix="numpyconvnext-task-") as run_dir:
        trainer = Trainer(model, pooled, config.training_config(), run_dir, metadata=metadata,
                          quiet=True)
        training = trainer.fit()
        for s in symbols:
            candles, funding = shared["candles"][s], shared["funding"].get(s)
            periods = periods_per_year_from_index(candles["timestamp"])
            choice = single.calibrate(model, datas[s], candles, config.strategy, funding)
            per_symbol[s] = single.trade_fold(model, datas[s], candles, config, fold, k, periods,
                                              choice, training, funding)
            scores[s] = _validation_score(model, datas[s], candles, config, choice, funding)
    return jsonable({"configuration": spec["configuration"], "fold": k, "symbols": per_symbol,
                     "validation_sharpe": scores,
                     "score": float(np.mean([scores[s] for s in symbols])),
                     "best_val_loss": training.best_val_loss})


def _validation_score(model, data: PreparedData, candles, config: EvaluationConfig, choice: dict,
                      funding) -> float:
    """Validation-block Sharpe (annualised, after costs) of the calibrated strategy as traded."""
    chosen = (choice.get("strategy") or {})
    if config.strategy.confidence is None and chosen.get("validation_sharpe") is not None:
        return float(chosen["validation_sharpe"])
    strategy = config.strategy.with_checkpoint(choice)
    logits = predict_in_batches(model, data.val.X).astype(np.float64)
    probabilities = softmax_rows(logits, model.temperature if strategy.calibrated else 1.0)
    row = evaluate_thresholds(probabilities, candles, data.val.end_index,
                              config.strategy.with_overrides(confidence=strategy.threshold),
                              funding, (strategy.threshold,))[0]
    return float(row["sharpe"])


# --- the run ---------------------------------------------------------------------------------------


def basket_report_dir(out_dir: str | Path, sources: dict[str, dict], candles: dict[str, pd.DataFrame],
                      category: str) -> Path:
    """``out_dir/basket_<first symbols>_<n>sym_<hash>_<category>_<interval>_<last date>``."""
    symbols = list(sources)
    first = next(iter(candles.values()))
    last = pd.Timestamp(first["timestamp"].iloc[-1])
    digest = hashlib.sha256("+".join(symbols).encode()).hexdigest()[:6]
    interval = next(iter(sources.values())).get("interval", "")
    name = (f"basket_{'-'.join(symbols[:3])}{'-etc' if len(symbols) > 3 else ''}_{len(symbols)}sym_"
            f"{digest}_{category}_{interval}_{last:%Y%m%d}")
    return Path(out_dir) / name.replace("/", "-")


def basket_dataset(symbols: list[str], source: dict, category: str) -> str:
    """The trials-log data set of the equal-weight portfolio of ``symbols``."""
    return dataset_key({**source, "symbol": "BASKET[" + "+".join(symbols) + "]", "category": category})


def evaluate_basket(
    candles: dict[str, pd.DataFrame],
    sources: dict[str, dict],
    config: EvaluationConfig,
    grid: list[dict] | None = None,
    out_dir: str | Path = "reports",
    *,
    report_dir: str | Path | None = None,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    quiet: bool = False,
    command: str | None = None,
    funding: dict[str, pd.DataFrame | None] | None = None,
    funding_notes: dict[str, str] | None = None,
    trials_log: str | Path | None = None,
    task_function=None,
) -> BasketResult:
    """Run (or resume) the basket evaluation; see the module docstring. ``grid``: a list of
    overrides of ``config`` (``grid.parse_grid``; None = ``config`` alone). ``funding``: per
    symbol (default: ``data.source.funding_for_source``). ``task_function`` replaces
    ``basket_task`` (tests)."""
    from numpyconvnext.data.source import funding_for_source
    from numpyconvnext.trials import default_trials_log

    trials_log = default_trials_log() if trials_log is None else Path(trials_log)
    symbols = list(candles)
    if sorted(symbols) != sorted(sources):
        raise ValueError("candles and sources must name the same symbols")
    candles = align_candles(candles)
    category = config.strategy.category
    grid = grid or [{}]
    configs = [grids.apply_overrides(config, overrides) for overrides in grid]
    n_bars = len(next(iter(candles.values())))
    folds = plan_basket_folds(n_bars, configs)
    funding = dict(funding or {})
    notes = dict(funding_notes or {})
    for s in symbols:
        if s not in funding:
            funding[s], notes[s] = funding_for_source({**sources[s], "category": category},
                                                      candles[s], config.funding_rate)
        notes.setdefault(s, "funding: the series given")
    report_dir = Path(report_dir) if report_dir is not None else \
        basket_report_dir(out_dir, sources, candles, category)
    fingerprint = {"configs": [c.to_dict() for c in configs], "grid": grid, "symbols": symbols,
                   "data": {s: single.data_fingerprint(candles[s]) for s in symbols},
                   "funding": {s: single._funding_fingerprint(funding[s], notes[s]) for s in symbols},
                   "folds": [f.to_dict() for f in folds]}
    single._check_or_write_state(report_dir, fingerprint)
    tasks = {task_key(i, k): {"configuration": i, "fold": k, "config": configs[i].to_dict(),
                              "fold_ranges": folds[k - 1].to_dict()}
             for k in range(1, len(folds) + 1) for i in range(len(configs))}
    shared = {"symbols": symbols, "candles": candles, "funding": funding}
    store = TaskStore(report_dir / TASK_DIR)
    summary = run_tasks(task_function or basket_task, tasks, shared, store, executor=executor,
                        jobs=jobs, address=address, quiet=quiet, label="evaluate")
    done = {key: store.load(key) for key in tasks if store.has(key)}
    if len(done) < len(tasks):
        return BasketResult(report_dir, None, len(done), len(tasks), summary, summary.failed)
    results = {key: record["result"] for key, record in done.items()}
    seconds = {key: record["seconds"] for key, record in done.items()}
    meta = {"kind": "numpyconvnext.evaluate_basket",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or "(library call: numpyconvnext.research.basket.evaluate_basket)",
            "version": single._version(), "symbols": symbols, "category": category,
            "sources": {s: {k: v for k, v in sources[s].items()
                            if k not in ("first", "last", "bars", "sha256")} for s in symbols},
            "data": fingerprint["data"], "funding": notes,
            "cost": {"tasks": len(tasks), "task_seconds": seconds,
                     "executor": summary.executor, "workers": summary.workers,
                     "ran_now": len(summary.ran), "wall_seconds_now": summary.seconds}}
    report = build_basket_report(results, configs, grid, folds, candles, sources, meta, report_dir,
                                 trials_log)
    write_basket_report(report_dir, report, results, configs, candles)
    return BasketResult(report_dir, report, len(done), len(tasks), summary)


def task_key(configuration: int, fold: int) -> str:
    return f"c{configuration:03d}_f{fold}"


# --- the report --------------------------------------------------------------------------------------


def select_per_fold(results: dict[str, dict], n_configs: int, n_folds: int) -> list[dict]:
    """Per fold, the configuration with the best validation score (ties: the lower validation
    loss, then the earlier configuration). Test figures are never looked at."""
    out = []
    for k in range(1, n_folds + 1):
        rows = [results[task_key(i, k)] for i in range(n_configs)]
        best = max(range(n_configs), key=lambda i: (round(rows[i]["score"], 12),
                                                    -rows[i]["best_val_loss"], -i))
        out.append({"fold": k, "chosen": best, "scores": [r["score"] for r in rows],
                    "validation_sharpe": [r["validation_sharpe"] for r in rows],
                    "best_val_loss": [r["best_val_loss"] for r in rows]})
    return out


def portfolio_returns(fold_results_by_symbol: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Per strategy, the equal-weight portfolio's per-bar returns (the mean over symbols of the
    same bar's returns: rebalanced to equal weights every bar)."""
    symbols = list(fold_results_by_symbol)
    stamps = [np.concatenate([r["return_times_ms"] for r in fold_results_by_symbol[s]]) for s in symbols]
    if any(not np.array_equal(stamps[0], t) for t in stamps[1:]):
        raise ValueError("the symbols' test bars differ; a basket needs common timestamps")
    return {n: np.mean([np.concatenate([r["returns"][n] for r in fold_results_by_symbol[s]])
                        for s in symbols], axis=0) for n in single.STRATEGIES}


def portfolio_statistics(fold_results_by_symbol: dict[str, list[dict]], per_symbol_pooled: dict,
                         config: EvaluationConfig, periods: float, n_trials: int | None,
                         variance: float | None) -> dict:
    """``evaluate.block_statistics`` of the equal-weight portfolio: Sharpe and its intervals,
    deflated Sharpe, drawdowns and the trades of all symbols (pnl, fees and funding over the
    portfolio's 10,000, i.e. divided by the number of symbols). Direction accuracy is per
    symbol only (None here); turnover and exposure are the symbols' means."""
    symbols = list(fold_results_by_symbol)
    n = len(symbols)
    returns = portfolio_returns(fold_results_by_symbol)
    first = fold_results_by_symbol[symbols[0]]
    forward = np.zeros(sum(len(r["forward_return"]) for r in first))
    targets = {name: forward for name in single.STRATEGIES}
    scale = ("pnl", "fees", "funding")
    trades = {name: [{**t, **{key: t.get(key, 0.0) / n for key in scale}}
                     for s in symbols for r in fold_results_by_symbol[s] for t in r["trades"][name]]
              for name in single.STRATEGIES}
    figures = single.block_statistics(returns, targets, forward, trades, periods, config,
                                      seed=config.seed * 1000,
                                      block_sizes=[len(r["forward_return"]) for r in first],
                                      n_trials=n_trials, trial_variance=variance)
    for name, row in figures.items():
        row.update({"direction_accuracy": None, "direction_accuracy_ci": None, "direction_calls": 0,
                    "direction_calls_effective": 0.0})
        for key in ("turnover_per_year", "exposure"):
            row[key] = float(np.mean([per_symbol_pooled[s][name][key] for s in symbols]))
    return figures


def _trials(report_dir: Path, trials_log: Path, results: dict, configs: list[EvaluationConfig],
            grid: list[dict], folds: list[Fold], selection: list[dict], candles: dict, sources: dict,
            periods: dict[str, float]) -> tuple[dict, list[dict]]:
    """Every configuration tried (per symbol: its walk-forward over all folds and each threshold
    of its confidence grid; for the portfolio: its equal-weight returns), and the selected
    strategy, appended once to the trials log; N and V per data set counted from the log."""
    symbols = list(candles)
    category = configs[0].strategy.category
    n_folds = len(folds)
    entries: dict[str, list[dict]] = {}
    run = str(report_dir)
    per_config_portfolio = []
    for i, config in enumerate(configs):
        by_symbol = {s: [results[task_key(i, k)]["symbols"][s] for k in range(1, n_folds + 1)]
                     for s in symbols}
        for s in symbols:
            rows = single.trial_entries(sources[s], config, by_symbol[s], periods[s], run)
            for row in rows:
                row["config"]["grid_point"] = grids.describe(grid[i])
            entries.setdefault(rows[0]["dataset"], []).extend(rows)
        r = portfolio_returns(by_symbol)["model"]
        per_config_portfolio.append(r)
    basket = basket_dataset(symbols, next(iter(sources.values())), category)
    p = periods[symbols[0]]
    for i, r in enumerate(per_config_portfolio):
        entries.setdefault(basket, []).append(_entry(basket, configs[i].to_dict(), grid[i], r, p, run))
    selected = _selected_fold_results(results, selection, symbols)
    for s in symbols:
        r = np.concatenate([f["returns"]["model"] for f in selected[s]])
        key = dataset_key({**sources[s], "category": category})
        entries[key].append(_entry(key, configs[0].to_dict(), {"selected": "per fold on validation"},
                                   r, periods[s], run))
    selected_portfolio = portfolio_returns(selected)["model"]
    entries[basket].append(_entry(basket, configs[0].to_dict(),
                                  {"selected": "per fold on validation"}, selected_portfolio, p, run))
    flat = [row for rows in entries.values() for row in rows]
    single.log_trials_once(report_dir, trials_log, flat)
    given = configs[0].trials
    counts = {key: single.count_logged_trials(trials_log, key, rows, rows[-1]["bars"], given)
              for key, rows in entries.items()}
    return counts, flat


def _entry(dataset: str, config: dict, grid_point: dict, returns: np.ndarray, periods: float,
           run: str) -> dict:
    from numpyconvnext import stats

    config = {k: v for k, v in config.items()
              if k not in ("bootstrap_samples", "block_length", "confidence_level", "trials")}
    return {"dataset": dataset, "command": "evaluate", "kind": "pooled_test",
            "config": {**config, "grid_point": grids.describe(grid_point)},
            "sharpe": sharpe_ratio(returns, periods), "sharpe_per_bar": stats.sharpe_per_bar(returns),
            "bars": int(returns.size), "run": run}


def _selected_fold_results(results: dict, selection: list[dict], symbols: list[str]) -> dict:
    return {s: [results[task_key(row["chosen"], row["fold"])]["symbols"][s] for row in selection]
            for s in symbols}


def build_basket_report(results: dict, configs: list[EvaluationConfig], grid: list[dict],
                        folds: list[Fold], candles: dict, sources: dict, meta: dict,
                        report_dir: Path, trials_log: Path) -> dict:
    """The basket report (JSON-able): selection per fold, per symbol reports, the portfolio,
    the configurations' table, trials, verdict, cost."""
    symbols = list(candles)
    base = configs[0]
    periods = {s: periods_per_year_from_index(candles[s]["timestamp"]) for s in symbols}
    selection = select_per_fold(results, len(configs), len(folds))
    counts, _ = _trials(report_dir, trials_log, results, configs, grid, folds, selection, candles,
                        sources, periods)
    selected = _selected_fold_results(results, selection, symbols)
    category = base.strategy.category
    per_symbol = {}
    for s in symbols:
        key = dataset_key({**sources[s], "category": category})
        symbol_meta = {**single._metadata(sources[s], base, candles[s], meta["data"][s],
                                          folds, periods[s], "", meta["command"]),
                       "funding": meta["funding"][s], "trials": counts[key],
                       "created": meta["created"]}
        symbol_meta["command"] = meta["command"]
        per_symbol[s] = single.build_report(selected[s], base, periods[s], symbol_meta)
    basket = basket_dataset(symbols, next(iter(sources.values())), category)
    trials = counts[basket]
    p = periods[symbols[0]]
    pooled = portfolio_statistics(selected, {s: per_symbol[s]["pooled"] for s in symbols}, base, p,
                                  trials["n_trials"], trials["variance"])
    configurations = []
    n_folds = len(folds)
    for i in range(len(configs)):
        by_symbol = {s: [results[task_key(i, k)]["symbols"][s] for k in range(1, n_folds + 1)]
                     for s in symbols}
        r = portfolio_returns(by_symbol)["model"]
        configurations.append({
            "index": i, "label": grids.describe(grid[i]), "overrides": grid[i],
            "validation_score": [selection[k]["scores"][i] for k in range(n_folds)],
            "mean_validation_score": float(np.mean([selection[k]["scores"][i]
                                                   for k in range(n_folds)])),
            "chosen_in_folds": [row["fold"] for row in selection if row["chosen"] == i],
            "test_sharpe_if_always_used": sharpe_ratio(r, p),
            "test_total_return_if_always_used": float(np.prod(1.0 + r) - 1.0),
            "task_seconds": [meta["cost"]["task_seconds"][task_key(i, k)]
                             for k in range(1, n_folds + 1)]})
    seconds = sum(meta["cost"]["task_seconds"].values())
    cost = {**meta["cost"], "task_cpu_hours": seconds / 3600.0}
    selection_text = (
        f"{len(configs)} configuration(s) x {n_folds} folds = {len(configs) * n_folds} trainings "
        f"on the pool of {len(symbols)} symbols ({seconds / 3600:.2f} CPU-hours of single-threaded "
        "tasks). On each fold the configuration with the best validation score (mean over symbols "
        "of the validation-block Sharpe of the calibrated strategy) was traded on that fold's test "
        "block; test blocks were never used to choose. Every configuration's test walk-forward "
        f"(per symbol with each confidence threshold tried, and as a portfolio) is in the trials "
        f"log, so the portfolio's deflated Sharpe counts N = {trials['n_trials']} trials.")
    verdict = single.verdict(pooled, base, trials["n_trials"])
    verdict["text"] = verdict["text"].replace("The strategy", "The equal-weight portfolio of the "
                                              "strategy", 1)
    return jsonable({**{k: v for k, v in meta.items() if k != "cost"}, "cost": cost,
                     "config": base.to_dict(), "grid": grid,
                     "strategies": single._labels(base),
                     "strategy_description": single._metadata(
                         sources[symbols[0]], base, candles[symbols[0]], meta["data"][symbols[0]],
                         folds, p, "", "")["strategy_description"],
                     "periods_per_year": p,
                     "test_period": [pd.Timestamp(candles[symbols[0]]["timestamp"].iloc[
                         folds[0].test.start]).isoformat(), pd.Timestamp(candles[symbols[0]][
                             "timestamp"].iloc[folds[-1].test.stop]).isoformat()],
                     "folds": [f.to_dict() for f in folds],
                     "selection": selection, "selection_text": selection_text,
                     "configurations": configurations, "trials": trials,
                     "portfolio": {"pooled": pooled, "verdict": verdict,
                                   "targets": single.target_check(pooled["model"])},
                     "verdict": verdict,
                     "symbols_reports": per_symbol})


def write_basket_report(report_dir: Path, report: dict, results: dict,
                        configs: list[EvaluationConfig], candles: dict) -> None:
    """symbols/<S>/ (each symbol's report files), returns.csv (per bar: the portfolio's and
    every symbol's strategy returns), report.json, report.md, report.html."""
    from numpyconvnext.research.report import render_basket_html, render_basket_markdown

    report_dir = Path(report_dir)
    symbols = report["symbols"]
    selected = _selected_fold_results(results, report["selection"], symbols)
    for s in symbols:
        single.write_report(report_dir / SYMBOL_DIR / _safe(s), report["symbols_reports"][s], selected[s])
    stamps = pd.to_datetime(np.concatenate([r["return_times_ms"] for r in selected[symbols[0]]]),
                            unit="ms", utc=True)
    portfolio = portfolio_returns(selected)
    frame = pd.DataFrame({"timestamp": stamps,
                          **{f"portfolio_{n}": portfolio[n] for n in single.STRATEGIES},
                          **{f"{s}_model": np.concatenate([r["returns"]["model"] for r in selected[s]])
                             for s in symbols}})
    text = frame.to_csv(index=False, float_format="%.17g")
    atomic_write(report_dir / "returns.csv", lambda handle: handle.write(text.encode()))
    body = json.dumps(report, indent=2)
    atomic_write(report_dir / "report.json", lambda handle: handle.write(body.encode()))
    markdown = render_basket_markdown(report)
    atomic_write(report_dir / "report.md", lambda handle: handle.write(markdown.encode()))
    html = render_basket_html(report, frame)
    atomic_write(report_dir / "report.html", lambda handle: handle.write(html.encode()))


def _safe(symbol: str) -> str:
    return str(symbol).replace("/", "-")


def strip_volatile(report: dict) -> dict:
    """The report without what differs between identical runs: creation times, timings, the
    executor, the path of the report (in the trials text)."""
    out = {k: v for k, v in report.items() if k not in ("created", "cost", "selection_text")}
    out["symbols_reports"] = {s: single.strip_volatile(r) for s, r in report["symbols_reports"].items()}
    for c in out.get("configurations", []):
        c.pop("task_seconds", None)
    return out


__all__ = ["BasketResult", "align_candles", "basket_task", "build_basket_report", "evaluate_basket",
           "plan_basket_folds", "pool_parts", "portfolio_returns", "portfolio_statistics",
           "select_per_fold", "strip_volatile", "task_key", "write_basket_report"]
