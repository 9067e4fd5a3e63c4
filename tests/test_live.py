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
          "signal", "confidence", "size", "stop_distance", "stop_price", "late", "emitted_at"}


@pytest.fixture(autouse=True)
def _in_a_fresh_folder(tmp_path, monkeypatch):
    """`live` writes its state under ./live: every test starts from its own empty folder."""
    monkeypatch.chdir(tmp_path)


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


def test_live_once_in_bfloat16_decides_with_the_rounded_weights(checkpoint, model, monkeypatch):
    import numpyconvnext.trading.live as live_module

    precisions = []
    original = live_module.run_live

    def spy(model, *args, **kwargs):
        precisions.append(model.precision)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(live_module, "run_live", spy)
    candles = recent_candles()
    with FakeBybit(candles) as fake:
        result = run_cli("--model", checkpoint, "--once", "--base-url", fake.url,
                         "--no-state", "--precision", "bfloat16")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[-1])
    check_record(record)
    closed = candles.iloc[:-1]
    history = closed.iloc[-history_bars(model):].reset_index(drop=True)
    rounded = decide(model.frozen("bfloat16"), history, [len(history) - 1], strategy=Strategy(),
                     equity=10_000.0)
    assert record["signal"] == ["LONG", "SHORT", "HOLD"][int(rounded.signal[0])]
    p = record["probabilities"]
    np.testing.assert_allclose([p["long"], p["short"], p["hold"]], rounded.probabilities[0],
                               rtol=0, atol=5e-7)  # the JSON line's 6 decimals
    assert precisions == ["bfloat16"] and "(bfloat16 weights)" in result.stderr
    bad = run_cli("--model", checkpoint, "--once", "--precision", "int8")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


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


# --- restarts, bad rows, clock skew, short answers ------------------------------------------

from numpyconvnext.trading.live_state import LiveState, state_path  # noqa: E402


def iso(stamp: pd.Timestamp) -> str:
    return f"{stamp:%Y-%m-%dT%H:%M:%SZ}"


def a_state(tmp_path, checkpoint) -> LiveState:
    path = state_path(tmp_path, checkpoint, "BTCUSDT", "1h", "linear")
    return LiveState.load(path, model=checkpoint, symbol="BTCUSDT", interval="1h",
                          category="linear")


class Guarded(SimulatedTime):
    """SimulatedTime that fails the test instead of looping for ever."""

    def sleep(self, seconds: float) -> None:
        assert len(self.sleeps) < 60, "the loop keeps waiting"
        super().sleep(seconds)


LOOP_CANDLES = synthetic_candles(1100, "1h", seed=3, start="2023-01-01")
K = 1000  # candle K is forming when the loop starts, half-way through its hour


def run_loop(model, *, after_line=None, prepare=None, client_options=None, max_lines=2,
             **options):
    """Run the loop on LOOP_CANDLES in simulated time: (JSON lines, log lines, the clock).

    ``prepare(fake)`` runs before the loop, ``after_line(fake)`` after each line it prints."""
    lines, logs = [], []
    with FakeBybit(LOOP_CANDLES) as fake:
        if prepare is not None:
            prepare(fake)
        sim = Guarded(fake, LOOP_CANDLES["timestamp"].iloc[K].value / 1e9 + HOUR_S / 2)
        client = BybitClient(fake.url, sleep=sim.sleep, clock=sim.clock, seed=0,
                             **(client_options or {}))

        def emit(line: str) -> None:
            lines.append(line)
            if after_line is not None:
                after_line(fake)

        run_live(model, client, "BTCUSDT", "1h", emit=emit, log=logs.append, clock=sim.clock,
                 sleep=sim.sleep, max_lines=max_lines, **options)
    return lines, logs, sim


def test_a_restart_emits_every_candle_closed_meanwhile_once_and_late(model, checkpoint, tmp_path):
    candles = synthetic_candles(1100, "1h", seed=3, start="2023-01-01")
    k = 1000
    opens = candles["timestamp"]
    lines = []
    with FakeBybit(candles) as fake:
        sim = Guarded(fake, opens.iloc[k].value / 1e9 + HOUR_S / 2)
        client = BybitClient(fake.url, sleep=sim.sleep, clock=sim.clock, seed=0)
        run = dict(emit=lines.append, log=lambda m: None, clock=sim.clock, sleep=sim.sleep)
        run_live(model, client, "BTCUSDT", "1h", state=a_state(tmp_path, checkpoint), max_lines=2,
                 **run)
        saved = a_state(tmp_path, checkpoint)
        assert saved.last_emitted == opens.iloc[k]
        sim.sleep(5 * HOUR_S + 600)  # down for five hours: candles k+1 .. k+5 close meanwhile
        run_live(model, client, "BTCUSDT", "1h", state=a_state(tmp_path, checkpoint), max_lines=6,
                 **run)
    records = [json.loads(line) for line in lines]
    assert [r["time"] for r in records] == [iso(t) for t in opens.iloc[k - 1 : k + 7]]
    assert [r["late"] for r in records] == [False, False, True, True, True, True, False, False]
    emitted_at = [pd.Timestamp(r["emitted_at"]) for r in records]
    assert all(e >= pd.Timestamp(r["close_time"]) for e, r in zip(emitted_at, records, strict=True))
    assert emitted_at[2] == emitted_at[5]  # the catch-up came out at once, after the restart
    # a caught-up line is the decision a never-stopped run would have made (same history)
    history = candles.iloc[: k + 2].reset_index(drop=True)
    expected = decide(model, history, [k + 1])
    p = records[2]["probabilities"]
    np.testing.assert_allclose([p["long"], p["short"], p["hold"]], expected.probabilities[0],
                               atol=1e-5)
    assert a_state(tmp_path, checkpoint).last_emitted == opens.iloc[k + 6]


