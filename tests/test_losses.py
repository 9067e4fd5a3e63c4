"""Losses: hand-computed values (PyTorch's formulas written out), finite-difference gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from numpyconvnext.losses import cross_entropy, huber, log_softmax, mse, softmax

FAST = settings(max_examples=40, deadline=None)


def numerical_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f at x, one coordinate at a time (float64)."""
    grad = np.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        saved = flat_x[i]
        flat_x[i] = saved + h
        plus = f(x)
        flat_x[i] = saved - h
        minus = f(x)
        flat_x[i] = saved
        flat_grad[i] = (plus - minus) / (2 * h)
    return grad


# ---------------------------------------------------------------- cross-entropy, by hand


def test_cross_entropy_hand_example_smoothing_and_weights():
    # F.cross_entropy(logits, targets, weight=w, label_smoothing=0.1), reduction='mean':
    #   (1-eps) * sum_i w[y_i] nll_i / W  +  eps/K * sum_i sum_k w[k] (-log p_ik) / W,
    #   W = sum_i w[y_i]   (LossNLL.cpp, cross_entropy_loss_label_smoothing)
    logits = np.array([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
    targets = np.array([0, 2])
    w = [1.0, 2.0, 0.5]
    eps, K = 0.1, 3
    lse0 = math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.0))
    lse1 = math.log(math.exp(0.5) + math.exp(0.5) + math.exp(2.0))
    # -log p_ik = lse_i - z_ik
    nll0 = [lse0 - 2.0, lse0 - 1.0, lse0 - 0.0]
    nll1 = [lse1 - 0.5, lse1 - 0.5, lse1 - 2.0]
    W = w[0] + w[2]
    nll_term = (w[0] * nll0[0] + w[2] * nll1[2]) / W
    smooth_term = (w[0] * nll0[0] + w[1] * nll0[1] + w[2] * nll0[2]
                   + w[0] * nll1[0] + w[1] * nll1[1] + w[2] * nll1[2]) / W
    expected = (1 - eps) * nll_term + eps / K * smooth_term

    loss, dlogits = cross_entropy(logits, targets, label_smoothing=eps,
                                  class_weights=np.array(w))
    assert loss == pytest.approx(expected, rel=1e-12)
    assert loss == pytest.approx(0.5823258048, rel=1e-9)  # the same number, evaluated once
    assert dlogits.shape == logits.shape and dlogits.dtype == np.float64


def test_cross_entropy_hand_example_plain():
    # no smoothing, no weights: mean over rows of -log softmax(z)[y]
    logits = np.array([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
    lse0 = math.log(math.exp(2.0) + math.exp(1.0) + 1.0)
    lse1 = math.log(2 * math.exp(0.5) + math.exp(2.0))
    expected = ((lse0 - 1.0) + (lse1 - 0.5)) / 2  # targets 1 and 0
    loss, dlogits = cross_entropy(logits, np.array([1, 0]))
    assert loss == pytest.approx(expected, rel=1e-12)
    # d/dz = (softmax - onehot) / B
    p0 = np.exp(logits[0] - lse0)
    np.testing.assert_allclose(dlogits[0], (p0 - [0, 1, 0]) / 2, rtol=1e-12)


def test_cross_entropy_weights_of_ones_equal_no_weights():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4))
    targets = rng.integers(0, 4, size=6)
    a = cross_entropy(logits, targets, 0.2)
    b = cross_entropy(logits, targets, 0.2, class_weights=np.ones(4))
    assert a[0] == pytest.approx(b[0], rel=1e-14)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-14)


def test_cross_entropy_stable_for_huge_logits_and_float32():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    loss, dlogits = cross_entropy(logits, np.array([0, 1]))
    # row 0 is certain and right (loss 0), row 1 is uniform (loss log 3)
    assert loss == pytest.approx(math.log(3) / 2, rel=1e-6)
    assert dlogits.dtype == np.float32 and np.all(np.isfinite(dlogits))
    probs = softmax(logits)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(log_softmax(logits)), probs, rtol=1e-6, atol=1e-30)


