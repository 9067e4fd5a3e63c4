"""`live --paper`: the strategy traded candle by candle on a paper account kept in the live state
file. Replays against the loopback Bybit server: a run killed in the middle and restarted ends
with the account of an uninterrupted run, and both equal `backtest` on the same candles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bybit_server import FakeBybit
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from test_live import SimulatedTime, recent_candles
from test_trading_cli import make_checkpoint

import numpyconvnext
from cli import main
from numpyconvnext.data import BybitClient, synthetic_candles
from numpyconvnext.trading.backtest import Backtester
from numpyconvnext.trading.inference import decide
from numpyconvnext.trading.live import LiveSettings, run_live
from numpyconvnext.trading.live_state import LiveState, state_path
from numpyconvnext.trading.paper import PaperAccount
from numpyconvnext.trading.strategy import Strategy, run_strategy

ROOT = Path(__file__).resolve().parents[1]
HOUR_S = 3600.0
EQUITY = 25_000.0
# the fake holds fewer candles than live fetches (warm-up + window + 600), so every round sees
# the whole history from its first candle, as backtest on the same file does
CANDLES = synthetic_candles(560, "1h", seed=11, start="2023-01-01")
K = 400  # candle K is forming when the first run starts: K - 1 is its first candle
N = 120  # candles traded in every replay
STRATEGY = Strategy(confidence=0.4, stop_loss=1.0, take_profit=2.0)


@pytest.fixture(autouse=True)
def _in_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("paper"))
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return numpyconvnext.load(checkpoint)


class KilledError(Exception):
    """The process dies here (the in-process stand-in for a kill)."""


def load_state(folder: Path, checkpoint: Path) -> LiveState:
    path = state_path(folder, checkpoint, "BTCUSDT", "1h", "linear")
    return LiveState.load(path, model=checkpoint, symbol="BTCUSDT", interval="1h",
                          category="linear")


def replay(model, checkpoint, folder: Path, crash_at: int | None = None, crash_in: str = "emit",
           down_hours: float = 5.0) -> tuple[list[dict], pd.DataFrame]:
    """Trade N candles with `run_live(paper=True)` in simulated time; with `crash_at`, the run
    dies at its crash_at-th candle (in `emit`: after the state was saved; in `save`: before),
    stays down `down_hours` and a new run continues from the state file. Returns the JSON
    records printed and the funding series the server served."""
    records: list[dict] = []
    live_settings = LiveSettings(strategy=STRATEGY, equity=EQUITY)
    with FakeBybit(CANDLES) as fake:
        sim = SimulatedTime(fake, CANDLES["timestamp"].iloc[K].value / 1e9 + HOUR_S / 2)
        client = BybitClient(fake.url, sleep=sim.sleep, clock=sim.clock, seed=0)
        state = load_state(folder, checkpoint)
        saves, crashed = [], []

        def emit(line: str) -> None:
            if crash_in == "emit" and len(records) + 1 == crash_at and not crashed:
                crashed.append(line)
                raise KilledError
            records.append(json.loads(line))

        if crash_in == "save" and crash_at is not None:
            original = state.save

            def save(now=None):
                saves.append(now)
                if len(saves) == crash_at:
                    raise KilledError
                original(now)

            state.save = save
        run = dict(settings=live_settings, paper=True, emit=emit, log=lambda message: None,
                   clock=sim.clock, sleep=sim.sleep)
        try:
            run_live(model, client, "BTCUSDT", "1h", state=state, max_lines=N, **run)
        except KilledError:
            done = load_state(folder, checkpoint).last_emitted
            sim.sleep(down_hours * HOUR_S)
            left = N - int((done - CANDLES["timestamp"].iloc[K - 1]) / pd.Timedelta(hours=1)) - 1
            run_live(model, client, "BTCUSDT", "1h", state=load_state(folder, checkpoint),
                     max_lines=left, **run)
        funding = fake.funding
    return records, funding


@pytest.fixture(scope="module")
def uninterrupted(model, checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    records, funding = replay(model, checkpoint, folder)
    return records, load_state(folder, checkpoint), funding


def test_the_account_trades_every_candle_once_and_says_so(uninterrupted):
    records, state, _ = uninterrupted
    opens = CANDLES["timestamp"]
    assert [r["time"] for r in records] == [f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in opens.iloc[K - 1:K - 1 + N]]
    account = PaperAccount.from_dict(state.paper)
    assert account.last_bar == state.last_emitted == opens.iloc[K - 2 + N]
    assert account.first_bar == opens.iloc[K - 1] and account.strategy.take_profit == 2.0
    paper = [r["paper"] for r in records]
    assert paper[-1]["equity"] == account.equity and paper[-1]["trades"] == len(account.trades) > 5
    reasons = {t["exit_reason"] for t in account.trades}
    assert {"signal", "stop_loss"} <= reasons  # exits of both kinds happened
    assert sum(len(p["fills"]) for p in paper) >= 2 * len(account.trades)
    assert any(p["funding_paid"] != 0 for p in paper)  # funding at settlements on a position
    for record in records:  # the suggested size refers to the paper equity at that close
        assert record["size"]["equity"] == record["paper"]["equity"]


def backtest_of(model, records: list[dict], funding: pd.DataFrame, all_candles=CANDLES):
    """`backtest` (run_strategy) over the candles the paper account traded, with the same
    decisions' rule, costs, stops and funding."""
    times = pd.DatetimeIndex([pd.Timestamp(r["time"]) for r in records])
    first = int(all_candles["timestamp"].searchsorted(times[0]))
    last = first + len(times) - 1
    assert (all_candles["timestamp"].iloc[first : last + 1] == times).all()  # none missed
    candles = all_candles.iloc[: last + 1].reset_index(drop=True)
    decisions = decide(model, candles, np.arange(first, last + 1), strategy=STRATEGY)
    return run_strategy(candles, decisions.timestamp, decisions.plan, decisions.strategy,
                        funding=funding, initial_equity=EQUITY, with_benchmark=False)


