"""The candle cache against the fake Bybit server: forward and backward paging, progress saved
as it goes, a rerun that continues after the server died mid-fetch, refresh and back-fill."""

from __future__ import annotations

import pandas as pd
import pytest
from bybit_server import FakeBybit
from click.testing import CliRunner

import cli
from numpyconvnext.data import bybit, store
from numpyconvnext.data.bybit import BybitClient, BybitUnreachableError
from numpyconvnext.data.store import load_candles, save_candles, update_cache
from numpyconvnext.data.synthetic import synthetic_candles

HOUR_MS = 3_600_000
PAGE = 999  # new candles per full page: the fake repeats one border candle on each page


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    return synthetic_candles(5000, "1h", seed=21, start="2022-01-01")


def client_for(fake: FakeBybit, **kwargs) -> BybitClient:
    kwargs.setdefault("max_attempts", 2)
    return BybitClient(fake.url, sleep=lambda s: None, seed=0, timeout_s=2.0, **kwargs)


def end_of(candles: pd.DataFrame) -> pd.Timestamp:
    return candles["timestamp"].iloc[-1]


def days_between(a: pd.Timestamp, b: pd.Timestamp) -> float:
    return (b - a) / pd.Timedelta(days=1)


def test_kline_pages_forward_windows_are_contiguous_and_stop_at_the_end(full):
    with FakeBybit(full) as fake:
        client = client_for(fake)
        start = full["timestamp"].iloc[100]
        pages = list(client.kline_pages("BTCUSDT", "1h", start, end_of(full) + pd.Timedelta(days=400),
                                        ascending=True))
        asked = [(int(r["params"]["start"]), int(r["params"]["end"])) for r in fake.requests]
    got = pd.concat(pages, ignore_index=True)
    pd.testing.assert_frame_equal(got, full.iloc[100:-1].reset_index(drop=True))  # last: forming
    assert all(pages[i]["timestamp"].iloc[-1] < pages[i + 1]["timestamp"].iloc[0]
               for i in range(len(pages) - 1))
    assert asked[0][0] == start.value // 1_000_000 and all(b - a < 999 * HOUR_MS for a, b in asked[:-1])
    # five windows hold the 4,899 candles, the sixth is empty, one probe finds nothing after it
    assert len(asked) == 7 and asked[-1][0] == asked[-2][1] + 1


def test_backward_fetch_that_dies_mid_way_keeps_its_pages_and_a_rerun_continues(tmp_path, full):
    end = end_of(full)
    days = days_between(full["timestamp"].iloc[0], end) + 1 / 48  # all 5,000 candles
    with FakeBybit(full) as fake:
        fake.die_after_pages = 3
        with pytest.raises(BybitUnreachableError):
            update_cache(client_for(fake), "BTCUSDT", "1h", days, tmp_path, end=end)
        path = tmp_path / "BTCUSDT_linear_1h.csv"
        kept = load_candles(path)
        # the three newest pages are on disk (the forming candle dropped)
        pd.testing.assert_frame_equal(kept, full.iloc[-1 - 3 * PAGE : -1].reset_index(drop=True))
        fake.die_after_pages = None
        n_before = len(fake.requests)
        notes = []
        again = update_cache(client_for(fake), "BTCUSDT", "1h", days, tmp_path, end=end,
                             notice=notes.append)
        asked = [int(r["params"]["end"]) for r in fake.requests[n_before:]]
    pd.testing.assert_frame_equal(load_candles(path), full.iloc[:-1].reset_index(drop=True))
    assert again.n_older == 4999 - 3 * PAGE and again.n_newer == 0
    assert asked[0] == kept["timestamp"].iloc[0].value // 1_000_000 - 1  # only what is missing
    assert len(asked) == 3 and any("fetching the older candles" in n for n in notes)


def test_forward_refresh_that_dies_leaves_no_hole(tmp_path, full):
    save_candles(full.iloc[:1000], tmp_path / "BTCUSDT_linear_1h.csv")
    end = end_of(full)
    with FakeBybit(full) as fake:
        fake.die_after_pages = 2
        with pytest.raises(BybitUnreachableError):
            update_cache(client_for(fake), "BTCUSDT", "1h", 30, tmp_path, end=end)
        kept = load_candles(tmp_path / "BTCUSDT_linear_1h.csv")
        assert len(kept) == 1000 + 2 * PAGE
        assert store.gap_report(kept, "1h").n_missing == 0  # one unbroken stretch
        fake.die_after_pages = None
        again = update_cache(client_for(fake), "BTCUSDT", "1h", 30, tmp_path, end=end)
    assert again.n_newer == 4999 - len(kept)
    pd.testing.assert_frame_equal(again.candles, full.iloc[:-1].reset_index(drop=True))


def test_an_interruption_loses_only_the_page_in_flight(tmp_path, full):
    end = end_of(full)
    with FakeBybit(full) as fake:
        pages = []

        def progress(n: int) -> None:
            pages.append(n)
            if len(pages) == 4:
                raise KeyboardInterrupt  # Ctrl-C while the fourth page is being read

        with pytest.raises(KeyboardInterrupt):
            update_cache(client_for(fake), "BTCUSDT", "1h", 300, tmp_path, end=end,
                         progress=progress)
    assert len(load_candles(tmp_path / "BTCUSDT_linear_1h.csv")) == 3 * PAGE  # the pages that arrived


