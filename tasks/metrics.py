"""Classification metrics shared by training summaries and the evaluate stage."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy, over
    equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str], n_bins: int = 15) -> dict:
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    predicted = probs.argmax(axis=1)
    label_ids = list(range(len(classes)))
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=label_ids, zero_division=0)),
        "weighted_f1": float(f1_score(labels, predicted, average="weighted", labels=label_ids, zero_division=0)),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "per_class": classification_report(
            labels, predicted, labels=label_ids, target_names=classes, output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=label_ids).tolist(),
    }
