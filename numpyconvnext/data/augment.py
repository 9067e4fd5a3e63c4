"""Training-time augmentation of window batches ``[B, C, T]`` (float32 in, float32 out).

Each transform takes a ``strength`` and a ``np.random.Generator``, is vectorised over the batch
and is the identity at strength 0 (it then returns a copy and draws nothing):

- ``jitter``: add Gaussian noise with std ``strength`` (inputs are normalised, so in std units).
- ``magnitude_scale``: multiply each (sample, channel) by ``1 + strength * N(0, 1)``.
- ``time_warp``: resample along a random smooth monotone time map whose local speed is
  ``exp(strength * smooth noise)``; first and last steps stay in place.
- ``window_slice``: keep the last ``L`` steps, ``L`` uniform in ``[T (1 - strength), T]``,
  stretched back to T. The crop always keeps the window's last bar, because the label is about
  what follows it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_WARP_KNOTS = 4


def _interpolate(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x [B, C, T]`` at fractional time ``positions [B, T']``."""
    T = x.shape[-1]
    positions = np.clip(positions, 0.0, T - 1)
    left = np.minimum(np.floor(positions).astype(np.int64), T - 2) if T > 1 else np.zeros_like(
        positions, dtype=np.int64)
    frac = (positions - left)[:, None, :].astype(x.dtype)
    left_b = np.broadcast_to(left[:, None, :], (x.shape[0], x.shape[1], left.shape[-1]))
    lo = np.take_along_axis(x, left_b, axis=-1)
    hi = np.take_along_axis(x, np.minimum(left_b + 1, T - 1), axis=-1)
    return lo + frac * (hi - lo)


def jitter(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``x + strength * N(0, 1)`` elementwise."""
    if strength == 0:
        return x.copy()
    return (x + strength * rng.standard_normal(x.shape, dtype=np.float32)).astype(x.dtype)


def magnitude_scale(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``x * (1 + strength * N(0, 1))`` with one factor per (sample, channel)."""
    if strength == 0:
        return x.copy()
    factor = 1.0 + strength * rng.standard_normal((x.shape[0], x.shape[1], 1), dtype=np.float32)
    return (x * factor).astype(x.dtype)


def time_warp(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Resample each sample along a random monotone time map (endpoints fixed)."""
    if strength == 0:
        return x.copy()
    B, _, T = x.shape
    knots = rng.standard_normal((B, _WARP_KNOTS))
    grid = np.linspace(0.0, _WARP_KNOTS - 1, T - 1)
    # smooth log-speed: piecewise-linear through the knots, one value per time step
    i = np.minimum(grid.astype(np.int64), _WARP_KNOTS - 2)
    f = grid - i
    log_speed = knots[:, i] * (1 - f) + knots[:, i + 1] * f
    steps = np.exp(strength * log_speed)
    positions = np.concatenate([np.zeros((B, 1)), np.cumsum(steps, axis=1)], axis=1)
    positions *= (T - 1) / positions[:, -1:]
    return _interpolate(x, positions).astype(x.dtype)


def window_slice(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Crop the last ``L`` steps (``L >= T (1 - strength)``) and stretch them back to T."""
    if strength == 0:
        return x.copy()
    B, _, T = x.shape
    keep = rng.uniform(1.0 - min(strength, 1.0), 1.0, B) * (T - 1)
    start = (T - 1) - keep
    positions = start[:, None] + keep[:, None] * np.linspace(0.0, 1.0, T)[None, :]
    return _interpolate(x, positions).astype(x.dtype)


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each transform (0 = off); ``to_dict``/``from_dict`` for checkpoints."""

    jitter: float = 0.0
    scale: float = 0.0
    time_warp: float = 0.0
    window_slice: float = 0.0

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AugmentConfig:
        """Inverse of ``to_dict``."""
        return cls(**data)


def augment(x: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Apply slice, warp, scale, jitter in that order (each skipped at strength 0)."""
    out = x
    for transform, strength in ((window_slice, config.window_slice), (time_warp, config.time_warp),
                                (magnitude_scale, config.scale), (jitter, config.jitter)):
        if strength:
            out = transform(out, strength, rng)
    return out.copy() if out is x else out
