"""The traded strategy: temperature scaling, the threshold and payoff ratio chosen on validation,
Kelly units through plan_positions, spot never short, and train/info/resume around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import numpyconvnext
from cli import main
from numpyconvnext.calibration import (
    choose_threshold,
    fit_temperature,
    negative_log_likelihood,
    softmax_rows,
)
from numpyconvnext.data.synthetic import synthetic_candles
from numpyconvnext.trading.signals import Signal
from numpyconvnext.trading.strategy import (
    Strategy,
    next_target,
    plan_positions,
    run_directions,
    run_strategy,
    stop_distances,
)

TINY = ["--bars", "1400", "--window", "32", "--horizon", "4", "--epochs", "1", "--model", "atto",
        "--batch-size", "64", "--quiet"]


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, (20_000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax_rows(logits, 2.5)])
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    assert negative_log_likelihood(logits, labels, temperature) < \
        negative_log_likelihood(logits, labels, 1.0)
    # calibrated labels give T = 1; argmax never changes
    labels = np.array([rng.choice(3, p=p) for p in softmax_rows(logits, 1.0)])
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)
    np.testing.assert_array_equal(softmax_rows(logits, 3.0).argmax(1), logits.argmax(1))


def test_threshold_choice_prefers_sharpe_then_trades_then_lower():
    rows = [{"confidence": 0.4, "sharpe": 0.5, "trades": 10},
            {"confidence": 0.5, "sharpe": 1.2, "trades": 3},
            {"confidence": 0.6, "sharpe": 1.2, "trades": 5},
            {"confidence": 0.35, "sharpe": 0.0, "trades": 0}]
    assert choose_threshold(rows)["confidence"] == 0.6
    flat = [{"confidence": c, "sharpe": 0.0, "trades": 0} for c in (0.5, 0.4, 0.6)]
    assert choose_threshold(flat)["confidence"] == 0.4


def _probabilities(n, seed):
    rng = np.random.default_rng(seed)
    return softmax_rows(rng.normal(0.0, 1.5, (n, 3)))


def test_plan_positions_units_equal_the_hand_formula_and_respect_the_caps():
    candles = synthetic_candles(600, "1h", seed=2)
    end = np.arange(300, 600)
    p = _probabilities(len(end), 1)
    strategy = Strategy(confidence=0.4, win_loss_ratio=1.3, max_risk=0.01, max_exposure=0.8)
    close = candles["close"].to_numpy()[end]
    stop = stop_distances(candles, end, strategy)
    plan = plan_positions(strategy, close, stop, p)
    equity = 25_000.0
    for i in range(len(end)):
        c = int(p[i].argmax())
        if c == Signal.HOLD or p[i, c] < 0.4:
            assert plan.fraction[i] == 0.0 and plan.signal[i] == Signal.HOLD
            continue
        q = p[i, c] / (p[i, 0] + p[i, 1])
        f = min(0.5 * max(q - (1 - q) / 1.3, 0.0), 0.01)
        units = min(f * equity / stop[i], 0.8 * equity / close[i])  # the hand formula
        assert plan.fraction[i] * equity / close[i] == pytest.approx(units, rel=1e-12, abs=1e-15)
        assert plan.fraction[i] <= 0.8 + 1e-15
        assert plan.signal[i] == (c if units > 0 else Signal.HOLD)
    assert (plan.fraction > 0).sum() > 20


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), sizing=st.sampled_from(["kelly", "fixed"]))
def test_spot_never_opens_a_short(seed, sizing):
    candles = synthetic_candles(500, "1h", seed=seed % 50)
    end = np.arange(250, 500)
    p = _probabilities(len(end), seed)
    spot = Strategy(category="spot", confidence=0.34, sizing=sizing, win_loss_ratio=2.0)
    plan = plan_positions(spot, candles["close"].to_numpy()[end], stop_distances(candles, end, spot), p)
    assert (plan.signal != Signal.SHORT).all() and (plan.direction >= 0).all()
    stamps = pd.DatetimeIndex(candles["timestamp"])[end]
    traded = run_strategy(candles, stamps, plan, spot)
    assert (traded.trades["side"] == "long").all() and (traded.positions >= 0).all()
    assert traded.funding_paid == 0.0 and traded.funding_note == "spot: no funding"
    directions = run_directions(candles, stamps, -np.ones(len(end)), spot)
    assert directions.trades.empty  # a short signal means flat
    linear = plan_positions(spot.with_overrides(category="linear"),
                            candles["close"].to_numpy()[end], stop_distances(candles, end, spot), p)
    assert (linear.signal == Signal.SHORT).any()  # the same probabilities do short on a perpetual
    assert spot.fee == 0.001 and Strategy().fee == 0.00055


def test_bar_by_bar_through_the_backtester_equals_the_whole_series():
    """The way live paper trading runs the strategy (``next_target`` + ``Backtester.step`` with
    the stop distances and funding of each bar) gives the run ``run_strategy`` gives."""
    from numpyconvnext.data.funding import funding_per_bar, synthetic_funding
    from numpyconvnext.trading.backtest import Backtester

    candles = synthetic_candles(700, "1h", seed=8)
    end = np.arange(300, 699)
    strategy = Strategy(confidence=0.4, win_loss_ratio=1.2, take_profit=3.0)
    stop = stop_distances(candles, end, strategy)
    plan = plan_positions(strategy, candles["close"].to_numpy()[end], stop, _probabilities(len(end), 3))
    stamps = pd.DatetimeIndex(candles["timestamp"])
    funding = synthetic_funding(candles, seed=8)
    whole = run_strategy(candles, stamps[end], plan, strategy, funding=funding, with_benchmark=False)
    bars = candles.iloc[300:700].to_dict("records")
    rates = funding_per_bar(stamps[300:700], funding)
    atr = stop / strategy.stop_loss
    stepper = Backtester(fee_rate=strategy.fee, slippage=strategy.slippage)
    held = (0, 0.0)
    for i, bar in enumerate(bars):
        if i < len(end):
            held = next_target(held, int(plan.signal[i]), plan.fraction[i])
            target, sl, tp = held[1], stop[i], atr[i] * strategy.take_profit
        else:  # the bar after the last decision only fills it
            target, sl, tp = 0.0, None, None
        stepper.step(bar, target, sl, tp, funding_rate=rates[i])
    stepped = stepper.result()
    pd.testing.assert_series_equal(stepped.equity, whole.equity, check_exact=True)
    pd.testing.assert_frame_equal(stepped.trades, whole.trades, check_exact=True)
    assert len(whole.trades) > 10 and whole.funding_paid != 0


def test_strategy_settings_are_checked_and_resolved_from_the_checkpoint():
    with pytest.raises(ValueError, match="category"):
        Strategy(category="inverse")
    with pytest.raises(ValueError, match="max_risk"):
        Strategy(max_risk=0.0)
    stored = {"strategy": {"confidence": 0.45, "win_loss_ratio": 1.7}}
    resolved = Strategy().with_checkpoint(stored)
    assert resolved.threshold == 0.45 and resolved.payoff_ratio == 1.7
    given = Strategy(confidence=0.55, take_profit=3.0).with_checkpoint(stored)
    assert given.threshold == 0.55 and given.payoff_ratio == 1.5  # TP / SL wins over the estimate
    assert Strategy().threshold == 0.6 and Strategy().payoff_ratio == 1.0
    assert Strategy.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved


# --- train, info, resume ----------------------------------------------------------------------------


def _train(tmp_path, *extra):
    from numpyconvnext.data import save_candles

    data = save_candles(synthetic_candles(1400, seed=9), tmp_path / "SOLUSDT_linear_1h.csv")
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "m"),
                                       "--trials-log", str(tmp_path / "trials.jsonl"), *TINY, *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("model saved to "))
    return data, result.output, line.removeprefix("model saved to ")


def test_train_calibrates_chooses_and_logs_and_info_shows_it(tmp_path):
    _, output, path = _train(tmp_path, "--funding-rate", "0.0001")
    assert "calibrated: temperature" in output and "strategy confidence" in output
    assert "would trade on validation: in a position after" in output
    assert "would trade on test: in a position after" in output
    assert "ASSUMED constant 0.0100% per 8 h" in output
    model = numpyconvnext.load(path)
    meta = model.metadata
    assert model.temperature == meta["calibration"]["temperature"] > 0
    assert meta["category"] == "linear" and len(meta["data_sha256"]) == 64
    chosen = meta["strategy"]
    assert chosen["confidence"] in [row["confidence"] for row in chosen["grid"]]
    assert chosen["validation_sharpe"] == max(row["sharpe"] for row in chosen["grid"])
    logged = [json.loads(x) for x in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert len(logged) == len(chosen["grid"]) == 6
    assert {e["dataset"] for e in logged} == {"SOLUSDT|linear|1h"} and \
        {e["kind"] for e in logged} == {"validation"}
    info = CliRunner().invoke(main, ["info", path])
    assert info.exit_code == 0, info.output
    assert f"temperature {model.temperature:.3f}" in info.output
    assert f"confidence {chosen['confidence']:g}" in info.output
    assert "payoff ratio b" in info.output and "linear" in info.output
    # switching calibration off gives the raw softmax
    x = np.random.default_rng(0).standard_normal((4, model.config["in_channels"], 32)).astype(np.float32)
    raw = softmax_rows(model.predict(x).astype(np.float64))
    np.testing.assert_allclose(model.predict_proba(x, calibrated=False), raw, rtol=1e-5)
    np.testing.assert_allclose(model.predict_proba(x),
                               softmax_rows(model.predict(x).astype(np.float64), model.temperature),
                               rtol=1e-5)


def test_resume_refuses_candles_whose_content_changed(tmp_path):
    data, _, path = _train(tmp_path)
    run_dir = str(Path(path).parent)
    lines = data.read_text().splitlines()
    fields = lines[700].split(",")
    fields[4] = str(float(fields[4]) * 1.001)  # one close, within the bar's range or not: changed
    fields[2] = str(max(float(fields[2]), float(fields[4])))
    fields[3] = str(min(float(fields[3]), float(fields[4])))
    lines[700] = ",".join(fields)
    data.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["train", "--resume", run_dir, "--epochs", "2", "--quiet"])
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("Error: ") and "differ from the ones this run was trained on" in line
