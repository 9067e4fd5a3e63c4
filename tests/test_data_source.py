"""The `auto` data source: Bybit through the cache, the synthetic market only when Bybit cannot
be reached, one `Error:` line for everything else, and the same --symbol check everywhere."""

from __future__ import annotations

import pandas as pd
import pytest
from bybit_server import FakeBybit
from click.testing import CliRunner

from cli import main
from numpyconvnext.data.funding import load_funding, save_funding
from numpyconvnext.data.source import funding_for_source, resolve_candles
from numpyconvnext.data.store import load_candles, save_candles
from numpyconvnext.data.synthetic import synthetic_candles

DOWN = "http://127.0.0.1:9"  # nothing listens there: connection refused


@pytest.fixture(scope="module")
def recent() -> pd.DataFrame:
    """Hourly candles up to this hour (the fake serves the last one as still forming)."""
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=2999)).floor("h")
    return synthetic_candles(3000, "1h", seed=5, start=start)


def resolve(fake_url: str, cache, **options):
    notes = []
    options.setdefault("days", 60)
    candles, description = resolve_candles("auto", cache_dir=cache, base_url=fake_url,
                                           retry_time_s=0.3, notice=notes.append, **options)
    return candles, description, notes


def test_a_stale_short_cache_is_refreshed_and_extended_with_a_notice_each(tmp_path, recent):
    save_candles(recent.iloc[-900:-50], tmp_path / "BTCUSDT_linear_1h.csv")  # 50 h old, 35 days long
    with FakeBybit(recent) as fake:
        candles, description, notes = resolve(fake.url, tmp_path, days=60)
    assert len(notes) == 2
    assert notes[0].startswith("BTCUSDT_linear_1h.csv ends") and "fetching the newer candles" in notes[0]
    assert "later than the 60 days asked: fetching the older candles" in notes[1]
    # the cache now holds the 60 days up to the newest closed candle, and the run uses them
    cached = load_candles(tmp_path / "BTCUSDT_linear_1h.csv")
    pd.testing.assert_frame_equal(candles, cached)
    closed = recent.iloc[:-1].reset_index(drop=True)
    assert len(cached) in (60 * 24 - 1, 60 * 24)
    pd.testing.assert_frame_equal(cached, closed.iloc[-len(cached):].reset_index(drop=True))
    assert description["fetched_from"] == "bybit"
    # the perpetual's funding series is cached beside the candles and covers them
    funding = load_funding(tmp_path / "BTCUSDT_linear_funding.csv")
    assert funding["timestamp"].iloc[0] <= candles["timestamp"].iloc[0] + pd.Timedelta(hours=8)
    assert funding["timestamp"].iloc[-1] >= candles["timestamp"].iloc[-1] - pd.Timedelta(hours=8)
    assert funding_for_source(description, candles)[1].startswith("funding: ")
    assert "BTCUSDT_linear_funding.csv" in funding_for_source(description, candles)[1]


def test_an_up_to_date_cache_costs_no_request(tmp_path, recent):
    save_candles(recent.iloc[:-1], tmp_path / "BTCUSDT_linear_1h.csv")
    with FakeBybit(recent) as fake:
        settled = fake.funding[fake.funding["timestamp"] <= pd.Timestamp(fake.now_ms, unit="ms",
                                                                         tz="UTC")]
        save_funding(settled.reset_index(drop=True), tmp_path / "BTCUSDT_linear_funding.csv")
        candles, _, notes = resolve(fake.url, tmp_path, days=30)
        assert fake.requests == [] or pd.Timestamp.now(tz="UTC").minute == 0  # hour just turned
    assert notes[-1] == f"using cached candles {tmp_path / 'BTCUSDT_linear_1h.csv'}"
    assert len(candles) == 30 * 24


