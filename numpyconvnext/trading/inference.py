"""From a trained checkpoint and candles to decisions: probabilities, signals and position sizes.

The one path ``backtest`` and ``live`` share, so a decision made live equals the one the
backtest made for the same bar; the signal and sizing rules are the strategy's
(``strategy.plan_positions``), the one definition ``evaluate`` trades too.

For every decision bar ``t`` (the window ends with bar t's close; the trade is filled at bar
t+1's open):

  1. features  ``F = build_features(candles)`` ``[T_total, C]``, rows causal (row t reads
     candles 0..t), checked against the checkpoint's ``feature_names``;
  2. normalise with the checkpoint's stored statistics, never refitted:
     ``Z[c, s] = (F[s, c] - mean_c) / std_c``;
  3. window ``X_t = Z[:, t - window + 1 .. t]`` ``[C, window]``; batched ``predict_proba``
     (calibrated with the checkpoint's temperature unless the strategy says otherwise);
  4. signal   classification: ``generate_signals(p_t, confidence)`` (0 Long, 1 Short, 2 Hold);
              regression (``num_classes == 1``, output = forward log return / target_scale):
              ``r_hat_t = output_t * target_scale`` and
              ``signal = Long if r_hat_t > thr_t, Short if r_hat_t < -thr_t, else Hold``,
              ``thr_t`` = the label threshold the model was trained with (``label_threshold``:
              fixed, or ``vol_multiple * sigma_t * sqrt(horizon)`` from returns up to t), or a
              fixed ``regression_threshold`` (a log return) if given;
  5. size     the strategy's (``strategy.plan_positions``): half Kelly in risk units on
              ``q = p_side / (p_L + p_S)`` with the ATR stop ``stop_loss * ATR_t`` (Wilder ATR
              from bars 0..t), ``units = min(risk * equity / stop_distance, max_exposure *
              equity / close_t)``, ``fraction = units * close_t / equity``. Regression models
              give no probability: ``q = 1`` is used, so the risk budget does the sizing.
              Hold -> 0; spot never shorts. Sizes are >= 0 and finite; the direction is in the
              signal.

Nothing here reads a candle after bar t for the decision at t: features, ATR and the
regression threshold are causal, the normaliser is fixed, and the window ends at t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from numpyconvnext.data.dataset import Normalizer, sliding_windows
from numpyconvnext.data.features import FEATURE_NAMES, WARMUP_BARS, build_features
from numpyconvnext.data.labels import LabelConfig, label_threshold
from numpyconvnext.data.pool import pick_normalizer

from .signals import Signal
from .sizing import average_true_range
from .strategy import PositionPlan, Strategy, plan_positions

DEFAULT_EQUITY = 10_000.0


class IncompatibleModelError(ValueError):
    """The checkpoint cannot be used for inference here; the message is one readable line."""


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint's inputs are built: feature list, window, normaliser, labels."""

    feature_names: tuple[str, ...]
    window: int
    warmup_bars: int
    normalizer: Normalizer
    label_config: LabelConfig
    regression: bool
    target_scale: float
    symbols: tuple[str, ...] = ()
    normalizer_symbol: str | None = None

    @property
    def pooled(self) -> bool:
        """True for a model trained on a pool of symbols."""
        return bool(self.symbols)

    def normalizer_note(self, symbol: str | None) -> str | None:
        """For a pooled model: which normaliser the inputs of ``symbol`` use, in one line (None
        for a single-symbol model, which has only one)."""
        if not self.pooled:
            return None
        if self.normalizer_symbol is not None:
            return f"normaliser: {self.normalizer_symbol}'s own (fitted on its training rows)"
        who = symbol.upper() if symbol else "these candles"
        return (f"normaliser: the pool's ({who} not among the {len(self.symbols)} training "
                f"symbols {', '.join(self.symbols)})")

    @property
    def first_decision_index(self) -> int:
        """The first bar whose whole window has finite features: ``warmup_bars + window - 1``."""
        return self.warmup_bars + self.window - 1

    @property
    def min_candles(self) -> int:
        """Candles needed for a single decision."""
        return self.first_decision_index + 1