# ---------------------------------------------------------------- cross-entropy, gradients


@st.composite
def ce_cases(draw):
    B = draw(st.integers(1, 5))
    K = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=draw(st.floats(0.1, 5.0)), size=(B, K))
    targets = rng.integers(0, K, size=B)
    smoothing = draw(st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]))
    weights = None if draw(st.booleans()) else rng.uniform(0.1, 3.0, size=K)
    return logits, targets, smoothing, weights


@FAST
@given(ce_cases())
def test_cross_entropy_gradient_matches_finite_differences(case):
    logits, targets, smoothing, weights = case
    loss, dlogits = cross_entropy(logits, targets, smoothing, weights)
    numeric = numerical_grad(lambda z: cross_entropy(z, targets, smoothing, weights)[0],
                             logits.copy())
    np.testing.assert_allclose(dlogits, numeric, atol=1e-7, rtol=1e-6)


@FAST
@given(ce_cases())
def test_cross_entropy_matches_smoothed_target_formula(case):
    # an independent vectorised evaluation of PyTorch's formula
    logits, targets, eps, weights = case
    B, K = logits.shape
    w = np.ones(K) if weights is None else weights
    z = logits - logits.max(axis=1, keepdims=True)
    neg_logp = np.log(np.exp(z).sum(axis=1, keepdims=True)) - z
    W = w[targets].sum()
    nll = (w[targets] * neg_logp[np.arange(B), targets]).sum() / W
    smooth = (neg_logp * w).sum() / W
    expected = (1 - eps) * nll + eps / K * smooth
    assert cross_entropy(logits, targets, eps, weights)[0] == pytest.approx(expected, rel=1e-10)


