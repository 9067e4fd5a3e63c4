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
    # no candle can have closed since: no candle request (one if the hour turned meanwhile),
    # and no funding request unless a settlement time (every 8 h) passed meanwhile
    fetched_at = pd.Timestamp(fake.now_ms, unit="ms", tz="UTC")
    now = pd.Timestamp.now(tz="UTC")
    hour_turned = now.floor("h") > fetched_at.floor("h")
    settled = now.floor("8h") > fetched_at.floor("8h")
    assert len(fake.requests) == n_before + hour_turned + settled


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


# --- strict files: epoch units, field counts, ranges, grid --------------------------------

def _epoch_csv(tmp_path: Path, frame: pd.DataFrame, scale: int, name: str = "u_1h.csv") -> Path:
    ms = (frame["timestamp"].astype("int64") // 1_000_000).to_numpy()
    rows = [f"{int(t) * scale // 1000},{o!r},{h!r},{lo!r},{c!r},{v!r}"
            for t, o, h, lo, c, v in zip(ms, frame.open, frame.high, frame.low, frame.close,
                                         frame.volume, strict=True)]
    return _write_csv(tmp_path, rows).rename(tmp_path / name)


@pytest.mark.parametrize("scale", [1, 1000, 1_000_000, 1_000_000_000], ids=["s", "ms", "us", "ns"])
def test_epoch_unit_is_told_by_magnitude(tmp_path, candles, scale):
    frame = candles.iloc[:6]
    loaded = load_candles(_epoch_csv(tmp_path, frame, scale))
    pd.testing.assert_frame_equal(loaded.drop(columns="turnover"),
                                  frame.drop(columns="turnover").reset_index(drop=True))


def test_json_seconds_are_seconds(tmp_path, candles):
    path = save_candles(candles.iloc[:4], tmp_path / "s_1h.json")
    records = json.loads(path.read_text())
    for record in records:
        record["timestamp"] //= 1000
    path.write_text(json.dumps(records))
    assert load_candles(path)["timestamp"].iloc[0] == candles["timestamp"].iloc[0]


@pytest.mark.parametrize(
    ("stamp", "pattern"),
    [("12345", "'12345' is out of range: not a time between 1980 and 2100"),
     ("50000000000", "out of range"),  # 1971 in ms, 3554 in s: neither is plausible
     ("99999999999999999999", "out of range"),  # 20 digits: beyond int64
     ("-1609459200", "out of range"),
     ("1900-01-01T00:00:00Z", "out of range: not between 1980 and 2100")],
)
def test_impossible_timestamps_are_one_error_line(tmp_path, stamp, pattern):
    rows = list(GOOD)
    rows[1] = stamp + rows[1][rows[1].index(","):]
    path = _write_csv(tmp_path, rows)
    with pytest.raises(CandleFileError, match=pattern) as info:
        load_candles(path)
    assert str(info.value).startswith(f"{path}:3: ") and "\n" not in str(info.value)


def test_one_file_one_epoch_unit(tmp_path):
    path = _write_csv(tmp_path, ["1609459200,10,12,9,11,5", "1609462800000,11,13,10,12,6"])
    with pytest.raises(CandleFileError, match=r":3: .* in milliseconds, line 2 in seconds"):
        load_candles(path)


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [([r + ",1,2" for r in GOOD], r":2: 8 fields, the header has 6"),  # every row: 2 extra
     ([GOOD[0], GOOD[1] + ",7", GOOD[2]], r":3: 7 fields, the header has 6$"),
     ([GOOD[0], GOOD[1], GOOD[2] + ","], r":4: 7 fields, the header has 6 \(a trailing comma\)"),
     ([GOOD[0], GOOD[1].rsplit(",", 1)[0], GOOD[2]], r":3: 5 fields, the header has 6"),
     ([GOOD[0], "", GOOD[1]], r":3: empty line")],
)
def test_field_counts_must_match_the_header(tmp_path, rows, pattern):
    path = _write_csv(tmp_path, rows)
    with pytest.raises(CandleFileError, match=pattern) as info:
        load_candles(path)
    assert str(info.value).startswith(f"{path}:")


def test_trailing_comma_in_the_header_too_is_named(tmp_path):
    path = _write_csv(tmp_path, [r + "," for r in GOOD], "timestamp,open,high,low,close,volume,")
    with pytest.raises(CandleFileError, match=r":1: header column 7 has no name"):
        load_candles(path)


def test_quoted_fields_and_crlf_are_still_fine(tmp_path):
    path = tmp_path / "q_1h.csv"
    path.write_bytes(b'\xef\xbb\xbftimestamp,open,high,low,close,volume\r\n'
                     b'"2021-01-01T00:00:00Z","10","12","9","11","5"\r\n'
                     b'"2021-01-01T01:00:00Z",11,13,10,12,6\r\n\r\n')
    assert len(load_candles(path)) == 2
    path.write_bytes(path.read_bytes().replace(b'"5"', b'"5",""'))
    with pytest.raises(CandleFileError, match=r":2: 7 fields"):
        load_candles(path)


