"""Trainer: mini-batches, augmentation, validation, early stopping, checkpoints and resume.

A run lives in one directory:

    model.npz     the best checkpoint so far (lowest validation loss): weights, optimizer state,
                  and in its metadata everything needed to rebuild the inputs (features, window,
                  normalisation, label rule, data source and range, split boundaries) + metrics
    last.npz      the latest state, written after every epoch and on interruption (resume point)
    history.csv   one row per epoch
    training_curves.png   loss and accuracy, train vs validation (with the `plot` extra)

Randomness is derived from (seed, epoch, batch), never from a running generator, so a run that
is stopped after any batch and resumed from last.npz takes exactly the same steps as one that
was never stopped. Ctrl-C (SIGINT) finishes the current batch, writes last.npz and returns.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from numpyconvnext import checkpoint as ckpt
from numpyconvnext.config import TrainingConfig
from numpyconvnext.data.augment import AugmentConfig, augment
from numpyconvnext.losses import cross_entropy, huber, mse
from numpyconvnext.model import ConvNeXt1D
from numpyconvnext.optim import AdamW, WarmupCosineSchedule, clip_grad_norm
from numpyconvnext.plots import training_curves
from numpyconvnext.progress import ProgressBar
from numpyconvnext.scoring import (
    classification_report,
    majority_baseline,
    predict_in_batches,
    regression_report,
)
from numpyconvnext.threads import computes

BEST_NAME = "model.npz"
LAST_NAME = "last.npz"
HISTORY_NAME = "history.csv"
CURVES_NAME = "training_curves.png"
HISTORY_FIELDS = ("epoch", "learning_rate", "train_loss", "train_accuracy", "val_loss",
                  "val_accuracy", "val_direction_accuracy", "samples_per_s", "seconds")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainingResult:
    run_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    interrupted: bool = False
    stopped_early: bool = False
    test_metrics: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)  # set by workflow.finish_run
    pool: dict = field(default_factory=dict)  # a pooled run's symbols and skipped ones (workflow)


@dataclass
class _State:
    """Where the run is; saved in last.npz so a resumed run continues exactly."""

    epoch: int = 0          # epochs fully completed
    batch: int = 0          # batches completed inside the current epoch
    step: int = 0           # optimizer steps in total
    loss_sum: float = 0.0   # running sums of the current epoch
    correct: int = 0
    seen: int = 0
    epoch_seconds: float = 0.0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    history: list = field(default_factory=list)


class Trainer:
    """Train `model` on `data` (a `PreparedData`) with `config`, writing into `run_dir`.

    `metadata` is stored in every checkpoint next to the preprocessing (the data source, symbol,
    interval...). `on_batch_end(trainer)` is called after every optimizer step (tests use it to
    request a stop at a given batch).
    """

    def __init__(self, model: ConvNeXt1D, data, config: TrainingConfig, run_dir: str | Path,
                 metadata: dict | None = None, quiet: bool = False,
                 on_batch_end: Callable[[Trainer], None] | None = None):
        expected = 1 if config.regression else 3
        if model.config["num_classes"] != expected:
            raise ValueError(f"loss {config.loss} needs a model with {expected} output(s)")
        if len(data.train) < 1 or len(data.val) < 1:
            raise ValueError("training needs at least one train and one validation window")
        self.model = model
        self.data = data
        self.config = config
        self.run_dir = Path(run_dir)
        self.metadata = dict(metadata or {})
        self.quiet = quiet
        self.on_batch_end = on_batch_end
        self.stop_requested = False
        # two fused updates over the model's flat buffer (matrices decay, 1-D parameters do not)
        self.optimizer = AdamW.for_model(model, lr=config.learning_rate,
                                         weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        total_steps = config.epochs * self.steps_per_epoch
        # a run shorter than its warm-up warms up over its first half instead
        warmup_steps = min(config.warmup_epochs * self.steps_per_epoch, total_steps // 2)
        self.schedule = WarmupCosineSchedule(config.learning_rate, warmup_steps, total_steps,
                                             min_lr=config.min_learning_rate)
        self.augment_config = AugmentConfig(
            jitter=config.augment_jitter, scale=config.augment_scale,
            time_warp=config.augment_time_warp, window_slice=config.augment_window_slice)
        weights = data.class_weights if config.class_weighting else None
        self.class_weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        train_returns = data.train.forward_return
        self.target_scale = float(np.std(train_returns)) if config.regression else 1.0
        if config.regression and not self.target_scale > 0:
            raise ValueError("forward returns of the train part have zero spread")
        self.state = _State()

    # --- paths and checkpoints --------------------------------------------------------------

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST_NAME

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_NAME

    def _metadata(self, extra: dict | None = None) -> dict:
        data = self.data
        return {
            **self.metadata,
            "kind": "numpyconvnext.train",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training_config": self.config.to_dict(),
            "preprocessing": data.preprocessing(),
            "split": {name: _jsonable(b) for name, b in data.boundaries.items()},
            "fold": data.fold.to_dict(),
            "target_scale": self.target_scale,
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
            **(extra or {}),
        }

    def _save(self, path: Path, extra: dict | None = None) -> None:
        state = dict(self.state.__dict__)
        arrays = self.optimizer.state_arrays()
        ckpt.save(self.model, path, metadata=self._metadata({"trainer_state": state, **(extra or {})}),
                  arrays=arrays)

    def load_state(self, path: str | Path) -> None:
        """Continue from a last.npz written by this trainer (weights, optimizer, position)."""
        checkpoint = ckpt.load_checkpoint(path)
        saved = checkpoint.metadata.get("trainer_state")
        if saved is None:
            raise ckpt.CheckpointError(f"{path}: not a training checkpoint (no trainer state)")
        if checkpoint.model.config["dims"] != self.model.config["dims"]:
            raise ckpt.CheckpointError(f"{path}: model shape differs from this run's")
        self.model.load_state_dict(checkpoint.model.state_dict())
        self.optimizer.load_state_arrays(checkpoint.arrays)
        self.state = _State(**saved)
        if self.state.best_val_loss is None:
            self.state.best_val_loss = math.inf

    # --- the loop ----------------------------------------------------------------------------

    def fit(self) -> TrainingResult:
        """Train until `epochs`, early stop, or a stop request; returns where things are."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with _SigintRequestsStop(self):
            while not self.state.finished and self.state.epoch < self.config.epochs:
                if not self._train_epoch():
                    self._save(self.last_path)
                    return self._result(interrupted=True)
                self._end_epoch()
        self.state.finished = True
        self._save(self.last_path)
        result = self._result()
        result.test_metrics = self.evaluate_best()
        return result

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; False if a stop was requested."""
        config, state, data = self.config, self.state, self.data
        order = np.random.default_rng([config.seed, state.epoch]).permutation(len(data.train))
        self.model.train()
        label = f"epoch {state.epoch + 1}/{config.epochs}"
        with ProgressBar(self.steps_per_epoch, label, quiet=self.quiet) as bar:
            bar.done = state.batch
            while state.batch < self.steps_per_epoch:
                started = time.perf_counter()
                index = order[state.batch * config.batch_size:(state.batch + 1) * config.batch_size]
                loss, correct = self._train_step(np.sort(index), state.epoch, state.batch)
                state.loss_sum += loss * len(index)
                state.correct += correct
                state.seen += len(index)
                state.batch += 1
                state.step += 1
                elapsed = time.perf_counter() - started
                state.epoch_seconds += elapsed
                bar.update(1, loss=f"{state.loss_sum / state.seen:.4f}",
                           samples_s=f"{state.seen / max(state.epoch_seconds, 1e-9):.0f}")
                if self.on_batch_end is not None:
                    self.on_batch_end(self)
                if self.stop_requested:
                    return False
        return True

    @computes()  # one thread setup for forward, backward and the update
    def _train_step(self, index: np.ndarray, epoch: int, batch: int) -> tuple[float, int]:
        config, data, model = self.config, self.data, self.model
        rng = np.random.default_rng([config.seed, epoch, batch])
        x = augment(data.train.X[index], rng, self.augment_config)
        model.rng = np.random.default_rng([config.seed, epoch, batch, 1])
        logits = model.forward(x)
        loss, dlogits = self._loss(logits, index, data.train, smoothing=config.label_smoothing)
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"loss became {loss} at epoch {epoch + 1}, batch {batch + 1}; the last good "
                f"checkpoint is {self.last_path if self.last_path.exists() else 'not written yet'}"
                " — lower the learning rate and resume or restart")
        model.backward(dlogits)
        if config.grad_clip_norm > 0:
            norm = clip_grad_norm({"all": model.flat_grads}, config.grad_clip_norm)
            if not math.isfinite(norm):
                raise TrainingDivergedError(f"gradient norm became {norm} at epoch {epoch + 1}")
        self.optimizer.step(lr=self.schedule(self.state.step))
        if config.regression:
            correct = int(np.sum(np.sign(logits[:, 0]) == np.sign(data.train.forward_return[index])))
        else:
            correct = int(np.sum(logits.argmax(axis=1) == data.train.y[index]))
        return loss, correct

    def _loss(self, outputs: np.ndarray, index, part, smoothing: float) -> tuple[float, np.ndarray]:
        config = self.config
        if config.loss == "cross_entropy":
            return cross_entropy(outputs, part.y[index], label_smoothing=smoothing,
                                 class_weights=self.class_weights)
        target = (part.forward_return[index] / self.target_scale).astype(outputs.dtype)
        if config.loss == "mse":
            return mse(outputs, target)
        return huber(outputs, target, delta=config.huber_delta)

    def _end_epoch(self) -> None:
        config, state = self.config, self.state
        val = self.score(self.data.val)
        row = {
            "epoch": state.epoch + 1,
            "learning_rate": self.schedule(max(state.step - 1, 0)),
            "train_loss": state.loss_sum / max(state.seen, 1),
            "train_accuracy": state.correct / max(state.seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val.get("accuracy"),
            "val_direction_accuracy": val.get("direction_accuracy"),
            "samples_per_s": state.seen / max(state.epoch_seconds, 1e-9),
            "seconds": state.epoch_seconds,
        }
        state.history.append(row)
        state.epoch += 1
        state.batch = state.seen = state.correct = 0
        state.loss_sum = state.epoch_seconds = 0.0
        if not self.quiet:
            print(_epoch_line(row), flush=True)
        if val["loss"] < state.best_val_loss:
            state.best_val_loss = float(val["loss"])
            state.best_epoch = state.epoch
            state.bad_epochs = 0
            self._save(self.best_path, {"metrics": {"validation": val}})
        else:
            state.bad_epochs += 1
            if state.bad_epochs >= config.patience:
                state.finished = True
                state.stopped_early = state.epoch < config.epochs
        self._write_history()
        self._save(self.last_path)

    def score(self, part) -> dict:
        """Loss (no label smoothing) and the report of `scoring` on one data part."""
        was_training = self.model.training
        self.model.eval()
        outputs = predict_in_batches(self.model, part.X, self.config.eval_batch_size)
        self.model.training = was_training
        index = np.arange(len(part))
        loss, _ = self._loss(outputs, index, part, smoothing=0.0)
        if self.config.regression:
            report = regression_report(outputs[:, 0], part.forward_return)
        else:
            report = classification_report(part.y, outputs.argmax(axis=1), part.forward_return)
        return {"loss": float(loss), **report}

    def evaluate_best(self) -> dict:
        """Reload the best weights, score the test part beside the majority-class baseline, and
        store those figures in the best checkpoint."""
        best = ckpt.load_checkpoint(self.best_path)
        self.model.load_state_dict(best.model.state_dict())
        data = self.data
        test = self.score(data.test) if len(data.test) else None
        baseline = None
        if test is not None and not self.config.regression:
            baseline = majority_baseline(data.train.y, data.test.y, data.test.forward_return)
        metrics = {**best.metadata.get("metrics", {}), "test": test, "test_baseline": baseline}
        self.optimizer.load_state_arrays(best.arrays)
        self._save(self.best_path, {"metrics": metrics,
                                    "trainer_state": best.metadata.get("trainer_state")})
        return metrics

    def _result(self, interrupted: bool = False) -> TrainingResult:
        return TrainingResult(self.run_dir, self.best_path, self.last_path, self.state.history,
                              self.state.best_epoch, self.state.best_val_loss,
                              interrupted=interrupted, stopped_early=self.state.stopped_early)

    def _write_history(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(self.state.history)
        ckpt.atomic_write(self.run_dir / HISTORY_NAME, lambda f: f.write(buffer.getvalue().encode()))
        title = f"{self.metadata.get('symbol', '')} {self.metadata.get('interval', '')} " \
                f"{self.metadata.get('variant', '')}".strip()
        training_curves(self.state.history, self.run_dir / CURVES_NAME, title=title)


def _epoch_line(row: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    return (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
            f" | val loss {row['val_loss']:.4f} acc {fmt(row['val_accuracy'], '.3f')}"
            f" dir {fmt(row['val_direction_accuracy'], '.3f')} | {row['samples_per_s']:.0f} samples/s")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


class _SigintRequestsStop:
    """While active (main thread only), the first Ctrl-C asks the trainer to stop after the
    current batch; a second one interrupts at once."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.trainer.stop_requested:
            raise KeyboardInterrupt
        self.trainer.stop_requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def read_history(path: str | Path) -> list[dict]:
    """history.csv back as a list of dicts of floats (None for empty cells)."""
    with open(path, newline="") as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(handle)]
