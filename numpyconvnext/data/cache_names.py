"""Cache file names: the one scheme every cached market file follows, built and read here.

    {SYMBOL}_{category}_{interval}.{csv|json}   candles    BTCUSDT_linear_1h.csv
    {SYMBOL}_{category}_funding.csv             funding    BTCUSDT_linear_funding.csv
    {SYMBOL}_{interval}.{csv|json}              candles, the old name without a category
                                                (written when linear was the only market)

The symbol is checked by ``symbols.validate_symbol`` (so no name can carry a path into the
cache folder), the category is one of ``CATEGORIES`` and the interval is canonical
(``normalize_interval``). ``parse_cache_name`` reads a name back; a user's own file name may
say only some of it (``h_1h.csv`` names an interval, ``my_candles.csv`` nothing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .intervals import normalize_interval
from .symbols import validate_symbol

CATEGORIES = ("linear", "spot", "inverse")
FUNDING = "funding"


def cache_file(out_dir: str | os.PathLike, symbol: str, kind: str, category: str | None,
               fmt: str = "csv") -> Path:
    """``out_dir/SYMBOL[_category]_kind.fmt``; ``kind`` is an interval or ``FUNDING``."""
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
    kind = kind if kind == FUNDING else normalize_interval(kind)
    market = validate_symbol(symbol) if category is None else f"{validate_symbol(symbol)}_{category}"
    return Path(out_dir) / f"{market}_{kind}.{fmt}"


@dataclass(frozen=True)
class CacheName:
    """What a file name says; None for each part it does not say. ``symbol`` is set only for
    a whole cache name (``SYMBOL[_category]_interval`` or ``SYMBOL_category_funding``)."""

    symbol: str | None
    category: str | None
    interval: str | None
    funding: bool = False


def parse_cache_name(path: str | os.PathLike) -> CacheName:
    """Read a cache file name back (see the module docstring)."""
    parts = Path(path).stem.split("_")
    funding = len(parts) == 3 and parts[-1] == FUNDING
    interval = None
    if len(parts) >= 2 and not funding:
        try:
            interval = normalize_interval(parts[-1])
        except ValueError:
            interval = None
    category = parts[-2] if len(parts) >= 3 and parts[-2] in CATEGORIES else None
    symbol = None
    if (interval is not None or (funding and category)) and len(parts) == (3 if category else 2):
        try:
            symbol = validate_symbol(parts[0])
        except ValueError:
            symbol = None
    return CacheName(symbol, category, interval, funding and symbol is not None)