def preprocessing_of(model, symbol: str | None = None) -> Preprocessing:
    """Read and check a loaded model's stored preprocessing (``model.metadata``).

    A model trained on a pool of symbols keeps a normaliser per symbol and a pooled one:
    ``symbol``'s own is used when it was in the pool, else the pooled one
    (``Preprocessing.normalizer_symbol`` says which; ``normalizer_note`` says it in words).

    Raises ``IncompatibleModelError`` when the checkpoint was not written by the trainer, its
    features differ from this version's ``FEATURE_NAMES``, or its shapes do not fit the model.
    """
    metadata = getattr(model, "metadata", None) or {}
    stored = metadata.get("preprocessing")
    if not isinstance(stored, dict):
        raise IncompatibleModelError(
            "the checkpoint has no preprocessing metadata (not written by the trainer); "
            "its inputs cannot be rebuilt")
    try:
        names = tuple(stored["feature_names"])
        window = int(stored["window"])
        warmup = int(stored.get("warmup_bars", WARMUP_BARS))
        chosen, normalizer_symbol = pick_normalizer(stored, symbol)
        normalizer = Normalizer.from_dict(chosen)
        symbols = tuple(stored.get("symbols") or ())
        label_config = LabelConfig.from_dict(stored["label_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise IncompatibleModelError(f"the checkpoint's preprocessing is unreadable: {error}") from None
    if names != FEATURE_NAMES:
        missing = [n for n in FEATURE_NAMES if n not in names]
        extra = [n for n in names if n not in FEATURE_NAMES]
        detail = (f"missing {', '.join(missing[:3])}" if missing else "") + (
            ("; " if missing and extra else "") + (f"unknown {', '.join(extra[:3])}" if extra else ""))
        raise IncompatibleModelError(
            f"the checkpoint was trained on different features ({len(names)} channels"
            f"{': ' + detail if detail else ', other order'}); this version builds "
            f"{len(FEATURE_NAMES)}: retrain the model")
    if warmup < WARMUP_BARS:
        raise IncompatibleModelError(f"the checkpoint's feature warm-up ({warmup} bars) is shorter "
                                     f"than this version's ({WARMUP_BARS}): retrain the model")
    config = model.config
    if config["in_channels"] != len(names):
        raise IncompatibleModelError(f"the model takes {config['in_channels']} channels but its "
                                     f"preprocessing builds {len(names)}")
    if window < 32 or window % 32:
        raise IncompatibleModelError(f"stored window {window} is not a positive multiple of 32")
    if normalizer.mean.shape != (len(names),) or normalizer.std.shape != (len(names),) or not (
            np.isfinite(normalizer.mean).all() and (normalizer.std > 0).all()):
        raise IncompatibleModelError("the checkpoint's normaliser does not match its features")
    num_classes = config["num_classes"]
    if num_classes not in (1, 3):
        raise IncompatibleModelError(f"the model has {num_classes} outputs; expected 3 classes "
                                     "(Long, Short, Hold) or 1 (regression)")
    target_scale = float(metadata.get("target_scale", 1.0) or 1.0)
    if num_classes == 1 and not (np.isfinite(target_scale) and target_scale > 0):
        raise IncompatibleModelError(f"regression checkpoint with bad target_scale {target_scale}")
    return Preprocessing(names, window, warmup, normalizer, label_config, num_classes == 1,
                         target_scale, symbols, normalizer_symbol)


def normalized_features(candles: pd.DataFrame, preprocessing: Preprocessing,
                        dtype: np.dtype = np.float32) -> np.ndarray:
    """The model's input matrix ``[C, T_total]``: features normalised with the stored stats.

    Warm-up columns (before ``warmup_bars``) are NaN; every later column reads candles up to
    its own bar only.
    """
    features = build_features(candles)
    if tuple(features.columns) != preprocessing.feature_names:  # FEATURE_NAMES changed under us
        raise IncompatibleModelError("build_features no longer yields the checkpoint's features")
    rows = features.to_numpy(np.float64)
    return np.ascontiguousarray(preprocessing.normalizer.apply(rows, channel_axis=-1).T, dtype=dtype)


def valid_decision_indices(n_candles: int, preprocessing: Preprocessing) -> np.ndarray:
    """Every bar that can be decided: ``first_decision_index .. n_candles - 1``."""
    return np.arange(preprocessing.first_decision_index, n_candles, dtype=np.int64)


def predict_outputs(model, matrix: np.ndarray, end_index: np.ndarray, window: int,
                    batch_size: int = 256, calibrated: bool = True) -> np.ndarray:
    """Model outputs for the windows of ``matrix [C, T_total]`` ending at ``end_index``.

    Probabilities ``[N, 3]`` (``predict_proba``, temperature-scaled if ``calibrated``) for a
    classifier, raw outputs ``[N, 1]`` for a regression head. Windows are gathered one batch at
    a time, so memory stays ``batch_size * C * window``.
    """
    end_index = np.asarray(end_index, dtype=np.int64)
    windows = sliding_windows(matrix, window)  # a view: window k covers columns k..k+window-1
    num_classes = model.config["num_classes"]
    out = np.empty((len(end_index), num_classes), dtype=np.float64)
    model.eval()
    for start in range(0, len(end_index), batch_size):
        rows = end_index[start : start + batch_size] - window + 1
        batch = windows[rows]
        if not np.isfinite(batch).all():
            bad = int(rows[~np.isfinite(batch).all(axis=(1, 2))][0]) + window - 1
            raise ValueError(f"the window ending at bar {bad} has non-finite features")
        out[start : start + len(rows)] = (model.predict_proba(batch, calibrated) if num_classes > 1
                                          else model.predict(batch))
    return out


@dataclass
class Decisions:
    """Per decision bar (all arrays ``[N]`` unless noted), in time order.

    end_index         candle row of the bar the decision was made at (its close)
    timestamp         that bar's open time (UTC)
    close             that bar's close
    probabilities     ``[N, 3]`` p(Long), p(Short), p(Hold); None for a regression model
    predicted_return  forward log return over the label horizon (regression only, else None)
    signal            int64 class id: 0 Long, 1 Short, 2 Hold
    confidence        max probability (classification); regression: |r_hat| / (|r_hat| + thr)
                      in [0, 1), 0.5 exactly at the threshold
    win_probability   q fed to Kelly: p_side / (p_long + p_short) (regression: 1; NaN for Hold)
    atr               Wilder ATR at the bar; stop_distance = stop_loss * atr (price units)
    fraction          suggested fraction of equity (>= 0; 0 for Hold)
    units             suggested units, ``fraction * equity / close``
    strategy          the strategy these decisions follow, with the checkpoint's choices filled in
    """

    end_index: np.ndarray
    timestamp: pd.DatetimeIndex
    close: np.ndarray
    probabilities: np.ndarray | None
    predicted_return: np.ndarray | None
    signal: np.ndarray
    confidence: np.ndarray
    win_probability: np.ndarray
    atr: np.ndarray
    stop_distance: np.ndarray
    fraction: np.ndarray
    units: np.ndarray
    equity: float
    strategy: Strategy
    normalizer_note: str | None = None

    def __len__(self) -> int:
        return len(self.end_index)

    def signal_series(self) -> pd.Series:
        """Signals indexed by decision time (for ``backtest``)."""
        return pd.Series(self.signal, index=self.timestamp, name="signal")

    def fraction_series(self) -> pd.Series:
        """Suggested fractions indexed by decision time (the backtest's ``size``)."""
        return pd.Series(self.fraction, index=self.timestamp, name="fraction")

    @property
    def plan(self) -> PositionPlan:
        """The decisions as the strategy's position plan (for ``strategy.run_strategy``)."""
        return PositionPlan(signal=self.signal, win_probability=self.win_probability,
                            stop_distance=self.stop_distance, fraction=self.fraction)

    def frame(self) -> pd.DataFrame:
        """One row per decision, ready for ``to_csv``."""
        frame = pd.DataFrame({"timestamp": self.timestamp, "bar": self.end_index,
                              "close": self.close})
        if self.probabilities is not None:
            for k, name in enumerate(("p_long", "p_short", "p_hold")):
                frame[name] = self.probabilities[:, k]
        if self.predicted_return is not None:
            frame["predicted_return"] = self.predicted_return
        frame["signal"] = [Signal(int(s)).name for s in self.signal]
        frame["confidence"] = self.confidence
        frame["win_probability"] = self.win_probability
        frame["atr"] = self.atr
        frame["stop_distance"] = self.stop_distance
        frame["fraction"] = self.fraction
        frame["units"] = self.units
        return frame


def decide(
    model,
    candles: pd.DataFrame,
    end_index: np.ndarray | None = None,
    *,
    strategy: Strategy | None = None,
    equity: float = DEFAULT_EQUITY,
    regression_threshold: float | None = None,
    batch_size: int = 256,
    symbol: str | None = None,
) -> Decisions:
    """Signals and suggested sizes for the bars ``end_index`` (default: every decidable bar).

    ``strategy`` (default ``Strategy()``) gives the signal rule, sizing and stops; what it leaves
    open (confidence, payoff ratio) comes from the checkpoint's stored choices. See the module
    docstring for the math. Raises ``IncompatibleModelError`` for a model that cannot be used
    and ``ValueError`` for candles too short or indices out of range. ``symbol`` names the
    candles' market: a model trained on a pool normalises them with that symbol's own
    statistics when it was in the pool, else with the pooled ones (``Decisions.normalizer_note``).
    """
    prep = preprocessing_of(model, symbol)
    strategy = (strategy or Strategy()).with_checkpoint(getattr(model, "metadata", None))
    n = len(candles)
    if n < prep.min_candles:
        raise ValueError(f"{n} candles are too few: the model needs {prep.min_candles} "
                         f"({prep.warmup_bars} warm-up + window {prep.window})")
    if end_index is None:
        end_index = valid_decision_indices(n, prep)
    end_index = np.asarray(end_index, dtype=np.int64).reshape(-1)
    if len(end_index) and (end_index.min() < prep.first_decision_index or end_index.max() >= n):
        raise ValueError(f"decision bars must lie in {prep.first_decision_index}..{n - 1} "
                         f"(warm-up {prep.warmup_bars} + window {prep.window})")
    if not (np.isfinite(equity) and equity > 0):
        raise ValueError(f"equity must be positive, got {equity}")

    matrix = normalized_features(candles, prep, model.dtype)
    outputs = predict_outputs(model, matrix, end_index, prep.window, batch_size,
                              calibrated=strategy.calibrated)
    close_all = candles["close"].to_numpy(np.float64)
    close = close_all[end_index]
    atr = average_true_range(candles["high"].to_numpy(np.float64),
                             candles["low"].to_numpy(np.float64), close_all,
                             strategy.atr_period)[end_index]
    stop_distance = atr * strategy.stop_loss if strategy.stop_loss is not None else \
        np.full(len(end_index), np.nan)
    if prep.regression:
        probabilities = None
        predicted = outputs[:, 0] * prep.target_scale
        if regression_threshold is not None:
            threshold = np.full(len(end_index), float(regression_threshold))
        else:
            threshold = label_threshold(close_all, prep.label_config)[end_index]
        if not np.isfinite(threshold).all() or (threshold < 0).any():
            raise ValueError("the regression threshold is undefined at some decision bars "
                             "(volatility window still filling); pass regression_threshold")
        signal = np.where(predicted > threshold, Signal.LONG,
                          np.where(predicted < -threshold, Signal.SHORT, Signal.HOLD)).astype(np.int64)
        move = np.abs(predicted)
        with np.errstate(divide="ignore", invalid="ignore"):
            conf = np.where(move + threshold > 0, move / (move + threshold), 0.0)
        plan = plan_positions(strategy, close, stop_distance, signal=signal,
                              win_prob=np.ones(len(end_index)))
    else:
        probabilities = outputs
        predicted = None
        conf = probabilities.max(axis=1)
        plan = plan_positions(strategy, close, stop_distance, probabilities)
    timestamps = pd.DatetimeIndex(candles["timestamp"], name="timestamp")[end_index]
    return Decisions(end_index=end_index, timestamp=timestamps, close=close,
                     probabilities=probabilities, predicted_return=predicted, signal=plan.signal,
                     confidence=np.asarray(conf, dtype=np.float64),
                     win_probability=np.where(plan.signal == Signal.HOLD, np.nan,
                                              plan.win_probability),
                     atr=atr, stop_distance=stop_distance, fraction=plan.fraction,
                     units=plan.fraction * equity / close, equity=float(equity), strategy=strategy,
                     normalizer_note=prep.normalizer_note(symbol))