def test_unreachable_bybit_uses_a_stale_cache_as_it_is(tmp_path, recent):
    save_candles(recent.iloc[:-100], tmp_path / "BTCUSDT_linear_1h.csv")
    candles, description, notes = resolve(DOWN, tmp_path, days=30)
    assert "Bybit unreachable" in notes[-1] and "as it is" in notes[-1]
    assert candles["timestamp"].iloc[-1] == recent["timestamp"].iloc[-101]
    assert description["kind"] == "file" and "SYNTHETIC" not in description["symbol"]


def test_unreachable_bybit_without_cache_falls_back_to_synthetic(tmp_path):
    _, description, notes = resolve(DOWN, tmp_path / "empty", days=30)
    assert description["kind"] == "synthetic" and "SYNTHETIC market" in notes[-1]


def test_answers_that_keep_failing_are_an_error_not_synthetic(tmp_path, recent):
    with FakeBybit(recent) as fake:
        fake.fail("http_502", times=100)
        with pytest.raises(ValueError, match="cannot fetch BTCUSDT 1h from Bybit: HTTP 502"):
            resolve(fake.url, tmp_path, days=30)


def one_error_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and "SYNTHETIC" not in result.output


TINY = ["--bars", "1400", "--window", "32", "--horizon", "4", "--epochs", "1", "--quiet"]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_unknown_symbol_is_an_error_not_the_synthetic_market(tmp_path, recent, command):
    with FakeBybit(recent) as fake:
        result = CliRunner().invoke(main, [command, "--symbol", "NOPEUSDT", "--base-url", fake.url,
                                           "--cache-dir", str(tmp_path / "data"), "--out",
                                           str(tmp_path / "out"), *TINY])
    one_error_line(result, "Bybit rejected NOPEUSDT 1h: params error: Symbol Invalid")
    assert not (tmp_path / "out").exists()


def test_a_cache_that_cannot_be_written_is_an_error(tmp_path, recent):
    blocker = tmp_path / "data"
    blocker.write_text("a file where a folder should be")
    with FakeBybit(recent) as fake:
        result = CliRunner().invoke(main, ["train", "--base-url", fake.url, "--cache-dir",
                                           str(blocker / "cache"), "--out", str(tmp_path / "m"),
                                           *TINY])
    one_error_line(result, f"cannot write the candle cache in {blocker / 'cache'}")


@pytest.mark.parametrize("command", ["fetch", "train", "evaluate", "backtest", "live"])
@pytest.mark.parametrize("symbol", ["../x", "BTC/USDT", "a b", "..", "-BTC", ""])
def test_every_command_checks_the_symbol_the_same_way(tmp_path, monkeypatch, command, symbol):
    monkeypatch.chdir(tmp_path)
    extra = ["--model", "m.npz"] if command == "backtest" else []
    result = CliRunner().invoke(main, [command, "--symbol", symbol, *extra, "--base-url", DOWN])
    one_error_line(result, f"bad symbol {symbol!r}: exchange symbols are letters, digits and '-'")
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_another_interval_is_refused_until_it_is_named(tmp_path):
    """A 4h file read as 1h would be labelled, annualised and traded live as 1h."""
    path = tmp_path / "candles.csv"
    save_candles(synthetic_candles(300, interval="4h", seed=1), path)
    with pytest.raises(ValueError, match=r"holds 4h candles, not 1h: pass --interval 4h"):
        resolve_candles(path=path, notice=lambda message: None)
    candles, description = resolve_candles(path=path, interval="4h", notice=lambda message: None)
    assert description["interval"] == "4h" and len(candles) == 300
    named = tmp_path / "ETHUSDT_linear_4h.csv"          # the name says it even with a gap
    save_candles(synthetic_candles(300, interval="4h", seed=1).drop(index=range(5, 200)), named)
    with pytest.raises(ValueError, match="holds 4h candles"):
        resolve_candles(path=named, notice=lambda message: None)
    result = CliRunner().invoke(main, ["train", "--data", str(path), "--epochs", "1"])
    assert result.exit_code == 2 and "pass --interval 4h" in result.output
