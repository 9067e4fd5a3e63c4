"""TrainingConfig: every knob of a training run, with the spec's defaults.

Set from code, from CLI flags, or from a TOML/JSON file (`TrainingConfig.from_file`); unknown keys
are an error, so a typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

LOSSES = ("cross_entropy", "mse", "huber")


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one run. `loss` "cross_entropy" trains the 3-class head on labels;
    "mse"/"huber" train a 1-output regression head on the forward log return."""

    learning_rate: float = 4e-4
    batch_size: int = 32
    epochs: int = 100
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.1
    layer_scale_init: float = 1e-6
    window: int = 256
    horizon: int = 12
    variant: str = "atto"
    loss: str = "cross_entropy"
    seed: int = 0
    min_learning_rate: float = 1e-6
    grad_clip_norm: float = 1.0
    patience: int = 10
    class_weighting: bool = True
    huber_delta: float = 1.0
    augment_jitter: float = 0.02
    augment_scale: float = 0.05
    augment_time_warp: float = 0.0
    augment_window_slice: float = 0.0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        checks = [
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.drop_path_rate < 1, "drop_path_rate must be in [0, 1)"),
            (self.window >= 32 and self.window % 32 == 0, "window must be a multiple of 32"),
            (self.horizon >= 1, "horizon must be >= 1"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (0 <= self.min_learning_rate <= self.learning_rate,
             "min_learning_rate must be in [0, learning_rate]"),
            (self.grad_clip_norm >= 0, "grad_clip_norm must be >= 0 (0 = off)"),
            (self.patience >= 1, "patience must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def regression(self) -> bool:
        return self.loss != "cross_entropy"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainingConfig:
        """Read a TOML or JSON file (chosen by extension); `overrides` win over the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise ValueError(f"cannot read config file {path}: {error.strerror}") from None
        try:
            if path.suffix.lower() == ".toml":
                values = tomllib.loads(text)
            elif path.suffix.lower() == ".json":
                values = json.loads(text)
            else:
                raise ValueError(f"config file {path} must end in .toml or .json")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"config file {path} is not valid: {error}") from None
        values = values.get("training", values)
        return cls.from_dict({**values, **overrides})

    def with_overrides(self, **overrides) -> TrainingConfig:
        """A copy with the given (non-None) settings changed."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
