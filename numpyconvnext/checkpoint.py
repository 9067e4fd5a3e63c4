"""Checkpoint files: one `.npz`, no pickle, versioned, written atomically.

Layout of the archive (every entry a plain array; strings are 0-d unicode arrays):

    format            0-d int, FORMAT_VERSION
    config            JSON of the model's constructor arguments
    metadata          JSON dict of anything the caller adds (preprocessing, metrics, ...)
    param/<name>      each parameter, official ConvNeXt names
    extra/<name>      optional extra arrays (e.g. optimizer state)

Reading uses `allow_pickle=False`; a truncated, foreign or newer file raises `CheckpointError`.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from numpyconvnext.model import ConvNeXt1D

FORMAT_VERSION = 1
_PARAM = "param/"
_EXTRA = "extra/"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: the message names the file and the problem."""


@dataclass
class Checkpoint:
    model: ConvNeXt1D
    metadata: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def save(
    model: ConvNeXt1D,
    path: str | os.PathLike,
    metadata: dict | None = None,
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write model (+ JSON-serialisable metadata, + extra arrays) to `path` atomically."""
    path = Path(path)
    entries: dict[str, np.ndarray] = {
        "format": np.array(FORMAT_VERSION),
        "config": np.array(model.config_json()),
        "metadata": np.array(json.dumps(metadata or {}, default=_json_default)),
    }
    for name, value in model.state_dict().items():
        entries[_PARAM + name] = value
    for name, value in (arrays or {}).items():
        entries[_EXTRA + name] = np.asarray(value)
    atomic_write(path, lambda handle: np.savez(handle, **entries))
    return path


def load(path: str | os.PathLike) -> ConvNeXt1D:
    """Read a model; its metadata dict is attached as `model.metadata`, and a stored calibration
    temperature (`metadata["calibration"]["temperature"]`) becomes `model.temperature`."""
    checkpoint = load_checkpoint(path)
    checkpoint.model.metadata = checkpoint.metadata
    temperature = (checkpoint.metadata.get("calibration") or {}).get("temperature")
    if temperature is not None:
        if not (isinstance(temperature, int | float) and np.isfinite(temperature) and temperature > 0):
            raise CheckpointError(f"{path}: bad calibration temperature {temperature!r}")
        checkpoint.model.temperature = float(temperature)
    return checkpoint.model


def update_metadata(path: str | os.PathLike, extra: dict) -> Path:
    """Rewrite a checkpoint with ``extra`` merged into its metadata (weights and arrays kept)."""
    checkpoint = load_checkpoint(path)
    return save(checkpoint.model, path, metadata={**checkpoint.metadata, **extra},
                arrays=checkpoint.arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read model, metadata and extra arrays from a file written by `save`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not an .npz file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        reason = "it holds pickled objects" if "pickle" in str(error) else "damaged archive"
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if "format" not in contents or "config" not in contents:
        raise CheckpointError(f"{path}: not a numpyconvnext checkpoint (no format version)")
    version = int(contents["format"])
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version}, this numpyconvnext reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        config = json.loads(str(contents["config"]))
        metadata = json.loads(str(contents.get("metadata", np.array("{}"))))
        model = ConvNeXt1D(**config)
        state = {k[len(_PARAM) :]: v for k, v in contents.items() if k.startswith(_PARAM)}
        model.load_state_dict(state)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: incompatible checkpoint: {error}") from None
    arrays = {k[len(_EXTRA) :]: v for k, v in contents.items() if k.startswith(_EXTRA)}
    return Checkpoint(model, metadata, arrays)


def atomic_write(path: Path, write) -> None:
    """Call write(binary file handle) on a temp file next to `path`, then rename it into place.

    Either the old file or the complete new one exists at `path`, never a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")
