"""JSON-safe values for the reports and logs we write."""

from __future__ import annotations

import math

import numpy as np


def jsonable(value):
    """Nested dicts/lists with numpy scalars and arrays turned into Python values, NaN into None
    and infinities into the strings "inf" / "-inf" (JSON has neither)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value
