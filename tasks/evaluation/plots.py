"""Evaluation plots as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.io import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; servers have no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    _pyplot().close(fig)


def confusion(
    counts: list[list[int]], normalized: list[list[float]], classes: list[str], title: str, path: Path
) -> None:
    """Counts and row-normalised side by side: the second shows the rare class's recall."""
    plt = _pyplot()
    size = 0.8 + 0.45 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, matrix, fmt, name in (
        (axes[0], np.asarray(counts), "{:d}", "counts"),
        (axes[1], np.asarray(normalized), "{:.2f}", "normalised by true class"),
    ):
        ax.imshow(matrix, cmap="Blues")
        ax.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xticklabels=classes,
            yticklabels=classes,
            xlabel="predicted",
            ylabel="true",
            title=f"{title}: {name}",
        )
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(
                    j,
                    i,
                    fmt.format(v),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v > matrix.max() / 2 else "black",
                )
    _save(fig, path)


def curves(points: dict, title: str, path: Path, average_precision: dict | None = None) -> None:
    """ROC and precision-recall curves, one line per class (one-vs-rest); the
    legends give each class's ROC AUC (the area under the drawn curve) and its
    average precision (evaluate's)."""
    plt = _pyplot()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.4))
    average_precision = average_precision or {}
    for name in dict.fromkeys(row["class"] for row in points["roc"]):
        rows = [r for r in points["roc"] if r["class"] == name]
        fpr, tpr = [r["fpr"] for r in rows], [r["tpr"] for r in rows]
        roc.plot(fpr, tpr, lw=1, label=f"{name} (AUC {np.trapezoid(tpr, fpr):.3f})")
        rows = [r for r in points["pr"] if r["class"] == name]
        ap = average_precision.get(str(name))
        pr.plot(
            [r["recall"] for r in rows],
            [r["precision"] for r in rows],
            lw=1,
            label=f"{name} (AP {ap:.3f})" if ap is not None else str(name),
        )
    roc.plot([0, 1], [0, 1], ls=":", color="grey")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
    pr.set(xlabel="recall", ylabel="precision", title=f"{title}: precision-recall")
    for ax in (roc, pr):
        ax.legend(fontsize=6, loc="lower right" if ax is roc else "lower left")
    _save(fig, path)


def reliability(
    bins: list[dict], ece_before: float, ece_after: float, title: str, path: Path, temperature: float | None = None
) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal,
    each bar labelled with its sample count (a bar of 3 says little), and the
    temperature, with why it stayed at 1 when it did."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.8))
    filled = [b for b in bins if b["count"]]
    width = bins[0]["upper"] - bins[0]["lower"]
    bars = ax.bar(
        [b["lower"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy (n = samples in the bin)",
    )
    for bar, b in zip(bars, filled):
        ax.text(
            bar.get_x() + width / 2,
            min(bar.get_height() + 0.02, 0.97),
            f"n={b['count']}",
            ha="center",
            fontsize=6,
            rotation=90 if len(filled) > 8 else 0,
            va="bottom",
        )
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    scaled = (
        ""
        if temperature is None
        else f"; temperature {temperature:.2f}"
        if temperature != 1.0
        else "; temperature 1: scaling did not lower the validation ECE"
    )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.08),
        xlabel="confidence",
        ylabel="accuracy",
        title=f"{title}\nECE {ece_before:.4f} before scaling, {ece_after:.4f} after{scaled}",
    )
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def residuals(actual: list[float], predicted: list[float], title: str, path: Path) -> None:
    """Predicted against actual, and the residuals against the prediction: a
    funnel or a curve in the second panel means the errors are not noise."""
    plt = _pyplot()
    actual_a, predicted_a = np.asarray(actual), np.asarray(predicted)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.scatter(actual_a, predicted_a, s=8, alpha=0.6)
    low, high = float(min(actual_a.min(), predicted_a.min())), float(max(actual_a.max(), predicted_a.max()))
    left.plot([low, high], [low, high], ls=":", color="grey")
    left.set(xlabel="actual", ylabel="predicted", title=f"{title}: predicted vs actual")
    right.scatter(predicted_a, actual_a - predicted_a, s=8, alpha=0.6)
    right.axhline(0, ls=":", color="grey")
    right.set(xlabel="predicted", ylabel="residual (actual - predicted)", title=f"{title}: residuals")
    _save(fig, path)


def _spread_labels(ys: list[float], span: float, min_gap: float = 0.04) -> list[float]:
    """Label heights, in data units, at least `min_gap` of `span` apart (nearest to each point)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = list(ys)
    for prev, cur in zip(order, order[1:]):
        placed[cur] = max(placed[cur], placed[prev] + min_gap * span)
    return placed


def pareto(
    candidates: list[dict], champion: str, quality_name: str, speed_key: str, front: list[str], floor: float, path: Path
) -> None:
    """Latency (speed_key) against quality, marker area by size on disk: the
    trade-off selection walks along. The non-dominated front is joined by a
    line, the quality budget is a dashed line, the champion is ringed, and the
    labels are spread so that none overlaps another."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    largest = max(c["size_bytes"] for c in candidates)
    for c in candidates:
        colour = "#dd8452" if c["precision"] == "int8" else "#4c72b0"
        ax.scatter(
            c[speed_key],
            c["quality"],
            s=40 + 600 * c["size_bytes"] / largest,
            color=colour,
            alpha=0.6,
            edgecolor="black" if c["name"] == champion else "none",
            linewidth=2,
            zorder=3,
        )
    on_front = sorted((c for c in candidates if c["name"] in front), key=lambda c: c[speed_key])
    ax.plot(
        [c[speed_key] for c in on_front],
        [c["quality"] for c in on_front],
        color="grey",
        linewidth=1,
        linestyle="-",
        zorder=2,
        label="Pareto front",
    )
    ax.axhline(floor, color="#c44e52", linestyle="--", linewidth=1, label=f"quality budget ({floor:.4f})")
    qualities = [c["quality"] for c in candidates] + [floor]
    span = (max(qualities) - min(qualities)) or 1.0
    heights = _spread_labels([c["quality"] for c in candidates], span)
    right = max(c[speed_key] for c in candidates)
    for c, y in zip(candidates, heights):
        name = f"{c['name']} (champion)" if c["name"] == champion else c["name"]
        ax.annotate(
            name,
            (c[speed_key], c["quality"]),
            xytext=(right * 1.08, y),
            fontsize=7,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.5},
        )
    ax.set_xlim(0, right * 1.6)
    ax.set_ylim(min(qualities) - 0.05 * span, max(heights) + 0.05 * span)
    ax.set(
        xlabel=f"{speed_key} (ms, onnxruntime, median)",
        ylabel=quality_name,
        title="candidates: faster is left, better is up; area = size (orange = int8)",
    )
    ax.legend(loc="upper left", fontsize=7)
    _save(fig, path)
