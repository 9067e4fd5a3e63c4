"""One training run end to end, as the CLI and the examples use it:

    candles -> prepare_dataset -> ConvNeXt1D -> Trainer.fit -> calibration on the validation
    block (temperature, confidence threshold, payoff ratio; `calibration.calibrate`) -> run
    directory under `out_dir`

`train_run` starts a run; `train_pooled_run` one on several symbols at once (windows of every
symbol, split on the same calendar dates, per-symbol normalisers; `data.pool`); `resume_run`
continues either from its last.npz with the same data (refused when the candles' content hash
differs), settings and position, so the result equals an uninterrupted run. The checkpoint
records the market category and the content hash of the candles it was trained on; every
threshold tried on the validation block goes to the trials log.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from numpyconvnext import checkpoint as ckpt
from numpyconvnext.config import TrainingConfig
from numpyconvnext.data.candles import candles_sha256
from numpyconvnext.data.dataset import prepare_dataset
from numpyconvnext.data.labels import LabelConfig
from numpyconvnext.data.pool import prepare_pooled
from numpyconvnext.data.source import funding_for_source, load_source
from numpyconvnext.model import ConvNeXt1D
from numpyconvnext.trading.strategy import Strategy
from numpyconvnext.train import LAST_NAME, Trainer, TrainingResult
from numpyconvnext.trials import append_trials, dataset_key, default_trials_log


def build_run(candles: pd.DataFrame, source: dict, config: TrainingConfig, run_dir: Path,
              quiet: bool = False, on_batch_end=None, funding_rate: float | None = None) -> Trainer:
    """Dataset, model and trainer for `config` on `candles` (described by `source`);
    `funding_rate` is the constant funding assumed for data without a series (recorded)."""
    label_config = LabelConfig(horizon=config.horizon)
    needed = config.window + 2 * (config.window + config.horizon) + 400
    if len(candles) < needed:
        raise ValueError(f"{len(candles)} candles are too few for window {config.window} and "
                         f"horizon {config.horizon}: need at least about {needed}")
    data = prepare_dataset(candles, window=config.window, label_config=label_config)
    num_classes = 1 if config.regression else 3
    model = ConvNeXt1D.from_config(
        config.variant, in_channels=len(data.feature_names), num_classes=num_classes,
        drop_path_rate=config.drop_path_rate, layer_scale_init=config.layer_scale_init,
        seed=config.seed)
    metadata = {"variant": config.variant, "data_source": source,
                "symbol": source.get("symbol"), "interval": source.get("interval"),
                "category": source.get("category", "linear"), "data_sha256": candles_sha256(candles),
                "funding": {"assumed_rate": funding_rate}}
    return Trainer(model, data, config, run_dir, metadata=metadata, quiet=quiet,
                   on_batch_end=on_batch_end)


def new_run_dir(out_dir: str | Path, source: dict, config: TrainingConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"{source.get('symbol', 'data')}_{source.get('interval', '')}_{config.variant}_{stamp}"
    path = Path(out_dir) / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(out_dir) / f"{name}-{suffix}"
    return path


def train_run(candles: pd.DataFrame, source: dict, config: TrainingConfig,
              out_dir: str | Path = "models", quiet: bool = False, *,
              funding_rate: float | None = None,
              trials_log: str | Path | None = None) -> TrainingResult:
    """Train a new model; everything lands in a fresh directory under `out_dir`. After training
    the model is calibrated on its validation block (see `finish_run`)."""
    run_dir = new_run_dir(out_dir, source, config)
    trainer = build_run(candles, source, config, run_dir, quiet, funding_rate=funding_rate)
    return finish_run(trainer, trainer.fit(), candles, source, funding_rate, trials_log)


def finish_run(trainer: Trainer, result: TrainingResult, candles: pd.DataFrame | dict,
               source: dict,
               funding_rate: float | None = None,
               trials_log: str | Path | None = None) -> TrainingResult:
    """Calibrate a finished run on its validation block (temperature, confidence threshold,
    payoff ratio), store the choices and how often the strategy would trade on validation and
    test in the best checkpoint, and log every threshold tried. An interrupted run is left as
    it is (it is calibrated when it finishes). A pooled run passes its candles by symbol and
    its pool description (`pool_description`)."""
    from numpyconvnext.calibration import calibrate, trading_activity

    pooled = isinstance(candles, dict)
    if pooled:
        result.pool = {"symbols": list(trainer.data.symbols), "skipped": trainer.data.skipped}
    if result.interrupted:
        return result
    if pooled:
        from numpyconvnext.calibration import pooled_trading_activity

        found = {s: funding_for_source(source["sources"][s], candles[s], funding_rate)
                 for s in trainer.data.symbols}
        funding = {s: series for s, (series, _) in found.items()}
        notes = {note for _, note in found.values()}
        funding_note = (notes.pop() if len(notes) == 1 else
                        "; ".join(f"{s} {note}" for s, (_, note) in found.items()))
    else:
        funding, funding_note = funding_for_source(source, candles, funding_rate)
    base = Strategy(category="spot" if source.get("category") == "spot" else "linear")
    extra = calibrate(trainer.model, trainer.data, candles, base, funding)
    if not extra:
        return result
    chosen = base.with_checkpoint(extra)
    extra["strategy"]["activity"] = {
        name: (pooled_trading_activity(trainer.model, trainer.data, part, candles, chosen, funding)
               if pooled else trading_activity(trainer.model, getattr(trainer.data, part), candles,
                                               chosen, funding))
        for name, part in (("validation", "val"), ("test", "test"))}
    extra["funding"] = {"note": funding_note, "assumed_rate": funding_rate}
    ckpt.update_metadata(result.best_path, extra)
    append_trials(default_trials_log() if trials_log is None else trials_log, [
        {"dataset": dataset_key(source), "command": "train", "kind": "validation",
         "config": {**base.to_dict(), "confidence": row["confidence"],
                    "win_loss_ratio": row["win_loss_ratio"], "variant": trainer.config.variant,
                    "window": trainer.config.window, "horizon": trainer.config.horizon,
                    "epochs": trainer.config.epochs},
         "sharpe": row["sharpe"], "sharpe_per_bar": row["sharpe_per_bar"], "bars": row["bars"],
         "run": str(result.run_dir)}
        for row in extra["strategy"]["grid"]])
    result.calibration = extra
    return result


def resume_run(path: str | Path, quiet: bool = False, epochs: int | None = None, *,
               trials_log: str | Path | None = None) -> TrainingResult:
    """Continue the run whose last.npz is `path` (or the run directory holding it).

    `epochs` may raise the run's epoch budget (e.g. to train a finished run further). The
    candles are reloaded from the recorded source and must hash to the recorded content hash.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LAST_NAME
    checkpoint = ckpt.load_checkpoint(path)
    metadata = checkpoint.metadata
    if "trainer_state" not in metadata or "data_source" not in metadata:
        raise ckpt.CheckpointError(f"{path}: not a resumable training checkpoint")
    config = TrainingConfig.from_dict(metadata["training_config"])
    if epochs is not None:
        config = config.with_overrides(epochs=epochs)
    source = metadata["data_source"]
    funding_rate = (metadata.get("funding") or {}).get("assumed_rate")
    if source.get("kind") == "pool":
        candles = {s: _reloaded(path, load_source(d), d, d.get("sha256"))
                   for s, d in source["sources"].items()}
        trainer = build_pooled_run(candles, source["sources"], config, path.parent, quiet,
                                   funding_rate=funding_rate)
    else:
        candles = _reloaded(path, load_source(source), source, metadata.get("data_sha256"))
        trainer = build_run(candles, source, config, path.parent, quiet, funding_rate=funding_rate)
    trainer.load_state(path)
    if epochs is not None:
        trainer.state.finished = trainer.state.stopped_early
    return finish_run(trainer, trainer.fit(), candles, source, funding_rate, trials_log)