# Live decides a catch-up's candles in one batch of windows, backtest in batches of 256 and an
# uninterrupted run one window at a time. Everything else is the same code on the same numbers,
# and on this machine the results are bit-identical; a BLAS whose float32 rounding depends on
# the batch size could move a probability by ~1e-7 and so a size by as much, hence RTOL.
RTOL = 1e-6


def assert_same_account(a, b, path: str = "account") -> None:
    """Two ``PaperAccount.to_dict()``s agree: the same trades, times, sides and reasons; every
    number to RTOL."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_same_account(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_account(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=RTOL, abs=1e-9), path
    else:
        assert a == b, path


def test_the_account_equals_backtest_on_the_same_candles(model, uninterrupted):
    records, state, funding = uninterrupted
    whole = backtest_of(model, records, funding)
    equity = np.array([r["paper"]["equity"] for r in records])
    # bar for bar the marked equity of the backtest; at the last bar the backtest also closes
    # the position (with costs), which the restored account does when finished
    np.testing.assert_allclose(equity[:-1], whole.equity.to_numpy()[:-1], rtol=RTOL, atol=0)
    closed = Backtester.restore(state.paper["backtester"])
    assert closed.finish() == pytest.approx(whole.equity.iloc[-1], rel=RTOL)
    trades = PaperAccount.from_dict(state.paper).trades_frame()
    pd.testing.assert_frame_equal(trades, whole.trades.iloc[: len(trades)].reset_index(drop=True),
                                  rtol=RTOL)
    assert len(whole.trades) - len(trades) in (0, 1)  # the backtest's closing "end" trade
    assert state.paper["funding_paid"] == pytest.approx(whole.funding_paid, rel=RTOL)


@pytest.mark.parametrize(("crash_at", "crash_in"), [(37, "emit"), (61, "save"), (1, "emit")])
def test_a_killed_and_restarted_run_ends_where_an_uninterrupted_one_does(
        model, checkpoint, tmp_path, uninterrupted, crash_at, crash_in):
    records, state, _ = uninterrupted
    folder = tmp_path / "killed"
    resumed, _ = replay(model, checkpoint, folder, crash_at=crash_at, crash_in=crash_in)
    again = load_state(folder, checkpoint)
    assert_same_account(again.paper, state.paper)  # the same account
    lost = 1 if crash_in == "emit" else 0  # saved, then killed before the line came out
    assert len(resumed) == N - lost
    assert sum(r["late"] for r in resumed) >= 4  # the restart caught up the hours it was down
    by_time = {r["time"]: r["paper"]["equity"] for r in records}
    for record in resumed:
        assert record["paper"]["equity"] == pytest.approx(by_time[record["time"]], rel=RTOL)


# --- exactness without a model: the account against run_strategy, restored anywhere ---------

@settings(max_examples=12, deadline=None)
@given(restarts=st.sets(st.integers(1, 398), max_size=6), seed=st.integers(0, 2**16))
def test_an_account_restored_anywhere_trades_bit_for_bit_like_run_strategy(restarts, seed):
    from numpyconvnext.data.funding import funding_per_bar, synthetic_funding
    from numpyconvnext.trading.sizing import average_true_range
    from numpyconvnext.trading.strategy import plan_positions, stop_distances

    candles = synthetic_candles(700, "1h", seed=8)
    end = np.arange(300, 699)
    probabilities = np.random.default_rng(seed).dirichlet([1.0, 1.0, 1.0], len(end))
    stop = stop_distances(candles, end, STRATEGY)
    plan = plan_positions(STRATEGY, candles["close"].to_numpy()[end], stop, probabilities)
    stamps = pd.DatetimeIndex(candles["timestamp"])
    funding = synthetic_funding(candles, seed=8)
    whole = run_strategy(candles.iloc[:699], stamps[end], plan, STRATEGY, funding=funding,
                         initial_equity=EQUITY, with_benchmark=False)
    atr = average_true_range(*(candles[k].to_numpy() for k in ("high", "low", "close")), 14)
    rates = funding_per_bar(stamps[end], funding)
    account, equity = PaperAccount.start(STRATEGY, EQUITY), []
    for i, t in enumerate(end):
        if i in restarts:  # through JSON, as the state file keeps it
            account = PaperAccount.from_dict(json.loads(json.dumps(account.to_dict(),
                                                                   allow_nan=False)))
        step = account.step(candles.iloc[t], plan.signal[i], plan.fraction[i], stop[i], atr[t],
                            rates[i])
        equity.append(step.equity)
    np.testing.assert_array_equal(equity[:-1], whole.equity.to_numpy()[:-1])
    trades = account.trades_frame()
    pd.testing.assert_frame_equal(trades, whole.trades.iloc[: len(trades)].reset_index(drop=True),
                                  check_exact=True)
    assert Backtester.restore(account.to_dict()["backtester"]).finish() == whole.equity.iloc[-1]
    assert len(trades) > 20


# --- the command ----------------------------------------------------------------------------

FLAGS = ["--equity", "25000", "--confidence", "0.4", "--stop-loss", "1", "--take-profit", "2"]


def live(*args):
    return CliRunner().invoke(main, ["live", *[str(a) for a in args]], catch_exceptions=False)


def one_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.output
    assert "Traceback" not in result.output


def test_help_says_paper_trading_places_no_orders():
    text = " ".join(live("--help").output.split())
    assert "It never places orders" in text
    assert "--paper Paper trading" in text and "Simulated fills only: no orders." in text


def test_the_paper_account_is_kept_checked_and_never_left_behind(checkpoint, tmp_path):
    out = ["--out", tmp_path / "state"]
    with FakeBybit(recent_candles(560, seed=11)) as fake:
        base = ["--model", checkpoint, "--once", "--base-url", fake.url, *FLAGS]
        one_error(live(*base, "--paper", "--no-state"), "drop --no-state")
        first = live(*base, "--paper", *out)
        assert first.exit_code == 0, first.output
        assert "paper account: new, equity 25,000.00" in first.stderr
        (record,) = [json.loads(line) for line in first.stdout.splitlines()]
        assert record["paper"]["equity"] == 25_000.0 and record["paper"]["fills"] == []
        assert "paper: " in first.stderr and "equity 25,000.00 (+0.00%), flat" in first.stderr
        one_error(live(*base, *out), "holds a paper account: run with --paper")
        one_error(live(*base, "--paper", "--stop-loss", "3", *out),
                  "the paper account trades linear, long/short, confidence >= 0.40")
        again = live(*base, "--paper", "--equity", "1000", *out)
    assert again.exit_code == 0 and again.stdout == ""  # nothing closed since
    assert "paper account since" in again.stderr and "--equity 1,000.00 is not used" in again.stderr


def seed_state(folder: Path, checkpoint: Path, last: pd.Timestamp) -> None:
    """A state file as if the last line had been for the candle opened at ``last``."""
    state = load_state(folder, checkpoint)
    state.last_emitted = last
    state.save()


def test_cli_paper_killed_mid_catch_up_continues_exactly(checkpoint, model, tmp_path):
    """A real process, killed (SIGKILL) in the middle of catching up 120 candles, and run again:
    the account is the one of a run never killed, and the one backtest trades."""
    candles = recent_candles(560, seed=11)
    last = candles["timestamp"].iloc[-N - 2]  # N candles closed since: indices -N-1 .. -2
    with FakeBybit(candles) as fake:
        args = ["live", "--model", str(checkpoint), "--once", "--paper", "--base-url", fake.url,
                *FLAGS]
        whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
        seed_state(whole_dir, checkpoint, last)
        whole = CliRunner().invoke(main, [*args, "--out", str(whole_dir)], catch_exceptions=False)
        assert whole.exit_code == 0, whole.output
        seed_state(killed_dir, checkpoint, last)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        child = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args, "--out",
                                  str(killed_dir)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
        seen = []
        try:
            for line in child.stdout:
                seen.append(line)
                if len(seen) == 40:
                    child.send_signal(signal.SIGKILL)
                    break
        finally:
            child.kill()
            child.wait(timeout=60)
        assert len(seen) == 40 and child.returncode == -signal.SIGKILL
        killed_at = load_state(killed_dir, checkpoint).last_emitted
        assert candles["timestamp"].iloc[-N - 1 + 39] <= killed_at < candles["timestamp"].iloc[-2]
        rest = CliRunner().invoke(main, [*args, "--out", str(killed_dir)], catch_exceptions=False)
        assert rest.exit_code == 0, rest.output
        assert "paper account since" in rest.stderr
        funding = fake.funding
    records = [json.loads(line) for line in whole.stdout.splitlines()]
    assert len(records) == N and all(r["late"] for r in records[:-1])
    resumed = [json.loads(line) for line in rest.stdout.splitlines()]
    assert resumed[0]["time"] > json.loads(seen[-1])["time"]  # none twice (some lost: killed)
    assert resumed[-1]["time"] == records[-1]["time"]
    assert resumed[-1]["paper"]["equity"] == pytest.approx(records[-1]["paper"]["equity"],
                                                           rel=RTOL)
    assert_same_account(load_state(killed_dir, checkpoint).paper,
                        load_state(whole_dir, checkpoint).paper)
    result = backtest_of(model, records, funding, candles)
    equity = np.array([r["paper"]["equity"] for r in records])
    np.testing.assert_allclose(equity[:-1], result.equity.to_numpy()[:-1], rtol=RTOL, atol=0)
    trades = PaperAccount.from_dict(load_state(whole_dir, checkpoint).paper).trades_frame()
    pd.testing.assert_frame_equal(trades, result.trades.iloc[: len(trades)].reset_index(drop=True),
                                  rtol=RTOL)
    assert len(trades) > 5