def test_state_file_is_atomic_and_keeps_what_it_does_not_know(checkpoint, tmp_path):
    state = a_state(tmp_path, checkpoint)
    assert state.path.name.startswith("model-") and state.path.name.endswith(
        "_BTCUSDT_linear_1h.state.json")
    state.last_emitted = pd.Timestamp("2024-05-01 13:00", tz="UTC")
    state.paper = {"cash": 9_000.0, "position": {"side": "long", "units": 0.01}}
    state.save()
    data = json.loads(state.path.read_text())
    data["future_field"] = [1, 2]
    state.path.write_text(json.dumps(data))
    again = a_state(tmp_path, checkpoint)
    again.save()
    data = json.loads(state.path.read_text())
    assert data["last_emitted"] == "2024-05-01T13:00:00Z" and data["future_field"] == [1, 2]
    assert data["paper"]["cash"] == 9_000.0 and data["category"] == "linear"
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.path.name]  # no temp files left
    state.path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable.*delete it to start afresh"):
        a_state(tmp_path, checkpoint)


def test_a_bad_upstream_row_is_skipped_after_k_attempts(model):
    opens = LOOP_CANDLES["timestamp"]

    def break_a_row(fake: FakeBybit) -> None:  # Bybit keeps serving candle K + 1 broken
        fake.bad_rows = {opens.iloc[K + 1].value // 1_000_000}

    lines, logs, _ = run_loop(model, prepare=break_a_row, max_lines=3, bad_row_attempts=3)
    assert [json.loads(line)["time"] for line in lines] == [  # K + 1 gets no line
        iso(opens.iloc[K - 1]), iso(opens.iloc[K]), iso(opens.iloc[K + 2])]
    warned = [m for m in logs if m.startswith("warning: skipping")]
    assert warned == [f"warning: skipping Bybit's {iso(opens.iloc[K + 1])} candle after 3 attempts "
                      f"({warned[0].split('(', 1)[1]}"]
    assert "high" in warned[0] and sum("fetch failed" in m for m in logs) == 2


@pytest.mark.parametrize(("skew_s", "warned"), [(-5.0, "5.0 s behind"), (3.0, "3.0 s ahead of"),
                                                (1.0, None)])
def test_clock_skew_is_measured_at_start(model, skew_s, warned):
    candles = synthetic_candles(1000, "1h", seed=3, start="2023-01-01")
    logs = []
    with FakeBybit(candles) as fake:
        now_s = fake.now_ms / 1000
        run_live(model, BybitClient(fake.url), "BTCUSDT", "1h", once=True, emit=lambda line: None,
                 log=logs.append, clock=lambda: now_s + skew_s)
    skews = [m for m in logs if "local clock" in m]
    if warned is None:
        assert skews == []
    else:
        assert len(skews) == 1 and warned in skews[0] and "sync it (NTP)" in skews[0]


def test_a_short_answer_after_a_first_success_is_transient(model):
    # after the first line, the next answer holds the newest 10 candles only
    lines, logs, _ = run_loop(model, after_line=lambda fake: fake.fail("short"))
    assert [json.loads(line)["time"] for line in lines] == [
        iso(t) for t in LOOP_CANDLES["timestamp"].iloc[K - 1 : K + 1]]
    assert sum("fetch failed (a short answer: Bybit has only 9 closed" in m for m in logs) == 1


def test_an_ip_ban_makes_the_loop_wait_minutes(model):
    lines, logs, sim = run_loop(model, after_line=lambda fake: fake.fail("http_403"),
                                client_options=dict(max_retry_time_s=60.0, forbidden_wait_s=120.0))
    assert len(lines) == 2 and 120.0 in sim.sleeps
    assert any("IP rate-limit ban or region block" in m and "in 120 s" in m for m in logs)


def test_live_once_twice_never_repeats_and_catches_up(checkpoint, tmp_path):
    candles = recent_candles()
    args = ("--model", checkpoint, "--once", "--out", tmp_path / "state")
    with FakeBybit(candles) as fake:
        first = run_cli(*args, "--base-url", fake.url)
        second = run_cli(*args, "--base-url", fake.url)
        (path,) = (tmp_path / "state").iterdir()
        data = json.loads(path.read_text())
        data["last_emitted"] = iso(candles["timestamp"].iloc[-5])  # as if down for 3 hours
        path.write_text(json.dumps(data))
        third = run_cli(*args, "--base-url", fake.url)
    assert first.exit_code == second.exit_code == third.exit_code == 0, third.output
    assert len(first.stdout.splitlines()) == 1 and second.stdout == ""
    assert "has closed since the last line" in second.stderr
    caught_up = [json.loads(line) for line in third.stdout.splitlines()]
    assert [r["time"] for r in caught_up] == [iso(t) for t in candles["timestamp"].iloc[-4:-1]]
    assert [r["late"] for r in caught_up] == [True, True, False]
    assert "state " in third.stderr and "last signal for the candle of" in third.stderr


def test_a_broken_state_file_is_one_error_line(checkpoint, tmp_path):
    path = state_path(tmp_path, checkpoint, "BTCUSDT", "1h", "linear")
    path.write_text("[1, 2")
    result = run_cli("--model", checkpoint, "--once", "--out", tmp_path)
    assert result.exit_code == 2 and "is unreadable" in one_error_line(result)


def test_help_says_it_never_places_orders():
    result = run_cli("--help")
    assert result.exit_code == 0 and "It never places orders" in result.output
