"""A fake Bybit v5 market-data server for tests (127.0.0.1, random port, no internet).

Usage (each request is logged in ``fake.requests`` as a dict with keys ``path``, ``params``,
``query`` (raw, as sent), ``headers`` and ``rows`` (candles served))::

    from bybit_server import FakeBybit
    with FakeBybit(candles) as fake:            # candles: the project's candle frame
        client = BybitClient(fake.url)
        fake.fail("http_502")                   # the next request gets a 502, then normal answers
        ...
        assert len(fake.requests) == 2          # every request seen: {"path", "params", "headers"}

It serves ``GET /v5/market/kline`` like Bybit: candles with open time in ``[start, end]``,
newest first, at most ``limit`` (max 1000), as strings. The last candle of ``candles`` is the
still-forming one by default: the server's clock (``fake.now_ms``, settable) is half a bar after
its open. That clock, not the machine's, is in every answer: the body's ``time``, the ``Date``
header and ``X-Bapi-Limit-Reset-Timestamp`` (``now_ms + reset_in_s``, sent on every answer as
Bybit does), so a test skews the two clocks by setting ``now_ms``. ``page_overlap`` extra newer
candles are added to every page (Bybit's duplicates at page borders). Unknown symbols or
intervals answer retCode 10001.

It also serves ``GET /v5/market/funding/history`` (linear/inverse): settlements every 8 h from
the first candle to the server's clock, ``fake.funding`` (a frame of ``timestamp`` and ``rate``,
default: a deterministic series around 0.01 %, settable), rows with ``fundingRateTimestamp`` in
``[startTime, endTime]``, newest first, at most ``limit`` (max 200); ``startTime`` without
``endTime`` is a parameter error, as on Bybit; spot answers retCode 10001.

It serves ``GET /v5/market/instruments-info`` and ``GET /v5/market/tickers`` for the universe:
``fake.instruments`` (Bybit's rows: ``symbol``, ``contractType``, ``status``, ``baseCoin``,
``quoteCoin``, ``settleCoin``; default one Trading USDT perpetual per symbol) paged by ``limit``
(max 1000, default 500) and an opaque ``cursor`` (``nextPageCursor``, empty on the last page),
and ``fake.tickers`` (rows with ``symbol``, ``lastPrice``, ``turnover24h``, ``volume24h``;
default: every symbol, turnover falling in the order given), both settable and both answered
for the requested ``category`` only.

Scriptable failures (``fake.fail(kind, times=1)``), consumed in order by the next requests:
``rate_limit`` (retCode 10006), ``http_429``, ``http_502``, ``http_403``, ``retry_after``
(HTTP 503 with ``Retry-After: <retry_after_s>``), ``retry_after_date`` (the same as an HTTP
date on the server's clock), ``bad_json``, ``timeout`` (sleeps ``timeout_sleep_s`` before a
normal answer), ``drop`` (the connection closes with no answer), ``chunked`` (a chunked body
cut off mid-stream), ``bad_gzip`` (``Content-Encoding: gzip`` over bytes that are not gzip),
``truncated`` (fewer body bytes than ``Content-Length``), ``bad_candle`` (a row with
high < open), ``short`` (only the newest 10 candles of the page), ``param_error`` (retCode
10001).

Standing conditions: ``fake.bad_rows`` (open times in ms whose candle is always served with
high < open), ``fake.die_after_pages = n`` (after n candle pages every request is dropped: a
server that dies mid-fetch; ``fake.die_after_pages = None`` revives it), and
``fake.verify_signatures = (key, secret)`` (signed requests must carry a valid signature and a
timestamp within the receive window of the server's clock, else retCode 10004 / 10002).
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import hmac
import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

_CODES = {"1": 1, "3": 3, "5": 5, "15": 15, "30": 30, "60": 60, "120": 120, "240": 240,
          "360": 360, "720": 720, "D": 1440, "W": 10080}
FAILURES = ("rate_limit", "http_429", "http_502", "http_403", "retry_after", "retry_after_date",
            "bad_json", "timeout", "drop", "chunked", "bad_gzip", "truncated", "bad_candle", "short",
            "param_error")


class FakeBybit:
    """Context manager running the fake server in a thread; see the module docstring."""

    def __init__(
        self,
        candles: pd.DataFrame,
        *,
        symbols: tuple[str, ...] = ("BTCUSDT",),
        now_ms: int | None = None,
        page_overlap: int = 1,
        timeout_sleep_s: float = 0.3,
        reset_in_s: float = 0.05,
        retry_after_s: float = 7.0,
        funding: pd.DataFrame | None = None,
    ) -> None:
        stamps = pd.DatetimeIndex(candles["timestamp"]).as_unit("ns").asi8 // 1_000_000
        self.funding = funding if funding is not None else default_funding(candles)
        self._open_ms = np.asarray(stamps, dtype=np.int64)
        step = int(np.median(np.diff(self._open_ms))) if len(stamps) > 1 else 3_600_000
        self.interval_code = next((c for c, m in _CODES.items() if m * 60_000 == step), "60")
        self._rows = [
            [str(int(t))] + [repr(float(v)) for v in row]
            for t, row in zip(self._open_ms, candles[["open", "high", "low", "close", "volume",
                                                      "turnover"]].fillna(0.0).to_numpy(),
                              strict=True)
        ]
        self.symbols = tuple(s.upper() for s in symbols)
        self.instruments = [instrument_row(s) for s in self.symbols]
        last = float(candles["close"].iloc[-1]) if len(candles) else 1.0
        self.tickers = [{"symbol": s, "lastPrice": repr(last), "volume24h": "1000",
                         "turnover24h": repr(1e9 / (k + 1))} for k, s in enumerate(self.symbols)]
        self.instruments_category = "linear"
        self.now_ms = int(self._open_ms[-1] + step // 2) if now_ms is None else int(now_ms)
        self.page_overlap = page_overlap
        self.timeout_sleep_s = timeout_sleep_s
        self.reset_in_s = reset_in_s
        self.retry_after_s = retry_after_s
        self.bad_rows: set[int] = set()
        self.die_after_pages: int | None = None
        self.verify_signatures: tuple[str, str] | None = None
        self.pages_served = 0
        self.requests: list[dict] = []
        self._failures: deque[str] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, kind: str, times: int = 1) -> None:
        """Make the next ``times`` requests fail with ``kind`` (after failures already queued)."""
        if kind not in FAILURES:
            raise ValueError(f"unknown failure {kind!r}; use one of {FAILURES}")
        with self._lock:
            self._failures.extend([kind] * times)

    def start(self) -> FakeBybit:
        """Start serving (the context manager calls this)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self)

            def log_message(self, *args) -> None:
                pass

            def date_time_string(self, timestamp=None) -> str:  # the server's clock, not ours
                return email.utils.formatdate(fake.now_ms / 1000.0, usegmt=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)  # short poll: fast shutdown
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeBybit:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- request handling ------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        params = dict(parse_qsl(parts.query))
        with self._lock:
            record = {"path": parts.path, "params": params, "query": parts.query,
                      "headers": dict(handler.headers), "rows": 0}
            self.requests.append(record)
            failure = self._failures.popleft() if self._failures else None
        try:
            self._respond(handler, record, failure)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def _respond(self, handler, record: dict, failure: str | None) -> None:
        path, params = record["path"], record["params"]
        if self.die_after_pages is not None and self.pages_served >= self.die_after_pages:
            failure = "drop"
        limits = {"X-Bapi-Limit": "600", "X-Bapi-Limit-Status": "599",
                  "X-Bapi-Limit-Reset-Timestamp": str(int(self.now_ms + self.reset_in_s * 1000))}
        if failure == "timeout":
            threading.Event().wait(self.timeout_sleep_s)
        elif failure == "drop":
            handler.close_connection = True
            return
        elif failure == "rate_limit":
            return _send(handler, 200, self._body(10006, "Too many visits!"), limits)
        elif failure == "http_429":
            return _send(handler, 429, b"Too Many Requests", limits)
        elif failure == "http_502":
            return _send(handler, 502, b"<html>502 Bad Gateway</html>", limits)
        elif failure == "http_403":
            return _send(handler, 403, b"access too frequent", limits)
        elif failure == "retry_after":
            return _send(handler, 503, b"busy", {**limits, "Retry-After": f"{self.retry_after_s:g}"})
        elif failure == "retry_after_date":
            when = email.utils.formatdate(self.now_ms / 1000.0 + self.retry_after_s, usegmt=True)
            return _send(handler, 503, b"busy", {**limits, "Retry-After": when})
        elif failure == "bad_json":
            return _send(handler, 200, b'{"retCode": 0, "result": {"list": [')
        elif failure == "param_error":
            return _send(handler, 200, self._body(10001, "params error: scripted"))
        elif failure in ("chunked", "bad_gzip", "truncated"):
            return _send_broken(handler, failure, self._body(0, "OK", {"list": []}))
        signature_error = self._check_signature(record)
        if signature_error is not None:
            return _send(handler, 200, self._body(*signature_error), limits)
        if path == "/v5/market/funding/history":
            return self._funding_page(handler, record, params, limits)
        if path in ("/v5/market/instruments-info", "/v5/market/tickers"):
            return self._universe(handler, path, params, limits)
        if path != "/v5/market/kline":
            return _send(handler, 404, b"not found")
        if params.get("symbol", "").upper() not in self.symbols:
            return _send(handler, 200, self._body(10001, "params error: Symbol Invalid"))
        if params.get("interval") not in _CODES and params.get("interval") != "M":
            return _send(handler, 200, self._body(10001, "params error: Interval Invalid"))
        if params.get("interval") != self.interval_code:
            return _send(handler, 200, self._body(10001, "params error: fake has no such interval"))
        rows = self._page(params)
        if failure == "bad_candle" and rows:
            rows[len(rows) // 2] = _corrupt(rows[len(rows) // 2])
        rows = [_corrupt(row) if int(row[0]) in self.bad_rows else row for row in rows]
        if failure == "short":
            rows = rows[:10]
        record["rows"] = len(rows)
        with self._lock:
            self.pages_served += 1
        body = self._body(0, "OK", {"category": params.get("category", "linear"),
                                    "symbol": params["symbol"].upper(), "list": rows})
        _send(handler, 200, body, limits)

    def _body(self, code: int, msg: str, result: dict | None = None) -> bytes:
        return json.dumps({"retCode": code, "retMsg": msg, "result": result or {},
                           "retExtInfo": {}, "time": int(self.now_ms)}).encode()

    def _check_signature(self, record: dict) -> tuple[int, str] | None:
        if self.verify_signatures is None:
            return None
        key, secret = self.verify_signatures
        headers = {k.lower(): v for k, v in record["headers"].items()}
        try:
            stamp, window = int(headers["x-bapi-timestamp"]), int(headers["x-bapi-recv-window"])
            sign = headers["x-bapi-sign"]
        except (KeyError, ValueError):
            return 10003, "API key is invalid."
        if not self.now_ms - window <= stamp < self.now_ms + 1000:
            return 10002, "invalid request, please check your server timestamp or recv_window param"
        expected = hmac.new(secret.encode(), f"{stamp}{key}{window}{record['query']}".encode(),
                            hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(sign, expected) else (10004, "error sign!")

    def _funding_page(self, handler, record: dict, params: dict, limits: dict) -> None:
        if params.get("symbol", "").upper() not in self.symbols:
            return _send(handler, 200, self._body(10001, "params error: Symbol Invalid"))
        if params.get("category") not in ("linear", "inverse"):
            return _send(handler, 200, self._body(10001, "params error: category only support "
                                                         "linear or inverse"))
        if "startTime" in params and "endTime" not in params:
            return _send(handler, 200, self._body(10001, "params error: endTime is required"))
        stamps = pd.DatetimeIndex(self.funding["timestamp"]).as_unit("ns").asi8 // 1_000_000
        rates = self.funding["rate"].to_numpy()
        end = min(int(params.get("endTime", self.now_ms)), self.now_ms)
        start = int(params.get("startTime", 0))
        limit = min(max(int(params.get("limit", 200)), 1), 200)
        chosen = np.flatnonzero((stamps >= start) & (stamps <= end))[-limit:][::-1]
        rows = [{"symbol": params["symbol"].upper(), "fundingRate": repr(float(rates[i])),
                 "fundingRateTimestamp": str(int(stamps[i]))} for i in chosen]
        record["rows"] = len(rows)
        body = self._body(0, "OK", {"category": params["category"], "list": rows})
        _send(handler, 200, body, limits)

    def _universe(self, handler, path: str, params: dict, limits: dict) -> None:
        category = params.get("category")
        if category not in ("linear", "inverse", "spot", "option"):
            return _send(handler, 200, self._body(10001, "params error: category is invalid"))
        same = category == self.instruments_category
        if path == "/v5/market/tickers":
            rows = self.tickers if same else []
            body = self._body(0, "OK", {"category": category, "list": rows})
            return _send(handler, 200, body, limits)
        rows = self.instruments if same else []
        limit = min(max(int(params.get("limit", 500)), 1), 1000)
        cursor = params.get("cursor", "")
        offset = int(cursor.removeprefix("next:")) if cursor.startswith("next:") else 0
        page = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        body = self._body(0, "OK", {"category": category, "list": page,
                                    "nextPageCursor": f"next:{offset + limit}" if more else ""})
        _send(handler, 200, body, limits)

    def _page(self, params: dict) -> list[list[str]]:
        start = int(params.get("start", 0))
        end = int(params.get("end", self.now_ms))
        limit = min(max(int(params.get("limit", 200)), 1), 1000)
        lo = int(np.searchsorted(self._open_ms, start, side="left"))
        hi = int(np.searchsorted(self._open_ms, end, side="right"))
        hi = min(hi + self.page_overlap, len(self._rows)) if hi > lo else hi
        # only candles that had opened by the server's clock exist
        hi = min(hi, int(np.searchsorted(self._open_ms, self.now_ms, side="right")))
        chosen = self._rows[max(lo, hi - limit) : hi]
        return [list(r) for r in reversed(chosen)]


def instrument_row(symbol: str, status: str = "Trading",
                   contract_type: str = "LinearPerpetual", quote: str = "USDT") -> dict:
    """One instruments-info row as Bybit writes it (the fields the client reads, and a few)."""
    base = symbol[: -len(quote)] if symbol.endswith(quote) else symbol
    return {"symbol": symbol, "contractType": contract_type, "status": status, "baseCoin": base,
            "quoteCoin": quote, "settleCoin": quote, "launchTime": "1585526400000",
            "priceScale": "2", "lotSizeFilter": {"qtyStep": "0.001"}}


def _corrupt(row: list[str]) -> list[str]:
    row = list(row)
    row[2] = repr(float(row[1]) * 0.9)  # high below open
    return row


def default_funding(candles: pd.DataFrame) -> pd.DataFrame:
    """Settlements every 8 h (00, 08, 16 UTC) over the candles' span and a day beyond, at
    0.01 % give or take a deterministic wobble."""
    stamps = pd.DatetimeIndex(candles["timestamp"])
    first = stamps[0].ceil("8h")
    settle = pd.date_range(first, stamps[-1] + pd.Timedelta(days=1), freq="8h")
    k = np.arange(len(settle))
    return pd.DataFrame({"timestamp": settle, "rate": 0.0001 + 0.00002 * ((k % 7) - 3)})


def _send(handler, status: int, body: bytes, headers: dict | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def _send_broken(handler, kind: str, body: bytes) -> None:
    """An answer that breaks while the body is read: cut chunked stream, bad gzip, short body."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    if kind == "chunked":
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
        handler.wfile.write(b"400\r\n" + body[:10])  # a chunk announced as 1 KiB, then nothing
    elif kind == "bad_gzip":
        handler.send_header("Content-Encoding", "gzip")
        broken = b"\x1f\x8b\x08\x00garbage-that-is-not-deflate" + gzip.compress(body)[40:]
        handler.send_header("Content-Length", str(len(broken)))
        handler.end_headers()
        handler.wfile.write(broken)
    else:
        handler.send_header("Content-Length", str(len(body) + 100))
        handler.end_headers()
        handler.wfile.write(body)
    handler.wfile.flush()
    handler.close_connection = True