def test_cross_entropy_float32_close_to_float64():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 3))
    targets = rng.integers(0, 3, size=8)
    w = np.array([1.0, 2.0, 0.5])
    l64, d64 = cross_entropy(logits, targets, 0.1, w)
    l32, d32 = cross_entropy(logits.astype(np.float32), targets, 0.1, w)
    assert d32.dtype == np.float32
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(d32, d64, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(logits=np.zeros((2, 3, 1))), "shape"),
        (dict(logits=np.zeros((2, 3), dtype=np.int64)), "float32 or float64"),
        (dict(logits=np.array([[0.0, np.nan, 1.0], [0, 0, 0]])), "NaN"),
        (dict(targets=np.array([0, 1, 2])), "targets must have shape"),
        (dict(targets=np.array([0.0, 1.0])), "integer"),
        (dict(targets=np.array([0, 3])), r"\[0, 3\)"),
        (dict(targets=np.array([-1, 0])), r"\[0, 3\)"),
        (dict(label_smoothing=1.5), "label_smoothing"),
        (dict(class_weights=np.ones(2)), "class_weights must have shape"),
        (dict(class_weights=np.array([1.0, -1.0, 1.0])), "non-negative"),
        (dict(class_weights=np.array([0.0, 1.0, 1.0]), targets=np.array([0, 0])), "zero"),
    ],
)
def test_cross_entropy_rejects_bad_input(kwargs, message):
    args = dict(logits=np.zeros((2, 3)), targets=np.array([0, 1]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        cross_entropy(**args)


# ---------------------------------------------------------------- MSE and Huber


def test_mse_hand_case():
    predictions = np.array([1.0, 2.0, 5.0])
    targets = np.array([0.0, 2.5, 1.0])  # r = [1, -0.5, 4]
    loss, dpred = mse(predictions, targets)
    assert loss == pytest.approx((1 + 0.25 + 16) / 3, rel=1e-14)
    np.testing.assert_allclose(dpred, np.array([2.0, -1.0, 8.0]) / 3, rtol=1e-14)


def test_mse_column_predictions_keep_their_shape_and_dtype():
    predictions = np.array([[1.0], [2.0], [5.0]], dtype=np.float32)
    loss, dpred = mse(predictions, np.array([0.0, 2.5, 1.0]))
    assert loss == pytest.approx(5.75, rel=1e-6)
    assert dpred.shape == (3, 1) and dpred.dtype == np.float32
    np.testing.assert_allclose(dpred[:, 0], np.array([2.0, -1.0, 8.0]) / 3, rtol=1e-6)


def test_huber_hand_cases():
    predictions = np.array([1.0, 2.0, 5.0])
    targets = np.array([0.0, 2.5, 1.0])  # r = [1, -0.5, 4]
    # delta 1: r=1 is on the boundary (quadratic branch): 0.5; 0.125; 1*(4 - 0.5) = 3.5
    loss, dpred = huber(predictions, targets, delta=1.0)
    assert loss == pytest.approx((0.5 + 0.125 + 3.5) / 3, rel=1e-14)
    np.testing.assert_allclose(dpred, np.array([1.0, -0.5, 1.0]) / 3, rtol=1e-14)
    # delta 2: 0.5; 0.125; 2*(4 - 1) = 6
    loss, dpred = huber(predictions, targets, delta=2.0)
    assert loss == pytest.approx((0.5 + 0.125 + 6.0) / 3, rel=1e-14)
    np.testing.assert_allclose(dpred, np.array([1.0, -0.5, 2.0]) / 3, rtol=1e-14)
    # a negative outlier: r = -3, delta 1 -> 2.5, gradient -1
    loss, dpred = huber(np.array([0.0]), np.array([3.0]))
    assert loss == pytest.approx(2.5) and dpred[0] == pytest.approx(-1.0)


def test_huber_equals_half_mse_when_all_residuals_are_small():
    rng = np.random.default_rng(2)
    predictions, targets = rng.uniform(-1, 1, 10), rng.uniform(-1, 1, 10)
    h_loss, h_grad = huber(predictions, targets, delta=5.0)
    m_loss, m_grad = mse(predictions, targets)
    assert h_loss == pytest.approx(0.5 * m_loss, rel=1e-14)
    np.testing.assert_allclose(h_grad, 0.5 * m_grad, rtol=1e-14)


@FAST
@given(
    st.integers(1, 8),
    st.integers(0, 2**32 - 1),
    st.floats(0.2, 3.0),
    st.booleans(),
)
def test_regression_gradients_match_finite_differences(B, seed, delta, column):
    rng = np.random.default_rng(seed)
    shape = (B, 1) if column else (B,)
    predictions = rng.normal(scale=2.0, size=shape)
    targets = rng.normal(size=B)
    residuals = predictions.reshape(-1) - targets
    assume(np.all(np.abs(np.abs(residuals) - delta) > 1e-3))  # stay off Huber's kink
    for loss_fn in (mse, lambda p, t: huber(p, t, delta)):
        _, grad = loss_fn(predictions, targets)
        numeric = numerical_grad(lambda p, f=loss_fn: f(p, targets)[0], predictions.copy())
        assert grad.shape == shape
        np.testing.assert_allclose(grad, numeric, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(
    "predictions, targets, message",
    [
        (np.zeros((3, 2)), np.zeros(3), r"\[B\] or \[B, 1\]"),
        (np.zeros(3), np.zeros(4), "targets must have shape"),
        (np.array([0.0, np.inf]), np.zeros(2), "NaN or infinite"),
        (np.zeros(2), np.array([0.0, np.nan]), "NaN or infinite"),
        (np.zeros(2, dtype=np.int32), np.zeros(2), "float32 or float64"),
        (np.zeros(0), np.zeros(0), "empty"),
    ],
)
def test_regression_losses_reject_bad_input(predictions, targets, message):
    for loss_fn in (mse, huber):
        with pytest.raises(ValueError, match=message):
            loss_fn(predictions, targets)


def test_huber_rejects_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        huber(np.zeros(2), np.zeros(2), delta=0.0)
