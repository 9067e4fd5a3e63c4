"""Checkpoint files, no pickle anywhere, written atomically: `.npz` (ours, versioned) and
`.safetensors` (weights under the official names, for PyTorch and timm).

Layout of the `.npz` archive (every entry a plain array; strings are 0-d unicode arrays):

    format            0-d int, FORMAT_VERSION (1 is read too)
    config            JSON of the model's constructor arguments
    metadata          JSON dict of anything the caller adds (preprocessing, metrics, ...)
    param/<name>      each parameter, official ConvNeXt names
    extra/<name>      optional extra arrays (e.g. optimizer state)

A `.safetensors` file holds the parameters under their official names (`extra/<name>` for extra
arrays) and, in its header's text metadata, `format` = "numpyconvnext", `format_version`,
`config` and `metadata` (JSON). A plain state-dict file (as `safetensors.torch.save_file(
model.state_dict())` writes it, official or timm names) loads given the architecture:
`load(path, config="pico")` or `config={...}`; shapes fill in the rest.

Reading checks before it allocates: zip entry sizes against the file (no zip bombs), every
`.npy` header (dtype, shape) against what the config implies, the safetensors header's
offsets against the file size, and the types of `format`, `config` and `metadata`. Whatever is
wrong is one `CheckpointError` line naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from numpyconvnext.model import CONFIGS, ConvNeXt1D, from_timm_names, parameter_shapes, uses_timm_names

FORMAT_VERSION = 2  # 2: config may hold kernel_size, layernorm_eps, layer_scale_init null
READABLE_VERSIONS = (1, 2)
_PARAM = "param/"
_EXTRA = "extra/"
SAFETENSORS_FORMAT = "numpyconvnext"
# limits of what a file may declare before anything is allocated
MAX_TEXT_BYTES = 64 << 20  # the config and metadata JSON entries
MAX_COMPRESSION_RATIO = 200  # uncompressed / compressed size of one zip entry (np.savez stores)
MAX_SAFETENSORS_HEADER = 100 << 20
MAX_NDIM = 8
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8,
                       "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8,
                       "BOOL": np.bool_}


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
    """Write model (+ JSON-serialisable metadata, + extra arrays) to `path` atomically:
    `.safetensors` if the name ends so, else our `.npz` layout."""
    path = Path(path)
    metadata_json = json.dumps(metadata or {}, default=_json_default)
    if path.suffix.lower() == ".safetensors":
        from safetensors.numpy import save as safetensors_bytes

        tensors = {name: np.ascontiguousarray(value) for name, value in model.state_dict().items()}
        for name, value in (arrays or {}).items():
            tensors[_EXTRA + name] = np.ascontiguousarray(value)
        header = {"format": SAFETENSORS_FORMAT, "format_version": str(FORMAT_VERSION),
                  "config": model.config_json(), "metadata": metadata_json}
        data = safetensors_bytes(tensors, metadata=header)
        atomic_write(path, lambda handle: handle.write(data))
        return path
    entries: dict[str, np.ndarray] = {
        "format": np.array(FORMAT_VERSION),
        "config": np.array(model.config_json()),
        "metadata": np.array(metadata_json),
    }
    for name, value in model.state_dict().items():
        entries[_PARAM + name] = value
    for name, value in (arrays or {}).items():
        entries[_EXTRA + name] = np.asarray(value)
    atomic_write(path, lambda handle: np.savez(handle, **entries))
    return path


def load(path: str | os.PathLike, config: dict | str | None = None) -> ConvNeXt1D:
    """Read a model; its metadata dict is attached as `model.metadata`, and a stored calibration
    temperature (`metadata["calibration"]["temperature"]`) becomes `model.temperature`. `config`
    (a variant name or constructor arguments) is needed only for a plain safetensors state dict."""
    checkpoint = load_checkpoint(path, config)
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


def load_checkpoint(path: str | os.PathLike, config: dict | str | None = None) -> Checkpoint:
    """Read model, metadata and extra arrays from a file written by `save` (or a safetensors
    state dict, given `config`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if zipfile.is_zipfile(path):
        return _load_npz(path)
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
        return _load_safetensors(path, config)
    raise CheckpointError(f"{path}: not a readable checkpoint (truncated, or neither an .npz nor "
                          f"a .safetensors file)")


# --- .npz ---------------------------------------------------------------------------------------


def _failer(path: Path):
    def fail(reason: str):
        raise CheckpointError(f"{path}: {reason}") from None

    return fail


def _load_npz(path: Path) -> Checkpoint:
    fail = _failer(path)

    try:
        with zipfile.ZipFile(path) as archive:
            entries = _npz_entries(archive, path.stat().st_size, fail)
            if "format" not in entries or "config" not in entries:
                fail("not a numpyconvnext checkpoint (no format version)")
            version = _read_scalar(archive, entries["format"], "iu", fail)
            if version not in READABLE_VERSIONS:
                fail(f"checkpoint format version {version}, this numpyconvnext reads versions "
                     f"{', '.join(map(str, READABLE_VERSIONS))}")
            config = _json_object(_read_scalar(archive, entries["config"], "U", fail), "config",
                                  fail)
            metadata = ({} if "metadata" not in entries else _json_object(
                _read_scalar(archive, entries["metadata"], "U", fail), "metadata", fail))
            shapes = _expected_shapes(config, fail)
            params = {k[len(_PARAM):] for k in entries if k.startswith(_PARAM)}
            _check_names(params, shapes, fail)
            state = {name: _read_array(archive, entries[_PARAM + name], fail, shapes[name], "f")
                     for name in shapes}
            arrays = {k[len(_EXTRA):]: _read_array(archive, info, fail, None, "biuf")
                      for k, info in entries.items() if k.startswith(_EXTRA)}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
        fail(f"not a readable checkpoint (damaged archive: {str(error) or type(error).__name__})")
    return Checkpoint(_build(config, state, fail), metadata, arrays)


def _npz_entries(archive: zipfile.ZipFile, file_size: int, fail) -> dict[str, zipfile.ZipInfo]:
    """Entry name (without .npy) -> ZipInfo, after checking names and declared sizes."""
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            fail(f"not a numpyconvnext checkpoint (unexpected entry {name[:80]!r})")
        key = name[:-4]
        if key in entries:
            fail(f"damaged archive (entry {key[:80]!r} twice)")
        if key not in ("format", "config", "metadata") and not key.startswith((_PARAM, _EXTRA)):
            fail(f"not a numpyconvnext checkpoint (unexpected entry {name[:80]!r})")
        stored = info.compress_type == zipfile.ZIP_STORED
        if (stored and info.file_size > file_size) or info.file_size > max(
                MAX_COMPRESSION_RATIO * info.compress_size, 1 << 20):
            fail(f"entry {key[:80]!r} declares {info.file_size} bytes from {info.compress_size} "
                 f"in a {file_size}-byte file (a zip bomb or a damaged archive)")
        entries[key] = info
    return entries


def _open_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, fail):
    """(open entry positioned at the data, shape, fortran order, dtype), header checked."""
    name = info.filename[:-4]
    handle = archive.open(info)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as error:
        handle.close()
        fail(f"entry {name[:80]!r} is not a valid .npy array ({str(error).splitlines()[0][:120]})")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        handle.close()
        fail(f"entry {name[:80]!r} holds Python objects or records (refused: no pickle)")
    if len(shape) > MAX_NDIM:
        handle.close()
        fail(f"entry {name[:80]!r} declares {len(shape)} dimensions")
    nbytes = math.prod(shape) * dtype.itemsize
    held = info.file_size - handle.tell()
    if nbytes != held:
        handle.close()
        fail(f"entry {name[:80]!r} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
             f"{held} bytes")
    return handle, shape, fortran, dtype


