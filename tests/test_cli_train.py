"""`python cli.py train` end to end on tiny settings, its data sources, and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import numpyconvnext
from cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--bars", "1400", "--window", "32", "--horizon", "4", "--epochs", "1", "--model", "atto",
        "--batch-size", "64", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def saved_model_path(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("model saved to "))
    return Path(line.removeprefix("model saved to "))


def test_train_synthetic_writes_a_loadable_model(tmp_path):
    result = invoke("--source", "synthetic", "--out", str(tmp_path), *TINY)
    assert result.exit_code == 0, result.output
    assert "majority class" in result.output and "direction accuracy" in result.output
    path = saved_model_path(result.output)
    model = numpyconvnext.load(path)
    assert model.metadata["variant"] == "atto"
    assert model.metadata["data_source"]["kind"] == "synthetic"
    assert model.metadata["metrics"]["test"]["samples"] > 0
    assert (path.parent / "history.csv").exists() and (path.parent / "last.npz").exists()


def test_auto_source_fetches_from_bybit_into_the_cache(tmp_path):
    import pandas as pd
    from bybit_server import FakeBybit

    from numpyconvnext.data import synthetic_candles

    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=2999)).floor("h")
    cache = tmp_path / "data"
    with FakeBybit(synthetic_candles(3000, seed=7, start=start)) as fake:
        result = invoke("--base-url", fake.url, "--cache-dir", str(cache), "--days", "100",
                        "--out", str(tmp_path / "models"), *TINY)
        requests = len(fake.requests)
    assert result.exit_code == 0, result.output
    assert (cache / "BTCUSDT_linear_1h.csv").exists()
    assert (cache / "BTCUSDT_linear_funding.csv").exists()  # a perpetual's funding beside it
    assert requests >= 3  # 2,400 candles: three pages of at most 1,000
    model = numpyconvnext.load(saved_model_path(result.output))
    assert model.metadata["data_source"]["fetched_from"] == "bybit"


def test_auto_source_falls_back_to_synthetic_with_a_notice(tmp_path):
    result = invoke("--base-url", "http://127.0.0.1:9", "--retry-time", "0.2",
                    "--cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path), *TINY)
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC market" in result.output


def test_data_file_in_the_spec_form_and_resume(tmp_path):
    from numpyconvnext.data import save_candles, synthetic_candles

    data = tmp_path / "btcusdt_1h.json"
    save_candles(synthetic_candles(1400, seed=9), data)
    result = invoke("--data", str(data), "--out", str(tmp_path / "m"), *TINY)
    assert result.exit_code == 0, result.output
    run_dir = saved_model_path(result.output).parent
    again = invoke("--resume", str(run_dir), "--epochs", "2", "--quiet")
    assert again.exit_code == 0, again.output
    assert len(numpyconvnext.load(run_dir / "last.npz").metadata["trainer_state"]["history"]) == 2


@pytest.mark.parametrize("args,message", [
    (["--model", "huge"], "unknown model 'huge'"),
    (["--data", "no/such/file.csv"], "no/such/file.csv"),
    (["--window", "100"], "multiple of 32"),
    (["--resume", "no/such/last.npz"], "no such checkpoint"),
    (["--config", "missing.toml"], "cannot read config file"),
    (["--interval", "7m", "--source", "synthetic"], "7m"),
    # click's own usage errors, one line too (with where to look)
    (["--epochs", "-1"], "-1 is not in the range x>=1. See 'cli.py train --help'."),
    (["--no-such-option"], "No such option '--no-such-option'"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", *args, "--out",
                             str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_unknown_command_is_one_line_and_bare_cli_prints_the_help():
    runner = CliRunner()
    unknown = runner.invoke(main, ["trian"])
    assert unknown.exit_code == 2
    assert unknown.output.strip().splitlines() == [
        "Error: No such command 'trian'. Did you mean 'train'? See 'main --help'."]
    bare = runner.invoke(main, [])
    assert bare.exit_code == 2 and "Commands:" in bare.output and "Error" not in bare.output
