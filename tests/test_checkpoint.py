"""save -> load round trips; damaged, foreign and incompatible files give clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import numpyconvnext
from numpyconvnext import CheckpointError, ConvNeXt1D

SMALL = dict(dims=(4, 6, 8, 10), depths=(1, 1, 1, 1), in_channels=3, num_classes=3)


@pytest.fixture
def saved(tmp_path):
    model = ConvNeXt1D(**SMALL, seed=5)
    model.state_dict()["stages.1.0.gamma"][...] = 0.7
    path = tmp_path / "model.npz"
    numpyconvnext.save(model, path, metadata={"symbol": "BTCUSDT", "mean": np.arange(3.0)})
    return model, path


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    loaded = numpyconvnext.load(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 64))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.config == model.config
    assert loaded.metadata == {"symbol": "BTCUSDT", "mean": [0.0, 1.0, 2.0]}


def test_extra_arrays_round_trip(tmp_path):
    model = ConvNeXt1D(**SMALL)
    path = tmp_path / "m.npz"
    numpyconvnext.save(model, path, arrays={"optim.m": np.arange(4.0)})
    checkpoint = numpyconvnext.load_checkpoint(path)
    np.testing.assert_array_equal(checkpoint.arrays["optim.m"], np.arange(4.0))


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        numpyconvnext.load(path)


def test_corrupted_bytes(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[40:400] = b"\x00" * 360
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        numpyconvnext.load(path)


def test_foreign_npz_and_missing_file(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a numpyconvnext checkpoint"):
        numpyconvnext.load(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        numpyconvnext.load(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        numpyconvnext.load(text)


def test_newer_format_and_mismatched_weights(saved, tmp_path):
    _, path = saved
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{**entries, "format": np.array(99)})
    with pytest.raises(CheckpointError, match="format version 99"):
        numpyconvnext.load(newer)
    broken = tmp_path / "broken.npz"
    np.savez(broken, **{**entries, "param/head.weight": np.zeros((5, 5))})
    with pytest.raises(CheckpointError, match="incompatible.*head.weight"):
        numpyconvnext.load(broken)


def test_pickle_is_refused(saved, tmp_path):
    _, path = saved
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**entries, "metadata": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError):
        numpyconvnext.load(pickled)


def test_failed_write_keeps_the_old_file(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        numpyconvnext.save(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert zipfile.is_zipfile(path)


def test_second_process_does_not_recompile():
    """Numba's on-disk cache: after one process compiled the kernels, the next one loads them."""
    script = (
        "import sys, numpy as np, numba\n"
        "from numpyconvnext import ConvNeXt1D\n"
        "m = ConvNeXt1D((4, 6, 8, 10), (1, 1, 1, 1), 3, 3)\n"
        "x = np.zeros((2, 3, 32), np.float32)\n"
        "m.backward(np.ones_like(m.forward(x)))\n"
        "m.predict(x)\n"
        "fs = [f for name, mod in list(sys.modules.items()) if name.startswith('kernels')\n"
        "      for f in vars(mod).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]\n"
        "used = [f for f in fs if f.signatures]\n"
        "print(sum(sum(f.stats.cache_misses.values()) for f in used),\n"
        "      sum(sum(f.stats.cache_hits.values()) for f in used), len(used))\n"
    )
    run = lambda: subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,  # noqa: E731
                                 check=True).stdout.split()
    run()  # warms the cache if this checkout has never compiled
    misses, hits, used = map(int, run())
    assert used >= 4 and misses == 0 and hits >= used


# --- crafted files: each is one CheckpointError line, never a traceback or a MemoryError ---------


def npy_bytes(array: np.ndarray | None = None, *, shape=None, dtype=None, data: bytes = b"") -> bytes:
    """A .npy file; with shape/dtype, a header declaring them over `data` (a lie, on purpose)."""
    import io

    buffer = io.BytesIO()
    if array is not None:
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": shape})
    return buffer.getvalue() + data


def craft(path, entries: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name + ".npy", data)
    return path


def good_entries(model: ConvNeXt1D) -> dict[str, bytes]:
    entries = {"format": npy_bytes(np.array(1)), "config": npy_bytes(np.array(model.config_json())),
               "metadata": npy_bytes(np.array("{}"))}
    entries.update({"param/" + k: npy_bytes(v) for k, v in model.state_dict().items()})
    return entries


