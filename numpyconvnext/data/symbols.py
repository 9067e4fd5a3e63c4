"""Exchange symbols: the one check every command and every cache path goes through.

A symbol is what Bybit lists: letters, digits and ``-`` (dated futures such as ``BTC-27JUN25``),
starting with a letter or digit, at most 40 characters. Nothing else gets through, so a symbol
can never carry a path separator or ``..`` into a file name.
"""

from __future__ import annotations

import re

_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9-]{0,39}")


def validate_symbol(symbol: str) -> str:
    """The symbol in upper case; ValueError (one line) for anything an exchange would not list."""
    text = str(symbol).strip().upper()
    if not _SYMBOL.fullmatch(text):
        raise ValueError(f"bad symbol {symbol!r}: exchange symbols are letters, digits and '-' "
                         "only, e.g. BTCUSDT")
    return text


def parse_symbol_list(text: str) -> list[str]:
    """``"BTCUSDT, ethusdt"`` -> ``["BTCUSDT", "ETHUSDT"]``; ValueError (one line) for an empty
    list, an empty entry, a bad symbol or one named twice."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError("empty symbol list: give symbols separated by commas, e.g. "
                         "BTCUSDT,ETHUSDT")
    if not all(items):
        raise ValueError(f"empty entry in the symbol list {text!r}: separate symbols by single "
                         "commas, e.g. BTCUSDT,ETHUSDT")
    symbols = [validate_symbol(item) for item in items]
    twice = sorted({s for s in symbols if symbols.count(s) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} named twice in the symbol list")
    return symbols
