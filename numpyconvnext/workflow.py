"""One training run end to end, as the CLI and the examples use it:

    candles -> prepare_dataset -> ConvNeXt1D -> Trainer.fit -> run directory under `out_dir`

`train_run` starts a run; `resume_run` continues one from its last.npz with the same data,
settings and position, so the result equals an uninterrupted run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from numpyconvnext import checkpoint as ckpt
from numpyconvnext.config import TrainingConfig
from numpyconvnext.data.dataset import prepare_dataset
from numpyconvnext.data.labels import LabelConfig
from numpyconvnext.data.source import load_source
from numpyconvnext.model import ConvNeXt1D
from numpyconvnext.train import LAST_NAME, Trainer, TrainingResult


def build_run(candles: pd.DataFrame, source: dict, config: TrainingConfig, run_dir: Path,
              quiet: bool = False, on_batch_end=None) -> Trainer:
    """Dataset, model and trainer for `config` on `candles` (described by `source`)."""
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
                "symbol": source.get("symbol"), "interval": source.get("interval")}
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
              out_dir: str | Path = "models", quiet: bool = False) -> TrainingResult:
    """Train a new model; everything lands in a fresh directory under `out_dir`."""
    run_dir = new_run_dir(out_dir, source, config)
    return build_run(candles, source, config, run_dir, quiet).fit()


def resume_run(path: str | Path, quiet: bool = False, epochs: int | None = None) -> TrainingResult:
    """Continue the run whose last.npz is `path` (or the run directory holding it).

    `epochs` may raise the run's epoch budget (e.g. to train a finished run further).
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
    candles = load_source(metadata["data_source"])
    trainer = build_run(candles, metadata["data_source"], config, path.parent, quiet)
    trainer.load_state(path)
    if epochs is not None:
        trainer.state.finished = trainer.state.stopped_early
    return trainer.fit()
