"""One training run end to end, as the CLI and the examples use it:

    candles -> prepare_dataset -> ConvNeXt1D -> Trainer.fit -> calibration on the validation
    block (temperature, confidence threshold, payoff ratio; `calibration.calibrate`) -> run
    directory under `out_dir`

`train_run` starts a run; `resume_run` continues one from its last.npz with the same data
(refused when the candles' content hash differs), settings and position, so the result equals
an uninterrupted run. The checkpoint records the market category and the content hash of the
candles it was trained on; every threshold tried on the validation block goes to the trials log.
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


def finish_run(trainer: Trainer, result: TrainingResult, candles: pd.DataFrame, source: dict,
               funding_rate: float | None = None,
               trials_log: str | Path | None = None) -> TrainingResult:
    """Calibrate a finished run on its validation block (temperature, confidence threshold,
    payoff ratio), store the choices and how often the strategy would trade on validation and
    test in the best checkpoint, and log every threshold tried. An interrupted run is left as
    it is (it is calibrated when it finishes)."""
    from numpyconvnext.calibration import calibrate, trading_activity

    if result.interrupted:
        return result
    funding, funding_note = funding_for_source(source, candles, funding_rate)
    base = Strategy(category="spot" if source.get("category") == "spot" else "linear")
    extra = calibrate(trainer.model, trainer.data, candles, base, funding)
    if not extra:
        return result
    chosen = base.with_checkpoint(extra)
    extra["strategy"]["activity"] = {
        name: trading_activity(trainer.model, part, candles, chosen, funding)
        for name, part in (("validation", trainer.data.val), ("test", trainer.data.test))}
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
    candles = load_source(source)
    recorded = metadata.get("data_sha256")
    if recorded is not None and candles_sha256(candles) != recorded:
        raise ckpt.CheckpointError(
            f"{path}: the candles from {source.get('path') or source.get('kind')} differ from the "
            f"ones this run was trained on (content hash {candles_sha256(candles)[:12]}... != "
            f"{recorded[:12]}...): --resume refuses to continue on other data; start a new run")
    funding_rate = (metadata.get("funding") or {}).get("assumed_rate")
    trainer = build_run(candles, source, config, path.parent, quiet, funding_rate=funding_rate)
    trainer.load_state(path)
    if epochs is not None:
        trainer.state.finished = trainer.state.stopped_early
    return finish_run(trainer, trainer.fit(), candles, source, funding_rate, trials_log)
