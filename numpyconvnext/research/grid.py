"""A grid of configurations for ``evaluate --grid grid.toml``.

The file names settings, each a value or a list of values; every combination is one
configuration (in the file's order, the last key varying fastest)::

    # grid.toml
    variant = "atto"
    window = [64, 128]
    horizon = [6, 12]
    epochs = 2
    learning_rate = [4e-4, 1e-3]
    confidence = "auto"      # or numbers; "auto": chosen on each fold's validation block

Unknown keys, empty lists and values of the wrong type are errors naming the key.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

from numpyconvnext.evaluate import EvaluationConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# setting -> (type check, description)
GRID_KEYS = {
    "variant": (lambda v: isinstance(v, str), "a model variant name"),
    "window": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "horizon": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "epochs": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "learning_rate": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "confidence": (lambda v: v == "auto" or (isinstance(v, int | float) and not isinstance(v, bool)
                                             and 0 < v <= 1), '"auto" or a number in (0, 1]'),
}


def parse_grid(values: dict) -> list[dict]:
    """The configurations (dicts of overrides) of a grid given as ``{key: value or list}``."""
    axes = []
    for key, value in values.items():
        if key not in GRID_KEYS:
            raise ValueError(f"grid: unknown setting {key!r}; use {', '.join(GRID_KEYS)}")
        options = value if isinstance(value, list) else [value]
        if not options:
            raise ValueError(f"grid: {key} has no values")
        check, what = GRID_KEYS[key]
        for option in options:
            if not check(option):
                raise ValueError(f"grid: {key} = {option!r} is not {what}")
        axes.append([(key, option) for option in dict.fromkeys(options)])
    return [dict(combination) for combination in itertools.product(*axes)]


def load_grid(path: str | Path) -> list[dict]:
    """``parse_grid`` of a TOML file."""
    try:
        values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None
    return parse_grid(values)


def apply_overrides(config: EvaluationConfig, overrides: dict) -> EvaluationConfig:
    """``config`` with one grid point's settings (``confidence`` goes into the strategy;
    "auto" = chosen on each fold's validation block)."""
    values = dict(overrides)
    strategy = config.strategy
    if "confidence" in values:
        confidence = values.pop("confidence")
        strategy = replace(strategy, confidence=None if confidence == "auto" else float(confidence))
    if "learning_rate" in values:
        values["learning_rate"] = float(values["learning_rate"])
    return replace(config, strategy=strategy, **values)


def describe(overrides: dict) -> str:
    """``window=64 horizon=12`` (or ``shipped defaults``)."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in overrides.items()) or "shipped defaults"


__all__ = ["GRID_KEYS", "apply_overrides", "describe", "load_grid", "parse_grid"]
