"""Classification metrics shared by training summaries and the evaluate stage."""

from __future__ import annotations

import numpy as np

from tasks.core.task import task_of


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def class_logits(logits: np.ndarray) -> np.ndarray:
    """Logits with one column per class: a single binary logit z becomes [0, z],
    since softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]."""
    if logits.shape[1] == 1:
        return np.concatenate([np.zeros_like(logits), logits], axis=1)
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> list[dict]:
    """Equal-width confidence bins: per bin the mean confidence, the accuracy and
    the count. The data behind ECE, MCE and the reliability diagram."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        in_bin = bins == b
        out.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": int(in_bin.sum()),
                "confidence": float(confidence[in_bin].mean()) if in_bin.any() else None,
                "accuracy": float(correct[in_bin].mean()) if in_bin.any() else None,
            }
        )
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """ECE: the count-weighted gap between confidence and accuracy over bins."""
    bins = calibration_bins(probs, labels, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def max_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """MCE: the worst bin's gap between confidence and accuracy."""
    gaps = [abs(b["accuracy"] - b["confidence"]) for b in calibration_bins(probs, labels, n_bins) if b["count"]]
    return float(max(gaps)) if gaps else 0.0


def _ovo_micro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """One-vs-one AUC with every pair's decisions pooled (sklearn offers OvO
    macro only): for classes i < j, on samples of i or j, score p_i / (p_i + p_j)."""
    from sklearn.metrics import roc_auc_score

    truths, scores = [], []
    present = np.unique(labels)
    for a_index, a in enumerate(present):
        for b in present[a_index + 1 :]:
            mask = (labels == a) | (labels == b)
            pa, pb = probs[mask, a], probs[mask, b]
            truths.append(labels[mask] == a)
            scores.append(pa / np.maximum(pa + pb, 1e-12))
    return float(roc_auc_score(np.concatenate(truths), np.concatenate(scores)))


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Binary AUC, or for multiclass one-vs-rest and one-vs-one, each micro and
    macro. None where the test split lacks the classes to define it."""
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import label_binarize

    n_classes = probs.shape[1]
    if len(np.unique(labels)) < 2:
        return {"auc": None}
    if n_classes == 2:
        return {"auc": float(roc_auc_score(labels, probs[:, 1]))}
    onehot = label_binarize(labels, classes=list(range(n_classes)))
    present = onehot.sum(axis=0) > 0
    result: dict[str, float | None] = {
        "ovr_micro": float(roc_auc_score(onehot.ravel(), probs.ravel())),
        "ovr_macro": float(np.mean([roc_auc_score(onehot[:, c], probs[:, c]) for c in np.flatnonzero(present)])),
        "ovo_micro": _ovo_micro_auc(probs, labels),
        "ovo_macro": None,
    }
    if present.all():
        result["ovo_macro"] = float(roc_auc_score(labels, probs, multi_class="ovo", average="macro"))
    return result


def average_precision(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Average precision (area under the PR curve) per class, macro and micro."""
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import label_binarize

    onehot = label_binarize(labels, classes=list(range(len(classes))))
    if len(classes) == 2:
        onehot = np.column_stack([1 - onehot[:, 0], onehot[:, 0]])
    per_class = {
        name: float(average_precision_score(onehot[:, c], probs[:, c])) if onehot[:, c].any() else None
        for c, name in enumerate(classes)
    }
    defined = [v for v in per_class.values() if v is not None]
    return {
        "per_class": per_class,
        "macro": float(np.mean(defined)) if defined else None,
        "micro": float(average_precision_score(onehot.ravel(), probs.ravel())) if onehot.any() else None,
    }


