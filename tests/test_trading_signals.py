"""Signals from class probabilities (0 Long, 1 Short, 2 Hold)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyconvnext.trading.signals import (
    Signal,
    generate_signal,
    generate_signals,
    signal_direction,
)


@pytest.mark.parametrize(
    ("probs", "threshold", "expected"),
    [
        ([0.55, 0.30, 0.15], 0.6, "HOLD"),  # Long is the argmax but below the threshold
        ([0.55, 0.30, 0.15], 0.5, "LONG"),
        ([0.10, 0.70, 0.20], 0.6, "SHORT"),
        ([0.20, 0.20, 0.60], 0.6, "HOLD"),
        ([0.20, 0.25, 0.55], 0.9, "HOLD"),  # Hold is never thresholded away
        ([0.60, 0.25, 0.15], 0.6, "LONG"),  # exactly at the threshold trades
        ([0.45, 0.45, 0.10], 0.4, "HOLD"),  # Long/Short tie: direction unknown
    ],
)
def test_threshold_behaviour(probs, threshold, expected):
    signal, confidence = generate_signal(np.array(probs), confidence_threshold=threshold)
    assert signal == expected
    assert confidence == pytest.approx(max(probs))
    assert isinstance(confidence, float)


def test_enum_matches_class_order():
    assert [Signal.LONG, Signal.SHORT, Signal.HOLD] == [0, 1, 2]
    classes, _ = generate_signals(np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))
    np.testing.assert_array_equal(classes, [0, 1, 2])
    assert classes.dtype == np.int64


@pytest.mark.parametrize(
    "bad",
    [
        [0.5, 0.5],  # wrong shape
        [0.5, np.nan, 0.5],
        [0.5, np.inf, 0.5],
        [1.2, -0.2, 0.0],  # negative
        [0.5, 0.4, 0.0],  # sums to 0.9
    ],
)
def test_invalid_probabilities_raise(bad):
    with pytest.raises(ValueError):
        generate_signal(np.array(bad))


def test_invalid_threshold_raises():
    with pytest.raises(ValueError):
        generate_signal(np.array([0.2, 0.3, 0.5]), confidence_threshold=1.5)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), threshold=st.floats(0.0, 1.0), n=st.integers(1, 40))
def test_vectorised_equals_scalar(seed, threshold, n):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3) * 0.7, size=n)
    # a few exact ties and threshold hits
    probs[0] = [threshold / 2, threshold / 2, 1 - threshold] if n > 1 else probs[0]
    classes, confidence = generate_signals(probs, threshold)
    for i in range(n):
        signal, conf = generate_signal(probs[i], threshold)
        assert Signal[signal] == classes[i]
        assert conf == confidence[i]
    # confidence is always the max probability, and a trade always clears the threshold
    np.testing.assert_array_equal(confidence, probs.max(axis=1))
    traded = classes != Signal.HOLD
    assert np.all(confidence[traded] >= threshold)


def test_signal_direction():
    np.testing.assert_array_equal(signal_direction(np.array([0, 1, 2, 0])), [1, -1, 0, 1])
    np.testing.assert_array_equal(signal_direction(np.array(["LONG", "short", "Hold"])), [1, -1, 0])
    with pytest.raises(ValueError):
        signal_direction(np.array([0, 3]))
    with pytest.raises(ValueError):
        signal_direction(np.array(["BUY"]))