def _reloaded(path: Path, candles: pd.DataFrame, source: dict, recorded: str | None) -> pd.DataFrame:
    """The reloaded candles, if they hash to the ``recorded`` content hash."""
    if recorded is not None and candles_sha256(candles) != recorded:
        raise ckpt.CheckpointError(
            f"{path}: the candles from {source.get('path') or source.get('kind')} differ from the "
            f"ones this run was trained on (content hash {candles_sha256(candles)[:12]}... != "
            f"{recorded[:12]}...): --resume refuses to continue on other data; start a new run")
    return candles


def pool_label(symbols) -> str:
    """A short name for a pool of symbols: ``A+B+C``, or ``A+N`` beyond three."""
    symbols = list(symbols)
    return "+".join(symbols) if len(symbols) <= 3 else f"{symbols[0]}+{len(symbols) - 1}"


def pool_description(sources: dict[str, dict]) -> dict:
    """The data source of a pooled run: every symbol's own description (``sources``), with the
    common interval and category (ValueError when they differ)."""
    for key in ("interval", "category"):
        values = {d.get(key, "linear" if key == "category" else None) for d in sources.values()}
        if len(values) > 1:
            raise ValueError(f"the symbols' candles differ in {key} ({', '.join(map(str, values))}); "
                             f"pool one {key}")
    first = next(iter(sources.values()))
    return {"kind": "pool", "symbol": pool_label(sources), "symbols": list(sources),
            "interval": first.get("interval"), "category": first.get("category", "linear"),
            "sources": sources}