def _read_array(archive, info, fail, expected_shape, kinds: str) -> np.ndarray:
    name = info.filename[:-4]
    handle, shape, fortran, dtype = _open_npy(archive, info, fail)
    with handle:
        if dtype.kind not in kinds:
            fail(f"entry {name[:80]!r} has dtype {dtype}, expected {_kind_names(kinds)}")
        if expected_shape is not None and tuple(shape) != tuple(expected_shape):
            fail(f"incompatible checkpoint: entry {name[:80]!r} has shape {tuple(shape)}, the "
                 f"config implies {tuple(expected_shape)}")
        data = handle.read(math.prod(shape) * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def _read_scalar(archive, info, kinds: str, fail):
    name = info.filename[:-4]
    handle, shape, _, dtype = _open_npy(archive, info, fail)
    with handle:
        if shape != () or dtype.kind not in kinds:
            fail(f"entry {name!r} must be a single {_kind_names(kinds)}, got shape {shape} of "
                 f"{dtype}")
        if dtype.itemsize > MAX_TEXT_BYTES:
            fail(f"entry {name!r} declares {dtype.itemsize} bytes")
        value = np.frombuffer(handle.read(dtype.itemsize), dtype=dtype)[0]
    return str(value) if dtype.kind == "U" else int(value)


def _kind_names(kinds: str) -> str:
    names = {"f": "float", "i": "integer", "u": "integer", "b": "bool", "U": "text"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


# --- .safetensors -------------------------------------------------------------------------------


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _load_safetensors(path: Path, config: dict | str | None) -> Checkpoint:
    fail = _failer(path)

    header = _safetensors_header(path, fail)
    text = header.get("__metadata__") or {}
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        fail(f"not a readable safetensors file ({str(error).splitlines()[0][:160]})")
    arrays = {k[len(_EXTRA):]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    state = {k: v for k, v in tensors.items() if not k.startswith(_EXTRA)}
    if text.get("format") == SAFETENSORS_FORMAT:
        if text.get("format_version") not in map(str, READABLE_VERSIONS):
            fail(f"checkpoint format version {text.get('format_version')!r}, this numpyconvnext "
                 f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        stored = _json_object(text.get("config", ""), "config", fail)
        metadata = _json_object(text.get("metadata", "{}"), "metadata", fail)
        if config is not None:
            stored = {**stored, **_architecture(config, state, fail)}
        return Checkpoint(_build(stored, state, fail), metadata, arrays)
    if config is None:
        fail("a plain state dict without our config: pass the architecture, e.g. "
             "load(path, config='pico') or config={'dims': ..., 'depths': ...}")
    return Checkpoint(_build(_architecture(config, state, fail), state, fail), {}, arrays)


def _safetensors_header(path: Path, fail) -> dict:
    """The JSON header, after checking its declared length and every tensor's dtype, shape and
    byte range against the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            fail("not a readable safetensors file (shorter than its 8-byte header length)")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            fail(f"safetensors header declares {length} bytes in a {size}-byte file")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            fail("safetensors header is not valid JSON")
    if not isinstance(header, dict):
        fail("safetensors header is not a JSON object")
    text = header.get("__metadata__", {})
    if not isinstance(text, dict) or not all(isinstance(v, str) for v in text.values()):
        fail("safetensors __metadata__ must map names to strings")
    data_size = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(info, dict) and info.get("dtype") in _SAFETENSORS_DTYPES
              and isinstance(info.get("shape"), list) and len(info["shape"]) <= MAX_NDIM
              and all(type(d) is int and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(type(o) is int for o in info["data_offsets"]))
        if not ok:
            fail(f"tensor {name[:80]!r}: dtype, shape or offsets missing or of a type this "
                 f"reader does not take ({str(info)[:120]})")
        begin, end = info["data_offsets"]
        nbytes = math.prod(info["shape"]) * np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).itemsize
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            fail(f"tensor {name[:80]!r} declares shape {info['shape']} ({nbytes} bytes) at bytes "
                 f"{begin}..{end} of {data_size}")
    return header


def _architecture(config: dict | str, state: dict, fail) -> dict:
    """Constructor arguments for a state dict: a variant name or a dict, completed from the
    tensors' shapes (in_channels, num_classes, kernel_size, layer scale, dtype)."""
    if isinstance(config, str):
        if config not in CONFIGS:
            fail(f"unknown variant {config!r}; choose from {', '.join(CONFIGS)}")
        arguments = {k: list(v) for k, v in CONFIGS[config].items()}
    elif isinstance(config, dict):
        arguments = dict(config)
    else:
        fail(f"config must be a variant name or a dict, got {type(config).__name__}")
    official = from_timm_names(state) if uses_timm_names(state) else state
    stem, head = official.get("downsample_layers.0.0.weight"), official.get("head.weight")
    if stem is None or head is None or stem.ndim != 3 or head.ndim != 2:
        fail("not a ConvNeXt state dict (no stem conv [d0, C_in, 4] or head [classes, d3])")
    arguments.setdefault("in_channels", int(stem.shape[1]))
    arguments.setdefault("num_classes", int(head.shape[0]))
    dwconv = next((v for k, v in official.items() if k.endswith(".dwconv.weight")), None)
    if dwconv is not None and dwconv.ndim == 3:
        arguments.setdefault("kernel_size", int(dwconv.shape[2]))
    if not any(k.endswith(".gamma") for k in official):
        arguments.setdefault("layer_scale_init", None)
    arguments.setdefault("dtype", "float64" if stem.dtype == np.float64 else "float32")
    return arguments


# --- shared -------------------------------------------------------------------------------------


def _json_object(text: str, what: str, fail) -> dict:
    if not isinstance(text, str) or len(text) > MAX_TEXT_BYTES:
        fail(f"{what} must be JSON text")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        fail(f"{what} is not valid JSON")
    if not isinstance(value, dict):
        fail(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


_CONFIG_TYPES = {"dims": list, "depths": list, "in_channels": int, "num_classes": int,
                 "drop_path_rate": (int, float), "layer_scale_init": (int, float, type(None)),
                 "dtype": str, "seed": int, "kernel_size": int, "layernorm_eps": (int, float)}


def _expected_shapes(config: dict, fail) -> dict[str, tuple[int, ...]]:
    """Parameter shapes a config implies, checked for types and size before any allocation."""
    unknown = sorted(set(config) - set(_CONFIG_TYPES))
    if unknown:
        fail(f"incompatible checkpoint: unknown config key(s) {', '.join(map(str, unknown))}")
    for key, kind in _CONFIG_TYPES.items():
        value = config.get(key)
        if key in ("dims", "depths", "in_channels", "num_classes") and value is None:
            fail(f"incompatible checkpoint: config has no {key}")
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            fail(f"incompatible checkpoint: config {key} must be {_type_name(kind)}, got "
                 f"{type(value).__name__}")
    if len(config["dims"]) != 4 or len(config["depths"]) != 4 or not all(
            type(v) is int and 0 <= v for v in config["dims"] + config["depths"]):
        fail("incompatible checkpoint: config dims and depths must be 4 non-negative integers each")
    layer_scale = config.get("layer_scale_init", 1e-6)
    shapes = parameter_shapes(config["dims"], config["depths"], config["in_channels"],
                              config["num_classes"], config.get("kernel_size", 7),
                              layer_scale is not None and layer_scale > 0)
    if any(d < 0 for s in shapes.values() for d in s):
        fail("incompatible checkpoint: negative sizes in config")
    return shapes


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_names(names: set[str], shapes: dict, fail) -> None:
    missing = [k for k in shapes if k not in names]
    extra = sorted(names - set(shapes))
    if missing or extra:
        fail("incompatible checkpoint: parameters do not match the config ("
             + (f"missing {_few(missing)}" if missing else "")
             + ("; " if missing and extra else "") + (f"unexpected {_few(extra)}" if extra else "")
             + ")")


def _few(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _build(config: dict, state: dict, fail) -> ConvNeXt1D:
    try:
        model = ConvNeXt1D(**config)
        model.load_state_dict(state)
    except (TypeError, ValueError) as error:
        reason = re.sub(r"\s+", " ", str(error))[:300]
        fail(f"incompatible checkpoint: {reason}")
    return model


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
