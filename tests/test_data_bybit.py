"""BybitClient against the fake Bybit server: paging, validation, retries, signing."""

from __future__ import annotations

import hashlib
import hmac
import math
import time

import numpy as np
import pandas as pd
import pytest
from bybit_server import FakeBybit

from numpyconvnext.data.bybit import (
    BybitClient,
    BybitCredentials,
    BybitError,
    BybitParameterError,
    BybitResponseError,
    BybitUnreachableError,
    resolve_base_url,
    sign_request,
)
from numpyconvnext.data.intervals import (
    interval_to_timedelta,
    normalize_interval,
    on_grid,
    periods_per_year,
    to_bybit_interval,
)
from numpyconvnext.data.synthetic import synthetic_candles

VALUES = ["open", "high", "low", "close", "volume", "turnover"]


class FakeClock:
    """Injected sleep + clock: sleeping advances time instantly and is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def make_client(fake: FakeBybit, clock: FakeClock | None = None, **kwargs) -> BybitClient:
    clock = clock or FakeClock()
    kwargs.setdefault("timeout_s", 2.0)
    return BybitClient(fake.url, sleep=clock.sleep, clock=clock, seed=0, credentials=None,
                       **kwargs)


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return synthetic_candles(3000, "1h", seed=11, start="2023-01-01")


@pytest.fixture
def fake(candles):
    with FakeBybit(candles) as server:
        yield server


def tail_range(candles: pd.DataFrame, n: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """A one-page range: the last n candles (including the forming one)."""
    return candles["timestamp"].iloc[-n], candles["timestamp"].iloc[-1]


def test_multi_page_range_dedupes_borders_and_drops_forming_candle(fake, candles):
    client = make_client(fake)
    got = client.get_klines("BTCUSDT", "1h", candles["timestamp"].iloc[0],
                            candles["timestamp"].iloc[-1])
    expected = candles.iloc[:-1].reset_index(drop=True)  # the last candle is still forming
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # pages hold 1000, then 999 new + 1 duplicate each: 1 + ceil(2000 / 999) requests
    assert len(fake.requests) == 1 + math.ceil(2000 / 999)
    served = sum(r["rows"] for r in fake.requests)
    assert served - len(got) == len(fake.requests)  # 3 border duplicates + the forming candle
    first = fake.requests[0]["params"]
    assert (first["category"], first["interval"], first["limit"]) == ("linear", "60", "1000")
    assert got["timestamp"].is_monotonic_increasing and got["timestamp"].is_unique


def test_closed_last_candle_is_kept_and_range_is_inclusive(fake, candles):
    step_ms = 3_600_000
    fake.now_ms = int(candles["timestamp"].iloc[-1].value // 1_000_000) + step_ms
    client = make_client(fake)
    start, end = candles["timestamp"].iloc[-40], candles["timestamp"].iloc[-1]
    got = client.get_klines("BTCUSDT", "60", start, end)
    assert len(got) == 40
    assert got["timestamp"].iloc[0] == start and got["timestamp"].iloc[-1] == end


def test_category_spot_and_bybit_interval_codes(candles):
    with FakeBybit(candles) as fake:
        client = BybitClient(fake.url, category="spot", sleep=lambda s: None)
        client.get_klines("btcusdt", "60", *tail_range(candles, 10))
        assert fake.requests[0]["params"]["category"] == "spot"
        assert fake.requests[0]["params"]["symbol"] == "BTCUSDT"
    with pytest.raises(ValueError, match="category"):
        BybitClient("http://127.0.0.1:9", category="options")


@pytest.mark.parametrize("kind", ["rate_limit", "http_429"])
def test_rate_limit_waits_until_reset_header(fake, candles, kind):
    fake.reset_in_s = 5.0  # far above the 0.5 s backoff cap, so only the header explains it
    fake.fail(kind)
    clock = FakeClock()
    got = make_client(fake, clock).get_klines("BTCUSDT", "1h", *tail_range(candles, 100))
    assert len(got) == 99
    assert len(fake.requests) == 2
    assert len(clock.sleeps) == 1 and 4.0 < clock.sleeps[0] <= 5.01


def test_http_502_then_success_uses_jittered_backoff(fake, candles):
    fake.fail("http_502")
    clock = FakeClock()
    got = make_client(fake, clock, backoff_base_s=0.5).get_klines(
        "BTCUSDT", "1h", *tail_range(candles, 100))
    assert len(got) == 99 and len(fake.requests) == 2
    assert len(clock.sleeps) == 1 and 0.0 <= clock.sleeps[0] <= 0.5


def test_backoff_grows_exponentially_within_caps(fake, candles):
    fake.fail("http_502", times=5)
    clock = FakeClock()
    make_client(fake, clock, backoff_base_s=1.0, backoff_max_s=4.0).get_klines(
        "BTCUSDT", "1h", *tail_range(candles, 10))
    caps = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(clock.sleeps) == 5
    assert all(0.0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))


def test_http_403_backs_off_for_long(fake, candles):
    fake.fail("http_403")
    clock = FakeClock()
    got = make_client(fake, clock, forbidden_wait_s=60.0, max_retry_time_s=300.0).get_klines(
        "BTCUSDT", "1h", *tail_range(candles, 50))
    assert len(got) == 49 and len(fake.requests) == 2
    assert clock.sleeps[0] >= 60.0


def test_http_403_beyond_budget_fails_without_waiting(fake, candles):
    fake.fail("http_403")
    clock = FakeClock()
    with pytest.raises(BybitError, match="403"):
        make_client(fake, clock, forbidden_wait_s=60.0, max_retry_time_s=10.0).get_klines(
            "BTCUSDT", "1h", *tail_range(candles, 50))
    assert len(fake.requests) == 1 and clock.sleeps == []


def test_malformed_json_is_retried(fake, candles):
    fake.fail("bad_json")
    got = make_client(fake).get_klines("BTCUSDT", "1h", *tail_range(candles, 30))
    assert len(got) == 29 and len(fake.requests) == 2


def test_persistent_failure_stops_after_max_attempts(fake, candles):
    fake.fail("bad_json", times=50)
    with pytest.raises(BybitError, match="malformed JSON"):
        make_client(fake, max_attempts=4).get_klines("BTCUSDT", "1h", *tail_range(candles, 30))
    assert len(fake.requests) == 4


def test_total_retry_time_is_bounded(fake, candles):
    fake.fail("http_502", times=200)
    clock = FakeClock()
    with pytest.raises(BybitError, match="budget"):
        make_client(fake, clock, max_attempts=1000, backoff_base_s=1.0, backoff_max_s=2.0,
                    max_retry_time_s=7.0).get_klines("BTCUSDT", "1h", *tail_range(candles, 5))
    assert sum(clock.sleeps) <= 7.0
    assert len(fake.requests) == len(clock.sleeps) + 1 > 3


def test_unknown_symbol_raises_parameter_error_without_retry(fake, candles):
    clock = FakeClock()
    with pytest.raises(BybitParameterError, match="Symbol Invalid") as info:
        make_client(fake, clock).get_klines("NOPEUSDT", "1h", *tail_range(candles, 5))
    assert isinstance(info.value, ValueError)
    assert info.value.ret_msg == "params error: Symbol Invalid"
    assert len(fake.requests) == 1 and clock.sleeps == []


def test_unknown_interval_is_rejected_before_any_request(fake):
    with pytest.raises(ValueError, match="unknown interval"):
        make_client(fake).get_klines("BTCUSDT", "7m", 0, 10)
    assert fake.requests == []


def test_timeout_is_retried(candles):
    # the retry's answer must come within timeout_s even on a busy machine: 1 s, not 0.1 s
    with FakeBybit(candles, timeout_sleep_s=2.5) as fake:
        fake.fail("timeout")
        clock = FakeClock()
        client = BybitClient(fake.url, timeout_s=1.0, sleep=clock.sleep, seed=0)
        got = client.get_klines("BTCUSDT", "1h", *tail_range(candles, 20))
        assert len(got) == 19 and len(fake.requests) == 2 and len(clock.sleeps) == 1


def test_connection_refused_gives_bybit_error():
    clock = FakeClock()
    client = BybitClient("http://127.0.0.1:9", sleep=clock.sleep, clock=clock, max_attempts=3,
                         timeout_s=0.5)
    with pytest.raises(BybitError, match="cannot connect"):
        client.get_klines("BTCUSDT", "1h", 0, 3_600_000)
    assert len(clock.sleeps) == 2


def test_invalid_candle_names_the_row_and_is_not_retried(fake, candles):
    fake.fail("bad_candle")
    with pytest.raises(BybitResponseError, match=r"row \d+ \(20\d\d-.*high .* < max\(open, close\)"):
        make_client(fake).get_klines("BTCUSDT", "1h", *tail_range(candles, 30))
    assert len(fake.requests) == 1


def test_off_grid_timestamps_are_rejected(candles):
    shifted = candles.copy()
    shifted["timestamp"] = shifted["timestamp"] + pd.Timedelta(minutes=1)
    with FakeBybit(shifted) as fake:
        with pytest.raises(BybitResponseError, match="grid"):
            make_client(fake).get_klines("BTCUSDT", "1h", *tail_range(shifted, 10))


def test_get_latest_klines_returns_last_closed_candles():
    now = pd.Timestamp.now(tz="UTC").floor("h")
    recent = synthetic_candles(400, "1h", seed=3, start=now - pd.Timedelta(hours=399))
    with FakeBybit(recent, now_ms=int(time.time() * 1000)) as fake:
        got = make_client(fake).get_latest_klines("BTCUSDT", "1h", 50)
    expected = recent.iloc[-51:-1].reset_index(drop=True)  # the current hour is still forming
    pd.testing.assert_frame_equal(got, expected)


def test_base_url_resolution(monkeypatch):
    monkeypatch.delenv("NUMPYCONVNEXT_BYBIT_URL", raising=False)
    assert resolve_base_url() == "https://api.bybit.com"
    assert resolve_base_url("testnet") == "https://api-testnet.bybit.com"
    monkeypatch.setenv("NUMPYCONVNEXT_BYBIT_URL", "http://localhost:1234/")
    assert BybitClient().base_url == "http://localhost:1234"
    assert BybitClient("http://x.test").base_url == "http://x.test"


def test_signature_matches_independent_hmac():
    secret, key, ts, window = "s3cr3t-XYZ", "my-key", 1700000000000, 5000
    payload = "category=linear&symbol=BTCUSDT"
    expected = hmac.new(
        b"s3cr3t-XYZ", b"1700000000000my-key5000category=linear&symbol=BTCUSDT", hashlib.sha256
    ).hexdigest()
    assert sign_request(secret, key, ts, window, payload) == expected
    assert sign_request(secret, key, ts, window, payload + "&x=1") != expected


def test_keys_come_from_env_and_never_show(monkeypatch, fake):
    monkeypatch.setenv("BYBIT_API_KEY", "KEY123456")
    monkeypatch.setenv("BYBIT_API_SECRET", "SECRET987654")
    creds = BybitCredentials.from_env()
    client = BybitClient(fake.url)
    for text in (repr(creds), str(creds), repr(client)):
        assert "KEY123456" not in text and "SECRET987654" not in text
    client.request("/v5/market/kline", {"category": "linear", "symbol": "BTCUSDT",
                                        "interval": "60", "limit": 5}, signed=True)
    seen = fake.requests[0]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    message = (headers["x-bapi-timestamp"] + "KEY123456" + headers["x-bapi-recv-window"]
               + seen["query"])
    expected = hmac.new(b"SECRET987654", message.encode(), hashlib.sha256).hexdigest()
    assert headers["x-bapi-sign"] == expected and headers["x-bapi-api-key"] == "KEY123456"
    monkeypatch.delenv("BYBIT_API_SECRET")
    assert BybitCredentials.from_env() is None


@pytest.mark.parametrize(
    ("given", "canonical", "code", "minutes"),
    [("1m", "1m", "1", 1), ("60", "1h", "60", 60), ("4H", "4h", "240", 240),
     ("D", "1d", "D", 1440), ("1w", "1w", "W", 10080), ("720", "12h", "720", 720)],
)
def test_interval_forms(given, canonical, code, minutes):
    assert normalize_interval(given) == canonical
    assert to_bybit_interval(given) == code
    assert interval_to_timedelta(given) == pd.Timedelta(minutes=minutes)
    assert periods_per_year(given) == pytest.approx(365 * 24 * 60 / minutes)


def test_month_and_bad_intervals():
    assert normalize_interval("M") == "1M" and normalize_interval("1M") == "1M"
    assert periods_per_year("1M") == 12
    for bad in ("7m", "1y", "", "h", "61"):
        with pytest.raises(ValueError):
            normalize_interval(bad)


def test_grid_checks():
    monday = pd.Timestamp("2024-01-01", tz="UTC")  # a Monday
    ms = np.array([monday.value, (monday + pd.Timedelta(days=1)).value]) // 1_000_000
    assert on_grid(ms, "1w").tolist() == [True, False]
    assert on_grid(ms, "1d").tolist() == [True, True]
    assert on_grid(ms + 60_000, "1h").tolist() == [False, False]
    first = pd.Timestamp("2024-03-01", tz="UTC").value // 1_000_000
    assert on_grid(np.array([first, first + 86_400_000]), "M").tolist() == [True, False]


# --- retries done right: server clock, Retry-After, 403, transport errors, fresh signatures ---

KLINE = {"category": "linear", "symbol": "BTCUSDT", "interval": "60", "limit": 5}


class ServerClock(FakeClock):
    """A FakeClock whose sleeps also advance the fake server's clock (both clocks tick)."""

    def __init__(self, fake: FakeBybit) -> None:
        super().__init__()
        self.fake = fake

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.fake.now_ms += int(round(seconds * 1000))


