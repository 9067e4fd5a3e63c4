"""Walk-forward evaluation after costs against honest baselines, written as a report people read.

    candles -> walk_forward_folds (expanding, purge gaps) -> per fold:
        train ConvNeXt1D on the fold's past (Trainer; checkpoint = lowest validation loss)
        -> signals on the never-seen test block -> backtest with fees and slippage
        beside buy-and-hold, always-flat, momentum and a logistic regression on the same block
    -> statistics per fold and pooled (stats.py) -> report.md, report.json, returns.csv,
       decisions.csv, trades.csv, equity.png, sharpe_by_fold.png in one folder

Resume: each finished fold is saved atomically as ``folds/fold_<k>.json`` (per-bar returns,
decisions, trades); ``state.json`` holds the settings and a fingerprint of the candles. Running
the same evaluation again skips the finished folds (and continues a half-trained fold from its
``last.npz``); different settings are an error rather than a silently mixed report. The report is
a pure function of the fold files, so a resumed evaluation writes the same report as an
uninterrupted one.

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
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from numpyconvnext import stats
from numpyconvnext.baselines import fit_logistic_regression, momentum_directions, softmax
from numpyconvnext.checkpoint import atomic_write
from numpyconvnext.config import TrainingConfig
from numpyconvnext.data.dataset import Fold, prepare_dataset, walk_forward_folds
from numpyconvnext.data.labels import LabelConfig
from numpyconvnext.model import CONFIGS, ConvNeXt1D
from numpyconvnext.progress import ProgressBar
from numpyconvnext.scoring import predict_in_batches
from numpyconvnext.trading.backtest import DEFAULT_FEE_RATE, DEFAULT_SLIPPAGE, backtest
from numpyconvnext.trading.metrics import (
    periods_per_year_from_index,
    profit_factor,
    sharpe_ratio,
    win_rate,
)
from numpyconvnext.trading.signals import DIRECTION_BY_CLASS, generate_signals

STRATEGIES = ("model", "linear", "momentum", "buy_and_hold", "flat")
BASELINES = STRATEGIES[1:]
# the strategies that trade, one of which a reader would pick: the deflated Sharpe's default N
CANDIDATES = ("model", "linear", "momentum", "buy_and_hold")
INITIAL_EQUITY = 10_000.0
STATE_NAME = "state.json"
FOLD_DIR = "folds"
# the spec's targets: (metric, threshold); each is met when the value is strictly above it
TARGETS = {"direction_accuracy": 0.55, "sharpe": 1.5, "max_drawdown": -0.15}


@dataclass(frozen=True)
class EvaluationConfig:
    """Every setting that changes the result (stored in state.json; a resume must match).

    ``dims``/``depths`` override the named ``variant`` (tests use tiny networks).
    ``momentum_lookback`` None means the label horizon. ``trials`` is N of the deflated Sharpe
    (None: the 4 candidate strategies of this report; pass the number of configurations you
    really tried). ``block_length`` is the stationary bootstrap's mean block in bars.
    """

    folds: int = 5
    variant: str = "atto"
    dims: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    epochs: int = 2
    window: int = 128
    horizon: int = 12
    confidence: float = 0.4
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 4e-4
    drop_path_rate: float = 0.1
    mode: str = "expanding"
    fee_rate: float = DEFAULT_FEE_RATE
    slippage: float = DEFAULT_SLIPPAGE
    momentum_lookback: int | None = None
    logistic_l2: float = 1e-3
    logistic_iterations: int = 500
    bootstrap_samples: int = 1000
    block_length: int = 24
    confidence_level: float = 0.95
    trials: int | None = None

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ValueError("folds must be >= 1")
        if self.dims is None and self.variant not in CONFIGS:
            raise ValueError(f"unknown model {self.variant!r}; choose from {', '.join(CONFIGS)}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError("confidence must be in [0, 1]")
        if self.trials is not None and self.trials < 1:
            raise ValueError("trials must be >= 1")
        self.training_config()  # window, horizon, epochs... are checked there

    @property
    def lookback(self) -> int:
        return self.momentum_lookback or self.horizon

    @property
    def n_trials(self) -> int:
        return self.trials or len(CANDIDATES)

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
    """``out_dir/<symbol>_<interval>_<date of the last candle>``: the same data and command give
    the same folder, which is what makes a rerun resume."""
    last = pd.Timestamp(candles["timestamp"].iloc[-1])
    name = f"{source.get('symbol', 'data')}_{source.get('interval', '')}_{last:%Y%m%d}"
    return Path(out_dir) / name.replace("/", "-")


def data_fingerprint(candles: pd.DataFrame) -> dict:
    """First/last time, bar count and a SHA-256 of the OHLC prices."""
    prices = np.ascontiguousarray(candles[["open", "high", "low", "close"]].to_numpy(np.float64))
    return {"first": pd.Timestamp(candles["timestamp"].iloc[0]).isoformat(),
            "last": pd.Timestamp(candles["timestamp"].iloc[-1]).isoformat(),
            "bars": int(len(candles)),
            "sha256": hashlib.sha256(prices.tobytes()).hexdigest()}


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
) -> EvaluationResult:
    """Run (or resume) the walk-forward evaluation and write the report; see the module docstring.

    ``max_new_folds`` stops after that many newly finished folds (as Ctrl-C would); the result
    is then ``interrupted`` and a second call continues. ``command`` is shown in the report as
    the way to rerun it (default: built from ``source`` and ``config``).
    """
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(out_dir, source, candles)
    folds = plan_folds(len(candles), config)
    fingerprint = {"config": config.to_dict(), "data": data_fingerprint(candles)}
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
                              on_batch_end=progress.step)
            atomic_write(_fold_path(report_dir, k),
                         lambda handle, r=result: handle.write(json.dumps(r).encode()))
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
    meta = _metadata(source, config, candles, fingerprint["data"], folds, periods, out_dir, command)
    report = build_report([done[k] for k in sorted(done)], config, periods, meta)
    write_report(report_dir, report, [done[k] for k in sorted(done)])
    return EvaluationResult(report_dir, report, len(done), len(folds))


def make_model(config: EvaluationConfig, in_channels: int) -> ConvNeXt1D:
    """The network of ``config`` (named variant, or explicit dims/depths), 3 classes."""
    shape = CONFIGS[config.variant] if config.dims is None else {"dims": config.dims,
                                                                 "depths": config.depths}
    return ConvNeXt1D(**shape, in_channels=in_channels, num_classes=3,
                      drop_path_rate=config.drop_path_rate, seed=config.seed)


def run_fold(candles: pd.DataFrame, source: dict, config: EvaluationConfig, fold: Fold, k: int,
             report_dir: Path, periods_per_year: float, on_batch_end=None) -> dict:
    """Train on the fold's past, pick the best-validation checkpoint, trade the test block with
    the model and every baseline. Returns the fold's raw results (JSON-able)."""
    from numpyconvnext.train import LAST_NAME, Trainer

    label_config = LabelConfig(horizon=config.horizon)
    data = prepare_dataset(candles, window=config.window, label_config=label_config, fold=fold)
    model = make_model(config, len(data.feature_names))
    run_dir = report_dir / FOLD_DIR / f"fold_{k}"
    metadata = {"variant": config.variant, "data_source": source, "symbol": source.get("symbol"),
                "interval": source.get("interval"), "evaluation_fold": k}
    trainer = Trainer(model, data, config.training_config(), run_dir, metadata=metadata,
                      quiet=True, on_batch_end=on_batch_end)
    if (run_dir / LAST_NAME).exists():
        trainer.load_state(run_dir / LAST_NAME)
    training = trainer.fit()  # ends with the best (lowest validation loss) weights loaded
    if training.interrupted:
        raise EvaluationInterruptedError
    test = data.test
    model.eval()
    probabilities = softmax(predict_in_batches(model, test.X).astype(np.float64))
    directions = {"model": _directions(probabilities, config.confidence)}

    weights = data.class_weights[data.train.y]
    linear = fit_logistic_regression(data.train.X[:, :, -1], data.train.y, l2=config.logistic_l2,
                                     iterations=config.logistic_iterations, sample_weight=weights)
    directions["linear"] = _directions(linear.predict_proba(test.X[:, :, -1]), config.confidence)
    close = candles["close"].to_numpy(np.float64)
    directions["momentum"] = momentum_directions(close, test.end_index, config.lookback)
    directions["buy_and_hold"] = np.ones(len(test), dtype=np.int64)
    directions["flat"] = np.zeros(len(test), dtype=np.int64)

    returns, trades, return_times = {}, {}, None
    for name in STRATEGIES:
        run = backtest(candles, pd.Series(directions[name].astype(np.float64), index=test.end_time),
                       kind="position", fee_rate=config.fee_rate, slippage=config.slippage,
                       initial_equity=INITIAL_EQUITY, periods_per_year=periods_per_year,
                       with_benchmark=False)
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
        },
        "return_times_ms": return_times,
        "returns": returns,
        "decision_times_ms": _ms(test.end_time),
        "forward_return": test.forward_return.tolist(),
        "directions": {name: d.tolist() for name, d in directions.items()},
        "trades": trades,
    }


