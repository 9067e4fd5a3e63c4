"""A universe from Bybit: fetch --symbols / --top against the loopback server (instruments-info
paging, tickers ranked by turnover, status Trading), each symbol into its own cache file."""

from __future__ import annotations

import pandas as pd
import pytest
from bybit_server import FakeBybit, instrument_row
from click.testing import CliRunner

import cli
from numpyconvnext.data.bybit import BybitClient
from numpyconvnext.data.store import load_candles
from numpyconvnext.data.synthetic import synthetic_candles
from numpyconvnext.data.universe import check_listed, list_instruments, top_perpetuals

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "OLDUSDT", "NEWUSDT", "BTC-27JUN25", "BTCPERP")


@pytest.fixture
def fake():
    now = pd.Timestamp.now(tz="UTC")
    candles = synthetic_candles(300, "1h", seed=3, start=now.floor("h") - pd.Timedelta(hours=299))
    with FakeBybit(candles, symbols=SYMBOLS, now_ms=now.value // 1_000_000) as server:
        server.instruments = [
            instrument_row("BTCUSDT"), instrument_row("ETHUSDT"), instrument_row("SOLUSDT"),
            instrument_row("OLDUSDT", status="Closed"),
            instrument_row("NEWUSDT", status="PreLaunch"),
            instrument_row("BTC-27JUN25", contract_type="LinearFutures"),
            instrument_row("BTCPERP", quote="USDC"),
        ] + [instrument_row(f"X{k:04d}USDT") for k in range(1500)]  # two pages of instruments
        turnover = {"NEWUSDT": 9e9, "OLDUSDT": 8e9, "BTC-27JUN25": 7e9, "BTCPERP": 6e9,
                    "ETHUSDT": 5e9, "BTCUSDT": 5e9, "SOLUSDT": 1e9, "GHOSTUSDT": 9.5e9}
        server.tickers = [{"symbol": s, "lastPrice": "1", "volume24h": "1",
                           "turnover24h": repr(t)} for s, t in turnover.items()]
        server.tickers.append({"symbol": "BADUSDT", "turnover24h": "n/a"})
        yield server


def fetch(fake, tmp_path, *args):
    return CliRunner().invoke(cli.main, ["fetch", "--days", "5", "--out", str(tmp_path),
                                         "--base-url", fake.url, "--retry-time", "1", *args])


def test_top_perpetuals_are_trading_usdt_perpetuals_by_turnover(fake):
    client = BybitClient(fake.url, max_retry_time_s=1)
    instruments = list_instruments(client)
    assert len(instruments) == 1507
    pages = [r for r in fake.requests if r["path"] == "/v5/market/instruments-info"]
    assert len(pages) == 2 and pages[1]["params"]["cursor"] and pages[0]["params"]["limit"] == "1000"
    # not Trading, a dated future, a USDC contract and a ticker without instrument are skipped;
    # equal turnover: by symbol
    assert top_perpetuals(client, 2) == [("BTCUSDT", 5e9), ("ETHUSDT", 5e9)]
    assert [s for s, _ in top_perpetuals(client, 3)] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    with pytest.raises(ValueError, match="no linear symbol NOPEUSDT, ZZZUSDT"):
        check_listed(["BTCUSDT", "NOPEUSDT", "ZZZUSDT"], instruments, "linear")
    assert [i.symbol for i in check_listed(["BTCUSDT", "OLDUSDT"], instruments, "linear")] == \
        ["OLDUSDT"]
    with pytest.raises(ValueError, match="linear category"):
        top_perpetuals(BybitClient(fake.url, "spot"), 2)


def test_fetch_top_writes_one_file_per_symbol_with_one_progress_bar(fake, tmp_path):
    result = fetch(fake, tmp_path, "--top", "2")
    assert result.exit_code == 0, result.output
    assert "top 2 by 24 h turnover: BTCUSDT (5,000M USDT), ETHUSDT (5,000M USDT)" in result.output
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert 5 * 24 - 2 <= len(load_candles(tmp_path / f"{symbol}_linear_1h.csv")) <= 5 * 24
        assert (tmp_path / f"{symbol}_linear_funding.csv").exists()
    assert not (tmp_path / "SOLUSDT_linear_1h.csv").exists()
    assert "(1/2)" in result.output and "(2/2)" in result.output  # one bar, labelled per symbol
    assert "Error" not in result.output
    again = fetch(fake, tmp_path, "--top", "2", "--quiet")  # up to date: nothing new
    assert again.exit_code == 0 and again.output.count(", 0 new") == 4


def test_fetch_top_more_than_exist_says_so(fake, tmp_path):
    result = fetch(fake, tmp_path, "--top", "5", "--quiet", "--no-funding", "--days", "1")
    assert result.exit_code == 0, result.output
    assert "only 3 Trading linear USDT perpetuals have a 24 h turnover" in result.output


def test_fetch_symbols_fetches_each_and_warns_about_one_not_trading(fake, tmp_path):
    result = fetch(fake, tmp_path, "--symbols", "solusdt, OLDUSDT", "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning: OLDUSDT is Closed on Bybit, not Trading" in result.output
    assert (tmp_path / "SOLUSDT_linear_1h.csv").exists() and (tmp_path / "OLDUSDT_linear_1h.csv").exists()


@pytest.mark.parametrize("args,message", [
    (["--symbols", "BTCUSDT,NOPEUSDT"], "Bybit lists no linear symbol NOPEUSDT"),
    (["--symbols", "BTCUSDT,,ETHUSDT"], "--symbols: empty entry in the symbol list"),
    (["--symbols", "BTC/USDT"], "bad symbol 'BTC/USDT'"),
    (["--symbols", "BTCUSDT,ETHUSDT,BTCUSDT"], "BTCUSDT named twice"),
    (["--symbols", "BTCUSDT", "--top", "3"], "not --symbols and --top"),
    (["--top", "3", "--symbol", "ETHUSDT"], "not --top and --symbol"),
    (["--top", "3", "--category", "spot"], "--top ranks linear perpetuals"),
    (["--top", "0"], "0"),
])
def test_bad_symbol_lists_exit_2_with_one_line_and_write_nothing(fake, tmp_path, args, message):
    result = fetch(fake, tmp_path, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines()  # click's usage lines aside
             if line and not line.startswith(("Usage:", "Try "))]
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_a_failure_mid_universe_names_what_is_done(fake, tmp_path):
    fake.die_after_pages = 1  # BTCUSDT's one page, then the server is gone
    result = fetch(fake, tmp_path, "--symbols", "BTCUSDT,ETHUSDT", "--quiet", "--no-funding",
                   "--retry-time", "0.3")
    assert result.exit_code == 2
    assert "after 1 of 2 symbols: BTCUSDT; rerun the same command to continue" in result.output
    assert (tmp_path / "BTCUSDT_linear_1h.csv").exists()
    fake.die_after_pages = None
    again = fetch(fake, tmp_path, "--symbols", "BTCUSDT,ETHUSDT", "--quiet", "--no-funding")
    assert again.exit_code == 0, again.output
    assert 5 * 24 - 2 <= len(load_candles(tmp_path / "ETHUSDT_linear_1h.csv")) <= 5 * 24