def test_reset_header_does_not_replace_backoff_on_other_answers(fake):
    fake.now_ms = int(time.time() * 1000)  # no skew: today's local-clock reading would be exact
    fake.reset_in_s = 50.0  # Bybit sends the header on every answer, 502s included
    fake.fail("http_502", times=2)
    clock = FakeClock()
    make_client(fake, clock, backoff_base_s=0.5).request("/v5/market/kline", KLINE)
    assert len(fake.requests) == 3 and len(clock.sleeps) == 2
    assert clock.sleeps[0] <= 0.5 and clock.sleeps[1] <= 1.0  # backoff, not the 50 s reset


@pytest.mark.parametrize("kind", ["rate_limit", "http_429"])
@pytest.mark.parametrize("skew_s", [-300.0, 300.0])
def test_rate_limit_reset_is_measured_on_the_server_clock(fake, kind, skew_s):
    # the server's clock is 5 minutes behind (or ahead of) ours; each answer says "reset in 3 s"
    fake.now_ms = int((time.time() + skew_s) * 1000)
    fake.reset_in_s = 3.0
    fake.fail(kind, times=3)
    clock = FakeClock()
    make_client(fake, clock, backoff_base_s=0.1, backoff_max_s=0.2).request("/v5/market/kline",
                                                                            KLINE)
    assert len(fake.requests) == 4
    # 10006 carries `time` (ms); a bare 429 only the Date header (whole seconds)
    high = 3.0 if kind == "rate_limit" else 4.0
    assert len(clock.sleeps) == 3 and all(3.0 <= s <= high + 0.01 for s in clock.sleeps)


