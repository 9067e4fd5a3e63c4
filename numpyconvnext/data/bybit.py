"""Bybit v5 public market data client (klines, funding history), with bounded retries and
response validation.

``BybitClient.get_klines`` pages backwards through any range (Bybit returns at most 1000
candles per call, newest first), de-duplicates page borders, drops the still-forming candle and
validates every row. Transient failures (timeouts, connection errors, HTTP 5xx/429/403, retCodes
10000/10006/10016/10018) are retried with exponential backoff and full jitter, honouring
``X-Bapi-Limit-Reset-Timestamp``, within a total time budget. Parameter errors (retCode 10001)
raise ``BybitParameterError`` at once. ``sleep`` and ``clock`` are injectable for tests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import requests

from .candles import describe_violation, make_candles, ohlc_violations
from .intervals import (
    interval_to_ms,
    interval_to_timedelta,
    next_open_ms,
    normalize_interval,
    on_grid,
    to_bybit_interval,
)

__all__ = [
    "BASE_URLS", "BybitClient", "BybitCredentials", "BybitError", "BybitParameterError",
    "BybitResponseError", "interval_to_timedelta", "normalize_interval", "resolve_base_url",
    "sign_request",
]

BASE_URLS = {"mainnet": "https://api.bybit.com", "testnet": "https://api-testnet.bybit.com"}
URL_ENV = "NUMPYCONVNEXT_BYBIT_URL"
KEY_ENV, SECRET_ENV = "BYBIT_API_KEY", "BYBIT_API_SECRET"
CATEGORIES = ("linear", "spot", "inverse")
MAX_LIMIT = 1000
FUNDING_LIMIT = 200  # rows per /v5/market/funding/history page
RETRY_RET_CODES = frozenset({10000, 10006, 10016, 10018})
PARAMETER_RET_CODE = 10001
RETRY_HTTP = frozenset({403, 429})


class BybitError(RuntimeError):
    """Bybit could not be reached or kept failing until the retry budget ran out."""


class BybitParameterError(ValueError):
    """Bybit rejected the parameters (retCode 10001: unknown symbol, interval or range)."""

    def __init__(self, ret_msg: str, params: dict | None = None) -> None:
        super().__init__(f"Bybit rejected the request: {ret_msg}")
        self.ret_msg = ret_msg
        self.params = params or {}


class BybitResponseError(ValueError):
    """A response that parsed but holds impossible data; the message names the bad row."""


class _RetryableError(Exception):
    def __init__(self, reason: str, wait_s: float | None = None, min_wait_s: float = 0.0) -> None:
        super().__init__(reason)
        self.wait_s = wait_s
        self.min_wait_s = min_wait_s


def resolve_base_url(base_url: str | None = None) -> str:
    """Base URL: the argument, else ``$NUMPYCONVNEXT_BYBIT_URL``, else mainnet.

    ``"mainnet"`` and ``"testnet"`` are accepted as names; any other value is used as a URL.
    """
    url = base_url or os.environ.get(URL_ENV) or "mainnet"
    return BASE_URLS.get(url, url).rstrip("/")


def sign_request(secret: str, api_key: str, timestamp_ms: int, recv_window_ms: int,
                 payload: str) -> str:
    """Bybit v5 signature: lower-case hex HMAC-SHA256(secret, ts + key + recv_window + payload).

    ``payload`` is the query string exactly as sent (GET) or the raw JSON body (POST).
    """
    message = f"{timestamp_ms}{api_key}{recv_window_ms}{payload}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class BybitCredentials:
    """API key and secret for private endpoints. Never printed: repr shows only whether set."""

    api_key: str = field(repr=False)
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return "BybitCredentials(api_key=***, secret=***)"

    @classmethod
    def from_env(cls) -> BybitCredentials | None:
        """Read ``$BYBIT_API_KEY`` and ``$BYBIT_API_SECRET``; None when either is missing."""
        key, secret = os.environ.get(KEY_ENV), os.environ.get(SECRET_ENV)
        return cls(key, secret) if key and secret else None

    def headers(self, payload: str, timestamp_ms: int | None = None,
                recv_window_ms: int = 5000) -> dict[str, str]:
        """The four ``X-BAPI-*`` headers of a signed request over ``payload``."""
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        return {
            "X-BAPI-API-KEY": self.api_key,
            "X-BAPI-TIMESTAMP": str(ts),
            "X-BAPI-RECV-WINDOW": str(recv_window_ms),
            "X-BAPI-SIGN": sign_request(self.secret, self.api_key, ts, recv_window_ms, payload),
        }


def _to_ms(when: datetime | pd.Timestamp | str | int | float | None, default_ms: int) -> int:
    if when is None:
        return default_ms
    if isinstance(when, (int, np.integer)) and not isinstance(when, bool):
        return int(when)
    stamp = pd.Timestamp(when)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)


class BybitClient:
    """Bybit v5 REST client over a ``requests.Session``.

    Args:
        base_url: URL, ``"mainnet"``/``"testnet"``, or None for ``$NUMPYCONVNEXT_BYBIT_URL``/mainnet.
        category: ``linear`` (default), ``spot`` or ``inverse``.
        timeout_s: per-request timeout.
        max_retry_time_s: total time budget for one call including all waits; a wait that would
            overrun it ends the call with ``BybitError``.
        max_attempts: attempts per request before giving up.
        backoff_base_s, backoff_max_s: wait before retry k is uniform in
            ``[0, min(backoff_max_s, backoff_base_s * 2**k)]`` (full jitter).
        forbidden_wait_s: minimum wait after HTTP 403 (an IP ban lasts minutes).
        sleep, clock: injectable ``time.sleep`` / ``time.monotonic`` (tests run backoff instantly).
        credentials: for signed requests; defaults to ``BybitCredentials.from_env()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        category: str = "linear",
        *,
        session: requests.Session | None = None,
        timeout_s: float = 10.0,
        max_retry_time_s: float = 120.0,
        max_attempts: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        forbidden_wait_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        credentials: BybitCredentials | None = None,
    ) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
        self.base_url = resolve_base_url(base_url)
        self.category = category
        self.session = session or requests.Session()
        self.timeout_s = timeout_s
        self.max_retry_time_s = max_retry_time_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.forbidden_wait_s = forbidden_wait_s
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(seed)
        self._credentials = credentials if credentials is not None else BybitCredentials.from_env()
        self.requests_made = 0

    def __repr__(self) -> str:
        keys = "set" if self._credentials else "none"
        return f"BybitClient(base_url={self.base_url!r}, category={self.category!r}, keys={keys})"

    # --- transport -------------------------------------------------------------------------
    def request(self, path: str, params: dict, *, signed: bool = False) -> dict:
        """GET ``path`` with retries; return the body's ``result`` plus ``time`` (server ms)."""
        query = urlencode(params)
        headers = {}
        if signed:
            if self._credentials is None:
                raise BybitError(f"signed request needs ${KEY_ENV} and ${SECRET_ENV}")
            headers = self._credentials.headers(query)
        url = f"{self.base_url}{path}?{query}"
        start = self._clock()
        last_reason = ""
        for attempt in range(self.max_attempts):
            try:
                return self._request_once(url, headers, params)
            except _RetryableError as failure:
                last_reason = str(failure)
                if attempt + 1 >= self.max_attempts:
                    break
                wait_s = self._wait_for(failure, attempt)
                remaining_s = self.max_retry_time_s - (self._clock() - start)
                if wait_s > remaining_s:
                    raise BybitError(
                        f"{last_reason}; giving up: waiting {wait_s:.1f} s would exceed the "
                        f"{self.max_retry_time_s:g} s retry budget"
                    ) from None
                self._sleep(wait_s)
        raise BybitError(f"{last_reason}; giving up after {self.max_attempts} attempts")

    def _wait_for(self, failure: _RetryableError, attempt: int) -> float:
        if failure.wait_s is not None:
            return max(failure.wait_s, failure.min_wait_s)
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        return max(self._rng.uniform(0.0, cap), failure.min_wait_s)

    def _request_once(self, url: str, headers: dict, params: dict) -> dict:
        self.requests_made += 1
        try:
            response = self.session.get(url, headers=headers, timeout=self.timeout_s)
        except requests.Timeout:
            raise _RetryableError(f"timeout after {self.timeout_s:g} s from {self.base_url}") from None
        except requests.ConnectionError as error:
            raise _RetryableError(f"cannot connect to {self.base_url}: {type(error).__name__}") from None
        reset_wait_s = _reset_wait_s(response.headers)
        status = response.status_code
        if status >= 500 or status in RETRY_HTTP:
            min_wait_s = self.forbidden_wait_s if status == 403 else 0.0
            raise _RetryableError(f"HTTP {status} from {self.base_url}", reset_wait_s, min_wait_s)
        if status != 200:
            raise BybitError(f"HTTP {status} from {self.base_url}: {response.text[:200]}")
        try:
            body = response.json()
            ret_code = int(body["retCode"])
        except (ValueError, KeyError, TypeError):
            raise _RetryableError(f"malformed JSON from {self.base_url}") from None
        if ret_code == PARAMETER_RET_CODE:
            raise BybitParameterError(str(body.get("retMsg", "params error")), params)
        if ret_code in RETRY_RET_CODES:
            raise _RetryableError(f"Bybit retCode {ret_code}: {body.get('retMsg')}", reset_wait_s)
        if ret_code != 0:
            raise BybitError(f"Bybit retCode {ret_code}: {body.get('retMsg')}")
        result = body.get("result")
        if not isinstance(result, dict):
            raise _RetryableError(f"malformed JSON from {self.base_url}: no result object")
        return {**result, "time": body.get("time")}

    # --- market data -----------------------------------------------------------------------
    def get_klines(
        self,
        symbol: str,
        interval: str | int,
        start: datetime | pd.Timestamp | str | int | None = None,
        end: datetime | pd.Timestamp | str | int | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """Closed candles whose open time lies in ``[start, end]`` (UTC; datetimes or ms ints).

        ``start=None`` means 1000 bars before ``end``; ``end=None`` means now. ``progress`` is
        called with the number of candles each page brought. Returns the candle frame (see
        ``numpyconvnext.data.candles``), possibly empty.
        """
        name = normalize_interval(interval)
        step_ms = interval_to_ms(name)
        now_ms = int(time.time() * 1000)
        end_ms = _to_ms(end, now_ms)
        start_ms = _to_ms(start, end_ms - MAX_LIMIT * step_ms)
        if start_ms > end_ms:
            raise ValueError(f"start {start} is after end {end}")
        rows: dict[int, list] = {}
        server_ms = None
        page_end = end_ms
        while page_end >= start_ms:
            params = {"category": self.category, "symbol": symbol.upper(),
                      "interval": to_bybit_interval(name), "start": start_ms, "end": page_end,
                      "limit": MAX_LIMIT}
            result = self.request("/v5/market/kline", params)
            page = result.get("list")
            if not isinstance(page, list):
                raise BybitResponseError(f"{symbol} {name}: response has no candle list")
            if server_ms is None and result.get("time") is not None:
                server_ms = int(result["time"])
            opens = []
            for row in page:
                try:
                    opens.append(int(row[0]))
                except (TypeError, ValueError, IndexError):
                    raise BybitResponseError(
                        f"{symbol} {name}: bad candle {row!r} (open time not an integer)"
                    ) from None
                rows.setdefault(opens[-1], row)
            if progress is not None:
                progress(len(page))
            if not page or len(page) < MAX_LIMIT or min(opens) <= start_ms:
                break
            if min(opens) - 1 >= page_end:  # the server ignored `end`: stop rather than loop
                raise BybitResponseError(f"{symbol} {name}: paging made no progress at {page_end}")
            page_end = min(opens) - 1
        candles = _parse_rows(rows, symbol, name)
        ts = candles["timestamp"].astype("int64").to_numpy() // 1_000_000
        keep = (ts >= start_ms) & (ts <= end_ms)
        if len(ts):
            # the newest candle is still forming when its close time is after the server's clock
            now = server_ms if server_ms is not None else now_ms
            keep[-1] &= next_open_ms(int(ts[-1]), name) <= now
        return candles[keep].reset_index(drop=True)

    def get_funding_history(
        self,
        symbol: str,
        start: datetime | pd.Timestamp | str | int | None = None,
        end: datetime | pd.Timestamp | str | int | None = None,
        category: str = "linear",
        *,
        progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """Funding settlements of a perpetual with time in ``[start, end]`` (UTC; datetimes or ms
        ints), from ``/v5/market/funding/history``: a frame of ``timestamp`` and ``rate`` (see
        ``numpyconvnext.data.funding``), ascending, possibly empty.

        Bybit returns at most 200 rows a call, newest first; pages go backwards by ``endTime``
        (the next page ends 1 ms before the oldest row), through ``request`` with its retries.
        ``start=None`` means 200 settlements before ``end``; ``end=None`` means now. Spot has no
        funding: ``ValueError``. A row that is not a time and a finite rate within
        ``MAX_ABS_RATE`` raises ``BybitResponseError`` naming it.
        """
        from .funding import MAX_ABS_RATE, make_funding

        if category not in ("linear", "inverse"):
            raise ValueError(f"category {category!r} has no funding; use linear or inverse")
        now_ms = int(time.time() * 1000)
        end_ms = _to_ms(end, now_ms)
        start_ms = _to_ms(start, end_ms - FUNDING_LIMIT * 8 * 3_600_000)
        if start_ms > end_ms:
            raise ValueError(f"start {start} is after end {end}")
        rows: dict[int, float] = {}
        page_end = end_ms
        while page_end >= start_ms:
            params = {"category": category, "symbol": symbol.upper(), "startTime": start_ms,
                      "endTime": page_end, "limit": FUNDING_LIMIT}
            page = self.request("/v5/market/funding/history", params).get("list")
            if not isinstance(page, list):
                raise BybitResponseError(f"{symbol} funding: response has no list")
            stamps = []
            for row in page:
                try:
                    stamp = int(row["fundingRateTimestamp"])
                    rate = float(row["fundingRate"])
                    if not (np.isfinite(rate) and abs(rate) <= MAX_ABS_RATE):
                        raise ValueError
                except (TypeError, ValueError, KeyError):
                    raise BybitResponseError(
                        f"{symbol} funding: bad row {json.dumps(row)[:200]} (expected "
                        f"fundingRateTimestamp ms and a finite fundingRate within ±{MAX_ABS_RATE})"
                    ) from None
                stamps.append(stamp)
                rows.setdefault(stamp, rate)
            if progress is not None:
                progress(len(page))
            if not page or len(page) < FUNDING_LIMIT or min(stamps) <= start_ms:
                break
            if min(stamps) - 1 >= page_end:  # the server ignored endTime: stop rather than loop
                raise BybitResponseError(f"{symbol} funding: paging made no progress at {page_end}")
            page_end = min(stamps) - 1
        keep = sorted(t for t in rows if start_ms <= t <= end_ms)
        return make_funding(np.array(keep, dtype=np.int64), np.array([rows[t] for t in keep]))

    def get_latest_klines(self, symbol: str, interval: str | int, count: int) -> pd.DataFrame:
        """The last ``count`` closed candles (fewer only if the market is younger than that)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        step = interval_to_timedelta(interval)
        end = pd.Timestamp.now(tz="UTC")
        # two spare bars: the forming one is dropped and a month can be longer than its mean
        start = end - step * (count + 2) - pd.Timedelta(days=3 if step > pd.Timedelta(days=27)
                                                        else 0)
        candles = self.get_klines(symbol, interval, start, end)
        return candles.iloc[-count:].reset_index(drop=True)


def _reset_wait_s(headers) -> float | None:
    value = headers.get("X-Bapi-Limit-Reset-Timestamp")
    if value is None:
        return None
    try:
        return max(0.0, int(value) / 1000.0 - time.time())
    except ValueError:
        return None


def _parse_rows(rows: dict[int, list], symbol: str, interval: str) -> pd.DataFrame:
    opens = np.array(sorted(rows), dtype=np.int64)
    values = np.empty((len(opens), 6), dtype=np.float64)
    for i, open_ms in enumerate(opens):
        row = rows[int(open_ms)]
        try:
            if len(row) < 7:
                raise ValueError
            values[i] = [float(x) for x in row[1:7]]
        except (TypeError, ValueError):
            raise BybitResponseError(
                f"{symbol} {interval}: row {i} ({_iso(open_ms)}) is not 7 numbers: {row!r}"
            ) from None
    bad = ohlc_violations(values)
    off_grid = ~on_grid(opens, interval)
    if bad.any() or off_grid.any():
        i = int(np.flatnonzero(bad | off_grid)[0])
        reason = (f"open time not on the {interval} grid" if off_grid[i]
                  else describe_violation(values[i]))
        raise BybitResponseError(
            f"{symbol} {interval}: row {i} ({_iso(opens[i])}) is invalid: {reason}: "
            f"{json.dumps(rows[int(opens[i])])}"
        )
    return make_candles(opens, values)


def _iso(open_ms: int) -> str:
    return pd.Timestamp(int(open_ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
