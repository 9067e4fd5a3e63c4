"""Spot or perpetual, never mixed: category-named caches, the funding history client against the
loopback server (paging, validation, retries), the incremental funding cache, where a data
source's funding comes from, and the content hash a resumed run is checked against."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from bybit_server import FakeBybit
from click.testing import CliRunner

import cli
from numpyconvnext.data.bybit import BybitClient, BybitParameterError, BybitResponseError
from numpyconvnext.data.cache_names import CacheName, cache_file, parse_cache_name
from numpyconvnext.data.candles import candles_sha256
from numpyconvnext.data.funding import funding_path, load_funding, update_funding_cache
from numpyconvnext.data.source import funding_for_source, resolve_candles
from numpyconvnext.data.store import (
    cache_path,
    find_cache,
    save_candles,
    update_cache,
)
from numpyconvnext.data.synthetic import synthetic_candles


@pytest.fixture
def market():
    now = pd.Timestamp.now(tz="UTC")
    candles = synthetic_candles(2400, "1h", seed=3, start=now.floor("h") - pd.Timedelta(hours=2399))
    with FakeBybit(candles, now_ms=now.value // 1_000_000) as fake:
        yield fake, candles


def test_funding_history_pages_backwards_by_end_time(market):
    fake, candles = market
    client = BybitClient(fake.url, sleep=lambda s: None)
    start = candles["timestamp"].iloc[0]
    funding = client.get_funding_history("btcusdt", start, None)
    expected = fake.funding[(fake.funding["timestamp"] >= start)
                           & (fake.funding["timestamp"] <= pd.Timestamp(fake.now_ms, unit="ms", tz="UTC"))]
    assert len(funding) == len(expected) > 200  # 100 days of 8 h settlements: two pages
    np.testing.assert_array_equal(funding["rate"].to_numpy(), expected["rate"].to_numpy())
    pages = [r for r in fake.requests if r["path"] == "/v5/market/funding/history"]
    assert len(pages) == 2
    assert all(int(p["params"]["limit"]) == 200 and p["params"]["category"] == "linear" for p in pages)
    assert int(pages[1]["params"]["endTime"]) < int(pages[0]["params"]["endTime"])  # backwards
    assert funding["timestamp"].is_monotonic_increasing


def test_funding_history_retries_and_validates(market):
    fake, candles = market
    waits = []
    client = BybitClient(fake.url, sleep=waits.append, seed=0)
    fake.fail("http_502")
    fake.fail("rate_limit")
    funding = client.get_funding_history("BTCUSDT", candles["timestamp"].iloc[-100], None)
    assert len(funding) > 0 and len(waits) == 2  # the same retries as candles
    with pytest.raises(BybitParameterError, match="Symbol Invalid"):
        client.get_funding_history("NOPEUSDT", None, None)
    with pytest.raises(ValueError, match="no funding"):
        client.get_funding_history("BTCUSDT", None, None, category="spot")
    fake.funding = fake.funding.assign(rate=fake.funding["rate"].where(
        fake.funding.index != len(fake.funding) - 5, 0.5))  # 50 % a settlement: not a rate
    with pytest.raises(BybitResponseError, match="fundingRate"):
        client.get_funding_history("BTCUSDT", candles["timestamp"].iloc[-200], None)


def test_funding_cache_is_incremental(market, tmp_path):
    fake, candles = market
    client = BybitClient(fake.url, sleep=lambda s: None)
    middle = candles["timestamp"].iloc[1200]
    path, first, n_new = update_funding_cache(client, "BTCUSDT", candles["timestamp"].iloc[0],
                                              tmp_path, end=middle)
    assert path.name == "BTCUSDT_linear_funding.csv" and n_new == len(first) > 0
    before = len(fake.requests)
    _, second, n_more = update_funding_cache(client, "BTCUSDT", candles["timestamp"].iloc[0], tmp_path)
    asked = fake.requests[before]["params"]
    assert int(asked["startTime"]) == first["timestamp"].iloc[-1].value // 1_000_000 + 1
    assert n_more == len(second) - len(first) > 0
    pd.testing.assert_frame_equal(load_funding(path), second)


def test_spot_and_linear_caches_never_share_a_file(market, tmp_path):
    fake, _ = market
    spot = update_cache(BybitClient(fake.url, "spot"), "BTCUSDT", "1h", 5, tmp_path)
    linear = update_cache(BybitClient(fake.url, "linear"), "BTCUSDT", "1h", 5, tmp_path)
    assert spot.path.name == "BTCUSDT_spot_1h.csv" and linear.path.name == "BTCUSDT_linear_1h.csv"
    assert spot.path != linear.path and spot.path.exists() and linear.path.exists()
    assert parse_cache_name(spot.path).category == "spot"
    assert parse_cache_name(linear.path).category == "linear"
    assert [r["params"]["category"] for r in fake.requests if r["path"] == "/v5/market/kline"] == \
        ["spot", "linear"]
    result = CliRunner().invoke(cli.main, ["fetch", "--category", "spot", "--days", "3", "--out",
                                           str(tmp_path / "cli"), "--base-url", fake.url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["BTCUSDT_spot_1h.csv"]  # no funding
    bad = CliRunner().invoke(cli.main, ["fetch", "--category", "spot", "--funding", "--out",
                                        str(tmp_path), "--base-url", fake.url])
    assert bad.exit_code == 2 and "spot has no funding" in bad.output


def test_old_style_cache_is_read_as_linear_with_a_notice(tmp_path):
    candles = synthetic_candles(300, "1h", seed=1)
    old = save_candles(candles, tmp_path / "BTCUSDT_1h.csv")
    notices = []
    assert find_cache(tmp_path, "BTCUSDT", "1h", "linear", notices.append) == old
    assert "old-style cache name" in notices[0] and "BTCUSDT_linear_1h.csv" in notices[0]
    assert find_cache(tmp_path, "BTCUSDT", "1h", "spot", notices.append) is None  # never spot
    frame, description = resolve_candles("auto", symbol="BTCUSDT", cache_dir=tmp_path,  # offline
                                         notice=notices.append, retry_time_s=0.0)
    assert description["category"] == "linear" and len(frame) == 300
    assert cache_path(tmp_path, "BTCUSDT", "1h", category="spot").name == "BTCUSDT_spot_1h.csv"


def test_a_file_named_for_another_category_is_refused(tmp_path):
    path = save_candles(synthetic_candles(300, "1h", seed=1), tmp_path / "ETHUSDT_spot_1h.csv")
    with pytest.raises(ValueError, match="holds spot candles, not linear"):
        resolve_candles(path=path, category="linear", notice=lambda m: None)
    _, description = resolve_candles(path=path, notice=lambda m: None)
    assert description["category"] == "spot"


def test_where_funding_comes_from(tmp_path):
    candles = synthetic_candles(500, "1h", seed=2)
    plain = save_candles(candles, tmp_path / "mine.csv")
    none, note = funding_for_source({"kind": "file", "path": str(plain)}, candles)
    assert none is None and "NOT charged" in note and "--funding-rate" in note
    assumed, note = funding_for_source({"kind": "file", "path": str(plain)}, candles, 0.0001)
    assert (assumed["rate"] == 0.0001).all() and "ASSUMED" in note
    assert set(assumed["timestamp"].dt.hour) == {0, 8, 16}
    spot, note = funding_for_source({"kind": "file", "path": str(plain), "category": "spot"},
                                    candles, 0.0001)
    assert spot is None and "spot" in note
    _, synthetic = resolve_candles("synthetic", days=30, notice=lambda m: None)
    series, note = funding_for_source(synthetic, candles)
    assert len(series) > 0 and "synthetic" in note
    beside = save_candles(candles, tmp_path / "BTCUSDT_linear_1h.csv")
    (tmp_path / "BTCUSDT_linear_funding.csv").write_text(
        "timestamp,rate\n2020-01-01T08:00:00Z,0.0002\n2020-01-01T16:00:00Z,-0.0001\n")
    found, note = funding_for_source({"kind": "file", "path": str(beside)}, candles, 0.0001)
    assert list(found["rate"]) == [0.0002, -0.0001] and "BTCUSDT_linear_funding.csv" in note


def test_content_hash_sees_any_changed_price_or_time():
    candles = synthetic_candles(200, "1h", seed=4)
    digest = candles_sha256(candles)
    assert digest == candles_sha256(candles.copy())
    moved = candles.copy()
    moved.loc[150, "close"] *= 1.0000001
    assert candles_sha256(moved) != digest
    shifted = candles.copy()
    shifted["timestamp"] = shifted["timestamp"] + pd.Timedelta(hours=1)
    assert candles_sha256(shifted) != digest


def test_one_naming_scheme_built_and_read_back(tmp_path):
    candles = cache_file(tmp_path, "btcusdt", "60", "linear")
    assert candles.name == "BTCUSDT_linear_1h.csv"
    assert parse_cache_name(candles) == CacheName("BTCUSDT", "linear", "1h")
    funding = funding_path(candles)
    assert funding == cache_file(tmp_path, "BTCUSDT", "funding", "linear")
    assert funding.name == "BTCUSDT_linear_funding.csv" and parse_cache_name(funding).funding
    dated = cache_file(tmp_path, "BTC-27JUN25", "1d", "inverse", "json")  # a dated future
    assert parse_cache_name(dated).symbol == "BTC-27JUN25" and funding_path(dated) is not None
    assert parse_cache_name(tmp_path / "btcusdt_1h.json").symbol == "BTCUSDT"  # the old name
    assert funding_path(cache_file(tmp_path, "BTCUSDT", "1h", "spot")) is None
    # a user's own file names say what they say, and nothing more
    assert parse_cache_name(tmp_path / "h_1h.csv").interval == "1h"
    assert parse_cache_name(tmp_path / "my_candles.csv") == parse_cache_name(tmp_path / "x.csv")
    assert parse_cache_name(tmp_path / "my_own_1h.csv").symbol is None
    assert funding_path(tmp_path / "my_candles.csv") is None
    with pytest.raises(ValueError, match="bad symbol"):
        cache_file(tmp_path, "../x", "1h", "linear")
    with pytest.raises(ValueError, match="unknown category"):
        cache_file(tmp_path, "BTCUSDT", "1h", "futures")
