"""Candle files (CSV/JSON round trips, atomic writes, errors naming the line, gaps), the
incremental cache and the ``fetch`` command against the fake Bybit server."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bybit_server import FakeBybit
from click.testing import CliRunner

from numpyconvnext.data import store
from numpyconvnext.data.bybit import BybitClient
from numpyconvnext.data.funding import load_funding
from numpyconvnext.data.store import (
    CandleFileError,
    CandleGapWarning,
    gap_report,
    load_candles,
    save_candles,
    update_cache,
)
from numpyconvnext.data.synthetic import synthetic_candles

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import cli  # noqa: E402


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return synthetic_candles(300, "1h", seed=5, start="2021-06-01")


@pytest.mark.parametrize("ext", ["csv", "json"])
def test_round_trip_is_exact(tmp_path, candles, ext):
    path = save_candles(candles, tmp_path / f"BTCUSDT_1h.{ext}")
    loaded = load_candles(path)
    pd.testing.assert_frame_equal(loaded, candles, check_exact=True)


@pytest.mark.parametrize("ext", ["csv", "json"])
def test_unknown_turnover_round_trips_as_nan(tmp_path, candles, ext):
    frame = candles.assign(turnover=np.nan)
    loaded = load_candles(save_candles(frame, tmp_path / f"X_1h.{ext}"))
    assert loaded["turnover"].isna().all()
    pd.testing.assert_frame_equal(loaded, frame, check_exact=True)


def test_json_layout_is_list_of_objects_with_ms(tmp_path, candles):
    path = save_candles(candles, tmp_path / "btcusdt_1h.json")
    records = json.loads(path.read_text())
    assert isinstance(records, list) and len(records) == len(candles)
    assert records[0]["timestamp"] == candles["timestamp"].iloc[0].value // 1_000_000
    assert set(records[0]) == {"timestamp", "open", "high", "low", "close", "volume", "turnover"}


def test_csv_accepts_millisecond_and_iso_timestamps(tmp_path, candles):
    frame = candles.iloc[:5]
    ms = frame["timestamp"].astype("int64") // 1_000_000
    text = "timestamp,open,high,low,close,volume\n" + "".join(
        f"{t},{o!r},{h!r},{lo!r},{c!r},{v!r}\n"
        for t, o, h, lo, c, v in zip(ms, frame.open, frame.high, frame.low, frame.close,
                                     frame.volume, strict=True))
    path = tmp_path / "a_1h.csv"
    path.write_text(text)
    loaded = load_candles(path)
    pd.testing.assert_frame_equal(loaded.drop(columns="turnover"),
                                  frame.drop(columns="turnover").reset_index(drop=True))
    iso = tmp_path / "b_1h.csv"
    iso.write_text(text.replace(str(ms.iloc[0]), "2021-06-01T00:00:00Z"))
    assert load_candles(iso)["timestamp"].iloc[0] == pd.Timestamp("2021-06-01", tz="UTC")


def _write_csv(tmp_path: Path, rows: list[str], header="timestamp,open,high,low,close,volume"):
    path = tmp_path / "bad_1h.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


GOOD = ["2021-01-01T00:00:00Z,10,12,9,11,5", "2021-01-01T01:00:00Z,11,13,10,12,6",
        "2021-01-01T02:00:00Z,12,13,11,12.5,7"]


@pytest.mark.parametrize(
    ("line", "bad_row", "pattern"),
    [(3, "2021-01-01T01:00:00Z,11,13,10,abc,6", "close 'abc' is not a number"),
     (4, "2021-01-01T02:00:00Z,12,11,11,12.5,7", r"high 11.0 < max\(open, close\)"),
     (2, "yesterday,10,12,9,11,5", "timestamp 'yesterday'"),
     (4, "2021-01-01T02:00:00Z,12,13,11,12.5,-1", "volume -1.0 < 0"),
     (4, "2021-01-01T01:00:00Z,12,13,11,12.5,7", "duplicate timestamp")],
)
def test_malformed_csv_names_file_and_line(tmp_path, line, bad_row, pattern):
    rows = list(GOOD)
    rows[line - 2] = bad_row
    path = _write_csv(tmp_path, rows)
    with pytest.raises(CandleFileError, match=pattern) as info:
        load_candles(path)
    assert f"{path}:{line}:" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_csv_missing_column_names_header_line(tmp_path):
    path = _write_csv(tmp_path, ["2021-01-01T00:00:00Z,10,12,9,11"], "timestamp,open,high,low,close")
    with pytest.raises(CandleFileError, match=r":1: header lacks column\(s\) volume"):
        load_candles(path)


def test_malformed_json_names_the_line(tmp_path, candles):
    path = save_candles(candles.iloc[:10], tmp_path / "c_1h.json")
    lines = path.read_text().splitlines()
    lines[6] = lines[6].replace('"close": ', '"close": "x')  # record 5 on line 7: bad JSON now
    path.write_text("\n".join(lines))
    with pytest.raises(CandleFileError, match=rf"{path}:7: malformed JSON"):
        load_candles(path)


def test_bad_json_record_names_its_line(tmp_path):
    path = tmp_path / "d_1h.json"
    path.write_text('[\n  {"timestamp": 1609459200000,\n   "open": 1, "high": 2, "low": 0.5,\n'
                    '   "close": 1.5, "volume": 3},\n  {"timestamp": 1609462800000,\n'
                    '   "open": 1, "high": 2, "low": 0.5, "close": null, "volume": 3}\n]\n')
    with pytest.raises(CandleFileError, match=rf"{path}:5: candle 1: close None"):
        load_candles(path)


def test_unknown_extension_is_rejected(tmp_path, candles):
    with pytest.raises(CandleFileError, match="extension"):
        save_candles(candles, tmp_path / "x_1h.parquet")


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_atomic_write_leaves_old_file_on_failure(tmp_path, candles, monkeypatch, failing):
    path = save_candles(candles.iloc[:20], tmp_path / "e_1h.csv")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        save_candles(candles, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e_1h.csv"]


def test_gap_report_and_warning(tmp_path, candles):
    holey = candles.drop(index=[10, 11, 12, 50]).reset_index(drop=True)
    report = gap_report(holey, "1h")
    assert report.n_missing == 4 and len(report.gaps) == 2
    assert report.gaps[0] == (candles["timestamp"].iloc[9], 3)
    path = save_candles(holey, tmp_path / "f_1h.csv")
    with pytest.warns(CandleGapWarning, match="4 missing bars in 2 gaps"):
        load_candles(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_candles(save_candles(candles, tmp_path / "g_1h.csv"))  # no gaps: no warning


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_update_cache_is_incremental(tmp_path, fmt):
    full = synthetic_candles(1500, "1h", seed=9, start="2022-01-01")
    first_end = full["timestamp"].iloc[799]
    with FakeBybit(full) as fake:
        client = BybitClient(fake.url, sleep=lambda s: None)
        one = update_cache(client, "BTCUSDT", "60", 10, tmp_path, fmt, end=first_end)
        assert one.path == tmp_path / f"BTCUSDT_linear_1h.{fmt}"
        expected = full.iloc[560:800].reset_index(drop=True)
        pd.testing.assert_frame_equal(load_candles(one.path), expected)
        n_before = len(fake.requests)
        two = update_cache(client, "BTCUSDT", "1h", 10, tmp_path, fmt)
        asked = fake.requests[n_before]["params"]
        assert int(asked["start"]) == first_end.value // 1_000_000 + 1  # only after the last one
        assert two.n_new == 1500 - 800 - 1  # up to the last closed candle
        pd.testing.assert_frame_equal(load_candles(two.path),
                                      full.iloc[560:1499].reset_index(drop=True))


@pytest.fixture
def recent_fake():
    now = pd.Timestamp.now(tz="UTC")
    candles = synthetic_candles(1000, "1h", seed=2, start=now.floor("h") - pd.Timedelta(hours=999))
    with FakeBybit(candles, now_ms=now.value // 1_000_000) as fake:
        yield fake, candles


def test_cli_fetch_writes_file_then_updates(tmp_path, recent_fake):
    fake, candles = recent_fake
    args = ["fetch", "--symbol", "BTCUSDT", "--interval", "1h", "--days", "20", "--out",
            str(tmp_path), "--base-url", fake.url]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    written = load_candles(tmp_path / "BTCUSDT_linear_1h.csv")
    closed = candles.iloc[:-1].reset_index(drop=True)
    assert 479 <= len(written) <= 481
    pd.testing.assert_frame_equal(written, closed.iloc[-len(written):].reset_index(drop=True))
    funding = load_funding(tmp_path / "BTCUSDT_linear_funding.csv")  # on by default for linear
    assert funding["timestamp"].iloc[0] >= written["timestamp"].iloc[0]
    assert len(funding) in (59, 60, 61)  # 20 days of 8 h settlements
    n_before = len(fake.requests)
    again = CliRunner().invoke(cli.main, args + ["--format", "csv"])
    assert again.exit_code == 0 and "0 new" in again.output
    assert "funding settlements, 0 new" in again.output
    assert len(fake.requests) == n_before + 2  # one page of candles, one of funding


def test_cli_fetch_json(tmp_path, recent_fake):
    fake, _ = recent_fake
    result = CliRunner().invoke(cli.main, ["fetch", "--days", "2", "--out", str(tmp_path),
                                           "--base-url", fake.url, "--format", "json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(load_candles(tmp_path / "BTCUSDT_linear_1h.json")) in (47, 48, 49)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--symbol", "NOPEUSDT"], "Symbol Invalid"),
     (["--interval", "7m"], "unknown interval"),
     (["--base-url", "http://127.0.0.1:9", "--retry-time", "0.2"], "cannot connect")],
)
def test_cli_fetch_errors_are_one_line(tmp_path, recent_fake, extra, message):
    fake, _ = recent_fake
    args = ["fetch", "--out", str(tmp_path), "--base-url", fake.url, *extra]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("Error:")
    assert "Traceback" not in result.output
    assert not (tmp_path / "BTCUSDT_linear_1h.csv").exists()
