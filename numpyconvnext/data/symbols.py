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
