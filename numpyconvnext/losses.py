"""Loss functions with their gradients: cross-entropy (label smoothing, class weights), MSE, Huber.

Every loss returns ``(loss, dlogits)``: the scalar loss as a Python float and its gradient with
respect to the model output, same shape and dtype as that output, ready for ``model.backward``.
Reduction is always the mean, with PyTorch's definition of "mean" (see each docstring).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cross_entropy", "huber", "log_softmax", "mse", "softmax"]


def _check_float_array(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis.

    log p[k] = z[k] - max(z) - log(sum_j exp(z[j] - max(z))); the shift keeps exp() <= 1.
    """
    logits = np.asarray(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities p[k] = exp(z[k]) / sum_j exp(z[j]) over the last axis, same dtype."""
    logits = np.asarray(logits)
    exps = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exps / exps.sum(axis=-1, keepdims=True)


def cross_entropy(
    logits: np.ndarray,
    targets: np.ndarray,
    label_smoothing: float = 0.0,
    class_weights: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``logits [B, K]`` against integer ``targets [B]``, and its gradient.

    Matches ``torch.nn.functional.cross_entropy(logits, targets, weight=w,
    label_smoothing=eps, reduction='mean')`` (no ``ignore_index``). With log p = log_softmax(z)
    and W = sum_i w[y_i] (w = 1 when no weights are given, so W = B):

        loss = (1 - eps) * sum_i w[y_i] * (-log p_i[y_i]) / W
             + eps / K   * sum_i sum_k w[k] * (-log p_i[k]) / W

    i.e. each row's target is a_i[k] = (1 - eps) * w[y_i] * onehot(y_i)[k] + eps/K * w[k] and
    loss = sum_i sum_k a_i[k] * (-log p_i[k]) / W. Since d(-sum_k a_k log p_k)/dz_j =
    p_j * sum_k a_k - a_j:

        dlogits_i = (p_i * sum_k a_i[k] - a_i) / W

    Raises ValueError on bad shapes, non-finite values, targets outside [0, K), negative
    weights, or sum_i w[y_i] == 0 (where PyTorch would return NaN).
    """
    logits = _check_float_array("logits", logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [B, K], got {logits.shape}")
    B, K = logits.shape
    targets = np.asarray(targets)
    if targets.shape != (B,):
        raise ValueError(f"targets must have shape [{B}] to match logits {logits.shape}, "
                         f"got {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.min() < 0 or targets.max() >= K:
        raise ValueError(f"targets must lie in [0, {K}), got values in "
                         f"[{targets.min()}, {targets.max()}]")
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")

    dtype = logits.dtype
    if class_weights is None:
        weights = np.ones(K, dtype=dtype)
    else:
        weights = np.asarray(class_weights)
        if weights.shape != (K,):
            raise ValueError(f"class_weights must have shape [{K}], got {weights.shape}")
        if not np.issubdtype(weights.dtype, np.number) or not np.all(np.isfinite(weights)):
            raise ValueError("class_weights must be finite numbers")
        if np.any(weights < 0):
            raise ValueError("class_weights must be non-negative")
        weights = weights.astype(dtype)

    rows = np.arange(B)
    target_weights = weights[targets]                      # w[y_i], [B]
    weight_sum = float(target_weights.sum(dtype=np.float64))
    if weight_sum <= 0.0:
        raise ValueError("sum of class_weights over the batch targets is zero; the weighted "
                         "mean is undefined")

    # a_i[k]: the weighted, smoothed target distribution of each row
    smoothed = np.broadcast_to((label_smoothing / K) * weights, (B, K)).astype(dtype)
    smoothed[rows, targets] += (1.0 - label_smoothing) * target_weights

    logp = log_softmax(logits)
    loss = -float(np.sum(smoothed * logp, dtype=np.float64)) / weight_sum

    probs = np.exp(logp)
    dlogits = (probs * smoothed.sum(axis=1, keepdims=True) - smoothed) / dtype.type(weight_sum)
    return loss, dlogits.astype(dtype, copy=False)


def _regression_inputs(
    predictions: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``predictions [B]`` or ``[B, 1]`` and ``targets``; return residuals r = pred - y
    with the predictions' shape and dtype, and the predictions array."""
    predictions = _check_float_array("predictions", predictions)
    if not (predictions.ndim == 1 or (predictions.ndim == 2 and predictions.shape[1] == 1)):
        raise ValueError(f"predictions must have shape [B] or [B, 1], got {predictions.shape}")
    B = predictions.shape[0]
    targets = np.asarray(targets)
    if targets.shape not in ((B,), (B, 1)):
        raise ValueError(f"targets must have shape [{B}] or [{B}, 1] to match predictions "
                         f"{predictions.shape}, got {targets.shape}")
    if not (np.issubdtype(targets.dtype, np.floating) or np.issubdtype(targets.dtype, np.integer)):
        raise ValueError(f"targets must be real numbers, got dtype {targets.dtype}")
    if not np.all(np.isfinite(targets)):
        raise ValueError("targets contains NaN or infinite values")
    residuals = predictions - targets.astype(predictions.dtype).reshape(predictions.shape)
    return residuals, predictions


def mse(predictions: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error over the batch, and its gradient.

    loss = (1/B) * sum_i r_i^2 with r = predictions - targets;  dpredictions = 2 r / B.
    ``predictions`` is [B] or [B, 1]; ``targets`` is [B] or [B, 1]. The gradient has the
    predictions' shape and dtype.
    """
    residuals, predictions = _regression_inputs(predictions, targets)
    B = residuals.size
    loss = float(np.mean(np.square(residuals), dtype=np.float64))
    dpredictions = (2.0 / B) * residuals
    return loss, dpredictions.astype(predictions.dtype, copy=False)


def huber(
    predictions: np.ndarray, targets: np.ndarray, delta: float = 1.0
) -> tuple[float, np.ndarray]:
    """Mean Huber loss (PyTorch ``HuberLoss(delta=delta)``), and its gradient.

    With r = predictions - targets:
        l(r) = 0.5 * r^2                      if |r| <= delta
             = delta * (|r| - 0.5 * delta)    otherwise
        loss = (1/B) * sum_i l(r_i);   dpredictions = clip(r, -delta, delta) / B
    Quadratic near zero, linear (a gradient of at most delta) for outliers.
    """
    delta = float(delta)
    if not (np.isfinite(delta) and delta > 0.0):
        raise ValueError(f"delta must be a positive finite number, got {delta}")
    residuals, predictions = _regression_inputs(predictions, targets)
    B = residuals.size
    abs_residuals = np.abs(residuals)
    quadratic = abs_residuals <= delta
    per_sample = np.where(quadratic, 0.5 * np.square(residuals),
                          delta * (abs_residuals - 0.5 * delta))
    loss = float(np.mean(per_sample, dtype=np.float64))
    dpredictions = np.clip(residuals, -delta, delta) / B
    return loss, dpredictions.astype(predictions.dtype, copy=False)
