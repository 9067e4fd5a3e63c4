"""Walk-forward evaluation of the strategy that is traded, after costs and funding, against honest
baselines, written as a report people read.

    candles -> walk_forward_folds (expanding, purge gaps) -> per fold:
        train ConvNeXt1D on the fold's past (Trainer; checkpoint = lowest validation loss)
        -> calibrate on the fold's validation block (temperature; confidence threshold and payoff
           ratio chosen there unless given: ``calibration.calibrate``)
        -> trade the never-seen test block with the strategy ``backtest`` and ``live`` trade
           (``trading.strategy``: signal rule, half-Kelly risk sizing, ATR stop, take-profit,
           fees, slippage, funding on a perpetual), beside the same model's unsized +-1
           directions, buy-and-hold, always-flat, momentum and a logistic regression
    -> statistics per fold and pooled (stats.py), N and V of the deflated Sharpe from the trials
       log (trials.py) -> report.md, report.json, returns.csv, decisions.csv, trades.csv,
       equity.png, sharpe_by_fold.png in one folder

Resume: each finished fold is saved atomically as ``folds/fold_<k>.json`` (per-bar returns,
decisions, trades); ``state.json`` holds the settings and a fingerprint of the candles and the
funding. Running the same evaluation again skips the finished folds (and continues a
half-trained fold from its ``last.npz``); different settings are an error rather than a silently
mixed report. The trials of an evaluation are logged once, when it completes.

Timing: the decision from the window ending at bar t's close is filled at bar t+1's open
(the backtester's rule), so a test block of n windows earns the returns of bars
``first_end + 1 .. last_end + 1``. Each block starts flat with 10,000 and ends flat (the last
position is closed with costs); consecutive blocks touch but never share a return bar.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from numpyconvnext import stats
from numpyconvnext.baselines import fit_logistic_regression, momentum_directions
from numpyconvnext.calibration import calibrate, softmax_rows
from numpyconvnext.checkpoint import atomic_write
from numpyconvnext.config import TrainingConfig
from numpyconvnext.data.candles import candles_sha256
from numpyconvnext.data.dataset import Fold, prepare_dataset, walk_forward_folds
from numpyconvnext.data.labels import LabelConfig
from numpyconvnext.data.source import funding_for_source
from numpyconvnext.jsonable import jsonable
from numpyconvnext.model import CONFIGS, ConvNeXt1D
from numpyconvnext.progress import ProgressBar
from numpyconvnext.scoring import predict_in_batches
from numpyconvnext.trading.metrics import (
    calmar_ratio,
    expectancy,
    longest_drawdown_bars,
    periods_per_year_from_index,
    profit_factor,
    sharpe_ratio,
    win_loss_ratio,
    win_rate,
)
from numpyconvnext.trading.signals import DIRECTION_BY_CLASS, generate_signals
from numpyconvnext.trading.strategy import (
    CONFIDENCE_GRID,
    Strategy,
    plan_positions,
    run_directions,
    run_strategy,
    stop_distances,
)
from numpyconvnext.trials import (
    append_trials,
    count_trials,
    dataset_key,
    default_trials_log,
    read_trials,
)

STRATEGIES = ("model", "model_unsized", "linear", "momentum", "buy_and_hold", "flat")
BASELINES = ("linear", "momentum", "buy_and_hold", "flat")
INITIAL_EQUITY = 10_000.0
STATE_NAME = "state.json"
FOLD_DIR = "folds"
# the spec's targets: (metric, threshold); each is met when the value is strictly above it
TARGETS = {"direction_accuracy": 0.55, "sharpe": 1.5, "max_drawdown": -0.15}


@dataclass(frozen=True)
class EvaluationConfig:
    """Every setting that changes the result (stored in state.json; a resume must match).

    ``strategy`` is the traded strategy (``trading.strategy.Strategy``: market, signal rule,
    sizing, stops, costs); its ``confidence`` None means "chosen on each fold's validation block
    from ``CONFIDENCE_GRID``". ``funding_rate`` is the constant funding per 8 h assumed for data
    without a funding series (None: not charged, and the report says so). ``dims``/``depths``
    override the named ``variant`` (tests use tiny networks). ``momentum_lookback`` None means
    the label horizon. ``trials`` overrides N of the deflated Sharpe (None: the trials log).
    ``block_length`` is the stationary bootstrap's mean block in bars. ``placebo`` permutes the
    training and validation labels of every fold (a control: a real edge must vanish).
    """

    folds: int = 5
    variant: str = "atto"
    dims: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    epochs: int = 2
    window: int = 128
    horizon: int = 12
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 4e-4
    drop_path_rate: float = 0.1
    mode: str = "expanding"
    strategy: Strategy = field(default_factory=Strategy)
    funding_rate: float | None = None
    momentum_lookback: int | None = None
    logistic_l2: float = 1e-3
    logistic_iterations: int = 500
    bootstrap_samples: int = 1000
    block_length: int = 24
    confidence_level: float = 0.95
    trials: int | None = None
    placebo: bool = False

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ValueError("folds must be >= 1")
        if self.dims is None and self.variant not in CONFIGS:
            raise ValueError(f"unknown model {self.variant!r}; choose from {', '.join(CONFIGS)}")
        if self.trials is not None and self.trials < 1:
            raise ValueError("trials must be >= 1")
        if self.funding_rate is not None and self.strategy.category == "spot":
            raise ValueError("spot has no funding: --funding-rate applies to linear perpetuals")
        self.training_config()  # window, horizon, epochs... are checked there

    @property
    def lookback(self) -> int:
        return self.momentum_lookback or self.horizon

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(variant=self.variant, epochs=self.epochs, window=self.window,
                              horizon=self.horizon, seed=self.seed, batch_size=self.batch_size,
                              learning_rate=self.learning_rate, drop_path_rate=self.drop_path_rate)

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("dims", "depths"):
            values[key] = None if values[key] is None else list(values[key])
        return values

    @classmethod
    def from_dict(cls, values: dict) -> EvaluationConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        for key in ("dims", "depths"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if isinstance(values.get("strategy"), dict):
            values["strategy"] = Strategy.from_dict(values["strategy"])
        return cls(**values)


@dataclass
class EvaluationResult:
    """Where the report is; ``interrupted`` if folds are still missing (rerun to resume)."""

    report_dir: Path
    report: dict | None
    folds_done: int
    folds_total: int
    interrupted: bool = False


class EvaluationInterruptedError(Exception):
    """Raised inside the fold loop when the trainer was asked to stop (Ctrl-C)."""


# --- the run --------------------------------------------------------------------------------------


def plan_folds(n_bars: int, config: EvaluationConfig) -> list[Fold]:
    """The walk-forward folds (window-end ranges with purge gaps of window + horizon bars)."""
    return walk_forward_folds(n_bars, config.window, LabelConfig(horizon=config.horizon),
                              n_folds=config.folds, mode=config.mode)


def report_dir_for(out_dir: str | Path, source: dict, candles: pd.DataFrame) -> Path:
    """``out_dir/<symbol>_<category>_<interval>_<date of the last candle>``: the same data and
    command give the same folder, which is what makes a rerun resume."""
    last = pd.Timestamp(candles["timestamp"].iloc[-1])
    name = (f"{source.get('symbol', 'data')}_{source.get('category', 'linear')}_"
            f"{source.get('interval', '')}_{last:%Y%m%d}")
    return Path(out_dir) / name.replace("/", "-")


def data_fingerprint(candles: pd.DataFrame) -> dict:
    """First/last time, bar count and the content hash of the candles (``candles_sha256``)."""
    return {"first": pd.Timestamp(candles["timestamp"].iloc[0]).isoformat(),
            "last": pd.Timestamp(candles["timestamp"].iloc[-1]).isoformat(),
            "bars": int(len(candles)), "sha256": candles_sha256(candles)}


def _funding_fingerprint(funding: pd.DataFrame | None, note: str) -> dict:
    if funding is None:
        return {"note": note, "sha256": None}
    digest = hashlib.sha256(pd.DatetimeIndex(funding["timestamp"]).as_unit("ns").asi8.tobytes())
    digest.update(np.ascontiguousarray(funding["rate"].to_numpy(np.float64)).tobytes())
    return {"note": note, "settlements": int(len(funding)), "sha256": digest.hexdigest()}


def evaluate(
    candles: pd.DataFrame,
    source: dict,
    config: EvaluationConfig,
    out_dir: str | Path = "reports",
    *,
    report_dir: str | Path | None = None,
    quiet: bool = False,
    max_new_folds: int | None = None,
    command: str | None = None,
    funding: pd.DataFrame | None = None,
    funding_note: str | None = None,
    trials_log: str | Path | None = None,
) -> EvaluationResult:
    """Run (or resume) the walk-forward evaluation and write the report; see the module docstring.

    ``max_new_folds`` stops after that many newly finished folds (as Ctrl-C would); the result
    is then ``interrupted`` and a second call continues. ``command`` is shown in the report as
    the way to rerun it (default: built from ``source`` and ``config``). ``funding``: the
    perpetual's funding series (default: ``data.source.funding_for_source`` with
    ``config.funding_rate``). ``trials_log``: the JSON-lines file the run's trials are appended
    to and N is read from (None: ``trials.default_trials_log()``).
    """
    trials_log = default_trials_log() if trials_log is None else Path(trials_log)
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(out_dir, source, candles)
    if funding is None and funding_note is None:
        funding, funding_note = funding_for_source(
            {**source, "category": config.strategy.category}, candles, config.funding_rate)
    funding_note = funding_note or "funding: the series given"
    folds = plan_folds(len(candles), config)
    fingerprint = {"config": config.to_dict(), "data": data_fingerprint(candles),
                   "funding": _funding_fingerprint(funding, funding_note)}
    _check_or_write_state(report_dir, fingerprint)
    periods = periods_per_year_from_index(candles["timestamp"])
    done = {k: r for k in range(1, len(folds) + 1) if (r := _load_fold(report_dir, k)) is not None}
    todo = [k for k in range(1, len(folds) + 1) if k not in done]
    steps = {k: config.epochs * math.ceil(len(folds[k - 1].train) / config.batch_size) for k in todo}
    progress = _Progress(sum(steps.values()), len(folds), quiet)
    new = 0
    try:
        for k in todo:
            if max_new_folds is not None and new >= max_new_folds:
                break
            progress.fold = k
            result = run_fold(candles, source, config, folds[k - 1], k, report_dir, periods,
                              funding=funding, on_batch_end=progress.step)
            atomic_write(_fold_path(report_dir, k),
                         lambda handle, r=result: handle.write(json.dumps(jsonable(r)).encode()))
            (report_dir / FOLD_DIR / f"fold_{k}" / "last.npz").unlink(missing_ok=True)
            done[k] = result
            new += 1
            progress.finish_fold(steps[k], _fold_line(result, len(folds), periods))
    except EvaluationInterruptedError:
        progress.close()
        return EvaluationResult(report_dir, None, len(done), len(folds), interrupted=True)
    progress.close()
    if len(done) < len(folds):
        return EvaluationResult(report_dir, None, len(done), len(folds), interrupted=True)
    fold_results = [json.loads(json.dumps(jsonable(done[k]))) for k in sorted(done)]
    trials = _log_and_count_trials(report_dir, trials_log, source, config, fold_results, periods)
    meta = _metadata(source, config, candles, fingerprint["data"], folds, periods, out_dir, command)
    meta["funding"] = funding_note
    meta["trials"] = trials
    report = build_report(fold_results, config, periods, meta)
    write_report(report_dir, report, fold_results)
    return EvaluationResult(report_dir, report, len(done), len(folds))


def make_model(config: EvaluationConfig, in_channels: int) -> ConvNeXt1D:
    """The network of ``config`` (named variant, or explicit dims/depths), 3 classes."""
    shape = CONFIGS[config.variant] if config.dims is None else {"dims": config.dims,
                                                                 "depths": config.depths}
    return ConvNeXt1D(**shape, in_channels=in_channels, num_classes=3,
                      drop_path_rate=config.drop_path_rate, seed=config.seed)


def _placebo(data, seed: int):
    """The prepared data with train and validation labels permuted (counts, hence class weights,
    unchanged); the test part is untouched."""
    rng = np.random.default_rng([seed, 0x91AC])
    return replace(data, train=replace(data.train, y=rng.permutation(data.train.y)),
                   val=replace(data.val, y=rng.permutation(data.val.y)))


def run_fold(candles: pd.DataFrame, source: dict, config: EvaluationConfig, fold: Fold, k: int,
             report_dir: Path, periods_per_year: float, funding: pd.DataFrame | None = None,
             on_batch_end=None) -> dict:
    """Train on the fold's past, calibrate on its validation block, trade the test block with the
    strategy, the model's unsized directions and every baseline. Returns the fold's raw results
    (JSON-able)."""
    from numpyconvnext.train import LAST_NAME, Trainer

    label_config = LabelConfig(horizon=config.horizon)
    data = prepare_dataset(candles, window=config.window, label_config=label_config, fold=fold)
    if config.placebo:
        data = _placebo(data, config.seed * 1000 + k)
    model = make_model(config, len(data.feature_names))
    run_dir = report_dir / FOLD_DIR / f"fold_{k}"
    metadata = {"variant": config.variant, "data_source": source, "symbol": source.get("symbol"),
                "interval": source.get("interval"), "category": config.strategy.category,
                "evaluation_fold": k}
    trainer = Trainer(model, data, config.training_config(), run_dir, metadata=metadata,
                      quiet=True, on_batch_end=on_batch_end)
    if (run_dir / LAST_NAME).exists():
        trainer.load_state(run_dir / LAST_NAME)
    training = trainer.fit()  # ends with the best (lowest validation loss) weights loaded
    if training.interrupted:
        raise EvaluationInterruptedError
    choice = calibrate(model, data, candles, config.strategy, funding)
    from numpyconvnext.checkpoint import update_metadata

    update_metadata(training.best_path, choice)
    return trade_fold(model, data, candles, config, fold, k, periods_per_year, choice, training,
                      funding)


def trade_fold(model: ConvNeXt1D, data, candles: pd.DataFrame, config: EvaluationConfig,
               fold: Fold, k: int, periods_per_year: float, choice: dict, training,
               funding: pd.DataFrame | None = None) -> dict:
    """Trade the test block of ``data`` (one symbol's prepared fold) with the trained and
    calibrated ``model`` (``choice``: what ``calibrate`` chose on the validation block): the
    strategy, the model's unsized directions and every baseline. ``training``: the
    ``TrainingResult``. Returns the fold's raw results (JSON-able)."""
    base = config.strategy
    strategy = base.with_checkpoint(choice)
    test = data.test
    logits = predict_in_batches(model, test.X).astype(np.float64)
    probabilities = softmax_rows(logits, model.temperature if strategy.calibrated else 1.0)
    close = candles["close"].to_numpy(np.float64)
    stops = stop_distances(candles, test.end_index, strategy)
    plan = plan_positions(strategy, close[test.end_index], stops, probabilities)
    signals, _ = generate_signals(probabilities, strategy.threshold)

    weights = data.class_weights[data.train.y]
    linear = fit_logistic_regression(data.train.X[:, :, -1], data.train.y, l2=config.logistic_l2,
                                     iterations=config.logistic_iterations, sample_weight=weights)
    linear_signals, _ = generate_signals(linear.predict_proba(test.X[:, :, -1]), strategy.threshold)
    directions = {
        "model_unsized": DIRECTION_BY_CLASS[signals],
        "linear": DIRECTION_BY_CLASS[linear_signals],
        "momentum": momentum_directions(close, test.end_index, config.lookback),
        "buy_and_hold": np.ones(len(test), dtype=np.int64),
        "flat": np.zeros(len(test), dtype=np.int64),
    }
    if strategy.long_only:
        directions = {name: np.maximum(d, 0) for name, d in directions.items()}
    targets = {"model": plan.direction * plan.fraction,
               **{name: d.astype(np.float64) for name, d in directions.items()}}

    returns, trades, return_times = {}, {}, None
    for name in STRATEGIES:
        if name == "model":
            run = run_strategy(candles, test.end_time, plan, strategy, funding=funding,
                               initial_equity=INITIAL_EQUITY, periods_per_year=periods_per_year,
                               with_benchmark=False)
        else:
            run = run_directions(candles, test.end_time, targets[name], strategy, funding=funding,
                                 initial_equity=INITIAL_EQUITY, periods_per_year=periods_per_year)
        returns[name] = run.returns.to_numpy().tolist()
        return_times = _ms(run.returns.index)
        trades[name] = _trade_records(run.trades)
    history = training.history
    return {
        "fold": k,
        "ranges": fold.to_dict(),
        "times": {name: [pd.Timestamp(t).isoformat() for t in (part.end_time[0], part.end_time[-1])]
                  for name, part in (("train", data.train), ("val", data.val), ("test", test))},
        "training": {
            "best_epoch": training.best_epoch, "best_val_loss": training.best_val_loss,
            "epochs_run": len(history), "stopped_early": training.stopped_early,
            "val_accuracy": [row["val_accuracy"] for row in history],
            "test_accuracy": (training.test_metrics or {}).get("test", {}).get("accuracy"),
            "linear_train_loss": linear.losses[-1],
            "model_weights_sha256": hashlib.sha256(model.flat_params.tobytes()).hexdigest(),
            "linear_weights_sha256": hashlib.sha256(
                np.concatenate([linear.weights.ravel(), linear.bias]).tobytes()).hexdigest(),
        },
        "strategy_choice": {**choice.get("calibration", {}), **{
            key: choice.get("strategy", {}).get(key) for key in
            ("confidence", "win_loss_ratio", "payoff_source", "validation_sharpe", "grid")},
            "confidence_used": strategy.threshold, "win_loss_ratio_used": strategy.payoff_ratio},
        "grid_test": (_grid_on_test(candles, test, probabilities, base, choice, funding,
                                    periods_per_year) if base.confidence is None else []),
        "return_times_ms": return_times,
        "returns": returns,
        "decision_times_ms": _ms(test.end_time),
        "forward_return": test.forward_return.tolist(),
        "targets": {name: t.tolist() for name, t in targets.items()},
        "trades": trades,
    }


def _grid_on_test(candles, test, probabilities, base: Strategy, choice: dict, funding,
                  periods_per_year: float) -> list[dict]:
    """Each threshold of the grid traded at that fixed value over the test block (with the b
    estimated for it on validation): sum, sum of squares and count of the per-bar returns, so
    the pooled Sharpe of every value can be logged as a trial."""
    close = candles["close"].to_numpy(np.float64)
    stops = stop_distances(candles, test.end_index, base)
    rows = []
    for row in choice.get("strategy", {}).get("grid", []):
        at = base.with_overrides(confidence=row["confidence"], win_loss_ratio=row["win_loss_ratio"])
        plan = plan_positions(at, close[test.end_index], stops, probabilities)
        run = run_strategy(candles, test.end_time, plan, at, funding=funding,
                           initial_equity=INITIAL_EQUITY, periods_per_year=periods_per_year,
                           with_benchmark=False)
        r = run.returns.to_numpy()
        rows.append({"confidence": row["confidence"], "n": int(r.size), "sum": float(r.sum()),
                     "sumsq": float(r @ r)})
    return rows


def _ms(index) -> list[int]:
    return (pd.DatetimeIndex(index).as_unit("ns").asi8 // 1_000_000).tolist()


def _trade_records(trades: pd.DataFrame) -> list[dict]:
    return [{"side": str(row["side"]), "entry_time": pd.Timestamp(row["entry_time"]).isoformat(),
             "exit_time": pd.Timestamp(row["exit_time"]).isoformat(), "pnl": float(row["pnl"]),
             "return": float(row["return"]), "fees": float(row["fees"]),
             "funding": float(row["funding"]), "duration_bars": int(row["duration_bars"]),
             "exit_reason": str(row["exit_reason"])}
            for row in trades.to_dict("records")]


def trial_entries(source: dict, config: EvaluationConfig, fold_results: list[dict],
                  periods: float, run: str) -> list[dict]:
    """The trials of one walk-forward run of one configuration on one market: the strategy as
    evaluated over the pooled test blocks, then each confidence threshold of the grid traded at
    that fixed value (when the threshold was chosen per fold)."""
    dataset = dataset_key({**source, "category": config.strategy.category})
    pooled = np.concatenate([np.asarray(r["returns"]["model"], dtype=np.float64)
                             for r in fold_results])
    run_config = {k: v for k, v in config.to_dict().items()
                  if k not in ("bootstrap_samples", "block_length", "confidence_level", "trials")}
    entries = [{"dataset": dataset, "command": "evaluate", "kind": "pooled_test",
                "config": run_config, "sharpe": sharpe_ratio(pooled, periods),
                "sharpe_per_bar": stats.sharpe_per_bar(pooled), "bars": int(pooled.size),
                "run": run}]
    grid = [r["grid_test"] for r in fold_results if r.get("grid_test")]
    if grid and len(grid) == len(fold_results):
        for j, row in enumerate(grid[0]):
            n = sum(g[j]["n"] for g in grid)
            total, squares = sum(g[j]["sum"] for g in grid), sum(g[j]["sumsq"] for g in grid)
            mean = total / n
            var = (squares - n * mean * mean) / max(n - 1, 1)
            per_bar = mean / math.sqrt(var) if var > 0 else 0.0
            entries.append({**entries[0], "config": {**run_config, "strategy": {
                **run_config["strategy"], "confidence": row["confidence"]}},
                "sharpe": per_bar * math.sqrt(periods), "sharpe_per_bar": per_bar, "bars": n})
    return entries


def log_trials_once(report_dir: Path, trials_log, entries: list[dict]) -> None:
    """Append ``entries`` to the trials log unless this report folder's state.json says they
    were logged already (a rerun of a finished evaluation adds nothing)."""
    state_path = report_dir / STATE_NAME
    state = json.loads(state_path.read_text())
    if not state.get("trials_logged"):
        append_trials(trials_log, entries)
        state["trials_logged"] = str(trials_log)
        atomic_write(state_path, lambda handle: handle.write(json.dumps(state, indent=2).encode()))


def count_logged_trials(trials_log, dataset: str, entries: list[dict], n_obs: int,
                        given: int | None = None) -> dict:
    """N and V of the deflated Sharpe for ``dataset`` from the log (or ``given`` N), as the
    report states them."""
    logged = read_trials(trials_log, dataset)
    count = count_trials(logged or entries, n_obs, trials_log, dataset)
    text = count.describe(n_obs)
    if given:
        text = f"N = {given} trials (given with --trials); " + text.split("; ", 1)[1]
    return {"n_trials": given or count.n_trials, "variance": count.variance, "logged": len(logged),
            "this_run": len(entries), "text": text}


def _log_and_count_trials(report_dir: Path, trials_log, source: dict, config: EvaluationConfig,
                          fold_results: list[dict], periods: float) -> dict:
    """Append this evaluation's trials to the log (once per evaluation, recorded in state.json),
    then N and V of the deflated Sharpe from the log (or ``config.trials``)."""
    entries = trial_entries(source, config, fold_results, periods, str(report_dir))
    log_trials_once(report_dir, trials_log, entries)
    return count_logged_trials(trials_log, entries[0]["dataset"], entries, entries[0]["bars"],
                               config.trials)


# --- state and resume -------------------------------------------------------------------------------


def _fold_path(report_dir: Path, k: int) -> Path:
    return report_dir / FOLD_DIR / f"fold_{k}.json"


def _load_fold(report_dir: Path, k: int) -> dict | None:
    path = _fold_path(report_dir, k)
    return json.loads(path.read_text()) if path.exists() else None


def _check_or_write_state(report_dir: Path, fingerprint: dict) -> None:
    """Write state.json for a new evaluation; for an existing one, insist on the same settings."""
    path = report_dir / STATE_NAME
    if path.exists():
        stored = json.loads(path.read_text())
        differences = _differences(stored.get("fingerprint", {}), fingerprint)
        if differences:
            raise ValueError(f"{report_dir} holds an evaluation with other settings "
                             f"({'; '.join(differences[:4])}); use another --out or delete it")
        return
    state = {"fingerprint": fingerprint,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write(path, lambda handle: handle.write(json.dumps(state, indent=2).encode()))


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a} != {b}")
    return out


class _Progress:
    """One bar over the training steps of all remaining folds, with an ETA."""

    def __init__(self, total_steps: int, n_folds: int, quiet: bool):
        self.bar = ProgressBar(total_steps, "evaluate", quiet=quiet)
        self.n_folds = n_folds
        self.quiet = quiet
        self.fold = 0
        self.planned = 0
        self.started = time.perf_counter()

    def step(self, trainer) -> None:
        elapsed = time.perf_counter() - self.started
        done = self.bar.done + 1
        eta = elapsed / done * (self.bar.total - done)
        self.bar.update(1, fold=f"{self.fold}/{self.n_folds}",
                        epoch=f"{trainer.state.epoch + 1}/{trainer.config.epochs}",
                        eta=f"{eta / 60:.1f}min")

    def finish_fold(self, steps: int, line: str) -> None:
        self.planned += steps
        self.bar.done = self.planned  # early stopping leaves steps unused
        if not self.quiet:
            prefix = "\n" if self.bar.interactive else ""
            self.bar.stream.write(prefix + line + "\n")
            self.bar.stream.flush()

    def close(self) -> None:
        self.bar.close()


def _fold_line(result: dict, n_folds: int, periods_per_year: float) -> str:
    first, last = result["times"]["test"]
    sharpes = "  ".join(f"{name} {sharpe_ratio(np.asarray(r), periods_per_year):+.2f}"
                        for name, r in result["returns"].items() if name != "flat")
    return f"fold {result['fold']}/{n_folds} test {first[:10]}..{last[:10]}  Sharpe: {sharpes}"


# --- statistics ---------------------------------------------------------------------------------------


def block_statistics(returns: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                     forward_return: np.ndarray, trades: dict[str, list[dict]],
                     periods_per_year: float, config: EvaluationConfig, seed: int,
                     block_sizes: list[int] | None = None, n_trials: int | None = None,
                     trial_variance: float | None = None) -> dict:
    """Every figure of one block of bars (a fold, or all folds pooled), per strategy.

    - sharpe: annualised, mean/std(ddof=1)*sqrt(P); sharpe_ci: stationary bootstrap percentile
      interval (mean block ``config.block_length`` bars, ``config.bootstrap_samples`` resamples,
      seeded); sharpe_diff_vs_model: model minus this strategy, paired-bootstrap interval.
    - deflated_sharpe: DSR with N = ``n_trials`` and V = ``trial_variance`` from the trials log
      (``trials.count_trials``; default N = 1 and V = 1/(T-1), the sampling variance of a
      per-bar Sharpe from T bars when the true Sharpe is 0). psr: the same probability with
      N = 1 (no deflation, benchmark 0).
    - direction_accuracy: over the bars where the strategy is long or short, the share where the
      label's forward log return over ``horizon`` bars has that sign; the interval is Wilson's
      with the effective number of calls (``stats.overlap_effective_n``: horizons of
      consecutive calls overlap, so they are not independent).
    - total_return, max_drawdown, calmar, longest_drawdown_bars: of the equity compounded from the
      block's per-bar returns.
    - trades, win_rate, profit_factor, avg_win_loss and expectancy (of the trades' net returns),
      fees_paid and funding_paid (over 10,000 starting equity, summed over the blocks),
      turnover_per_year (sum |change of target position| per block, from flat to the final
      close, in multiples of equity, per year), exposure (share of decisions with a position).
      ``block_sizes``: decisions per block when several blocks are joined (default: one).
    """
    names = list(returns)
    matrix = np.column_stack([np.asarray(returns[n], dtype=np.float64) for n in names])
    n_bars = len(matrix)
    boots = stats.bootstrap_sharpes(matrix, periods_per_year, config.bootstrap_samples,
                                    config.block_length, seed)
    variance = 1.0 / max(n_bars - 1, 1) if trial_variance is None else trial_variance
    out = {}
    model_column = names.index("model") if "model" in names else None
    for j, name in enumerate(names):
        r = matrix[:, j]
        target = np.asarray(targets[name], dtype=np.float64)
        d = np.sign(target)
        calls = d != 0
        hits = (d * forward_return) > 0
        correct = int(np.sum(hits[calls]))
        n_calls = int(calls.sum())
        n_eff = stats.overlap_effective_n(hits, calls, config.horizon)
        pnl = np.asarray([t["pnl"] for t in trades[name]], dtype=np.float64)
        trade_returns = np.asarray([t["return"] for t in trades[name]], dtype=np.float64)
        fees = float(sum(t["fees"] for t in trades[name]))
        funding = float(sum(t.get("funding", 0.0) for t in trades[name]))
        equity = np.concatenate(([1.0], np.cumprod(1.0 + r)))
        constant = not r.std() > 0
        deflated = stats.deflated_sharpe_ratio(r, n_trials or 1, variance)
        accuracy = correct / n_calls if n_calls else None
        figures = {
            "sharpe": sharpe_ratio(r, periods_per_year),
            "sharpe_ci": list(stats.percentile_interval(boots[:, j], config.confidence_level)),
            "deflated_sharpe": None if constant else deflated.dsr,
            "psr": None if constant else stats.probabilistic_sharpe_ratio(
                deflated.sharpe, 0.0, n_bars, deflated.skewness, deflated.kurtosis),
            "direction_accuracy": accuracy,
            "direction_accuracy_ci": (list(stats.wilson_interval(accuracy * n_eff, n_eff,
                                                                 config.confidence_level))
                                      if n_calls else None),
            "direction_calls": n_calls,
            "direction_calls_effective": n_eff,
            "total_return": float(equity[-1] - 1.0),
            "max_drawdown": float(np.min(equity / np.maximum.accumulate(equity) - 1.0)),
            "calmar": calmar_ratio(equity, periods_per_year),
            "longest_drawdown_bars": longest_drawdown_bars(equity),
            "trades": int(len(pnl)),
            "win_rate": win_rate(pnl) if len(pnl) else None,
            "profit_factor": profit_factor(pnl) if len(pnl) else None,
            "avg_win_loss": win_loss_ratio(trade_returns) if len(pnl) else None,
            "expectancy": expectancy(trade_returns) if len(pnl) else None,
            "fees_paid": fees / INITIAL_EQUITY,
            "funding_paid": funding / INITIAL_EQUITY,
            "turnover_per_year": _turnover(target, block_sizes) / (n_bars / periods_per_year),
            "exposure": float(np.mean(calls)),
            "bars": n_bars,
            "dsr_details": deflated.to_dict(),
        }
        if model_column is not None and name != "model":
            diff = boots[:, model_column] - boots[:, j]
            figures["sharpe_diff_vs_model"] = sharpe_ratio(matrix[:, model_column], periods_per_year) \
                - figures["sharpe"]
            figures["sharpe_diff_vs_model_ci"] = list(stats.percentile_interval(
                diff, config.confidence_level))
        out[name] = figures
    return out


def _turnover(targets: np.ndarray, block_sizes: list[int] | None = None) -> float:
    """Per block ``|p_0| + sum |p_t - p_(t-1)| + |p_last|`` (each block starts flat and ends
    flat), summed over the blocks, in multiples of equity."""
    d = np.asarray(targets, dtype=np.float64)
    total = 0.0
    for block in np.split(d, np.cumsum(block_sizes or [len(d)])[:-1]):
        if block.size:
            total += float(np.abs(np.diff(block, prepend=0.0)).sum() + abs(block[-1]))
    return total


def _trial_inputs(meta: dict) -> tuple[int | None, float | None]:
    trials = meta.get("trials") or {}
    return trials.get("n_trials"), trials.get("variance")


def build_report(fold_results: list[dict], config: EvaluationConfig, periods_per_year: float,
                 meta: dict) -> dict:
    """The report (JSON-able) from the fold results: per fold, pooled, verdict, targets, the
    model's monthly returns."""
    n_trials, variance = _trial_inputs(meta)
    folds = []
    for result in fold_results:
        figures = block_statistics(
            {n: np.asarray(result["returns"][n]) for n in STRATEGIES},
            {n: np.asarray(result["targets"][n]) for n in STRATEGIES},
            np.asarray(result["forward_return"]), result["trades"], periods_per_year, config,
            seed=config.seed * 1000 + result["fold"], n_trials=n_trials, trial_variance=variance)
        folds.append({"fold": result["fold"], "ranges": result["ranges"], "times": result["times"],
                      "training": result["training"], "strategy_choice": result["strategy_choice"],
                      "strategies": figures})
    pooled = pooled_statistics(fold_results, config, periods_per_year, n_trials, variance)
    stamps = pd.to_datetime(np.concatenate([r["return_times_ms"] for r in fold_results]),
                            unit="ms", utc=True)
    model_returns = np.concatenate([r["returns"]["model"] for r in fold_results])
    equity = pd.Series(np.cumprod(1.0 + model_returns), index=stamps)
    start = pd.Series([1.0], index=[stamps[0] - pd.Timedelta(microseconds=1)])
    monthly = _monthly_table(pd.concat([start, equity]))
    return jsonable({**meta, "pooled": pooled, "folds": folds, "monthly_returns": monthly,
                   "verdict": verdict(pooled, config, n_trials), "targets": target_check(pooled["model"])})


def _monthly_table(equity: pd.Series) -> dict:
    from numpyconvnext.trading.metrics import monthly_returns

    table = monthly_returns(equity)
    return {str(year): {k: (None if pd.isna(v) else float(v)) for k, v in row.items()}
            for year, row in table.iterrows()}


def pooled_statistics(fold_results: list[dict], config: EvaluationConfig, periods_per_year: float,
                      n_trials: int | None = None, trial_variance: float | None = None) -> dict:
    """``block_statistics`` over all test blocks joined in time order."""
    def joined(key):
        return {n: np.concatenate([np.asarray(r[key][n], dtype=np.float64) for r in fold_results])
                for n in STRATEGIES}

    forward = np.concatenate([np.asarray(r["forward_return"]) for r in fold_results])
    trades = {n: [t for r in fold_results for t in r["trades"][n]] for n in STRATEGIES}
    return block_statistics(joined("returns"), joined("targets"), forward, trades,
                            periods_per_year, config, seed=config.seed * 1000,
                            block_sizes=[len(r["forward_return"]) for r in fold_results],
                            n_trials=n_trials, trial_variance=trial_variance)


def target_check(model: dict) -> dict:
    """The spec's targets beside the model's pooled figures: value, target, met (never met by a
    strategy that did not trade: its flat equity has no drawdown to speak of)."""
    traded = bool(model.get("trades"))
    return {key: {"value": model.get(key), "target": threshold,
                  "met": traded and model.get(key) is not None and model[key] > threshold}
            for key, threshold in TARGETS.items()}


def verdict(pooled: dict, config: EvaluationConfig, n_trials: int | None = None) -> dict:
    """Plain answers: which baselines the strategy beats (pooled Sharpe after costs, and whether
    the paired-bootstrap interval of the difference excludes 0), and the deflated Sharpe."""
    model = pooled["model"]
    beats = {b: model["sharpe"] > pooled[b]["sharpe"] for b in BASELINES}
    significant = {b: pooled[b]["sharpe_diff_vs_model_ci"][0] > 0 for b in BASELINES}
    dsr = model["deflated_sharpe"]
    lost = [b for b in BASELINES if not beats[b]]
    label = _labels(config)
    lines = []
    if lost:
        lines.append("The strategy does NOT beat " + ", ".join(
            f"{label[b]} (Sharpe {model['sharpe']:.2f} vs {pooled[b]['sharpe']:.2f})" for b in lost)
            + " on pooled Sharpe after costs.")
    else:
        lines.append("The strategy beats every baseline on pooled Sharpe after costs.")
    won = [b for b in BASELINES if beats[b]]
    if won:
        sig = [label[b] for b in won if significant[b]]
        lines.append("It beats " + ", ".join(label[b] for b in won) + "; the 95% paired-bootstrap "
                     "interval of the Sharpe difference excludes 0 against "
                     + (", ".join(sig) if sig else "none of them") + ".")
    if dsr is None:
        lines.append("The strategy never traded: no deflated Sharpe.")
    else:
        evidence = "evidence" if dsr >= 0.95 else "NO evidence"
        lines.append(f"Deflated Sharpe {dsr:.3f} (N = {n_trials or 1} trials): {evidence} that "
                     "its true Sharpe is above 0 (threshold 0.95).")
    met = sum(target_check(model)[k]["met"] for k in TARGETS)
    lines.append(f"Spec targets met: {met} of {len(TARGETS)}.")
    return {"beats": beats, "beats_significantly": significant,
            "beats_all_baselines": not lost, "deflated_sharpe": dsr, "text": " ".join(lines)}


def _labels(config: EvaluationConfig) -> dict:
    return {"model": "ConvNeXt strategy", "model_unsized": "ConvNeXt ±1 (unsized)",
            "linear": "logistic regression", "momentum": f"momentum ({config.lookback} bars)",
            "buy_and_hold": "buy & hold", "flat": "always flat"}


def _metadata(source, config, candles, fingerprint, folds, periods, out_dir, command) -> dict:
    return {
        "kind": "numpyconvnext.evaluate",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or rerun_command(source, config, len(candles), out_dir),
        "version": _version(),
        "source": {k: v for k, v in source.items() if k not in ("first", "last", "bars", "sha256")},
        "category": config.strategy.category,
        "data": fingerprint,
        "test_period": [pd.Timestamp(candles["timestamp"].iloc[folds[0].test.start]).isoformat(),
                        pd.Timestamp(candles["timestamp"].iloc[folds[-1].test.stop]).isoformat()],
        "periods_per_year": periods,
        "config": config.to_dict(),
        "strategy_description": config.strategy.describe() if config.strategy.confidence is not None
        else config.strategy.describe().replace(
            f"confidence >= {config.strategy.threshold:.2f}",
            "confidence threshold chosen on each fold's validation block from "
            + "/".join(f"{c:g}" for c in CONFIDENCE_GRID)),
        "strategies": _labels(config),
    }


def rerun_command(source: dict, config: EvaluationConfig, bars: int, out_dir) -> str:
    """The ``python cli.py evaluate ...`` line that reproduces this evaluation."""
    if source.get("kind") == "file":
        data = f"--data {source['path']}"
    elif source.get("kind") == "synthetic" and "generated_bars" in source:
        symbol = str(source.get("symbol", "BTCUSDT")).removeprefix("SYNTHETIC-")
        data = (f"--source synthetic --symbol {symbol} --interval {source.get('interval')} "
                f"--days {source['generated_bars'] * 1.0 / _bars_per_day(source.get('interval')):g}")
    else:
        return "(library call: numpyconvnext.evaluate.evaluate; the data is not a CLI source)"
    strategy = config.strategy
    flags = [f"--category {strategy.category}"]
    if strategy.confidence is not None:
        flags.append(f"--confidence {strategy.confidence:g}")
    flags.append(f"--sizing {strategy.sizing}")
    flags.append(f"--stop-loss {strategy.stop_loss or 0:g}")
    if strategy.take_profit is not None:
        flags.append(f"--take-profit {strategy.take_profit:g}")
    flags.append(f"--max-risk {strategy.max_risk:g} --fee-rate {strategy.fee:g} "
                 f"--slippage {strategy.slippage:g}")
    if not strategy.calibrated:
        flags.append("--no-calibration")
    if config.funding_rate is not None:
        flags.append(f"--funding-rate {config.funding_rate:g}")
    if config.trials is not None:
        flags.append(f"--trials {config.trials}")
    if config.placebo:
        flags.append("--placebo")
    return (f"python cli.py evaluate {data} --bars {bars} --folds {config.folds} "
            f"--model {config.variant} --epochs {config.epochs} --window {config.window} "
            f"--horizon {config.horizon} --seed {config.seed} {' '.join(flags)} --out {out_dir}")


def _bars_per_day(interval) -> float:
    from numpyconvnext.data.intervals import interval_to_timedelta

    return pd.Timedelta(days=1) / interval_to_timedelta(interval or "1h")


def _version() -> dict:
    from numpyconvnext import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"numpyconvnext": __version__, "git_commit": commit or None,
            "python": sys.version.split()[0], "numpy": np.__version__}


# --- files -------------------------------------------------------------------------------------------


def write_report(report_dir: Path, report: dict, fold_results: list[dict]) -> None:
    """report.json, report.md, returns.csv, decisions.csv, trades.csv and the two pictures."""
    from numpyconvnext.evaluate_report import render_markdown, write_plots

    report_dir = Path(report_dir)
    returns = pd.DataFrame({
        "timestamp": pd.to_datetime(np.concatenate([r["return_times_ms"] for r in fold_results]),
                                    unit="ms", utc=True),
        "fold": np.concatenate([[r["fold"]] * len(r["return_times_ms"]) for r in fold_results]),
        **{n: np.concatenate([r["returns"][n] for r in fold_results]) for n in STRATEGIES}})
    decisions = pd.DataFrame({
        "timestamp": pd.to_datetime(np.concatenate([r["decision_times_ms"] for r in fold_results]),
                                    unit="ms", utc=True),
        "fold": np.concatenate([[r["fold"]] * len(r["decision_times_ms"]) for r in fold_results]),
        "forward_return": np.concatenate([r["forward_return"] for r in fold_results]),
        **{n: np.concatenate([r["targets"][n] for r in fold_results]) for n in STRATEGIES}})
    trades = pd.DataFrame([{"strategy": n, "fold": r["fold"], **t} for r in fold_results
                           for n in STRATEGIES for t in r["trades"][n]],
                          columns=["strategy", "fold", "side", "entry_time", "exit_time", "pnl",
                                   "return", "fees", "funding", "duration_bars", "exit_reason"])
    for name, frame in (("returns.csv", returns), ("decisions.csv", decisions),
                        ("trades.csv", trades)):
        text = frame.to_csv(index=False, float_format="%.17g")
        atomic_write(report_dir / name, lambda handle, t=text: handle.write(t.encode()))
    pictures = write_plots(report_dir, report, returns)
    report["files"] = {"returns": "returns.csv", "decisions": "decisions.csv", "trades": "trades.csv",
                       **{k: v.name for k, v in pictures.items() if v is not None}}
    text = json.dumps(report, indent=2)
    atomic_write(report_dir / "report.json", lambda handle: handle.write(text.encode()))
    markdown = render_markdown(report)
    atomic_write(report_dir / "report.md", lambda handle: handle.write(markdown.encode()))


def recompute_pooled(report_dir: str | Path) -> dict:
    """The pooled figures recomputed from the saved returns.csv, decisions.csv and trades.csv
    (and the settings and trial count in report.json): what a reader can check the report
    against."""
    report_dir = Path(report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    config = EvaluationConfig.from_dict(report["config"])
    returns = pd.read_csv(report_dir / "returns.csv")
    decisions = pd.read_csv(report_dir / "decisions.csv")
    trades = pd.read_csv(report_dir / "trades.csv")
    n_trials, variance = _trial_inputs(report)
    pooled = block_statistics(
        {n: returns[n].to_numpy(np.float64) for n in STRATEGIES},
        {n: decisions[n].to_numpy(np.float64) for n in STRATEGIES},
        decisions["forward_return"].to_numpy(np.float64),
        {n: trades[trades["strategy"] == n].to_dict("records") for n in STRATEGIES},
        report["periods_per_year"], config, seed=config.seed * 1000,
        block_sizes=decisions.groupby("fold", sort=False).size().tolist(),
        n_trials=n_trials, trial_variance=variance)
    return jsonable(pooled)


def load_report(report_dir: str | Path) -> dict:
    """report.json as a dict."""
    return json.loads((Path(report_dir) / "report.json").read_text())


def strip_volatile(report: dict) -> dict:
    """The report without what legitimately differs between identical runs (creation time)."""
    return {k: v for k, v in report.items() if k not in ("created",)}


__all__ = ["BASELINES", "EvaluationConfig", "EvaluationResult", "STRATEGIES", "TARGETS",
           "block_statistics", "build_report", "data_fingerprint", "evaluate", "load_report",
           "make_model", "plan_folds", "pooled_statistics", "recompute_pooled", "report_dir_for",
           "rerun_command", "run_fold", "strip_volatile", "target_check", "verdict",
           "write_report"]
