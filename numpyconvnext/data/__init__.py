"""Data layer: candles from Bybit, files or a synthetic market; features, labels, datasets."""

from .augment import AugmentConfig, augment, jitter, magnitude_scale, time_warp, window_slice
from .bybit import (
    BybitClient,
    BybitCredentials,
    BybitError,
    BybitParameterError,
    BybitResponseError,
    BybitUnreachableError,
    sign_request,
)
from .candles import CANDLE_COLUMNS
from .dataset import (
    Fold,
    Normalizer,
    PreparedData,
    SplitPart,
    chronological_split,
    class_weights,
    prepare_dataset,
    sliding_windows,
    walk_forward_folds,
)
from .features import FEATURE_NAMES, INDICATOR_NAMES, WARMUP_BARS, build_features, compute_indicators
from .funding import (
    constant_funding,
    funding_per_bar,
    load_funding,
    save_funding,
    synthetic_funding,
    update_funding_cache,
)
from .intervals import (
    INTERVALS,
    interval_to_ms,
    interval_to_timedelta,
    normalize_interval,
    periods_per_year,
    to_bybit_interval,
)
from .labels import CLASS_NAMES, LabelConfig, make_labels
from .pool import CalendarFold, PooledData, calendar_split, calendar_walk_forward, prepare_pooled
from .store import (
    CandleFileError,
    CandleGapWarning,
    CandleGridWarning,
    gap_report,
    load_candles,
    repair_candles,
    save_candles,
    update_cache,
)
from .symbols import validate_symbol
from .synthetic import synthetic_candles

__all__ = [
    "AugmentConfig", "BybitClient", "CalendarFold", "PooledData", "calendar_split",
    "calendar_walk_forward", "prepare_pooled", "BybitCredentials", "BybitError", "BybitParameterError",
    "BybitResponseError", "BybitUnreachableError", "CANDLE_COLUMNS", "CLASS_NAMES",
    "CandleFileError", "CandleGapWarning", "CandleGridWarning", "FEATURE_NAMES", "Fold",
    "INDICATOR_NAMES", "INTERVALS", "LabelConfig", "Normalizer", "PreparedData", "SplitPart",
    "WARMUP_BARS", "augment", "build_features", "chronological_split", "class_weights",
    "compute_indicators", "constant_funding", "funding_per_bar", "gap_report", "interval_to_ms",
    "interval_to_timedelta", "jitter", "load_candles", "load_funding", "magnitude_scale",
    "make_labels", "normalize_interval", "periods_per_year", "prepare_dataset", "repair_candles",
    "save_candles", "save_funding", "sign_request", "sliding_windows", "synthetic_candles",
    "synthetic_funding", "time_warp", "to_bybit_interval", "update_cache", "update_funding_cache",
    "validate_symbol", "walk_forward_folds", "window_slice",
]