def test_rate_limit_reset_beyond_the_budget_gives_up_at_once(fake):
    fake.reset_in_s = 90.0
    fake.fail("rate_limit")
    clock = FakeClock()
    with pytest.raises(BybitError, match="10006.*90.0 s would exceed the 20 s retry budget"):
        make_client(fake, clock, max_retry_time_s=20.0).request("/v5/market/kline", KLINE)
    assert clock.sleeps == [] and len(fake.requests) == 1


@pytest.mark.parametrize("kind", ["retry_after", "retry_after_date"])
@pytest.mark.parametrize("skew_s", [-300.0, 0.0, 300.0])
def test_retry_after_is_honoured(fake, kind, skew_s):
    fake.now_ms = int((time.time() + skew_s) * 1000) // 1000 * 1000  # whole seconds, as Date
    fake.retry_after_s = 7.0
    fake.fail(kind)
    clock = FakeClock()
    make_client(fake, clock).request("/v5/market/kline", KLINE)
    assert len(fake.requests) == 2 and clock.sleeps == [pytest.approx(7.0, abs=0.01)]


def test_http_403_waits_minutes_doubling_and_says_why(fake):
    fake.fail("http_403", times=2)
    clock = FakeClock()
    make_client(fake, clock, max_retry_time_s=1000.0).request("/v5/market/kline", KLINE)
    assert len(fake.requests) == 3
    assert clock.sleeps[0] >= 120.0 and clock.sleeps[1] >= 240.0  # the defaults: minutes
    fake.fail("http_403")
    with pytest.raises(BybitError, match="403.*IP rate-limit ban or region block") as info:
        make_client(fake, FakeClock(), max_retry_time_s=60.0).request("/v5/market/kline", KLINE)
    assert info.value.forbidden and not isinstance(info.value, BybitUnreachableError)