def build_pooled_run(candles: dict[str, pd.DataFrame], sources: dict[str, dict],
                     config: TrainingConfig, run_dir: Path, quiet: bool = False,
                     on_batch_end=None, funding_rate: float | None = None) -> Trainer:
    """`build_run` on a pool: `prepare_pooled` on the same calendar split for every symbol
    (symbols with no training window before the validation period are left out, and said so).
    The checkpoint keeps each symbol's normaliser and the pooled one."""
    source = pool_description(sources)
    data = prepare_pooled(candles, window=config.window,
                          label_config=LabelConfig(horizon=config.horizon))
    if not quiet:
        for symbol, reason in data.skipped.items():
            print(f"{symbol} left out of the pool: {reason}")
    num_classes = 1 if config.regression else 3
    model = ConvNeXt1D.from_config(
        config.variant, in_channels=len(data.feature_names), num_classes=num_classes,
        drop_path_rate=config.drop_path_rate, layer_scale_init=config.layer_scale_init,
        seed=config.seed)
    metadata = {"variant": config.variant, "data_source": source, "symbol": source["symbol"],
                "symbols": list(data.symbols), "pool_skipped": data.skipped,
                "interval": source["interval"], "category": source["category"],
                "data_sha256": {s: candles_sha256(candles[s]) for s in candles},
                "funding": {"assumed_rate": funding_rate}}
    return Trainer(model, data, config, run_dir, metadata=metadata, quiet=quiet,
                   on_batch_end=on_batch_end)


def train_pooled_run(candles: dict[str, pd.DataFrame], sources: dict[str, dict],
                     config: TrainingConfig, out_dir: str | Path = "models", quiet: bool = False,
                     *, funding_rate: float | None = None,
                     trials_log: str | Path | None = None) -> TrainingResult:
    """`train_run` on several symbols (candles and descriptions by symbol, e.g. from
    `data.source.resolve_pool`); calibrated on the pooled validation block."""
    source = pool_description(sources)
    run_dir = new_run_dir(out_dir, source, config)
    trainer = build_pooled_run(candles, sources, config, run_dir, quiet, funding_rate=funding_rate)
    return finish_run(trainer, trainer.fit(), candles, source, funding_rate, trials_log)
