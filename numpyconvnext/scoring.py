"""Scoring predictions: batched inference and the classification / regression reports that the
trainer prints each epoch and stores in checkpoints.

Class order: 0 Long, 1 Short, 2 Hold. Direction accuracy counts only the bars where the model
calls a direction (Long or Short) and asks whether the forward return had that sign.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("long", "short", "hold")


def predict_in_batches(model, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for every window of X[N, C, T], in eval mode, without keeping activations."""
    outputs = [model.predict(X[start : start + batch_size]) for start in range(0, len(X), batch_size)]
    if not outputs:
        return np.zeros((0, model.config["num_classes"]), dtype=model.dtype)
    return np.concatenate(outputs)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """counts[i, j] = number of samples of true class i predicted as class j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, forward_return: np.ndarray) -> dict:
    """Accuracy, direction accuracy, per-class precision/recall and the confusion matrix.

    precision_k = C[k, k] / sum_i C[i, k],  recall_k = C[k, k] / sum_j C[k, j]  (NaN when 0/0,
    stored as None). direction accuracy = mean over bars predicted Long/Short of
    [sign(forward return) matches the call].
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    counts = confusion_matrix(y_true, y_pred, len(CLASS_NAMES))
    predicted = counts.sum(axis=0)
    actual = counts.sum(axis=1)
    diagonal = np.diag(counts)
    calls = (y_pred == 0) | (y_pred == 1)
    right = ((y_pred == 0) & (forward_return > 0)) | ((y_pred == 1) & (forward_return < 0))
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else None,
        "direction_accuracy": float(right[calls].mean()) if calls.any() else None,
        "direction_calls": int(calls.sum()),
        "precision": {n: _ratio(diagonal[k], predicted[k]) for k, n in enumerate(CLASS_NAMES)},
        "recall": {n: _ratio(diagonal[k], actual[k]) for k, n in enumerate(CLASS_NAMES)},
        "confusion_matrix": counts.tolist(),
        "samples": int(len(y_true)),
    }


def regression_report(prediction: np.ndarray, forward_return: np.ndarray) -> dict:
    """Direction accuracy of sign(prediction) and the correlation with the realised return."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    forward_return = np.asarray(forward_return, dtype=np.float64)
    calls = prediction != 0
    right = np.sign(prediction) == np.sign(forward_return)
    correlation = None
    if len(prediction) > 1 and prediction.std() > 0 and forward_return.std() > 0:
        correlation = float(np.corrcoef(prediction, forward_return)[0, 1])
    return {
        "direction_accuracy": float(right[calls].mean()) if calls.any() else None,
        "direction_calls": int(calls.sum()),
        "correlation": correlation,
        "samples": int(len(prediction)),
    }


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray, forward_return: np.ndarray) -> dict:
    """Always predict the most frequent training class: its accuracy and direction accuracy."""
    majority = int(np.bincount(np.asarray(y_train), minlength=len(CLASS_NAMES)).argmax())
    report = classification_report(y_test, np.full(len(y_test), majority), forward_return)
    return {"class": CLASS_NAMES[majority], "accuracy": report["accuracy"],
            "direction_accuracy": report["direction_accuracy"]}


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None