def test_progress_is_saved_every_n_pages(tmp_path, full, monkeypatch):
    saved = []
    real_save = store.save_candles
    monkeypatch.setattr(store, "save_candles",
                        lambda candles, path: saved.append(len(candles)) or real_save(candles, path))
    with FakeBybit(full) as fake:
        update_cache(client_for(fake), "BTCUSDT", "1h", 300, tmp_path, end=end_of(full),
                     save_every=2)
    # 4,999 closed candles come in 6 pages: saved after pages 2, 4 and 6, no extra write after
    assert saved == [2 * PAGE, 4 * PAGE, 4999]


def test_refresh_and_backfill_each_say_so_in_one_line(tmp_path, full):
    save_candles(full.iloc[2000:3000], tmp_path / "BTCUSDT_linear_1h.csv")
    end = end_of(full)
    with FakeBybit(full) as fake:
        notes = []
        result = update_cache(client_for(fake), "BTCUSDT", "1h", days_between(
            full["timestamp"].iloc[1500], end) + 1e-6, tmp_path, end=end, notice=notes.append)
        n_requests = len(fake.requests)
        quiet = []
        update_cache(client_for(fake), "BTCUSDT", "1h", 10, tmp_path, end=end, notice=quiet.append)
        assert len(fake.requests) == n_requests  # up to date and long enough: no request
    assert (result.n_newer, result.n_older) == (1999, 500)  # 3000..4998 and 1500..1999
    assert len(notes) == 2 and all("\n" not in n for n in notes)
    assert notes[0] == (f"BTCUSDT_linear_1h.csv ends {full['timestamp'].iloc[2999]:%Y-%m-%d %H:%M} UTC: "
                        "fetching the newer candles")
    assert "later than the" in notes[1] and "fetching the older candles" in notes[1]
    assert quiet == []


def test_a_young_market_says_there_is_nothing_older(tmp_path, full):
    young = full.iloc[4000:]
    with FakeBybit(young) as fake:
        first = update_cache(client_for(fake), "BTCUSDT", "1h", 365, tmp_path, end=end_of(young))
        assert len(first.candles) == 999
        notes = []
        update_cache(client_for(fake), "BTCUSDT", "1h", 365, tmp_path, end=end_of(young),
                     notice=notes.append)
    assert notes[-1] == "Bybit has no BTCUSDT 1h candles before 2022-06-16 16:00 UTC"


def test_a_damaged_cache_needs_repair(tmp_path, full):
    path = save_candles(full.iloc[:50], tmp_path / "BTCUSDT_linear_1h.csv")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines[1:][::-1]]) + "\n")  # newest first
    with FakeBybit(full) as fake:
        with pytest.raises(store.CandleFileError, match="repair"):
            update_cache(client_for(fake), "BTCUSDT", "1h", 1, tmp_path, end=full["timestamp"].iloc[60])
        notes = []
        fixed = update_cache(client_for(fake), "BTCUSDT", "1h", 1, tmp_path, repair=True,
                             end=full["timestamp"].iloc[60], notice=notes.append)
    assert "49 out of order (sorted)" in notes[0]
    pd.testing.assert_frame_equal(fixed.candles, full.iloc[:61].reset_index(drop=True))


def recent_full() -> pd.DataFrame:
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=4999)).floor("h")
    return synthetic_candles(5000, "1h", seed=22, start=start)


def test_cli_fetch_continues_after_the_server_died(tmp_path):
    candles = recent_full()
    with FakeBybit(candles, now_ms=int(pd.Timestamp.now(tz="UTC").value // 1_000_000)) as fake:
        args = ["fetch", "--days", "200", "--out", str(tmp_path), "--base-url", fake.url,
                "--retry-time", "0.5", "--quiet"]
        fake.die_after_pages = 2
        died = CliRunner().invoke(cli.main, args)
        assert died.exit_code == 2 and died.output.startswith("Error: cannot connect")
        assert len(died.output.strip().splitlines()) == 1
        assert len(load_candles(tmp_path / "BTCUSDT_linear_1h.csv")) == 2 * PAGE
        fake.die_after_pages = None
        again = CliRunner().invoke(cli.main, args)
    assert again.exit_code == 0, again.output
    assert "fetching the older candles" in again.output
    written = load_candles(tmp_path / "BTCUSDT_linear_1h.csv")
    assert store.gap_report(written, "1h").n_missing == 0 and len(written) >= 200 * 24 - 2


def test_cli_fetch_ctrl_c_says_how_to_continue(tmp_path, monkeypatch):
    real_request = bybit.BybitClient.request
    calls = []

    def request(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_request(self, *args, **kwargs)

    monkeypatch.setattr(bybit.BybitClient, "request", request)
    with FakeBybit(recent_full()) as fake:
        result = CliRunner().invoke(cli.main, ["fetch", "--days", "200", "--out", str(tmp_path),
                                               "--base-url", fake.url, "--quiet"])
    assert result.exit_code == 130
    assert "rerun the same command to continue" in result.output
    assert len(load_candles(tmp_path / "BTCUSDT_linear_1h.csv")) == 2 * PAGE