def assert_one_line_error(path, match: str):
    with pytest.raises(CheckpointError, match=match) as info:
        numpyconvnext.load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_crafted_good_file_loads(tmp_path):
    model = ConvNeXt1D(**SMALL, seed=1)
    loaded = numpyconvnext.load(craft(tmp_path / "good.npz", good_entries(model)))
    x = np.random.default_rng(0).standard_normal((1, 3, 32)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("name, data, match", [
    ("format", npy_bytes(np.array("1")), "format.*single integer"),
    ("format", npy_bytes(np.array([1, 2])), "format.*single integer"),
    ("format", npy_bytes(np.array(1.0)), "format.*single integer"),
    ("config", npy_bytes(np.array(7)), "config.*single text"),
    ("config", npy_bytes(np.array("not json")), "config is not valid JSON"),
    ("config", npy_bytes(np.array("[1, 2]")), "config must be a JSON object"),
    ("config", npy_bytes(np.array('{"dims": "abc", "depths": [1, 1, 1, 1], "in_channels": 3, '
                                  '"num_classes": 3}')), "config dims must be list"),
    ("config", npy_bytes(np.array('{"dims": [4, 6, 8, 10], "depths": [1, 1, 1, 1], '
                                  '"in_channels": 3, "num_classes": 3, "rm": 1}')), "unknown config"),
    ("config", npy_bytes(np.array('{"dims": [100000000, 6, 8, 10], "depths": [1, 1, 1, 1], '
                                  '"in_channels": 3, "num_classes": 3}')), "config implies"),
    ("config", npy_bytes(np.array('{"dims": [4, 6, 8, 10], "depths": [1, 1, 1, 1], '
                                  '"in_channels": true, "num_classes": 3}')), "in_channels must"),
    ("metadata", npy_bytes(np.array("[]")), "metadata must be a JSON object"),
    ("metadata", npy_bytes(np.array("{oops")), "metadata is not valid JSON"),
    ("param/head.weight", npy_bytes(shape=(10**12, 10**6), dtype=np.float32, data=b"\0" * 64),
     "declares shape"),
    ("param/head.weight", npy_bytes(shape=(3, 10), dtype=np.float32, data=b"\0" * 8),
     "declares shape"),
    ("param/head.weight", npy_bytes(np.zeros((3, 10), dtype=np.int64)), "dtype int64, expected float"),
    ("param/head.weight", npy_bytes(np.zeros((3, 10), dtype=np.complex64)), "expected float"),
    ("param/head.weight", b"\x93NUMPY garbage", "not a valid .npy"),
    ("param/head.weight", npy_bytes(shape=(3, 10), dtype=np.dtype("O"), data=b"\0" * 240),
     "Python objects"),
    ("extra/state", npy_bytes(np.array(["text"])), "expected bool or integer or float"),
])
def test_crafted_bad_entry_is_one_error_line(tmp_path, name, data, match):
    entries = good_entries(ConvNeXt1D(**SMALL))
    entries[name] = data
    assert_one_line_error(craft(tmp_path / "bad.npz", entries), match)


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    entries = good_entries(ConvNeXt1D(**SMALL))
    # 400 MB of zeros deflate to ~400 KB: refused from the sizes in the zip directory alone
    entries["extra/bomb"] = npy_bytes(shape=(100_000_000,), dtype=np.float32,
                                      data=bytes(400_000_000))
    path = craft(tmp_path / "bomb.npz", entries, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2_000_000
    assert_one_line_error(path, "zip bomb")


def test_entry_declaring_more_than_the_file_is_refused(tmp_path):
    path = craft(tmp_path / "lie.npz", good_entries(ConvNeXt1D(**SMALL)))
    data = bytearray(path.read_bytes())
    # the central directory's uncompressed size of the first entry, made absurd
    at = data.rfind(b"PK\x01\x02")
    while data.rfind(b"PK\x01\x02", 0, at) != -1:
        at = data.rfind(b"PK\x01\x02", 0, at)
    data[at + 24:at + 28] = (2**32 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert_one_line_error(path, "declares|damaged")


def test_unexpected_and_missing_entries(tmp_path):
    entries = good_entries(ConvNeXt1D(**SMALL))
    assert_one_line_error(craft(tmp_path / "a.npz", {**entries, "surprise": npy_bytes(np.ones(2))}),
                          "unexpected entry")
    del entries["param/head.bias"]
    assert_one_line_error(craft(tmp_path / "b.npz", entries), "missing head.bias")


def safetensors_bytes(header: dict, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


@pytest.mark.parametrize("header, data, length, match", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**12,
     "header declares"),
    ({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "declares shape"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None,
     "declares shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"a": 1}},
     b"\0" * 8, None, "__metadata__"),
    ({"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "dtype"),
    ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
    ([1, 2], b"", None, "not a JSON object"),
])
def test_crafted_safetensors_header_is_one_error_line(tmp_path, header, data, length, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data, length))
    assert_one_line_error(path, match)


def test_safetensors_with_bad_config_in_the_header(tmp_path):
    model = ConvNeXt1D(**SMALL)
    path = numpyconvnext.save(model, tmp_path / "m.safetensors")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    for config, match in (("[]", "config must be a JSON object"), ("{", "not valid JSON"),
                          ('{"dims": [4, 6, 8, 10]}', "incompatible")):
        save_file(tensors, str(path), metadata={"format": "numpyconvnext", "format_version": "1",
                                                "config": config, "metadata": "{}"})
        assert_one_line_error(path, match)
    path.write_bytes(b"\x05\x00")
    assert_one_line_error(path, "not a readable")


def test_cli_reports_a_crafted_file_in_one_line(tmp_path):
    from click.testing import CliRunner

    from cli import main

    entries = good_entries(ConvNeXt1D(**SMALL))
    entries["format"] = npy_bytes(np.array("x"))
    path = craft(tmp_path / "bad.npz", entries)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "format" in lines[0]
