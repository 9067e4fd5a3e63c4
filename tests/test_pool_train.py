"""Pooled training end to end: train --symbols / --data per symbol, the checkpoint's per-symbol
and pooled normalisers, backtest / decide / live choosing between them, resume, info, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import numpyconvnext
from cli import main
from numpyconvnext.config import TrainingConfig
from numpyconvnext.data import save_candles, synthetic_candles
from numpyconvnext.data.dataset import Normalizer
from numpyconvnext.data.source import resolve_pool
from numpyconvnext.trading.inference import decide, preprocessing_of
from numpyconvnext.workflow import build_pooled_run, finish_run, resume_run, train_pooled_run

SHARED = Path(os.environ.get("NUMPYCONVNEXT_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
PERP = SHARED / "perp"
TINY = ["--window", "32", "--horizon", "4", "--epochs", "1", "--model", "atto", "--batch-size",
        "64", "--quiet"]
CONFIG = TrainingConfig(variant="atto", epochs=2, window=32, horizon=4, batch_size=64)


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def saved_model_path(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("model saved to "))
    return Path(line.removeprefix("model saved to "))


@pytest.fixture(scope="module")
def basket_files(tmp_path_factory):
    """Three symbols' candle files with different first dates, named SYMBOL_linear_1h.csv."""
    folder = tmp_path_factory.mktemp("basket")
    paths = {}
    for k, (symbol, bars, late) in enumerate((("AAAUSDT", 1500, 0), ("BBBUSDT", 1200, 300),
                                              ("CCCUSDT", 1300, 200))):
        candles = synthetic_candles(bars, seed=11 + k)
        candles["timestamp"] = candles["timestamp"] + pd.Timedelta(hours=late)
        paths[symbol] = folder / f"{symbol}_linear_1h.csv"
        save_candles(candles, paths[symbol])
    return paths


@pytest.fixture(scope="module")
def pooled_model(basket_files, tmp_path_factory):
    """A tiny model trained on the pool of AAAUSDT and BBBUSDT (CCCUSDT kept out)."""
    out = tmp_path_factory.mktemp("models")
    candles, sources = resolve_pool("file", paths=[basket_files["AAAUSDT"], basket_files["BBBUSDT"]],
                                    notice=lambda _: None)
    result = train_pooled_run(candles, sources, CONFIG.with_overrides(epochs=1), out, quiet=True,
                              trials_log=out / "trials.jsonl")
    return result, candles


def test_the_checkpoint_keeps_each_symbols_normaliser_and_the_pooled_one(pooled_model):
    result, candles = pooled_model
    model = numpyconvnext.load(result.best_path)
    pre = model.metadata["preprocessing"]
    assert pre["symbols"] == ["AAAUSDT", "BBBUSDT"] == model.metadata["symbols"]
    trainer = build_pooled_run(candles, model.metadata["data_source"]["sources"], CONFIG,
                               result.run_dir / "scratch", quiet=True)
    data = trainer.data
    for symbol in data.symbols:  # saved and read back exactly
        stored = Normalizer.from_dict(pre["normalizers"][symbol])
        assert stored.mean.tobytes() == data.normalizers[symbol].mean.tobytes()
        assert stored.std.tobytes() == data.normalizers[symbol].std.tobytes()
    assert Normalizer.from_dict(pre["normalizer"]).mean.tobytes() == data.normalizer.mean.tobytes()
    assert model.metadata["data_source"]["kind"] == "pool"
    assert "calibration" in model.metadata and result.pool["symbols"] == ["AAAUSDT", "BBBUSDT"]


def test_decide_uses_the_symbols_own_normaliser_or_the_pooled_one(pooled_model, basket_files):
    result, candles = pooled_model
    model = numpyconvnext.load(result.best_path)
    pre = model.metadata["preprocessing"]
    other = numpyconvnext.data.load_candles(basket_files["CCCUSDT"])

    def with_only(normalizer: dict):
        """The same model whose checkpoint had just this one normaliser (a single-symbol one)."""
        single = numpyconvnext.load(result.best_path)
        single.metadata = {**single.metadata, "preprocessing": {
            k: v for k, v in pre.items() if k not in ("normalizers", "symbols")} | {"normalizer": normalizer}}
        return single

    own = decide(model, candles["BBBUSDT"], symbol="bbbusdt")
    assert own.normalizer_note.startswith("normaliser: BBBUSDT's own")
    reference = decide(with_only(pre["normalizers"]["BBBUSDT"]), candles["BBBUSDT"])
    assert reference.normalizer_note is None  # a single-symbol checkpoint says nothing
    np.testing.assert_array_equal(own.probabilities, reference.probabilities)
    pooled = decide(model, other, symbol="CCCUSDT")
    assert "the pool's (CCCUSDT not among the 2 training symbols" in pooled.normalizer_note
    np.testing.assert_array_equal(pooled.probabilities,
                                  decide(with_only(pre["normalizer"]), other).probabilities)
    assert not np.array_equal(own.probabilities,
                              decide(model, candles["BBBUSDT"], symbol="CCCUSDT").probabilities)
    assert preprocessing_of(model, "AAAUSDT").normalizer_symbol == "AAAUSDT"
    assert preprocessing_of(model).normalizer_symbol is None and preprocessing_of(model).pooled


