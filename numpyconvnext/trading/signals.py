"""Turn class probabilities into trading signals.

Class order everywhere: 0 = Long, 1 = Short, 2 = Hold.

Rule (the spec's ``generate_signal``):

    c          = argmax(p)                 over (p_long, p_short, p_hold)
    confidence = max(p)
    signal     = HOLD   if c is Long/Short and p[c] < confidence_threshold
               = c      otherwise

A tie for the maximum between Long and Short is HOLD (the model cannot tell the direction);
any other tie goes to the earlier class (``np.argmax``). ``confidence`` is always the maximum
probability, also when the threshold turned a Long/Short into HOLD.

Probabilities are validated: shape ``[..., 3]``, finite, non-negative, and each row sums to 1
within ``SUM_TOLERANCE`` (softmax outputs in float32 are well inside it).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

SUM_TOLERANCE = 1e-4


class Signal(IntEnum):
    """The three classes, in the model's output order."""

    LONG = 0
    SHORT = 1
    HOLD = 2


# +1 long, -1 short, 0 flat, indexed by class id.
DIRECTION_BY_CLASS = np.array([1, -1, 0], dtype=np.int64)


def validate_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Return ``probabilities`` as float64 ``[..., 3]`` or raise ``ValueError``."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != 3:
        raise ValueError(f"probabilities must have shape [..., 3], got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite")
    if np.any(p < 0.0):
        raise ValueError("probabilities must be non-negative")
    sums = p.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > SUM_TOLERANCE):
        worst = float(sums.flat[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"probabilities must sum to 1 (±{SUM_TOLERANCE}), got a row summing to {worst}"
        )
    return p


def _check_threshold(confidence_threshold: float) -> None:
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")


def generate_signals(
    probabilities: np.ndarray, confidence_threshold: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``generate_signal`` over ``[N, 3]`` (or any ``[..., 3]``).

    Returns ``(classes, confidence)``: int64 class ids (0 Long, 1 Short, 2 Hold) and float64
    ``max(p)``, both of shape ``probabilities.shape[:-1]``.
    """
    _check_threshold(confidence_threshold)
    p = validate_probabilities(probabilities)
    classes = np.argmax(p, axis=-1).astype(np.int64)
    confidence = p.max(axis=-1)
    directional_tie = (p[..., 0] == p[..., 1]) & (p[..., 0] == confidence)
    weak = (classes != Signal.HOLD) & (confidence < confidence_threshold)
    classes = np.where(weak | directional_tie, np.int64(Signal.HOLD), classes)
    return classes, confidence


def generate_signal(
    probabilities: np.ndarray, confidence_threshold: float = 0.6
) -> tuple[str, float]:
    """One probability vector ``[3]`` -> ``("LONG" | "SHORT" | "HOLD", confidence)``."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (3,):
        raise ValueError(f"probabilities must have shape [3], got {p.shape}")
    classes, confidence = generate_signals(p[None, :], confidence_threshold)
    return Signal(int(classes[0])).name, float(confidence[0])


def signal_direction(signals: np.ndarray) -> np.ndarray:
    """Class ids or names -> direction: Long +1, Short -1, Hold 0 (int64, same shape).

    Accepts ints 0/1/2 or the strings "LONG"/"SHORT"/"HOLD" (any case).
    """
    s = np.asarray(signals)
    if s.dtype.kind in "USO":
        names = np.char.upper(s.astype(str))
        out = np.full(names.shape, -99, dtype=np.int64)
        for member in Signal:
            out[names == member.name] = DIRECTION_BY_CLASS[member.value]
        if np.any(out == -99):
            bad = names[out == -99].flat[0]
            raise ValueError(f"unknown signal name {bad!r}; expected LONG, SHORT or HOLD")
        return out
    if s.dtype.kind not in "iub":
        raise ValueError(f"signals must be integer class ids or names, got dtype {s.dtype}")
    if s.size and (s.min() < 0 or s.max() > 2):
        raise ValueError("signal class ids must be 0 (Long), 1 (Short) or 2 (Hold)")
    return DIRECTION_BY_CLASS[s.astype(np.int64)]
