"""Inference from a checkpoint (features, stored normaliser, signals, sizes), no look-ahead through
inference + backtest, and `python cli.py backtest` end to end with its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import numpyconvnext
from cli import main
from numpyconvnext.data.dataset import prepare_dataset
from numpyconvnext.data.features import FEATURE_NAMES
from numpyconvnext.data.labels import LabelConfig, label_threshold
from numpyconvnext.data.source import resolve_candles
from numpyconvnext.model import ConvNeXt1D
from numpyconvnext.trading.backtest import backtest
from numpyconvnext.trading.inference import (
    IncompatibleModelError,
    decide,
    preprocessing_of,
    valid_decision_indices,
)
from numpyconvnext.trading.strategy import Strategy

WINDOW, HORIZON = 32, 4


def make_checkpoint(out_dir: Path, *, regression: bool = False, bars: int = 1000,
                    head_scale: float = 6.0) -> tuple[Path, pd.DataFrame]:
    """A tiny atto checkpoint with the metadata the Trainer writes (synthetic source, split,
    preprocessing), built without training: its head is scaled up so that its (random but
    fixed) probabilities are decisive and the backtests below trade."""
    candles, source = resolve_candles("synthetic", symbol="BTCUSDT", interval="1h", days=365,
                                      last_bars=bars, notice=lambda message: None)
    data = prepare_dataset(candles, window=WINDOW, label_config=LabelConfig(horizon=HORIZON))
    model = ConvNeXt1D.from_config("atto", in_channels=len(FEATURE_NAMES),
                                   num_classes=1 if regression else 3, seed=0)
    model.state_dict()["head.weight"][...] *= head_scale
    split = {name: {key: value.isoformat() if isinstance(value, pd.Timestamp) else value
                    for key, value in bounds.items()}
             for name, bounds in data.boundaries.items()}
    metadata = {"variant": "atto", "symbol": source["symbol"], "interval": source["interval"],
                "data_source": source, "kind": "numpyconvnext.train",
                "preprocessing": data.preprocessing(), "split": split, "fold": data.fold.to_dict(),
                "target_scale": 0.01 if regression else 1.0}
    path = out_dir / "run" / "model.npz"
    numpyconvnext.save(model, path, metadata=metadata)
    return path, candles


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(path, the candles it was 'trained' on)."""
    return make_checkpoint(tmp_path_factory.mktemp("trading_cli"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return numpyconvnext.load(checkpoint[0])


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, needle: str = "") -> None:
    """Exit 2 and one "Error: ..." line (click adds its usage lines above a bad flag's)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines()
             if line.strip() and not line.startswith(("Usage: ", "Try '"))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    assert needle.lower() in lines[0].lower(), lines[0]


# --- inference ---------------------------------------------------------------------------------


def test_inference_rebuilds_the_training_inputs_exactly(model, checkpoint):
    _, candles = checkpoint
    data = prepare_dataset(candles, window=WINDOW, label_config=LabelConfig(horizon=HORIZON))
    decisions = decide(model, candles, data.test.end_index, strategy=Strategy(confidence=0.5))
    np.testing.assert_allclose(decisions.probabilities, model.predict_proba(data.test.X),
                               rtol=1e-6, atol=1e-7)
    # the normaliser is the stored one, not refitted on the candles given: a changed stored
    # mean changes the probabilities
    shifted = numpyconvnext.load(checkpoint[0])
    shifted.metadata["preprocessing"]["normalizer"]["mean"][0] += 1.0
    other = decide(shifted, candles, data.test.end_index, strategy=Strategy(confidence=0.5))
    assert np.abs(other.probabilities - decisions.probabilities).max() > 1e-4


def test_signals_follow_the_threshold_and_sizes_are_finite_and_non_negative(model, checkpoint):
    _, candles = checkpoint
    every = valid_decision_indices(len(candles), preprocessing_of(model))
    assert every[0] == 230 and every[-1] == len(candles) - 1  # warm-up 199 + window 32 - 1
    decisions = decide(model, candles, every[::3], strategy=Strategy(confidence=0.6),
                       equity=25_000.0)
    p, signal = decisions.probabilities, decisions.signal
    assert set(np.unique(signal)) == {0, 1, 2}  # a decisive model: all three occur
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(decisions.confidence, p.max(axis=1))
    directional = signal != 2
    assert (decisions.confidence[directional] >= 0.6).all()
    assert (p.argmax(axis=1)[directional] == signal[directional]).all()
    for values in (decisions.fraction, decisions.units, decisions.confidence):
        assert np.isfinite(values).all() and (values >= 0).all()
    assert (decisions.fraction <= 1.0).all()
    assert (decisions.fraction[~directional] == 0).all()
    assert (decisions.fraction[directional] > 0).any()
    np.testing.assert_allclose(decisions.units, decisions.fraction * 25_000.0 / decisions.close)
    # half Kelly in risk units on q = p(side) / (p(Long) + p(Short)), b = 1 (nothing chosen in
    # this checkpoint), at most 2% of equity lost at the 2-ATR stop, at most 1x equity
    side = np.where(signal == 1, 1, 0)
    q = p[np.arange(len(p)), side] / (p[:, 0] + p[:, 1])
    risk = np.minimum(0.5 * np.maximum(q - (1 - q) / 1.0, 0.0), 0.02)
    expected = np.where(directional, np.minimum(risk * decisions.close / (2.0 * decisions.atr), 1.0),
                        0.0)
    np.testing.assert_allclose(decisions.fraction, expected, rtol=1e-12)
    np.testing.assert_allclose(decisions.win_probability[directional], q[directional])


def test_regression_checkpoint_signals_on_the_sign_beyond_the_label_threshold(tmp_path):
    path, candles = make_checkpoint(tmp_path, regression=True, head_scale=30.0)
    model = numpyconvnext.load(path)
    decisions = decide(model, candles, np.arange(300, len(candles), 4))
    assert decisions.probabilities is None
    r, signal = decisions.predicted_return, decisions.signal
    threshold = label_threshold(candles["close"].to_numpy(), LabelConfig(horizon=HORIZON))
    threshold = threshold[decisions.end_index]
    np.testing.assert_array_equal(signal, np.where(r > threshold, 0, np.where(r < -threshold, 1, 2)))
    assert {0, 1} <= set(np.unique(signal))
    for values in (decisions.fraction, decisions.units, decisions.confidence):
        assert np.isfinite(values).all() and (values >= 0).all()
    assert (decisions.confidence < 1).all()
    assert (decisions.fraction[signal == 2] == 0).all() and (decisions.fraction <= 1.0).all()
    # no probability: q = 1, so the 2% risk budget at the 2-ATR stop does the sizing
    sized = decisions.fraction > 0
    risk = decisions.fraction[sized] * 2.0 * decisions.atr[sized] / decisions.close[sized]
    assert (risk <= 0.02 + 1e-12).all() and np.isclose(risk, 0.02).any()
    fixed = decide(model, candles, decisions.end_index[:40], regression_threshold=1.0)  # never 100%
    assert (fixed.signal == 2).all() and (fixed.fraction == 0).all()


def test_incompatible_checkpoints_are_refused_with_a_clear_message(model):
    bare = ConvNeXt1D.from_config("atto", in_channels=len(FEATURE_NAMES), num_classes=3)
    bare.metadata = {}
    with pytest.raises(IncompatibleModelError, match="no preprocessing"):
        preprocessing_of(bare)
    other = ConvNeXt1D.from_config("atto", in_channels=len(FEATURE_NAMES), num_classes=3)
    other.metadata = json.loads(json.dumps(model.metadata))
    other.metadata["preprocessing"]["feature_names"][3] = "log_ret_256"
    with pytest.raises(IncompatibleModelError, match="different features.*log_ret_64"):
        preprocessing_of(other)
    five = ConvNeXt1D.from_config("atto", in_channels=len(FEATURE_NAMES), num_classes=5)
    five.metadata = model.metadata
    with pytest.raises(IncompatibleModelError, match="5 outputs"):
        preprocessing_of(five)


def test_too_few_candles_is_a_value_error(model, checkpoint):
    _, candles = checkpoint
    need = preprocessing_of(model).min_candles
    with pytest.raises(ValueError, match=f"too few: the model needs {need}"):
        decide(model, candles.iloc[: need - 1])
    with pytest.raises(ValueError, match="decision bars must lie"):
        decide(model, candles, [need - 2])


# --- no look-ahead -----------------------------------------------------------------------------


def test_no_look_ahead_through_inference_and_backtest(model, checkpoint):
    """Prices after bar t change no decision at or before t, no equity up to t and no trade
    entered by t; a live-style call on candles that end at t agrees too."""
    _, candles = checkpoint
    first = preprocessing_of(model).first_decision_index
    end_index = np.arange(first, first + 160)
    t = int(end_index[100])

    future = candles.copy()
    rng = np.random.default_rng(0)
    factor = np.exp(np.cumsum(rng.normal(0.0, 0.02, len(candles) - t - 1)))
    for column in ("open", "high", "low", "close"):
        future.loc[t + 1 :, column] = candles[column].to_numpy()[t + 1 :] * factor
    future.loc[t + 1 :, "volume"] = candles["volume"].to_numpy()[t + 1 :] * rng.uniform(
        0.2, 5.0, len(candles) - t - 1)

    def run(frame):
        decisions = decide(model, frame, end_index, strategy=Strategy(confidence=0.5))
        result = backtest(frame, decisions.signal_series(), size=decisions.fraction_series(),
                          stop_loss=2.0, take_profit=3.0, stop_mode="atr")
        return decisions, result

    (base, base_bt), (moved, moved_bt) = run(candles), run(future)
    upto = end_index <= t
    for name in ("signal", "confidence", "fraction", "units", "atr"):
        np.testing.assert_array_equal(getattr(base, name)[upto], getattr(moved, name)[upto])
    np.testing.assert_array_equal(base.probabilities[upto], moved.probabilities[upto])
    assert not np.array_equal(base.probabilities[~upto], moved.probabilities[~upto])

    bars = base_bt.equity.index <= candles["timestamp"].iloc[t]
    np.testing.assert_array_equal(base_bt.equity[bars], moved_bt.equity[bars])
    assert not np.array_equal(base_bt.equity.to_numpy(), moved_bt.equity.to_numpy())
    entered = base_bt.trades["entry_time"] <= candles["timestamp"].iloc[t]
    assert entered.sum() >= 3  # the check below is not vacuous
    columns = ["side", "entry_time", "entry_price", "size"]
    pd.testing.assert_frame_equal(base_bt.trades.loc[entered, columns].reset_index(drop=True),
                                  moved_bt.trades[columns].iloc[: int(entered.sum())]
                                  .reset_index(drop=True))

    # live sees only candles up to t: the same decision as the backtest's at t
    # (equal up to float32 rounding: BLAS may sum in another order for a batch of one)
    live = decide(model, candles.iloc[: t + 1], [t], strategy=Strategy(confidence=0.5))
    np.testing.assert_allclose(live.probabilities[0], base.probabilities[upto][-1], rtol=1e-5)
    assert live.signal[0] == base.signal[upto][-1]
    np.testing.assert_allclose(live.fraction[0], base.fraction[upto][-1], rtol=1e-5)


# --- python cli.py backtest --------------------------------------------------------------------


def test_backtest_cli_on_the_checkpoint_test_period(checkpoint, model, tmp_path):
    path, candles = checkpoint
    out = tmp_path / "bt"
    result = run_cli("backtest", "--model", path, "--confidence", "0.5", "--out", out)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Metric" in text and "Strategy" in text and "Buy & hold" in text
    assert "IN-SAMPLE" not in text  # the recorded test period is out of sample
    for row in ("Total return", "Sharpe", "Max drawdown", "Win rate", "Trades"):
        assert row in text
    split = model.metadata["split"]["test"]
    first = pd.Timestamp(split["first_time"])
    assert f"period   {first:%Y-%m-%d %H:%M} .. " in text
    trades = pd.read_csv(out / "trades.csv")
    equity = pd.read_csv(out / "equity.csv", parse_dates=["timestamp"])
    assert f"trades   {len(trades)} (" in text and len(trades) > 0
    # decisions at the test window ends, the last one filled on the next bar
    assert len(equity) == split["last_index"] - split["first_index"] + 2
    assert equity["timestamp"].iloc[0] == first
    assert list(equity.columns) == ["timestamp", "equity", "position", "benchmark_equity", "funding",
                                    "in_sample"]
    assert not equity["in_sample"].any()
    assert {"side", "entry_time", "exit_time", "pnl", "fees", "exit_reason"} <= set(trades.columns)
    np.testing.assert_allclose(equity["equity"].iloc[-1] - 10_000.0, trades["pnl"].sum(), rtol=1e-9)
    # the synthetic market's funding is charged: final - initial = gross - fees - funding
    assert trades["funding"].abs().sum() > 0 and "synthetic market's series" in text
    np.testing.assert_allclose(equity["equity"].iloc[-1] - 10_000.0,
                               trades["gross_pnl"].sum() - trades["fees"].sum()
                               - equity["funding"].sum(), rtol=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in_sample"] is False and summary["in_sample_ranges"] == []
    assert summary["precision"] == "float32"
    signals = pd.read_csv(out / "signals.csv")
    assert len(signals) == split["last_index"] - split["first_index"] + 1
    pytest.importorskip("matplotlib")
    assert (out / "equity.png").stat().st_size > 10_000


def test_backtest_cli_in_bfloat16_trades_the_rounded_model(checkpoint, model, tmp_path):
    path, _ = checkpoint
    runs = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        result = run_cli("backtest", "--model", path, "--confidence", "0.5", "--out", out,
                         "--precision", precision)
        assert result.exit_code == 0, result.output
        assert json.loads((out / "summary.json").read_text())["precision"] == precision
        runs[precision] = pd.read_csv(out / "signals.csv")
    columns = [name for name in runs["float32"].columns if name.startswith("p_")]
    assert columns
    rounded, full = runs["bfloat16"][columns].to_numpy(), runs["float32"][columns].to_numpy()
    assert not np.array_equal(rounded, full)  # the rounded weights were used
    np.testing.assert_allclose(rounded, full, atol=1e-3)


def test_backtest_cli_default_out_dir_is_next_to_the_model(checkpoint):
    path, _ = checkpoint
    result = run_cli("backtest", "--model", path, "--stop-loss", "0", "--fee-rate", "0",
                     "--slippage", "0")
    assert result.exit_code == 0, result.output
    folders = sorted(path.parent.glob("backtest_*"))
    assert folders and (folders[-1] / "trades.csv").exists() and (folders[-1] / "equity.csv").exists()
    assert "no stop, no take-profit; fee 0.000% + slippage 0.000% per fill" in result.stdout


def test_backtest_cli_on_a_data_file(checkpoint, model, tmp_path):
    from numpyconvnext.data import save_candles, synthetic_candles

    path, _ = checkpoint
    candles = synthetic_candles(400, "1h", seed=11, start="2022-03-01")
    data = tmp_path / "ETHUSDT_1h.csv"
    save_candles(candles, data)
    result = run_cli("backtest", "--model", path, "--data", data, "--confidence", "0.5",
                     "--take-profit", "3", "--out", tmp_path / "bt")
    assert result.exit_code == 0, result.output
    assert "ETHUSDT_1h.csv (linear), all bars after warm-up" in result.stdout
    assert "payoff ratio b 1.50 (take-profit / stop)" in result.stdout  # 3 / 2
    assert "NOT charged - no funding series" in result.stdout  # a user's CSV
    assert "IN-SAMPLE" not in result.stdout  # another market, after the training dates
    equity = pd.read_csv(tmp_path / "bt" / "equity.csv", parse_dates=["timestamp"])
    first = preprocessing_of(model).first_decision_index
    assert equity["timestamp"].iloc[0] == candles["timestamp"].iloc[first]
    assert equity["timestamp"].iloc[-1] == candles["timestamp"].iloc[-1]
    assert len(equity) == len(valid_decision_indices(len(candles), preprocessing_of(model)))


def test_backtest_cli_on_bybit_candles(checkpoint, tmp_path):
    from bybit_server import FakeBybit

    from numpyconvnext.data import synthetic_candles

    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=799)).floor("h")
    cache = tmp_path / "cache"
    with FakeBybit(synthetic_candles(800, "1h", seed=5, start=start)) as fake:
        result = run_cli("backtest", "--model", checkpoint[0], "--symbol", "BTCUSDT", "--days", "15",
                         "--base-url", fake.url, "--cache-dir", cache, "--out", tmp_path / "bt")
        first_requests = len(fake.requests)
        again = run_cli("backtest", "--model", checkpoint[0], "--symbol", "BTCUSDT", "--days", "15",
                        "--base-url", fake.url, "--cache-dir", cache, "--out", tmp_path / "bt2")
        again_requests = len(fake.requests) - first_requests
        bad = run_cli("backtest", "--model", checkpoint[0], "--symbol", "NOPEUSDT", "--days", "15",
                      "--base-url", fake.url, "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert "Bybit BTCUSDT 1h linear last 15 days" in result.stdout
    assert "settlements from BTCUSDT_linear_funding.csv" in result.stdout
    # the candles and funding went into the cache `fetch` and `train` use; a second run reads
    # them from there and asks Bybit only for what closed since (none, or a page; not 15 days)
    assert (cache / "BTCUSDT_linear_1h.csv").exists() and (cache / "BTCUSDT_linear_funding.csv").exists()
    assert again.exit_code == 0, again.output
    assert again_requests < first_requests and again_requests <= 2
    assert (pd.read_csv(tmp_path / "bt2" / "equity.csv")["equity"].to_numpy()
            == pd.read_csv(tmp_path / "bt" / "equity.csv")["equity"].to_numpy()).all()
    equity = pd.read_csv(tmp_path / "bt" / "equity.csv", parse_dates=["timestamp"])
    # 15 days of closed 1h candles minus warm-up and window (230 bars); the newest is closed
    assert 15 * 24 - 232 <= len(equity) <= 15 * 24 - 230
    assert equity["timestamp"].iloc[-1] == pd.Timestamp(fake.now_ms, unit="ms", tz="UTC").floor("h") \
        - pd.Timedelta(hours=1)
    # as `train --symbol`: the "fetching ..." notice, then one error line
    assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
    errors = [line for line in bad.output.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: Bybit rejected NOPEUSDT 1h: params error: Symbol Invalid"], bad.output
    assert not (cache / "NOPEUSDT_linear_1h.csv").exists()


def test_backtest_cli_errors_are_one_line(checkpoint, tmp_path):
    path, candles = checkpoint
    assert_one_line_error(run_cli("backtest", "--model", tmp_path / "missing.npz"), "no such checkpoint")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    assert_one_line_error(run_cli("backtest", "--model", foreign), "not a numpyconvnext checkpoint")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_one_line_error(run_cli("backtest", "--model", truncated), "truncated")
    bare = tmp_path / "bare.npz"
    numpyconvnext.save(ConvNeXt1D.from_config("atto", len(FEATURE_NAMES), 3), bare)
    assert_one_line_error(run_cli("backtest", "--model", bare), "no preprocessing")

    assert_one_line_error(run_cli("backtest", "--model", path, "--data", tmp_path / "none.csv"),
                          "no candle file")
    from numpyconvnext.data import save_candles

    broken = tmp_path / "broken.csv"
    save_candles(candles, broken)
    lines = broken.read_text().splitlines()
    fields = lines[300].split(",")
    fields[2] = str(float(fields[1]) * 0.5)  # high below open
    lines[300] = ",".join(fields)
    broken.write_text("\n".join(lines) + "\n")
    assert_one_line_error(run_cli("backtest", "--model", path, "--data", broken), "invalid candle")
    short = tmp_path / "short.csv"
    save_candles(candles.iloc[:200], short)
    assert_one_line_error(run_cli("backtest", "--model", path, "--data", short), "too few")
    assert_one_line_error(run_cli("backtest", "--model", path, "--data", short, "--symbol", "BTCUSDT"),
                          "either --data")
    assert_one_line_error(run_cli("backtest", "--model", path, "--days", "5"), "--symbol")
    assert_one_line_error(run_cli("backtest", "--model", path, "--confidence", "1.5"), "confidence")


# --- IN-SAMPLE -----------------------------------------------------------------------------------


def test_backtest_on_the_training_range_says_in_sample(checkpoint, model, tmp_path):
    from numpyconvnext.data import save_candles

    path, candles = checkpoint
    data = save_candles(candles, tmp_path / "candles.csv")  # the very candles it was trained on
    out = tmp_path / "bt"
    result = run_cli("backtest", "--model", path, "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("IN-SAMPLE: decisions overlap the model's training ")
    split = model.metadata["split"]
    assert f"{pd.Timestamp(split['val']['last_time']) + pd.Timedelta(hours=HORIZON):%Y-%m-%d %H:%M}" \
        in lines[0]  # the validation span runs to its last label
    header = next(line for line in lines if line.startswith("Metric"))
    assert "IN-SAMPLE" in header
    signals = pd.read_csv(out / "signals.csv", parse_dates=["timestamp"])
    train_end = pd.Timestamp(split["train"]["last_time"])
    assert signals.loc[signals["timestamp"] <= train_end, "in_sample"].all()
    test_start = pd.Timestamp(split["test"]["first_time"])
    assert not signals.loc[signals["timestamp"] >= test_start, "in_sample"].any()
    assert json.loads((out / "summary.json").read_text())["in_sample"] is True
    assert pd.read_csv(out / "equity.csv")["in_sample"].any()
    assert "in_sample" in pd.read_csv(out / "trades.csv").columns


def _model_trained_on(model, candles, path, train, val):
    """A copy of ``model`` whose metadata says it was trained on BTCUSDT ``candles`` with these
    train / validation window-end index ranges."""
    import copy

    metadata = copy.deepcopy(model.metadata)
    stamps = pd.DatetimeIndex(candles["timestamp"])
    metadata["symbol"] = "BTCUSDT"
    metadata["split"] = {name: {"first_index": r.start, "last_index": r.stop - 1,
                                "first_time": stamps[r.start].isoformat(),
                                "last_time": stamps[r.stop - 1].isoformat()}
                         for name, r in (("train", train), ("val", val))}
    metadata["split"]["test"] = None
    numpyconvnext.save(model, path, metadata=metadata)
    return path


def test_backtest_symbol_on_a_stale_cache_with_bybit_down_is_an_error(checkpoint, tmp_path):
    """Not a backtest of "the last 15 days" on candles that end days ago."""
    from numpyconvnext.data import synthetic_candles
    from numpyconvnext.data.store import save_candles

    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=799)).floor("h")
    save_candles(synthetic_candles(700, "1h", seed=5, start=start), tmp_path / "BTCUSDT_linear_1h.csv")
    result = run_cli("backtest", "--model", checkpoint[0], "--symbol", "BTCUSDT", "--days", "15",
                     "--base-url", "http://127.0.0.1:9", "--cache-dir", tmp_path, "--retry-time", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: cannot fetch BTCUSDT 1h from Bybit")


def test_backtest_symbol_starts_after_the_validation_end(model, tmp_path):
    from bybit_server import FakeBybit

    from numpyconvnext.data import synthetic_candles

    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=899)).floor("h")
    candles = synthetic_candles(900, "1h", seed=5, start=start)
    path = _model_trained_on(model, candles, tmp_path / "m.npz", range(300, 500), range(540, 600))
    first_free = candles["timestamp"].iloc[599 + HORIZON + 1]
    with FakeBybit(candles) as fake:
        args = ["backtest", "--model", path, "--symbol", "BTCUSDT", "--days", "36", "--base-url",
                fake.url, "--cache-dir", tmp_path / "cache"]
        default = run_cli(*args, "--out", tmp_path / "a")
        everything = run_cli(*args, "--allow-in-sample", "--out", tmp_path / "b")
    assert default.exit_code == 0, default.output
    assert "IN-SAMPLE" not in default.stdout
    assert f"from {first_free:%Y-%m-%d %H:%M} (after the model's validation period)" in default.stdout
    signals = pd.read_csv(tmp_path / "a" / "signals.csv", parse_dates=["timestamp"])
    assert signals["timestamp"].iloc[0] == first_free and not signals["in_sample"].any()
    assert everything.exit_code == 0, everything.output
    assert everything.stdout.startswith("IN-SAMPLE: decisions overlap the model's training")
    assert "validation" in everything.stdout.splitlines()[0]