@pytest.mark.parametrize("kind", ["chunked", "bad_gzip", "truncated", "drop"])
def test_every_transport_failure_is_retried(fake, candles, kind):
    fake.fail(kind, times=2)
    clock = FakeClock()
    got = make_client(fake, clock).get_klines("BTCUSDT", "1h", *tail_range(candles, 30))
    assert len(got) == 29 and len(fake.requests) == 3 and len(clock.sleeps) == 2


@pytest.mark.parametrize("kind", ["chunked", "drop", "timeout"])
def test_a_network_that_keeps_failing_is_unreachable(candles, kind):
    with FakeBybit(candles, timeout_sleep_s=0.3) as fake:
        fake.fail(kind, times=10)
        with pytest.raises(BybitUnreachableError):
            make_client(fake, max_attempts=3, timeout_s=0.1).request("/v5/market/kline", KLINE)
        assert len(fake.requests) == 3


def test_answers_that_keep_failing_are_not_unreachable(fake):
    fake.fail("http_502", times=10)
    with pytest.raises(BybitError, match="HTTP 502") as info:
        make_client(fake, max_attempts=3).request("/v5/market/kline", KLINE)
    assert not isinstance(info.value, BybitUnreachableError)
    with pytest.raises(BybitUnreachableError, match="cannot connect"):
        BybitClient("http://127.0.0.1:9", max_attempts=2, sleep=lambda s: None).request("/x", {})