def curve_points(probs: np.ndarray, labels: np.ndarray, classes: list[str], max_points: int = 200) -> dict:
    """ROC and PR curve points per class (one-vs-rest), thinned to `max_points`,
    as rows that DVC plots and matplotlib both read."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    roc_rows, pr_rows = [], []
    for c, name in enumerate(classes):
        truth = labels == c
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, probs[:, c])
        precision, recall, _ = precision_recall_curve(truth, probs[:, c])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
        roc_rows += [{"class": name, "fpr": float(fpr[i]), "tpr": float(tpr[i])} for i in keep]
        keep = np.unique(np.linspace(0, len(recall) - 1, min(max_points, len(recall))).astype(int))
        pr_rows += [{"class": name, "recall": float(recall[i]), "precision": float(precision[i])} for i in keep]
    return {"roc": roc_rows, "pr": pr_rows}


def label_curve_points(probs: np.ndarray, labels: np.ndarray, names: list[str], max_points: int = 200) -> dict:
    """Multilabel: ROC and PR points per label, each label its own two-class problem."""
    rows: dict[str, list] = {"roc": [], "pr": []}
    for c, name in enumerate(names):
        p = probs[:, c]
        points = curve_points(np.column_stack([1 - p, p]), labels[:, c].astype(int), ["not " + name, name], max_points)
        rows["roc"] += [r for r in points["roc"] if r["class"] == name]
        rows["pr"] += [r for r in points["pr"] if r["class"] == name]
    return rows


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], n_bins: int = 15, beta: float = 1.0
) -> dict:
    """Never one number: per-class and averaged precision/recall/F1/F-beta, the
    confusion matrix (counts and row-normalised), ROC AUC, average precision,
    and calibration (ECE, MCE, reliability bins)."""
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        fbeta_score,
        precision_recall_fscore_support,
    )

    predicted = probs.argmax(axis=1)
    ids = list(range(len(classes)))
    averages = {}
    for average in ("micro", "macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=ids, average=average, zero_division=0
        )
        averages[average] = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    counts = confusion_matrix(labels, predicted, labels=ids)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": averages["macro"]["f1"],
        "weighted_f1": averages["weighted"]["f1"],
        "micro_f1": averages["micro"]["f1"],
        "averages": averages,
        "fbeta": {
            "beta": beta,
            "macro": float(fbeta_score(labels, predicted, beta=beta, labels=ids, average="macro", zero_division=0)),
        },
        "ece": expected_calibration_error(probs, labels, n_bins),
        "mce": max_calibration_error(probs, labels, n_bins),
        "reliability": calibration_bins(probs, labels, n_bins),
        "roc_auc": roc_auc(probs, labels),
        "average_precision": average_precision(probs, labels, classes),
        "per_class": classification_report(
            labels, predicted, labels=ids, target_names=classes, output_dict=True, zero_division=0
        ),
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalized": (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).round(4).tolist(),
    }


def regression_metrics(predicted: np.ndarray, target: np.ndarray) -> dict:
    """MAE, MAPE, MSE, RMSE, R^2, D^2 (absolute error), median and max error."""
    from sklearn import metrics as m

    predicted, target = np.ravel(predicted), np.ravel(target)
    mse = float(m.mean_squared_error(target, predicted))
    return {
        "mae": float(m.mean_absolute_error(target, predicted)),
        "mape": float(m.mean_absolute_percentage_error(target, predicted)),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": float(m.r2_score(target, predicted)),
        "d2": float(m.d2_absolute_error_score(target, predicted)),
        "median_absolute_error": float(m.median_absolute_error(target, predicted)),
        "max_error": float(m.max_error(target, predicted)),
    }


def _binary_decisions(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (sample, label) decision of a multilabel model as a two-class
    prediction, so calibration pools over all of them."""
    p = probs.ravel()
    return np.column_stack([1 - p, p]), labels.ravel().astype(np.int64)


def multilabel_metrics(
    probs: np.ndarray, labels: np.ndarray, names: list[str], n_bins: int = 15, beta: float = 1.0, threshold: float = 0.5
) -> dict:
    """Per-label scores and the micro, macro, weighted and samples averages;
    subset accuracy and Hamming loss; per-label ROC AUC and average precision;
    calibration pooled over all label decisions."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        classification_report,
        fbeta_score,
        hamming_loss,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    truth = labels.astype(np.int64)
    predicted = (probs >= threshold).astype(np.int64)  # the served rule (tasks.contracts.onnx.predicted_labels)
    averages = {}
    for average in ("micro", "macro", "weighted", "samples"):
        precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)
        averages[average] = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    pooled_probs, pooled_truth = _binary_decisions(probs, truth)
    defined = [c for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < len(truth)]
    return {
        "accuracy": float(accuracy_score(truth, predicted)),  # subset accuracy: every label right
        "hamming_loss": float(hamming_loss(truth, predicted)),
        "macro_f1": averages["macro"]["f1"],
        "weighted_f1": averages["weighted"]["f1"],
        "micro_f1": averages["micro"]["f1"],
        "samples_f1": averages["samples"]["f1"],
        "averages": averages,
        "fbeta": {
            "beta": beta,
            "macro": float(fbeta_score(truth, predicted, beta=beta, average="macro", zero_division=0)),
        },
        "ece": expected_calibration_error(pooled_probs, pooled_truth, n_bins),
        "mce": max_calibration_error(pooled_probs, pooled_truth, n_bins),
        "reliability": calibration_bins(pooled_probs, pooled_truth, n_bins),
        "roc_auc": {names[c]: float(roc_auc_score(truth[:, c], probs[:, c])) for c in defined},
        "average_precision": {names[c]: float(average_precision_score(truth[:, c], probs[:, c])) for c in defined},
        "per_class": classification_report(truth, predicted, target_names=names, output_dict=True, zero_division=0),
        "confusion_matrix": multilabel_confusion_matrix(truth, predicted).tolist(),  # one 2x2 per label
    }


def task_metrics(
    task: str,
    outputs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    n_bins: int = 15,
    beta: float = 1.0,
    probabilities: bool = False,
    threshold: float = 0.5,
) -> dict:
    """The metrics of `task` for raw model `outputs` (logits, or probabilities
    when `probabilities`), with `quality`: the one number selection compares
    (macro-F1, or R^2 for regression)."""
    if task_of(task).regression:
        scores = regression_metrics(outputs, targets)
        return {**scores, "quality": scores["r2"]}
    if task_of(task).multilabel:
        probs = outputs if probabilities else sigmoid(outputs)
        scores = multilabel_metrics(probs, targets, classes, n_bins, beta, threshold)
    else:
        probs = outputs if probabilities else softmax(class_logits(outputs))
        scores = classification_metrics(probs, targets, classes, n_bins, beta)
    return {**scores, "quality": scores["macro_f1"]}