def test_backtest_says_which_normaliser_and_info_lists_the_symbols(pooled_model, basket_files,
                                                                  tmp_path):
    result, _ = pooled_model
    own = invoke("backtest", "--model", str(result.best_path), "--data",
                 str(basket_files["AAAUSDT"]), "--out", str(tmp_path / "a"))
    assert own.exit_code == 0, own.output
    assert "inputs   normaliser: AAAUSDT's own" in own.output
    assert "IN-SAMPLE" in own.output  # it trades the pool's training dates
    other = invoke("backtest", "--model", str(result.best_path), "--data",
                   str(basket_files["CCCUSDT"]), "--out", str(tmp_path / "c"))
    assert other.exit_code == 0, other.output
    assert "normaliser: the pool's (CCCUSDT not among" in other.output
    assert "IN-SAMPLE" in other.output  # the same calendar dates, seen through the pool
    bare = invoke("backtest", "--model", str(result.best_path))
    assert bare.exit_code == 2 and "2 pooled symbols (AAAUSDT, BBBUSDT)" in bare.output
    info = invoke("info", str(result.best_path))
    assert info.exit_code == 0, info.output
    assert "pooled      2 symbols: AAAUSDT, BBBUSDT" in info.output
    assert "2 symbols pooled, 1h linear" in info.output


def test_a_pooled_run_interrupted_and_resumed_equals_the_uninterrupted_one(basket_files, tmp_path):
    candles, sources = resolve_pool("file", paths=list(basket_files.values()), notice=lambda _: None)
    straight = build_pooled_run(candles, sources, CONFIG, tmp_path / "straight", quiet=True)
    straight_result = straight.fit()
    stop_at = straight.steps_per_epoch + 2

    def stop(trainer):
        if trainer.state.step == stop_at:
            trainer.stop_requested = True

    broken = build_pooled_run(candles, sources, CONFIG, tmp_path / "split", quiet=True,
                              on_batch_end=stop)
    interrupted = finish_run(broken, broken.fit(), candles, broken.metadata["data_source"])
    assert interrupted.interrupted
    resumed = resume_run(tmp_path / "split", quiet=True, trials_log=tmp_path / "trials.jsonl")
    assert not resumed.interrupted and resumed.pool["symbols"] == list(basket_files)
    assert numpyconvnext.load(resumed.last_path).flat_params.tobytes() == \
        numpyconvnext.load(straight_result.last_path).flat_params.tobytes()


def test_resume_refuses_a_pool_whose_candles_changed(basket_files, tmp_path):
    import shutil

    copies = {}
    for symbol, path in basket_files.items():
        copies[symbol] = tmp_path / path.name
        shutil.copy(path, copies[symbol])
    candles, sources = resolve_pool("file", paths=list(copies.values()), notice=lambda _: None)

    def stop(trainer):
        trainer.stop_requested = True

    trainer = build_pooled_run(candles, sources, CONFIG, tmp_path / "run", quiet=True,
                               on_batch_end=stop)
    trainer.fit()
    frame = numpyconvnext.data.load_candles(copies["BBBUSDT"])
    frame.loc[500, "close"] *= 1.01
    frame.loc[500, "high"] = max(frame.loc[500, "high"], frame.loc[500, "close"])
    save_candles(frame, copies["BBBUSDT"])
    with pytest.raises(numpyconvnext.checkpoint.CheckpointError, match="differ from the ones"):
        resume_run(tmp_path / "run", quiet=True)


