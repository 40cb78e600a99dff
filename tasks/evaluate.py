"""Stage 7, evaluate: every candidate, fp32 and int8, on the test split through
onnxruntime, the same runtime that serves it.

Quality: accuracy, macro/weighted F1, per-class report, confusion matrix, ECE.
Cost: size on disk and median latency at batch 1 and 256, threads pinned.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tasks import paths
from tasks.config import EvaluateParams, load_params
from tasks.core import atomic_path, markdown_table, read_json, run_cli, write_json, write_summary
from tasks.metrics import classification_metrics
from tasks.preprocess import load_split
from tasks.onnx_utils import check_onnx, file_size, run_batches, session

LATENCY_BATCHES = (1, 256)


def candidate_files(folder: Path) -> dict[str, Path]:
    """`<model>.<precision>.onnx` files, by candidate name `<model>.<precision>`."""
    return {p.name.removesuffix(".onnx"): p for p in sorted(folder.glob("*.onnx"))}


def median_latency_ms(sess, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median wall time of one run on `batch` rows, after one warm-up run."""
    rows = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)  # repeats rows if the split is small
    feed = {sess.get_inputs()[0].name: rows}
    sess.run(["probabilities"], feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(["probabilities"], feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def evaluate_candidate(path: Path, x: np.ndarray, y: np.ndarray, classes: list[str], params: EvaluateParams) -> dict:
    check_onnx(path)
    sess = session(path, threads=params.threads)
    scores = classification_metrics(run_batches(sess, x), y, classes, params.ece_bins)
    return {
        **scores,
        "size_bytes": file_size(path),
        **{f"latency_ms_b{b}": median_latency_ms(sess, x, b, params.latency_repeats) for b in LATENCY_BATCHES},
    }


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(counts, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > counts.max() / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    params = load_params(paths.PARAMS).evaluate
    meta = read_json(paths.PROCESSED / paths.META, "processed meta")
    x, y = load_split("test")
    candidates = {
        name: evaluate_candidate(path, x, y, meta["classes"], params)
        for name, path in candidate_files(paths.ONNX_DIR).items()
    }
    for name, result in candidates.items():
        plot_confusion(result["confusion_matrix"], meta["classes"], name, paths.PLOTS / f"confusion_{name}.png")
    write_json(paths.EVALUATION_REPORT, {"test_rows": len(y), "threads": params.threads, "candidates": candidates})
    rows = [
        {"candidate": n, **{k: r[k] for k in ("accuracy", "macro_f1", "ece", "size_bytes", "latency_ms_b1", "latency_ms_b256")}}
        for n, r in candidates.items()
    ]
    write_summary("evaluate", f"Test split: {len(y)} rows, onnxruntime with {params.threads} thread(s).\n\n" + markdown_table(rows))


if __name__ == "__main__":
    run_cli(main)
