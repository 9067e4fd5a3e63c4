"""`numpyconvnext.trading.live` and `python cli.py live` against the local fake Bybit server:
one JSON line per closed candle, a loop with a simulated clock that survives HTTP 502s, and
clean exits (Ctrl-C, bad symbol, no model)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pytest
from bybit_server import FakeBybit
from click.testing import CliRunner
from test_trading_cli import make_checkpoint

import numpyconvnext
from cli import main
from numpyconvnext.data import BybitClient, synthetic_candles
from numpyconvnext.trading.inference import decide
from numpyconvnext.trading.live import (
    HISTORY_MARGIN_BARS,
    LiveParameterError,
    history_bars,
    run_live,
)
from numpyconvnext.trading.strategy import Strategy

HOUR_S = 3600.0
FIELDS = {"time", "close_time", "symbol", "interval", "close", "probabilities", "predicted_return",
          "signal", "confidence", "size", "stop_distance", "stop_price"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("live"))
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return numpyconvnext.load(checkpoint)


def recent_candles(n: int = 1000, seed: int = 3) -> pd.DataFrame:
    """Hourly candles whose last one opened this hour (the fake serves it as still forming)."""
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=n - 1)).floor("h")
    return synthetic_candles(n, "1h", seed=seed, start=start)


def run_cli(*args):
    return CliRunner().invoke(main, ["live", *[str(a) for a in args]], catch_exceptions=False)


def check_record(record: dict, symbol: str = "BTCUSDT") -> None:
    assert set(record) == FIELDS
    assert record["symbol"] == symbol and record["interval"] == "1h"
    p = record["probabilities"]
    assert set(p) == {"long", "short", "hold"} and abs(sum(p.values()) - 1) < 1e-5
    assert record["signal"] in ("LONG", "SHORT", "HOLD")
    assert record["confidence"] == pytest.approx(max(p.values()), abs=1e-6)
    assert record["predicted_return"] is None
    size = record["size"]
    assert set(size) == {"units", "fraction", "equity"}
    assert np.isfinite([size["units"], size["fraction"]]).all()
    assert size["units"] >= 0 and 0 <= size["fraction"] <= 1
    assert (size["fraction"] == 0) == (record["signal"] == "HOLD")
    assert pd.Timestamp(record["close_time"]) - pd.Timestamp(record["time"]) == pd.Timedelta(hours=1)
    if record["signal"] == "LONG":
        assert record["stop_price"] == pytest.approx(record["close"] - record["stop_distance"])
    elif record["signal"] == "SHORT":
        assert record["stop_price"] == pytest.approx(record["close"] + record["stop_distance"])
    else:
        assert record["stop_price"] is None


# --- the loop with a simulated clock ----------------------------------------------------------


class SimulatedTime:
    """A clock and a sleep that advance together, keeping the fake server's clock in step."""

    def __init__(self, fake: FakeBybit, now_s: float) -> None:
        self.fake, self.now_s, self.sleeps = fake, now_s, []
        fake.now_ms = int(now_s * 1000)

    def clock(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds
        self.fake.now_ms = int(self.now_s * 1000)


def test_loop_prints_one_line_per_closed_candle_and_survives_502s(model):
    candles = synthetic_candles(1100, "1h", seed=3, start="2023-01-01")
    k = 1000  # candle k is forming when the loop starts, half-way through its hour
    start_s = candles["timestamp"].iloc[k].value / 1e9 + HOUR_S / 2
    lines, logs = [], []
    with FakeBybit(candles) as fake:
        sim = SimulatedTime(fake, start_s)
        client = BybitClient(fake.url, sleep=sim.sleep, clock=sim.clock, seed=0)

        def emit(line: str) -> None:
            lines.append(line)
            if len(lines) == 1:
                fake.fail("http_502")  # one bad gateway: the client's own retry absorbs it
            elif len(lines) == 2:
                fake.fail("http_502", times=client.max_attempts + 2)  # the client gives up

        emitted = run_live(model, client, "BTCUSDT", "1h", emit=emit, log=logs.append,
                           clock=sim.clock, sleep=sim.sleep, max_lines=3)
        failed = [r for r in fake.requests if r["rows"] == 0]
    assert emitted == 3 and len(lines) == 3
    records = [json.loads(line) for line in lines]
    for record in records:
        check_record(record)
    opens = [pd.Timestamp(r["time"]) for r in records]
    assert opens == list(candles["timestamp"].iloc[k - 1 : k + 2])  # each closed candle once
    assert [r["close"] for r in records] == list(candles["close"].iloc[k - 1 : k + 2])
    # the first wait runs to the next close plus the small delay
    assert sim.sleeps[0] == pytest.approx(HOUR_S / 2 + 3.0)
    assert len(failed) == client.max_attempts + 3
    assert sum("fetch failed" in message and "HTTP 502" in message for message in logs) == 1
    assert sum("close" in message and "UTC BTCUSDT 1h" in message for message in logs) == 3
    # the third line is the backtest's decision on the same closed history
    count = history_bars(model)
    assert count == 231 + HISTORY_MARGIN_BARS
    history = candles.iloc[k + 2 - count : k + 2].reset_index(drop=True)
    expected = decide(model, history, [count - 1])
    p = records[2]["probabilities"]
    np.testing.assert_allclose([p["long"], p["short"], p["hold"]], expected.probabilities[0],
                               atol=2e-6)
    assert records[2]["size"]["fraction"] == pytest.approx(expected.fraction[0], abs=2e-6)


def test_a_late_candle_is_polled_for_not_skipped(model):
    candles = synthetic_candles(1000, "1h", seed=4, start="2023-01-01")
    k = 950
    start_s = candles["timestamp"].iloc[k].value / 1e9 + 60.0
    lines = []
    with FakeBybit(candles) as fake:
        sim = SimulatedTime(fake, start_s)
        real_sleep = sim.sleep

        def lagging_sleep(seconds: float) -> None:  # the exchange's clock runs 20 s behind ours
            real_sleep(seconds)
            fake.now_ms -= 20_000

        sim.sleep = lagging_sleep
        client = BybitClient(fake.url, sleep=sim.sleep, clock=sim.clock)
        run_live(model, client, "BTCUSDT", "1h", emit=lines.append, log=lambda m: None,
                 clock=sim.clock, sleep=sim.sleep, max_lines=2, poll_s=10.0)
    assert [json.loads(line)["time"] for line in lines] == [
        f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in candles["timestamp"].iloc[k - 1 : k + 1]]
    assert sim.sleeps[1:] == [10.0, 10.0]  # two polls until the candle showed up


def test_regression_checkpoint_lines_carry_the_predicted_return(tmp_path):
    path, _ = make_checkpoint(tmp_path, regression=True, head_scale=30.0)
    model = numpyconvnext.load(path)
    candles = synthetic_candles(1000, "1h", seed=3, start="2023-01-01")
    lines, logs = [], []
    with FakeBybit(candles) as fake:
        run_live(model, BybitClient(fake.url), "BTCUSDT", "1h", once=True, emit=lines.append,
                 log=logs.append, clock=lambda: fake.now_ms / 1000)
    (record,) = [json.loads(line) for line in lines]
    assert set(record) == FIELDS and record["probabilities"] is None
    history = candles.iloc[-1 - history_bars(model) : -1].reset_index(drop=True)
    expected = decide(model, history, [len(history) - 1])
    assert record["predicted_return"] == pytest.approx(expected.predicted_return[0], rel=1e-5)
    assert record["signal"] == ["LONG", "SHORT", "HOLD"][int(expected.signal[0])]
    assert 0 <= record["confidence"] < 1 and 0 <= record["size"]["fraction"] <= 1.0
    assert "predicted return" in logs[0]


def test_unknown_symbol_is_a_parameter_error_not_a_retry(model):
    candles = synthetic_candles(400, "1h", seed=3, start="2023-01-01")
    with FakeBybit(candles) as fake:
        client = BybitClient(fake.url, sleep=lambda s: None)
        with pytest.raises(LiveParameterError, match="Symbol Invalid"):
            run_live(model, client, "DOGEUSDT", "1h", emit=print, log=lambda m: None,
                     sleep=lambda s: pytest.fail("must not sleep"))
        assert len(fake.requests) == 1


# --- python cli.py live ------------------------------------------------------------------------


def test_live_once_prints_exactly_one_json_line(checkpoint, model):
    candles = recent_candles()
    with FakeBybit(candles) as fake:
        result = run_cli("--model", checkpoint, "--once", "--base-url", fake.url,
                         "--equity", "5000", "--confidence", "0.55")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    check_record(record)
    closed = candles.iloc[:-1]  # the fake serves the last candle as still forming
    assert pd.Timestamp(record["time"]) == closed["timestamp"].iloc[-1]
    assert record["close"] == closed["close"].iloc[-1]
    assert record["size"]["equity"] == 5000.0
    history = closed.iloc[-history_bars(model):].reset_index(drop=True)
    expected = decide(model, history, [len(history) - 1], strategy=Strategy(confidence=0.55),
                      equity=5000.0)
    assert record["signal"] == ["LONG", "SHORT", "HOLD"][int(expected.signal[0])]
    assert record["size"]["units"] == pytest.approx(expected.units[0], rel=1e-5, abs=1e-8)
    assert "public data only, no orders" in result.stderr
    assert "UTC BTCUSDT 1h close" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_exits_cleanly(checkpoint, monkeypatch):
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with FakeBybit(recent_candles()) as fake:
        monkeypatch.setattr(time, "sleep", interrupted)  # the loop's wait after its first line
        result = run_cli("--model", checkpoint, "--base-url", fake.url)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.rstrip().endswith("stopped") and "Traceback" not in result.output


def one_error_line(result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stdout == "", result.output
    return errors[0]


@pytest.mark.parametrize("once", [True, False])
def test_bad_symbol_exits_2_with_one_line(checkpoint, once):
    with FakeBybit(recent_candles(300)) as fake:
        result = run_cli("--model", checkpoint, "--symbol", "NOPEUSDT", "--base-url", fake.url,
                         *(["--once"] if once else []))
    assert result.exit_code == 2
    assert "Symbol Invalid" in one_error_line(result)
    result = run_cli("--model", checkpoint, "--symbol", "BTC/USDT", "--once")
    assert result.exit_code == 2 and "bad symbol" in one_error_line(result)


def test_too_little_history_and_unreachable_server(checkpoint):
    with FakeBybit(recent_candles(150)) as fake:
        short = run_cli("--model", checkpoint, "--once", "--base-url", fake.url)
    assert short.exit_code == 2
    assert "only 149 closed BTCUSDT 1h candles; the model needs 231" in one_error_line(short)
    down = run_cli("--model", checkpoint, "--once", "--base-url", "http://127.0.0.1:9",
                   "--retry-time", "0")
    assert down.exit_code == 1 and "cannot fetch BTCUSDT 1h candles" in one_error_line(down)


def test_default_model_is_the_newest_in_models(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = run_cli("--once")
    assert missing.exit_code == 2 and "no --model given" in one_error_line(missing)
    for name, age_s in (("old", 100), ("new", 0)):
        (tmp_path / "models" / name).mkdir(parents=True)
        target = tmp_path / "models" / name / "model.npz"
        target.write_bytes(checkpoint.read_bytes())
        os.utime(target, (time.time() - age_s, time.time() - age_s))
    with FakeBybit(recent_candles()) as fake:
        result = run_cli("--once", "--base-url", fake.url)
    assert result.exit_code == 0, result.output
    assert f"with {os.path.join('models', 'new', 'model.npz')}" in result.stderr
    assert len(result.stdout.splitlines()) == 1
    (tmp_path / "models" / "new" / "model.npz").write_bytes(b"PK\x03\x04 not really")
    broken = run_cli("--once")
    assert broken.exit_code == 2 and "not a readable checkpoint" in one_error_line(broken)
