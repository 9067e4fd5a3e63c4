"""Finite-difference gradient checks shared by the tests (float64 only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def richardson(f: Callable[[float], float], step: float) -> float:
    """f'(0) from central differences at steps h and h/2, extrapolated: (4 D(h/2) - D(h)) / 3.

    A plain central difference is off by h^2/6 times the third derivative, which is not small
    where the loss is sharply curved (a LayerNorm over a nearly constant row); the
    extrapolation cancels that term, leaving O(h^4).
    """

    def central(h: float) -> float:
        return (f(h) - f(-h)) / (2 * h)

    return (4 * central(step / 2) - central(step)) / 3


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

        def at(offset: float, original=original, v=v) -> float:
            array[...] = original + offset * v
            return loss()

        numeric = richardson(at, step)
        array[...] = original
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

        def at(offset: float, index=index, original=original) -> float:
            flat[index] = original + offset
            return loss()

        numeric = richardson(at, step)
        flat[index] = original
        assert abs(numeric - grad[index]) <= rtol * max(abs(numeric), 1.0) + atol, (
            index,
            numeric,
            grad[index],
        )
