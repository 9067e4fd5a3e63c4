"""Finite-difference gradient checks shared by the tests (float64 only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def directional_check(
    loss: Callable[[], float],
    array: np.ndarray,
    gradient: np.ndarray,
    rng: np.random.Generator,
    directions: int = 3,
    step: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> None:
    """Compare <gradient, v> with the central difference (L(a + h v) - L(a - h v)) / 2h.

    `loss()` re-evaluates the scalar loss reading `array` (perturbed in place and restored).
    """
    assert array.dtype == np.float64
    for _ in range(directions):
        v = rng.standard_normal(array.shape)
        original = array.copy()
        array += step * v
        plus = loss()
        array[...] = original - step * v
        minus = loss()
        array[...] = original
        numeric = (plus - minus) / (2 * step)
        analytic = float(np.sum(gradient * v))
        scale = max(abs(numeric), abs(analytic), 1.0)
        assert abs(numeric - analytic) <= rtol * scale + atol, (numeric, analytic)


def elementwise_check(
    loss: Callable[[], float],
    array: np.ndarray,
    gradient: np.ndarray,
    rng: np.random.Generator,
    samples: int = 6,
    step: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> None:
    """Central differences on a few randomly chosen single elements of `array`."""
    flat = array.reshape(-1)
    grad = gradient.reshape(-1)
    for index in rng.choice(flat.size, size=min(samples, flat.size), replace=False):
        original = flat[index]
        flat[index] = original + step
        plus = loss()
        flat[index] = original - step
        minus = loss()
        flat[index] = original
        numeric = (plus - minus) / (2 * step)
        assert abs(numeric - grad[index]) <= rtol * max(abs(numeric), 1.0) + atol, (
            index,
            numeric,
            grad[index],
        )
