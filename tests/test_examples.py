"""The three examples run end to end offline on tiny settings (local files, the synthetic market,
or the loopback Bybit server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from bybit_server import FakeBybit

from numpyconvnext.data import load_candles, save_candles, synthetic_candles

ROOT = Path(__file__).resolve().parents[1]
# a child may compile every kernel first (an empty Numba cache): about a minute on an idle
# 2-core machine, several times that on a busy one
CHILD_TIMEOUT_S = 900


def example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)


def recent_candles(n: int) -> pd.DataFrame:
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=n - 1)).floor("h")
    return synthetic_candles(n, seed=7, start=start)


@pytest.mark.parametrize("name", ["fetch_data.py", "train_model.py", "live_signals.py"])
def test_help(name, tmp_path):
    result = example(name, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_fetch_data_from_the_loopback_server(tmp_path):
    with FakeBybit(recent_candles(1200)) as fake:
        result = example("fetch_data.py", "--symbol", "BTCUSDT", "--interval", "1h", "--days", "30",
                         "--base-url", fake.url, "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    candles = load_candles(tmp_path / "data" / "BTCUSDT_linear_1h.json")
    # 30 days = 720 hourly opens in the range; the still-forming newest one is dropped
    assert len(candles) in (719, 720) and f"{len(candles)} candles" in result.stdout
    assert candles["timestamp"].diff().dropna().eq(pd.Timedelta(hours=1)).all()


def test_fetch_data_offline_says_so(tmp_path):
    result = example("fetch_data.py", "--days", "10", "--base-url", "http://127.0.0.1:9",
                     "--retry-time", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout
    assert len(load_candles(tmp_path / "data" / "SYNTHETIC-BTCUSDT_linear_1h.csv")) == 240
    assert not (tmp_path / "data" / "BTCUSDT_linear_1h.csv").exists()


def test_train_model_on_a_json_file(tmp_path):
    save_candles(synthetic_candles(1400, seed=9), tmp_path / "btcusdt_1h.json")
    result = example("train_model.py", "--data", "btcusdt_1h.json", "--epochs", "1", "--window", "32",
                     "--horizon", "4", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model saved to models/" in result.stdout
    assert list((tmp_path / "models").glob("*/model.npz"))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    from numpyconvnext.config import TrainingConfig
    from numpyconvnext.workflow import train_run

    folder = tmp_path_factory.mktemp("models")
    candles = synthetic_candles(1400, seed=5)
    source = {"kind": "synthetic", "symbol": "SYN", "interval": "1h", "seed": 5}
    config = TrainingConfig(window=32, horizon=4, epochs=1, variant="atto", batch_size=64)
    return train_run(candles, source, config, out_dir=folder, quiet=True).best_path


def json_lines(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_live_signals_once_from_the_loopback_server(tmp_path, trained_model):
    with FakeBybit(recent_candles(1200)) as fake:
        result = example("live_signals.py", "--symbol", "BTCUSDT", "--interval", "1h", "--once",
                         "--model", str(trained_model), "--base-url", fake.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = json_lines(result.stdout)
    assert record["signal"] in ("LONG", "SHORT", "HOLD") and record["symbol"] == "BTCUSDT"
    assert abs(sum(record["probabilities"].values()) - 1) < 1e-4


def test_live_signals_offline_replays_with_a_notice(tmp_path, trained_model):
    models = tmp_path / "models" / "run"
    models.mkdir(parents=True)
    (models / "model.npz").write_bytes(trained_model.read_bytes())
    result = example("live_signals.py", "--base-url", "http://127.0.0.1:9", "--retry-time", "0.2",
                     "--bars", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stderr and len(json_lines(result.stdout)) == 5


def test_the_train_example_defaults_are_the_cli_s():
    import importlib.util

    import cli

    spec = importlib.util.spec_from_file_location("train_model", ROOT / "examples" / "train_model.py")
    train_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_model)
    assert train_model.DEFAULT_EPOCHS == cli.CLI_DEFAULT_EPOCHS


def test_the_examples_chain_with_their_defaults(tmp_path):
    """fetch_data.py -> train_model.py -> live_signals.py: each one's default input is what the
    one before wrote (only the size of the run and the server's address are given)."""
    import numpyconvnext

    with FakeBybit(recent_candles(1500)) as fake:
        fetched = example("fetch_data.py", "--days", "60", "--base-url", fake.url, cwd=tmp_path)
        assert fetched.returncode == 0, fetched.stderr
        data = tmp_path / "data" / "BTCUSDT_linear_1h.csv"
        assert data.exists() and "SYNTHETIC" not in fetched.stdout

        trained = example("train_model.py", "--epochs", "1", "--window", "32", "--horizon", "4",
                          "--quiet", cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr
        assert "NOTICE" not in trained.stdout  # the fetched file, not the synthetic market
        [model_path] = (tmp_path / "models").glob("*/model.npz")
        source = numpyconvnext.load(model_path).metadata["data_source"]
        assert source["kind"] == "file" and source["path"] == str(data.resolve())

        live = example("live_signals.py", "--once", "--base-url", fake.url, cwd=tmp_path)
    assert live.returncode == 0, live.stderr
    [record] = json_lines(live.stdout)
    assert record["symbol"] == "BTCUSDT" and record["signal"] in ("LONG", "SHORT", "HOLD")
    assert "SYNTHETIC" not in live.stderr