@pytest.mark.parametrize("args,message", [
    (["--symbols", "BTCUSDT,,ETHUSDT"], "empty entry in the symbol list"),
    (["--symbols", ","], "empty symbol list"),
    (["--symbols", "BTCUSDT,ETH/USDT"], "bad symbol 'ETH/USDT'"),
    (["--symbols", "BTCUSDT,btcusdt"], "BTCUSDT named twice"),
    (["--symbols", "BTCUSDT,ETHUSDT", "--symbol", "SOLUSDT"], "not both"),
    (["--data", "a.csv", "--data", "b.csv", "--symbols", "X"], "2 --data files but 1 --symbols"),
])
def test_bad_symbol_lists_exit_2_with_one_line(args, message):
    for command in ("train", "evaluate"):
        result = invoke(command, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_file_that_does_not_name_its_symbol_needs_symbols(basket_files, tmp_path):
    plain = tmp_path / "candles.csv"
    plain.write_bytes(basket_files["AAAUSDT"].read_bytes())
    result = invoke("train", "--data", str(plain), "--data", str(basket_files["BBBUSDT"]), *TINY)
    assert result.exit_code == 2 and "cannot tell the symbol of candles.csv" in result.output
    result = invoke("evaluate", "--data", str(plain), "--data", str(basket_files["BBBUSDT"]))
    assert result.exit_code == 2 and "cannot tell the symbol of candles.csv" in result.output


def test_train_symbols_pools_the_synthetic_market_by_name(tmp_path):
    result = invoke("train", "--source", "synthetic", "--symbols", "AAAUSDT,BBBUSDT", "--bars",
                    "1200", "--out", str(tmp_path), "--trials-log", str(tmp_path / "t.jsonl"), *TINY)
    assert result.exit_code == 0, result.output
    assert "pooled      2 symbols: AAAUSDT, BBBUSDT" in result.output
    model = numpyconvnext.load(saved_model_path(result.output))
    assert model.metadata["symbols"] == ["AAAUSDT", "BBBUSDT"]


@pytest.mark.skipif(not PERP.is_dir(), reason=f"real perpetual candles not found at {PERP}")
def test_pooled_training_on_real_perpetuals_smoke(tmp_path):
    """Two real perpetuals (the last ~1,500 hours of each), tiny model, one epoch."""
    files = []
    for symbol in ("SOLUSDT", "DOGEUSDT"):
        candles = numpyconvnext.data.load_candles(PERP / f"{symbol}_1h.csv").iloc[-1500:]
        files.append(tmp_path / f"{symbol}_1h.csv")
        save_candles(candles.reset_index(drop=True), files[-1])
    result = invoke("train", "--data", str(files[0]), "--data", str(files[1]), "--out",
                    str(tmp_path / "m"), "--trials-log", str(tmp_path / "t.jsonl"), *TINY)
    assert result.exit_code == 0, result.output
    model = numpyconvnext.load(saved_model_path(result.output))
    pre = model.metadata["preprocessing"]
    assert pre["symbols"] == ["SOLUSDT", "DOGEUSDT"]
    # DOGE's prices are ~1000x below SOL's: their own statistics differ, the pooled ones sit between
    sol, doge = (np.asarray(pre["normalizers"][s]["std"]) for s in ("SOLUSDT", "DOGEUSDT"))
    assert not np.allclose(sol, doge)
    assert model.metadata["metrics"]["test"]["samples"] > 0


def test_live_uses_the_symbols_own_normaliser_or_the_pooled_one(pooled_model):
    import json

    from bybit_server import FakeBybit

    from numpyconvnext.trading.live import history_bars
    from numpyconvnext.trading.strategy import Strategy

    result, _ = pooled_model
    model = numpyconvnext.load(result.best_path)
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=799)).floor("h")
    candles = synthetic_candles(800, "1h", seed=5, start=start)
    closed = candles.iloc[:-1]  # the fake serves the last candle as still forming
    history = closed.iloc[-history_bars(model):].reset_index(drop=True)
    with FakeBybit(candles, symbols=("AAAUSDT", "ZZZUSDT")) as fake:
        for symbol, note in (("AAAUSDT", "normaliser: AAAUSDT's own"),
                             ("ZZZUSDT", "normaliser: the pool's (ZZZUSDT not among")):
            out = CliRunner().invoke(main, ["live", "--model", str(result.best_path), "--symbol",
                                            symbol, "--once", "--no-state", "--base-url", fake.url,
                                            "--confidence", "0.5", "--no-calibration"])
            assert out.exit_code == 0, out.output
            assert note in out.stderr
            record = json.loads(out.stdout.splitlines()[0])
            got = [record["probabilities"][k] for k in ("long", "short", "hold")]
            strategy = Strategy(confidence=0.5, calibrated=False)
            expected, other = (decide(model, history, [len(history) - 1], symbol=s,
                                      strategy=strategy).probabilities[0]
                               for s in (symbol, "AAAUSDT" if symbol == "ZZZUSDT" else "ZZZUSDT"))
            assert np.abs(expected - other).max() > 1e-4  # the two normalisers do differ here
            np.testing.assert_allclose(got, expected, atol=1e-6)