def _directions(probabilities: np.ndarray, confidence: float) -> np.ndarray:
    classes, _ = generate_signals(probabilities, confidence)
    return DIRECTION_BY_CLASS[classes]


def _ms(index) -> list[int]:
    return (pd.DatetimeIndex(index).as_unit("ns").asi8 // 1_000_000).tolist()


def _trade_records(trades: pd.DataFrame) -> list[dict]:
    return [{"side": str(row.side), "entry_time": pd.Timestamp(row.entry_time).isoformat(),
             "exit_time": pd.Timestamp(row.exit_time).isoformat(), "pnl": float(row.pnl),
             "fees": float(row.fees), "duration_bars": int(row.duration_bars)}
            for row in trades.itertuples()]


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


def block_statistics(returns: dict[str, np.ndarray], directions: dict[str, np.ndarray],
                     forward_return: np.ndarray, trades: dict[str, list[dict]],
                     periods_per_year: float, config: EvaluationConfig, seed: int,
                     block_sizes: list[int] | None = None) -> dict:
    """Every figure of one block of bars (a fold, or all folds pooled), per strategy.

    - sharpe: annualised, mean/std(ddof=1)*sqrt(P); sharpe_ci: stationary bootstrap percentile
      interval (mean block ``config.block_length`` bars, ``config.bootstrap_samples`` resamples,
      seeded); sharpe_diff_vs_model: model minus this strategy, paired-bootstrap interval.
    - deflated_sharpe: DSR with N = ``config.n_trials`` trials and V = 1/(T-1), the sampling
      variance of a per-bar Sharpe estimate from T bars when the true Sharpe is 0 (Lo 2002):
      the DSR's null is N worthless configurations that differ only by noise. (The spread of
      this report's baselines is not that: momentum and buy-and-hold differ by design, and a
      strongly negative one would inflate SR0 and hide real skill.) psr: the same probability
      with N = 1 (no deflation, benchmark 0).
    - direction_accuracy: over the bars where the strategy is long or short, the share where the
      label's forward log return over ``horizon`` bars has that sign; Wilson interval.
    - total_return, max_drawdown: of the equity compounded from the block's per-bar returns.
    - trades, win_rate, profit_factor, fees_paid (fees / 10,000 starting equity, summed over the
      blocks), turnover_per_year (sum |change of position| per block, from flat to the final
      close, in multiples of equity, per year), exposure (share of bars in a position).
      ``block_sizes``: decisions per block when several blocks are joined (default: one).
    """
    names = list(returns)
    matrix = np.column_stack([np.asarray(returns[n], dtype=np.float64) for n in names])
    n_bars = len(matrix)
    boots = stats.bootstrap_sharpes(matrix, periods_per_year, config.bootstrap_samples,
                                    config.block_length, seed)
    variance = 1.0 / max(n_bars - 1, 1)
    out = {}
    model_column = names.index("model") if "model" in names else None
    for j, name in enumerate(names):
        r = matrix[:, j]
        d = np.asarray(directions[name])
        calls = d != 0
        correct = int(np.sum((d * forward_return)[calls] > 0))
        n_calls = int(calls.sum())
        pnl = np.asarray([t["pnl"] for t in trades[name]], dtype=np.float64)
        fees = float(sum(t["fees"] for t in trades[name]))
        equity = np.concatenate(([1.0], np.cumprod(1.0 + r)))
        constant = not r.std() > 0
        deflated = stats.deflated_sharpe_ratio(r, config.n_trials, variance)
        figures = {
            "sharpe": sharpe_ratio(r, periods_per_year),
            "sharpe_ci": list(stats.percentile_interval(boots[:, j], config.confidence_level)),
            "deflated_sharpe": None if constant else deflated.dsr,
            "psr": None if constant else stats.probabilistic_sharpe_ratio(
                deflated.sharpe, 0.0, n_bars, deflated.skewness, deflated.kurtosis),
            "direction_accuracy": correct / n_calls if n_calls else None,
            "direction_accuracy_ci": (list(stats.wilson_interval(correct, n_calls,
                                                                 config.confidence_level))
                                      if n_calls else None),
            "direction_calls": n_calls,
            "total_return": float(equity[-1] - 1.0),
            "max_drawdown": float(np.min(equity / np.maximum.accumulate(equity) - 1.0)),
            "trades": int(len(pnl)),
            "win_rate": win_rate(pnl) if len(pnl) else None,
            "profit_factor": profit_factor(pnl) if len(pnl) else None,
            "fees_paid": fees / INITIAL_EQUITY,
            "turnover_per_year": _turnover(d, block_sizes) / (n_bars / periods_per_year),
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


def _turnover(directions: np.ndarray, block_sizes: list[int] | None = None) -> float:
    """Per block ``|p_0| + sum |p_t - p_(t-1)| + |p_last|`` (each block starts flat and ends
    flat), summed over the blocks, in multiples of equity."""
    d = np.asarray(directions, dtype=np.float64)
    total = 0.0
    for block in np.split(d, np.cumsum(block_sizes or [len(d)])[:-1]):
        if block.size:
            total += float(np.abs(np.diff(block, prepend=0.0)).sum() + abs(block[-1]))
    return total


def build_report(fold_results: list[dict], config: EvaluationConfig, periods_per_year: float,
                 meta: dict) -> dict:
    """The report (JSON-able) from the fold results: per fold, pooled, verdict, targets."""
    folds = []
    for result in fold_results:
        figures = block_statistics(
            {n: np.asarray(result["returns"][n]) for n in STRATEGIES},
            {n: np.asarray(result["directions"][n]) for n in STRATEGIES},
            np.asarray(result["forward_return"]), result["trades"], periods_per_year, config,
            seed=config.seed * 1000 + result["fold"])
        folds.append({"fold": result["fold"], "ranges": result["ranges"], "times": result["times"],
                      "training": result["training"], "strategies": figures})
    pooled = pooled_statistics(fold_results, config, periods_per_year)
    return _clean({**meta, "pooled": pooled, "folds": folds,
                   "verdict": verdict(pooled, config), "targets": target_check(pooled["model"])})


def pooled_statistics(fold_results: list[dict], config: EvaluationConfig,
                      periods_per_year: float) -> dict:
    """``block_statistics`` over all test blocks joined in time order."""
    def joined(key):
        return {n: np.concatenate([np.asarray(r[key][n], dtype=np.float64) for r in fold_results])
                for n in STRATEGIES}

    forward = np.concatenate([np.asarray(r["forward_return"]) for r in fold_results])
    trades = {n: [t for r in fold_results for t in r["trades"][n]] for n in STRATEGIES}
    return block_statistics(joined("returns"), joined("directions"), forward, trades,
                            periods_per_year, config, seed=config.seed * 1000,
                            block_sizes=[len(r["forward_return"]) for r in fold_results])


def target_check(model: dict) -> dict:
    """The spec's targets beside the model's pooled figures: value, target, met."""
    return {key: {"value": model.get(key), "target": threshold,
                  "met": model.get(key) is not None and model[key] > threshold}
            for key, threshold in TARGETS.items()}


def verdict(pooled: dict, config: EvaluationConfig) -> dict:
    """Plain answers: which baselines the model beats (pooled Sharpe after costs, and whether
    the paired-bootstrap interval of the difference excludes 0), and the deflated Sharpe."""
    model = pooled["model"]
    beats = {b: model["sharpe"] > pooled[b]["sharpe"] for b in BASELINES}
    significant = {b: pooled[b]["sharpe_diff_vs_model_ci"][0] > 0 for b in BASELINES}
    dsr = model["deflated_sharpe"]
    lost = [b for b in BASELINES if not beats[b]]
    label = dict(_LABELS, momentum=f"momentum ({config.lookback} bars)")
    lines = []
    if lost:
        lines.append("The model does NOT beat " + ", ".join(
            f"{label[b]} (Sharpe {model['sharpe']:.2f} vs {pooled[b]['sharpe']:.2f})" for b in lost)
            + " on pooled Sharpe after costs.")
    else:
        lines.append("The model beats every baseline on pooled Sharpe after costs.")
    won = [b for b in BASELINES if beats[b]]
    if won:
        sig = [label[b] for b in won if significant[b]]
        lines.append("It beats " + ", ".join(label[b] for b in won) + "; the 95% paired-bootstrap "
                     "interval of the Sharpe difference excludes 0 against "
                     + (", ".join(sig) if sig else "none of them") + ".")
    if dsr is None:
        lines.append("The model never traded: no deflated Sharpe.")
    else:
        evidence = "evidence" if dsr >= 0.95 else "NO evidence"
        lines.append(f"Deflated Sharpe {dsr:.3f} (N = {config.n_trials} trials): {evidence} that "
                     "its true Sharpe is above 0 (threshold 0.95).")
    met = sum(target_check(model)[k]["met"] for k in TARGETS)
    lines.append(f"Spec targets met: {met} of {len(TARGETS)}.")
    return {"beats": beats, "beats_significantly": significant,
            "beats_all_baselines": not lost, "deflated_sharpe": dsr, "text": " ".join(lines)}


def _clean(value):
    """JSON-safe: numpy scalars to Python, inf to the string "inf", NaN to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _metadata(source, config, candles, fingerprint, folds, periods, out_dir, command) -> dict:
    return {
        "kind": "numpyconvnext.evaluate",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or rerun_command(source, config, len(candles), out_dir),
        "version": _version(),
        "source": {k: v for k, v in source.items() if k not in ("first", "last", "bars")},
        "data": fingerprint,
        "test_period": [pd.Timestamp(candles["timestamp"].iloc[folds[0].test.start]).isoformat(),
                        pd.Timestamp(candles["timestamp"].iloc[folds[-1].test.stop]).isoformat()],
        "periods_per_year": periods,
        "config": config.to_dict(),
        "strategies": {n: _LABELS[n] if n != "momentum" else f"momentum ({config.lookback} bars)"
                       for n in STRATEGIES},
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
    extra = "" if config.trials is None else f" --trials {config.trials}"
    return (f"python cli.py evaluate {data} --bars {bars} --folds {config.folds} "
            f"--model {config.variant} --epochs {config.epochs} --window {config.window} "
            f"--horizon {config.horizon} --confidence {config.confidence:g} --seed {config.seed}"
            f" --fee-rate {config.fee_rate:g} --slippage {config.slippage:g}{extra} --out {out_dir}")


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


_LABELS = {"model": "ConvNeXt", "linear": "logistic regression", "momentum": "momentum",
           "buy_and_hold": "buy & hold", "flat": "always flat"}


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
        **{n: np.concatenate([r["directions"][n] for r in fold_results]).astype(np.int64)
           for n in STRATEGIES}})
    trades = pd.DataFrame([{"strategy": n, "fold": r["fold"], **t} for r in fold_results
                           for n in STRATEGIES for t in r["trades"][n]],
                          columns=["strategy", "fold", "side", "entry_time", "exit_time", "pnl",
                                   "fees", "duration_bars"])
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
    (and the settings in report.json): what a reader can check the report against."""
    report_dir = Path(report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    config = EvaluationConfig.from_dict(report["config"])
    returns = pd.read_csv(report_dir / "returns.csv")
    decisions = pd.read_csv(report_dir / "decisions.csv")
    trades = pd.read_csv(report_dir / "trades.csv")
    pooled = block_statistics(
        {n: returns[n].to_numpy(np.float64) for n in STRATEGIES},
        {n: decisions[n].to_numpy(np.int64) for n in STRATEGIES},
        decisions["forward_return"].to_numpy(np.float64),
        {n: trades[trades["strategy"] == n].to_dict("records") for n in STRATEGIES},
        report["periods_per_year"], config, seed=config.seed * 1000,
        block_sizes=decisions.groupby("fold", sort=False).size().tolist())
    return _clean(pooled)


def load_report(report_dir: str | Path) -> dict:
    """report.json as a dict."""
    return json.loads((Path(report_dir) / "report.json").read_text())


def strip_volatile(report: dict) -> dict:
    """The report without what legitimately differs between identical runs (creation time)."""
    return {k: v for k, v in report.items() if k not in ("created",)}


__all__ = ["EvaluationConfig", "EvaluationResult", "STRATEGIES", "TARGETS", "block_statistics",
           "build_report", "data_fingerprint", "evaluate", "load_report", "make_model",
           "plan_folds", "pooled_statistics", "recompute_pooled", "report_dir_for",
           "rerun_command", "run_fold", "strip_volatile", "target_check", "verdict",
           "write_report"]