def signed_client(fake: FakeBybit, clock: FakeClock, wall_offset_s: float = 0.0) -> BybitClient:
    fake.verify_signatures = ("KEY123", "SECRET456")
    base_s = fake.now_ms / 1000.0 + wall_offset_s
    return BybitClient(fake.url, sleep=clock.sleep, clock=clock, seed=0, timeout_s=2.0,
                       wall_clock=lambda: base_s + clock.now,
                       credentials=BybitCredentials("KEY123", "SECRET456"))


def test_signed_requests_are_resigned_on_every_attempt(fake):
    fake.reset_in_s = 10.0  # the wait alone outlasts the 5 s receive window
    fake.fail("rate_limit")
    clock = ServerClock(fake)
    signed_client(fake, clock).request("/v5/market/kline", KLINE, signed=True)
    stamps = [int(r["headers"]["X-BAPI-TIMESTAMP"]) for r in fake.requests]
    signs = {r["headers"]["X-BAPI-SIGN"] for r in fake.requests}
    assert len(fake.requests) == 2 and stamps[1] - stamps[0] >= 10_000 and len(signs) == 2


@pytest.mark.parametrize("wall_offset_s", [-30.0, 30.0])
def test_signed_timestamp_is_resynced_to_the_server_clock(fake, wall_offset_s):
    clock = ServerClock(fake)
    client = signed_client(fake, clock, wall_offset_s)
    client.request("/v5/market/kline", KLINE, signed=True)  # 10002 once, then in the window
    assert len(fake.requests) == 2
    assert client.server_offset_ms == pytest.approx(-wall_offset_s * 1000, abs=2)
    client.request("/v5/market/kline", KLINE, signed=True)  # already in sync: one request
    assert len(fake.requests) == 3
