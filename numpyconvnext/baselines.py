"""Honest baselines for the walk-forward evaluation, all as per-bar directions (+1 long, -1 short,
0 flat) decided at a bar's close, traded like the model's with the same fees and slippage:

- buy-and-hold: always +1;  always-flat: always 0;
- momentum: ``sign(log(close_t / close_{t-N}))``, the last N-bar return's sign (N = the label
  horizon by default: "the next h bars repeat the last h");
- a linear model: multinomial logistic regression on the same normalised features as the
  network, taken at the last bar of each window, fitted on the fold's train part by full-batch
  gradient descent with an L2 penalty (the functions below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def momentum_directions(close: np.ndarray, end_index: np.ndarray, lookback: int) -> np.ndarray:
    """``sign(close[t] / close[t - lookback] - 1)`` at each decision bar t (int64, 0 if unchanged).

    Reads bars t - lookback .. t only (no look-ahead). Needs ``end_index >= lookback``.
    """
    close = np.asarray(close, dtype=np.float64)
    end_index = np.asarray(end_index, dtype=np.int64)
    if lookback < 1:
        raise ValueError("lookback must be >= 1")
    if end_index.size and end_index.min() < lookback:
        raise ValueError("momentum needs `lookback` bars before the first decision")
    return np.sign(np.log(close[end_index] / close[end_index - lookback])).astype(np.int64)


# --- multinomial logistic regression --------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum for stability."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def logistic_loss_and_grad(weights: np.ndarray, bias: np.ndarray, X: np.ndarray, y: np.ndarray,
                           l2: float, sample_weight: np.ndarray | None = None,
                           ) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted softmax cross-entropy with an L2 penalty on the weights (not the bias):

        p_i = softmax(x_i W + b),   a_i = w_i / sum_j w_j   (w_i = 1 without sample weights)
        L   = -sum_i a_i log p_i[y_i] + (l2 / 2) ||W||^2
        dL/dz_i = a_i (p_i - onehot(y_i)),   dW = X^T dZ + l2 W,   db = sum_i dZ_i

    Shapes: X [N, C], y [N] ints, W [C, K], b [K]. Returns (L, dW, db).
    """
    n = len(y)
    a = np.full(n, 1.0 / n) if sample_weight is None else sample_weight / sample_weight.sum()
    p = softmax(X @ weights + bias)
    rows = np.arange(n)
    loss = float(-np.sum(a * np.log(np.maximum(p[rows, y], 1e-300)))
                 + 0.5 * l2 * np.sum(weights * weights))
    dz = p
    dz[rows, y] -= 1.0
    dz *= a[:, None]
    return loss, X.T @ dz + l2 * weights, dz.sum(axis=0)


@dataclass
class LogisticRegression:
    """A fitted multinomial logistic regression: ``predict_proba(X) = softmax(X W + b)``."""

    weights: np.ndarray
    bias: np.ndarray
    losses: list[float]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, K]`` for features ``[N, C]``."""
        return softmax(np.asarray(X, dtype=np.float64) @ self.weights + self.bias)


def fit_logistic_regression(X: np.ndarray, y: np.ndarray, num_classes: int = 3, l2: float = 1e-3,
                            learning_rate: float = 0.5, iterations: int = 500,
                            sample_weight: np.ndarray | None = None) -> LogisticRegression:
    """Full-batch gradient descent from W = 0, b = 0: ``W -= lr dW``, ``b -= lr db``.

    The loss is convex, so the result does not depend on a seed. With standardised features
    (as the dataset's) a step of 0.5 is stable: the Hessian of the mean cross-entropy is at most
    half the largest eigenvalue of X^T X / N per class.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError("X must be [N, C] and y [N] with N > 0")
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
    weights = np.zeros((X.shape[1], num_classes))
    bias = np.zeros(num_classes)
    losses = []
    for _ in range(iterations):
        loss, d_weights, d_bias = logistic_loss_and_grad(weights, bias, X, y, l2, sample_weight)
        losses.append(loss)
        weights -= learning_rate * d_weights
        bias -= learning_rate * d_bias
    return LogisticRegression(weights, bias, losses)