def test_off_grid_rows_and_gaps_warn_with_counts(tmp_path):
    rows = ["2021-01-01T00:00:00Z,10,12,9,11,5", "2021-01-01T01:30:00Z,11,13,10,12,6",
            "2021-01-01T02:00:00Z,12,13,11,12.5,7", "2021-01-01T02:15:00Z,12,13,11,12.5,7",
            "2021-01-01T06:00:00Z,12,13,11,12.5,7"]
    path = _write_csv(tmp_path, rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_candles(path)
    messages = {w.category: str(w.message) for w in caught}
    assert set(messages) == {store.CandleGridWarning, CandleGapWarning}
    assert "2 rows off the 1h grid (first: line 3, 2021-01-01 01:30)" in messages[
        store.CandleGridWarning]
    assert "4 missing bars in 2 gaps" in messages[CandleGapWarning]  # 01:00, 03:00-05:00


# --- repair -------------------------------------------------------------------------------

def test_repair_sorts_deduplicates_and_reports(tmp_path, candles):
    frame = candles.iloc[:8]
    path = save_candles(frame, tmp_path / "r_1h.csv")
    lines = path.read_text().splitlines()
    header, body = lines[0], lines[1:]
    fields = body[5].split(",")
    changed = ",".join([*fields[:5], "999999", *fields[6:]])  # same time, another volume
    messy = [body[3], body[0], body[1], body[1], body[2], body[4], body[5], body[6], changed,
             body[7]]
    path.write_text("\n".join([header, *messy]) + "\n")
    with pytest.raises(CandleFileError, match=r"r_1h.csv:3: out-of-order timestamp .* repair"):
        load_candles(path)
    report = store.repair_candles(path)
    assert (report.rows_read, report.rows_written) == (10, 8)
    # rows earlier than a row above them: 0, 1, 1, 2 and the changed 5
    assert (report.out_of_order, report.duplicates, report.conflicts) == (5, 1, 1)
    repaired = load_candles(path)
    assert repaired["timestamp"].tolist() == frame["timestamp"].tolist()
    assert repaired["volume"].iloc[5] == 999999.0  # the later, changed line wins
    assert report.backup is not None and report.backup.read_text().splitlines()[1:] == messy
    assert "5 out of order (sorted), 1 exact duplicates dropped, 1 conflicting" in report.summary()
    again = store.repair_candles(path)
    assert not again.changed and "unchanged" in again.summary()


def test_cli_repair_reports_and_fixes(tmp_path, candles):
    path = save_candles(candles.iloc[:30], tmp_path / "m_1h.csv")
    header, *body = path.read_text().splitlines()
    path.write_text("\n".join([header, *body[10:], *body[:12]]) + "\n")  # two rows twice
    result = CliRunner().invoke(cli.main, ["repair", str(path)])
    assert result.exit_code == 0, result.output
    assert "32 rows read, 30 written: 12 out of order (sorted), 2 exact duplicates" in result.output
    assert f"the original is kept as {path}.bak" in result.output
    pd.testing.assert_frame_equal(load_candles(path), candles.iloc[:30].reset_index(drop=True))
    again = CliRunner().invoke(cli.main, ["repair", str(path), "--no-backup"])
    assert again.exit_code == 0 and "unchanged" in again.output


def test_cli_repair_refuses_rows_it_cannot_fix(tmp_path):
    path = _write_csv(tmp_path, [GOOD[2], GOOD[0], "2021-01-01T01:00:00Z,11,13,10,x,6"])
    result = CliRunner().invoke(cli.main, ["repair", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {path}:4: close 'x' is not a number"


def test_cli_fetch_repair(tmp_path, recent_fake):
    fake, candles = recent_fake
    args = ["fetch", "--days", "2", "--out", str(tmp_path), "--base-url", fake.url, "--quiet"]
    assert CliRunner().invoke(cli.main, args).exit_code == 0
    path = tmp_path / "BTCUSDT_linear_1h.csv"
    header, *body = path.read_text().splitlines()
    path.write_text("\n".join([header, *body, body[3]]) + "\n")  # a stray copy at the end
    refused = CliRunner().invoke(cli.main, args)
    assert refused.exit_code == 2 and "out-of-order timestamp" in refused.output
    assert "cli.py repair" in refused.output and len(refused.output.strip().splitlines()) == 1
    fixed = CliRunner().invoke(cli.main, [*args, "--repair"])
    assert fixed.exit_code == 0, fixed.output
    assert "1 exact duplicates dropped" in fixed.output
    assert load_candles(path)["timestamp"].is_unique


def test_cli_warnings_are_one_line(tmp_path, candles):
    holey = save_candles(candles.drop(index=[100, 101]).reset_index(drop=True),
                         tmp_path / "h_1h.csv")
    result = CliRunner().invoke(cli.main, ["train", "--data", str(holey), "--bars", "250",
                                           "--window", "32", "--horizon", "4", "--epochs", "1",
                                           "--out", str(tmp_path / "m"), "--quiet"])
    warned = [line for line in result.output.splitlines() if "missing bars" in line]
    assert warned == [f"warning: {holey}: 2 missing bars in 1 gaps: after "
                      f"{candles['timestamp'].iloc[99]:%Y-%m-%d %H:%M} (+2)"]
