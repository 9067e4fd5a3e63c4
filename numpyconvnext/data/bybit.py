"""Bybit v5 public market data client (klines, funding history), with bounded retries and
response validation.

``BybitClient.get_klines`` pages backwards through any range (Bybit returns at most 1000
candles per call, newest first), de-duplicates page borders, drops the still-forming candle and
validates every row; ``kline_pages`` yields the same candles page by page (backwards, or forwards
in windows of 1000 bars) so a caller can save progress as it goes.

Retries (``BybitClient.request``): every transient failure is retried within a total time budget
(``max_retry_time_s``) and a number of attempts. The wait before a retry is the largest of

- jittered exponential backoff, uniform in ``[0, min(backoff_max_s, backoff_base_s * 2**k)]``;
- on a rate-limit answer only (retCode 10006/10018, HTTP 429): the time until
  ``X-Bapi-Limit-Reset-Timestamp``, measured against the *server's* clock (the body's ``time``,
  else the ``Date`` header), so a skewed local clock neither hammers nor stalls;
- ``Retry-After`` (seconds or an HTTP date, the latter against the server's ``Date``);
- on HTTP 403 (Bybit's IP ban, also its answer to blocked regions): ``forbidden_wait_s``,
  doubling with each further 403: minutes, not seconds.

A wait that would overrun the budget ends the call at once. Transient means: connection, DNS,
timeout, broken chunked or compressed bodies (any ``requests`` transport error), HTTP 5xx/429/403,
malformed JSON, retCodes 10000/10006/10016/10018 (and 10002 for signed requests, after
re-syncing the timestamp to the server's clock). Signed requests get a fresh timestamp and
signature on every attempt. Parameter errors (retCode 10001) raise ``BybitParameterError`` at
once. When the last failure was the network itself, the error is ``BybitUnreachableError``.
``sleep``, ``clock`` and ``wall_clock`` are injectable for tests.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import os
import random
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import requests

from .candles import describe_violation, make_candles, ohlc_violations, timestamps_ms
from .intervals import (
    interval_to_ms,
    interval_to_timedelta,
    next_open_ms,
    normalize_interval,
    on_grid,
    to_bybit_interval,
)
from .symbols import validate_symbol

__all__ = [
    "BASE_URLS", "BybitClient", "BybitCredentials", "BybitError", "BybitParameterError",
    "BybitResponseError", "BybitUnreachableError", "interval_to_timedelta", "normalize_interval",
    "resolve_base_url", "sign_request", "validate_symbol",
]

BASE_URLS = {"mainnet": "https://api.bybit.com", "testnet": "https://api-testnet.bybit.com"}
URL_ENV = "NUMPYCONVNEXT_BYBIT_URL"
KEY_ENV, SECRET_ENV = "BYBIT_API_KEY", "BYBIT_API_SECRET"
CATEGORIES = ("linear", "spot", "inverse")
MAX_LIMIT = 1000
FUNDING_LIMIT = 200  # rows per /v5/market/funding/history page
RETRY_RET_CODES = frozenset({10000, 10006, 10016, 10018})
RATE_LIMIT_RET_CODES = frozenset({10006, 10018})
PARAMETER_RET_CODE = 10001
TIMESTAMP_RET_CODE = 10002
RECV_WINDOW_MS = 5000
FORBIDDEN_HINT = "IP rate-limit ban or region block"
# requests errors that no retry can fix: a wrong URL, header or redirect loop
_PERMANENT_REQUEST_ERRORS = (
    requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired, requests.exceptions.TooManyRedirects,
)


class BybitError(RuntimeError):
    """Bybit kept failing until the retry budget ran out, or answered with an error.

    ``forbidden`` is True when the last answer was HTTP 403 (an IP ban or a region block):
    callers that loop should wait minutes before trying again.
    """

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


class BybitUnreachableError(BybitError):
    """Bybit could not be reached at all (connection, DNS, timeout) within the retry budget."""


class BybitParameterError(ValueError):
    """Bybit rejected the parameters (retCode 10001: unknown symbol, interval or range)."""

    def __init__(self, ret_msg: str, params: dict | None = None) -> None:
        super().__init__(f"Bybit rejected the request: {ret_msg}")
        self.ret_msg = ret_msg
        self.params = params or {}


class BybitResponseError(ValueError):
    """A response that parsed but holds impossible data; the message names the bad row.

    ``open_ms`` is the bad candle's open time when one row is to blame (else None).
    """

    def __init__(self, message: str, open_ms: int | None = None) -> None:
        super().__init__(message)
        self.open_ms = open_ms


class _RetryableError(Exception):
    """One failed attempt and what it says about the wait before the next one."""

    def __init__(self, reason: str, *, transport: bool = False, rate_limit_wait_s: float | None = None,
                 retry_after_s: float | None = None, forbidden: bool = False,
                 clock_skew: bool = False) -> None:
        super().__init__(reason)
        self.transport = transport
        self.rate_limit_wait_s = rate_limit_wait_s
        self.retry_after_s = retry_after_s
        self.forbidden = forbidden
        self.clock_skew = clock_skew


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
        forbidden_wait_s: minimum wait after the first HTTP 403, doubled after each further one
            (an IP ban lasts minutes).
        sleep, clock: injectable ``time.sleep`` / ``time.monotonic`` (tests run backoff instantly).
        wall_clock: injectable ``time.time``: the local epoch clock that signed timestamps start
            from (corrected by the measured offset to the server's clock).
        credentials: for signed requests; defaults to ``BybitCredentials.from_env()``.

    After each answer that carries the server's time, ``last_server_time_ms`` holds it and
    ``server_offset_ms`` the server's clock minus the local ``wall_clock`` (positive: the
    server is ahead).
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
        forbidden_wait_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        seed: int | None = None,
        credentials: BybitCredentials | None = None,
        recv_window_ms: int = RECV_WINDOW_MS,
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
        self.recv_window_ms = recv_window_ms
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = random.Random(seed)
        self._credentials = credentials if credentials is not None else BybitCredentials.from_env()
        self.requests_made = 0
        self.last_server_time_ms: int | None = None
        self.server_offset_ms: int = 0

    def __repr__(self) -> str:
        keys = "set" if self._credentials else "none"
        return f"BybitClient(base_url={self.base_url!r}, category={self.category!r}, keys={keys})"

    # --- transport -------------------------------------------------------------------------
    def request(self, path: str, params: dict, *, signed: bool = False) -> dict:
        """GET ``path`` with retries; return the body's ``result`` plus ``time`` (server ms).

        Raises ``BybitParameterError`` (retCode 10001, not retried), ``BybitUnreachableError``
        (the network failed until the budget ran out) or ``BybitError`` (anything else that
        retrying did not cure). A signed request is re-signed with a fresh timestamp on each
        attempt.
        """
        query = urlencode(params)
        if signed and self._credentials is None:
            raise BybitError(f"signed request needs ${KEY_ENV} and ${SECRET_ENV}")
        url = f"{self.base_url}{path}?{query}"
        start = self._clock()
        last: _RetryableError | None = None
        forbidden_seen = 0
        for attempt in range(self.max_attempts):
            headers = {}
            if signed:
                timestamp_ms = int(self._wall_clock() * 1000) + self.server_offset_ms
                headers = self._credentials.headers(query, timestamp_ms, self.recv_window_ms)
            try:
                return self._request_once(url, headers, params, signed)
            except _RetryableError as failure:
                if failure.clock_skew and last is not None and last.clock_skew:
                    raise BybitError(f"{failure} (again after re-syncing to the server's clock)") \
                        from None
                last = failure
                if attempt + 1 >= self.max_attempts:
                    break
                wait_s = self._wait_for(failure, attempt, forbidden_seen)
                forbidden_seen += failure.forbidden
                remaining_s = self.max_retry_time_s - (self._clock() - start)
                if wait_s > remaining_s:
                    raise self._give_up(
                        failure, f"waiting {wait_s:.1f} s would exceed the "
                                 f"{self.max_retry_time_s:g} s retry budget") from None
                self._sleep(wait_s)
        raise self._give_up(last, f"giving up after {self.max_attempts} attempts") from None

    def _wait_for(self, failure: _RetryableError, attempt: int, forbidden_seen: int) -> float:
        """max(jittered exponential backoff, reset time, Retry-After, the 403 minimum)."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        waits = [self._rng.uniform(0.0, cap)]
        if failure.rate_limit_wait_s is not None:
            waits.append(failure.rate_limit_wait_s)
        if failure.retry_after_s is not None:
            waits.append(failure.retry_after_s)
        if failure.forbidden:
            waits.append(self.forbidden_wait_s * 2.0**forbidden_seen)
        if failure.clock_skew:
            waits = [0.0]  # the timestamp is re-synced: retry at once
        return max(waits)

    def _give_up(self, failure: _RetryableError | None, why: str) -> BybitError:
        reason = str(failure) if failure is not None else "no attempt made"
        if failure is not None and failure.forbidden:
            reason += f" ({FORBIDDEN_HINT}: wait some minutes, or check the region)"
        kind = BybitUnreachableError if failure is not None and failure.transport else BybitError
        return kind(f"{reason}; giving up: {why}",
                    forbidden=failure is not None and failure.forbidden)

    def _request_once(self, url: str, headers: dict, params: dict, signed: bool) -> dict:
        self.requests_made += 1
        try:
            response = self.session.get(url, headers=headers, timeout=self.timeout_s)
        except requests.Timeout:
            raise _RetryableError(f"timeout after {self.timeout_s:g} s from {self.base_url}",
                                  transport=True) from None
        except _PERMANENT_REQUEST_ERRORS as error:
            raise BybitError(f"bad request to {self.base_url}: {type(error).__name__}: "
                             f"{str(error)[:200]}") from None
        except requests.ConnectionError as error:
            raise _RetryableError(f"cannot connect to {self.base_url}: {type(error).__name__}",
                                  transport=True) from None
        except requests.RequestException as error:  # broken chunked or compressed body, ...
            raise _RetryableError(f"broken answer from {self.base_url}: {type(error).__name__}",
                                  transport=True) from None
        body = _json_body(response)
        server_ms = _server_time_ms(response, body)
        if server_ms is not None:
            self.last_server_time_ms = server_ms
            self.server_offset_ms = server_ms - int(self._wall_clock() * 1000)
        now_ms = server_ms if server_ms is not None else int(self._wall_clock() * 1000)
        retry_after_s = _retry_after_s(response.headers, now_ms)
        status = response.status_code
        ret_code = _ret_code(body)
        rate_limited = status == 429 or ret_code in RATE_LIMIT_RET_CODES
        reset_s = _reset_wait_s(response.headers, now_ms) if rate_limited else None
        if status == 403:
            raise _RetryableError(f"HTTP 403 from {self.base_url}", forbidden=True,
                                  retry_after_s=retry_after_s)
        if status >= 500 or status == 429:
            raise _RetryableError(f"HTTP {status} from {self.base_url}", rate_limit_wait_s=reset_s,
                                  retry_after_s=retry_after_s)
        if status != 200:
            raise BybitError(f"HTTP {status} from {self.base_url}: {response.text[:200]}")
        if ret_code is None:
            raise _RetryableError(f"malformed JSON from {self.base_url}")
        message = f"Bybit retCode {ret_code}: {body.get('retMsg')}"
        if ret_code == PARAMETER_RET_CODE:
            raise BybitParameterError(str(body.get("retMsg", "params error")), params)
        if ret_code in RETRY_RET_CODES:
            raise _RetryableError(message, rate_limit_wait_s=reset_s, retry_after_s=retry_after_s)
        if ret_code == TIMESTAMP_RET_CODE and signed and server_ms is not None:
            raise _RetryableError(message, clock_skew=True)
        if ret_code != 0:
            raise BybitError(message)
        result = body.get("result")
        if not isinstance(result, dict):
            raise _RetryableError(f"malformed JSON from {self.base_url}: no result object")
        return {**result, "time": body.get("time")}

    # --- market data -----------------------------------------------------------------------
    def kline_pages(
        self,
        symbol: str,
        interval: str | int,
        start: datetime | pd.Timestamp | str | int | None = None,
        end: datetime | pd.Timestamp | str | int | None = None,
        *,
        ascending: bool = False,
        progress: Callable[[int], None] | None = None,
        skip_open_ms: Collection[int] = (),
    ) -> Iterator[pd.DataFrame]:
        """Closed candles opened in ``[start, end]``, one validated frame per request.

        Backwards (default): newest page first, each page ending just before the previous one,
        stopping at ``start`` or when Bybit has nothing older (a market's first candle).
        ``ascending``: windows of 999 bars from ``start`` upwards, one page each, so the candles
        yielded so far always form one unbroken stretch after ``start`` (an interrupted forward
        fetch leaves no hole). Pages never overlap. ``skip_open_ms``: open times of rows to drop
        before validation (a bad upstream row given up on). ``progress`` gets each page's
        row count.
        """
        name = normalize_interval(interval)
        symbol = validate_symbol(symbol)
        step_ms = interval_to_ms(name)
        now_ms = int(self._wall_clock() * 1000)
        end_ms = _to_ms(end, now_ms)
        start_ms = _to_ms(start, end_ms - MAX_LIMIT * step_ms)
        if start_ms > end_ms:
            raise ValueError(f"start {start} is after end {end}")
        skip = frozenset(int(t) for t in skip_open_ms)
        shortest_bar_ms = 28 * 86_400_000 if name == "1M" else step_ms

        def page(lo_ms: int, hi_ms: int, limit: int = MAX_LIMIT) -> tuple[pd.DataFrame, list[int]]:
            params = {"category": self.category, "symbol": symbol,
                      "interval": to_bybit_interval(name), "start": lo_ms, "end": hi_ms,
                      "limit": limit}
            result = self.request("/v5/market/kline", params)
            rows = result.get("list")
            if not isinstance(rows, list):
                raise BybitResponseError(f"{symbol} {name}: response has no candle list")
            opens, chosen = [], {}
            for row in rows:
                try:
                    open_ms = int(row[0])
                except (TypeError, ValueError, IndexError):
                    raise BybitResponseError(
                        f"{symbol} {name}: bad candle {row!r} (open time not an integer)") from None
                opens.append(open_ms)
                if lo_ms <= open_ms <= hi_ms and open_ms not in skip:
                    chosen.setdefault(open_ms, row)
            if progress is not None:
                progress(len(rows))
            candles = _parse_rows(chosen, symbol, name)
            server_ms = result.get("time")
            now = int(server_ms) if isinstance(server_ms, (int, float)) else now_ms
            return candles[_closed_mask(timestamps_ms(candles), name, now)], opens

        def backwards(lo_ms: int, hi_ms: int) -> Iterator[pd.DataFrame]:
            while hi_ms >= lo_ms:
                candles, opens = page(lo_ms, hi_ms)
                if len(candles):
                    yield candles.reset_index(drop=True)
                if not opens or len(opens) < MAX_LIMIT or min(opens) - shortest_bar_ms < lo_ms:
                    return  # short page, or no whole bar fits before its oldest candle
                if min(opens) - 1 >= hi_ms:  # the server ignored `end`: stop rather than loop
                    raise BybitResponseError(f"{symbol} {name}: paging made no progress at {hi_ms}")
                hi_ms = min(opens) - 1

        if not ascending:
            yield from backwards(start_ms, end_ms)
            return
        lo = start_ms
        while lo <= end_ms:
            # one bar short of the limit, so a server that adds a border row still fits a page
            hi = min(end_ms, lo + (MAX_LIMIT - 1) * step_ms - 1)
            window = list(backwards(lo, hi))  # one request unless the server holds more
            if window:
                yield pd.concat(window[::-1], ignore_index=True)
            elif hi < end_ms and not page(hi + 1, end_ms, 1)[1]:
                return  # an empty window and nothing after it: the market ends here
            lo = hi + 1

    def get_klines(
        self,
        symbol: str,
        interval: str | int,
        start: datetime | pd.Timestamp | str | int | None = None,
        end: datetime | pd.Timestamp | str | int | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        skip_open_ms: Collection[int] = (),
    ) -> pd.DataFrame:
        """Closed candles whose open time lies in ``[start, end]`` (UTC; datetimes or ms ints).

        ``start=None`` means 1000 bars before ``end``; ``end=None`` means now. ``progress`` is
        called with the number of candles each page brought; ``skip_open_ms`` as in
        ``kline_pages``. Returns the candle frame (see ``numpyconvnext.data.candles``),
        possibly empty.
        """
        pages = list(self.kline_pages(symbol, interval, start, end, progress=progress,
                                      skip_open_ms=skip_open_ms))
        if not pages:
            return make_candles(np.zeros(0, dtype=np.int64), np.zeros((0, 6)))
        return pd.concat(pages[::-1], ignore_index=True)

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


