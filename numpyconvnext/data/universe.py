"""A universe of symbols from Bybit: the instruments listed and the most traded perpetuals.

    list_instruments(client)            /v5/market/instruments-info, every page (cursor paging,
                                        1000 a page): {symbol: Instrument(status, contract_type,
                                        quote_coin)} for the client's category
    ranked_turnover(client)             /v5/market/tickers: [(symbol, turnover24h)], most first
    top_perpetuals(client, n)           the n linear perpetuals quoted in USDT with status
                                        Trading that turned over most in the last 24 h
    check_listed(symbols, instruments)  each asked-for symbol listed? (one-line ValueError if
                                        not) and the ones listed but not Trading

Bybit's turnover24h is in the quote coin (USDT). A ticker without an instrument, or an
instrument not Trading (PreLaunch, Delivering, Closed, Settling), never enters the top list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bybit import BybitClient, BybitResponseError

INSTRUMENTS_LIMIT = 1000
TRADING = "Trading"
PERPETUAL = "LinearPerpetual"


@dataclass(frozen=True)
class Instrument:
    """What instruments-info says of one symbol."""

    symbol: str
    status: str
    contract_type: str | None
    quote_coin: str | None


def list_instruments(client: BybitClient, max_pages: int = 50) -> dict[str, Instrument]:
    """Every instrument of the client's category, following ``nextPageCursor``."""
    out: dict[str, Instrument] = {}
    cursor = ""
    for _ in range(max_pages):
        params = {"category": client.category, "limit": INSTRUMENTS_LIMIT}
        if cursor:
            params["cursor"] = cursor
        result = client.request("/v5/market/instruments-info", params)
        page = result.get("list")
        if not isinstance(page, list):
            raise BybitResponseError("instruments-info: response has no list")
        for row in page:
            try:
                symbol, status = str(row["symbol"]).upper(), str(row["status"])
            except (TypeError, KeyError):
                raise BybitResponseError(f"instruments-info: bad row {str(row)[:200]}") from None
            out[symbol] = Instrument(symbol, status, row.get("contractType"), row.get("quoteCoin"))
        cursor = result.get("nextPageCursor") or ""
        if not cursor or not page:
            return out
    raise BybitResponseError(f"instruments-info: still more pages after {max_pages}")


def ranked_turnover(client: BybitClient) -> list[tuple[str, float]]:
    """``(symbol, turnover24h)`` of every ticker of the category, largest first (ties: by
    symbol); tickers without a finite turnover are left out."""
    page = client.request("/v5/market/tickers", {"category": client.category}).get("list")
    if not isinstance(page, list):
        raise BybitResponseError("tickers: response has no list")
    rows = []
    for row in page:
        try:
            symbol, turnover = str(row["symbol"]).upper(), float(row["turnover24h"])
        except (TypeError, KeyError, ValueError):
            continue
        if math.isfinite(turnover) and turnover >= 0:
            rows.append((symbol, turnover))
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def top_perpetuals(client: BybitClient, n: int, quote: str = "USDT") -> list[tuple[str, float]]:
    """The ``n`` most traded (24 h turnover) perpetuals quoted in ``quote`` with status Trading
    (fewer when fewer exist): ``[(symbol, turnover24h)]``."""
    if client.category != "linear":
        raise ValueError("the most traded perpetuals are ranked in the linear category")
    if n < 1:
        raise ValueError("--top needs N >= 1")
    instruments = list_instruments(client)
    chosen = []
    for symbol, turnover in ranked_turnover(client):
        found = instruments.get(symbol)
        if (found is not None and found.status == TRADING and found.contract_type == PERPETUAL
                and (found.quote_coin or quote) == quote):
            chosen.append((symbol, turnover))
            if len(chosen) == n:
                break
    return chosen


def check_listed(symbols: list[str], instruments: dict[str, Instrument],
                 category: str) -> list[Instrument]:
    """ValueError (one line) naming every symbol Bybit does not list in ``category``; else the
    instruments of ``symbols`` that are listed but not Trading."""
    missing = [s for s in symbols if s not in instruments]
    if missing:
        raise ValueError(f"Bybit lists no {category} symbol {', '.join(missing)}")
    return [instruments[s] for s in symbols if instruments[s].status != TRADING]
