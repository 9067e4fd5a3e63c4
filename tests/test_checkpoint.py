"""save -> load round trips; damaged, foreign and incompatible files give clear errors."""

from __future__ import annotations

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