def _closed_mask(opens_ms: np.ndarray, interval: str, now_ms: int) -> np.ndarray:
    """Which candles have closed by ``now_ms`` (their next open is not after it)."""
    if normalize_interval(interval) == "1M":
        return np.array([next_open_ms(int(t), interval) <= now_ms for t in opens_ms], dtype=bool)
    return opens_ms + interval_to_ms(interval) <= now_ms


def _json_body(response: requests.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _ret_code(body: dict | None) -> int | None:
    try:
        return int(body["retCode"])
    except (TypeError, KeyError, ValueError):
        return None


def _server_time_ms(response: requests.Response, body: dict | None) -> int | None:
    """The server's clock at the answer: the body's ``time`` (ms), else the ``Date`` header."""
    stamp = body.get("time") if body is not None else None
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp > 0:
        return int(stamp)
    return _http_date_ms(response.headers.get("Date"))


def _http_date_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _reset_wait_s(headers, server_now_ms: int) -> float | None:
    """Seconds until ``X-Bapi-Limit-Reset-Timestamp``, on the server's clock."""
    try:
        reset_ms = int(headers.get("X-Bapi-Limit-Reset-Timestamp"))
    except (TypeError, ValueError):
        return None
    return max(0.0, (reset_ms - server_now_ms) / 1000.0)


def _retry_after_s(headers, server_now_ms: int) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date on the server's clock."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when_ms = _http_date_ms(value)
        return None if when_ms is None else max(0.0, (when_ms - server_now_ms) / 1000.0)


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
                f"{symbol} {interval}: row {i} ({_iso(open_ms)}) is not 7 numbers: {row!r}",
                int(open_ms)) from None
    bad = ohlc_violations(values)
    off_grid = ~on_grid(opens, interval)
    if bad.any() or off_grid.any():
        i = int(np.flatnonzero(bad | off_grid)[0])
        reason = (f"open time not on the {interval} grid" if off_grid[i]
                  else describe_violation(values[i]))
        raise BybitResponseError(
            f"{symbol} {interval}: row {i} ({_iso(opens[i])}) is invalid: {reason}: "
            f"{json.dumps(rows[int(opens[i])])}", int(opens[i]))
    return make_candles(opens, values)


def _iso(open_ms: int) -> str:
    return pd.Timestamp(int(open_ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
