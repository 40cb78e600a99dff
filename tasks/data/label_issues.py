"""Likely label errors, found by confident learning (Northcutt, Jiang & Chuang,
"Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, 2021).

1. Out-of-fold predicted probabilities, k-fold (stratified) over the rows the
   gate kept, so no row is scored by a model that saw its label. Cleanlab's
   advice is to use a model that fits the data: for tables a multinomial
   logistic regression on standardised features; for pictures a small CNN
   trained a few epochs per fold on augmented batches (a linear model on raw
   pixels is too weak for drawings: it flags hard pictures, not wrong labels).
   The model's own out-of-fold macro-F1 against the given labels is reported;
   below `min_model_quality` the suspects are reported as unreliable, and
   neither gated nor acted on.
2. Per-class thresholds t_j: the mean probability of class j over the rows
   labelled j (the model's average self-confidence in that class).
3. The confident joint: a row counts for the class j it is most confidently
   in, among the classes whose probability reaches t_j. Rows that land off the
   diagonal (confidently another class than the one given) are the suspects.
   Their score is the margin p(suggested) - p(given), in [0, 1].
4. The label-error rate is estimated from the joint calibrated to the class
   counts (the paper's eq. 3), beside the plain fraction of rows flagged.

Implemented here rather than through cleanlab, which would bring its own
dependency set for these few lines of numpy. A class with fewer rows than
folds cannot be scored out of fold: it is reported by name and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from tasks.contracts.dataset import IMAGES, LABEL, LABELS, ROW_ID, Dataset
from tasks.contracts.encoder import DateColumn, number_block
from tasks.contracts.image import as_input
from tasks.core.params import AugmentParams
from tasks.core.progress import progress
from tasks.core.task import task_of

QUARANTINE_REASON = "label_issue"  # what the reason of a suspect quarantined (action: quarantine) starts with
# The picture model's augmentation: params.yaml 'augment''s defaults, fixed here so the gate's
# result does not move when training's augmentation is tuned.
AUGMENT = AugmentParams(
    enabled=True, min_side=1, rotate_deg=10, scale=0.1, shift=0.08, flip=False, erase=0, mixup=0, cutmix=0
)
TOP_SHOWN = 16  # suspects drawn in reports/label_issues.png
DATE_PARTS = ("year", "month", "day", "weekday")  # what the cheap model sees of a date


@dataclass
class LabelIssues:
    classes: list[str]
    checked_rows: int = 0
    row_ids: list[int] = field(default_factory=list)  # suspects, most suspect first
    given: list[str] = field(default_factory=list)
    suggested: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    estimated_rate: float = 0.0  # from the calibrated confident joint
    skipped_classes: dict[str, int] = field(default_factory=dict)  # class -> rows, fewer than the folds
    skipped_reason: Optional[str] = None  # the whole step skipped (task type, too few rows)
    model: str = ""  # what gave the out-of-fold probabilities
    model_quality: Optional[float] = None  # its out-of-fold macro-F1 against the given labels
    considered: dict[str, float] = field(default_factory=dict)  # tables: each model tried -> its macro-F1
    unreliable_reason: Optional[str] = None  # set: the model is too weak to be believed; report only

    @property
    def reliable(self) -> bool:
        return self.skipped_reason is None and self.unreliable_reason is None

    @property
    def flagged_rate(self) -> float:
        return len(self.row_ids) / self.checked_rows if self.checked_rows else 0.0

    def quarantine_reasons(self) -> dict[int, list[str]]:
        """row_id -> the reason its row is quarantined for, naming the given and the suggested label."""
        return {
            r: [f"{QUARANTINE_REASON}: given {g}, suggested {s} (score {c:.3f})"]
            for r, g, s, c in zip(self.row_ids, self.given, self.suggested, self.scores)
        }

    def report(self, action: str, relabelled: int, quarantined: int) -> dict[str, Any]:
        return {
            "method": f"confident learning (Northcutt et al. 2021), out-of-fold {self.model or 'model'}",
            "model": self.model,
            "model_quality": None if self.model_quality is None else round(self.model_quality, 6),
            "considered": {name: round(quality, 6) for name, quality in self.considered.items()},
            "reliable": self.reliable,
            "unreliable_reason": self.unreliable_reason,
            "action": action,
            "checked_rows": self.checked_rows,
            "suspects": len(self.row_ids),
            "flagged_rate": round(self.flagged_rate, 6),
            "estimated_rate": round(self.estimated_rate, 6),
            "relabelled": relabelled,
            "quarantined": quarantined,
            "skipped_classes": self.skipped_classes,
            "skipped_reason": self.skipped_reason,
            "issues": [
                {"row_id": r, "given": g, "suggested": s, "score": round(c, 6)}
                for r, g, s, c in zip(self.row_ids, self.given, self.suggested, self.scores)
            ],
        }


def features(dataset: Dataset) -> np.ndarray:
    """What the cheap model sees: an image's pixels, flat; a table's numeric
    columns (median-imputed) and one-hot categories, as the gate typed them."""
    if IMAGES in dataset.arrays:
        images = dataset.arrays[IMAGES]
        return images.reshape(len(images), -1).astype(np.float64)
    table, meta = dataset.table, dataset.meta
    columns = [c for c in meta.features if c in table]

    def of(kind: str) -> tuple[str, ...]:
        return tuple(c for c in columns if meta.column_types.get(c) == kind)

    # Yes/no columns as 1/0 and dates as their parts, read as the table encoder reads them.
    dates = {c: DateColumn(meta.date_formats.get(c, "ISO8601"), DATE_PARTS) for c in of("datetime")}
    numbers = pd.DataFrame(number_block(table, of("numeric"), of("boolean"), dates))
    categorical = list(of("categorical"))
    parts = []
    if numbers.shape[1]:
        parts.append(numbers.fillna(numbers.median()).fillna(0.0).to_numpy(np.float64))
    if categorical:
        parts.append(pd.get_dummies(table[categorical].astype("string"), dummy_na=True).to_numpy(np.float64))
    return np.hstack(parts) if parts else np.zeros((len(table), 0))


LOGISTIC = "logistic regression"
BOOSTED = "gradient boosting"
CNN = "small CNN"
# The picture model: about a quarter of the default teacher, enough to fit 28x28 drawings in a few epochs.
CNN_CHANNELS, CNN_HIDDEN, CNN_BATCH, CNN_LR = (16, 32), 64, 64, 3e-3


def _out_of_fold(
    x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int, what: str, model: Any
) -> np.ndarray:
    """Out-of-fold probabilities of a scikit-learn classifier: `model(train_rows)` makes a fresh one per fold."""
    from sklearn.model_selection import StratifiedKFold

    probabilities = np.zeros((len(y), n_classes))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    for train, held_out in progress(splits, f"label errors: out-of-fold {what}", "fold", folds):
        fitted = model(len(train)).fit(x[train], y[train])
        probabilities[np.ix_(held_out, fitted.classes_)] = fitted.predict_proba(x[held_out])
    return probabilities


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # C=0.1: a regularised, smoother fit scores noisy rows as less certain (on digits with 3%
    # flipped, precision 0.90 and recall 0.68 against 0.56 and 0.83 at C=1; bench/bench_label_issues.py).
    def model(_rows: int) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))

    return _out_of_fold(x, y, n_classes, folds, seed, LOGISTIC, model)


def boosted_out_of_fold_probabilities(
    x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold probabilities of scikit-learn's HistGradientBoosting: what fits a table whose classes
    are not linearly separable (4 overlapping classes: out-of-fold macro-F1 0.68 against the logistic
    regression's 0.50, and 15% of the rows flagged instead of 37% with no label wrong). Small trees,
    L2 and early stopping on a slice of each training fold keep its probabilities from going to 0 and
    1, which confident learning would read as certainty."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def model(rows: int) -> Any:
        # Early stopping holds out 15% of the fold, stratified: only where every class can have 2 rows there.
        stop_early = 0.15 * rows >= 2 * n_classes
        return HistGradientBoostingClassifier(
            max_iter=200 if stop_early else 50,
            max_leaf_nodes=15,
            min_samples_leaf=20,
            l2_regularization=1.0,
            early_stopping=stop_early,
            validation_fraction=0.15,
            n_iter_no_change=10,
            random_state=seed,
        )

    return _out_of_fold(x, y, n_classes, folds, seed, BOOSTED, model)


# A table's candidates, the cheaper first: the one whose out-of-fold macro-F1 is higher is used (a tie
# keeps the first). A linear table is read as well or better by the logistic regression (breast cancer,
# penguins, wine with 3% flipped: precision 0.92-1.00 against 0.75-0.79 for boosting).
TABLE_MODELS = {LOGISTIC: out_of_fold_probabilities, BOOSTED: boosted_out_of_fold_probabilities}


def cnn_out_of_fold_probabilities(
    images: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int, epochs: int
) -> np.ndarray:
    """Out-of-fold softmax probabilities of a small CNN trained `epochs` epochs
    per fold on augmented batches (the pipeline's default augmentation), on the
    CPU or the GPU. `images` is (N, H, W) or (N, H, W, C) uint8, as ingest
    holds pictures."""
    import torch
    from sklearn.model_selection import StratifiedKFold

    from tasks.ml.augment import Augmenter
    from tasks.ml.distributed import device as pick_device
    from tasks.ml.models import CNN as Network
    from tasks.ml.models import CNNSpec, predict_logits

    x = as_input(images)
    device = pick_device()
    probabilities = np.zeros((len(y), n_classes))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    what = f"label errors: out-of-fold CNN, {epochs} epoch(s) per fold"
    for fold, (train, held_out) in enumerate(progress(splits, what, "fold", folds)):
        torch.manual_seed(seed + fold)
        spec = CNNSpec(
            input_shape=tuple(x.shape[1:]),  # type: ignore[arg-type]  # (C, H, W)
            channels=CNN_CHANNELS,
            hidden=CNN_HIDDEN,
            n_classes=n_classes,
            dropout=0.2,
            mean=tuple(float(m) for m in x[train].mean(axis=(0, 2, 3))),
            std=tuple(float(max(s, 1e-6)) for s in x[train].std(axis=(0, 2, 3))),
        )
        model = Network(spec).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=CNN_LR)
        steps = epochs * -(-len(train) // CNN_BATCH)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=CNN_LR, total_steps=steps)
        augment = Augmenter(AUGMENT, seed + fold)
        xs, ys = torch.as_tensor(x[train]), torch.as_tensor(y[train])
        generator = torch.Generator().manual_seed(seed + fold)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(order), CNN_BATCH):
                batch = order[start : start + CNN_BATCH]
                view, _ = augment(xs[batch])
                loss = torch.nn.functional.cross_entropy(model(view.to(device)), ys[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        logits = predict_logits(model, x[held_out])
        probabilities[held_out] = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    return probabilities


def confident_learning(probabilities: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(suspect mask, suggested class, score, estimated label-error rate) for
    labels `y` (0..K-1) and out-of-fold `probabilities` (n, K)."""
    n, k = probabilities.shape
    present = np.bincount(y, minlength=k) > 0
    thresholds = np.array([probabilities[y == j, j].mean() if present[j] else np.inf for j in range(k)])
    above = probabilities >= thresholds
    confident = np.where(above, probabilities, -1.0)
    counted = above.any(axis=1)
    suggested = confident.argmax(axis=1)
    # Off the diagonal, and the given label not itself confident: a row above
    # the thresholds of two classes is ambiguous, not mislabelled.
    suspect = counted & (suggested != y) & (probabilities[np.arange(n), y] < thresholds[y])
    joint = np.zeros((k, k))
    np.add.at(joint, (y[counted], suggested[counted]), 1)
    # Calibrate each row of the joint to its class's count (eq. 3), then to n.
    row_sums = joint.sum(axis=1, keepdims=True)
    counts = np.bincount(y, minlength=k)[:, None]
    calibrated = np.divide(joint * counts, row_sums, out=np.zeros_like(joint), where=row_sums > 0)
    calibrated *= n / calibrated.sum() if calibrated.sum() else 0.0
    rate = float((calibrated.sum() - np.trace(calibrated)) / n) if n else 0.0
    score = probabilities[np.arange(n), suggested] - probabilities[np.arange(n), y]
    return suspect, suggested, np.clip(score, 0.0, 1.0), rate


def find_label_issues(
    dataset: Dataset,
    classes: list[str],
    task: str,
    folds: int,
    seed: int,
    min_model_quality: float = 0.0,
    image_epochs: int = 8,
) -> LabelIssues:
    """The suspects among `dataset`'s rows, most suspect first."""
    found = LabelIssues(classes=list(classes))
    if not task_of(task).single_label:
        found.skipped_reason = f"task {task}: confident learning needs one class per row"
        return found
    if LABELS in dataset.arrays:  # images: labels are indices into the class names
        labels = np.array([classes[int(v)] if 0 <= int(v) < len(classes) else str(v) for v in dataset.arrays[LABELS]])
    else:
        labels = dataset.table[LABEL].astype(str).to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    counts = pd.Series(labels).value_counts()
    found.skipped_classes = {c: int(n) for c, n in counts.items() if n < folds}
    keep = np.array([label in index and label not in found.skipped_classes for label in labels], dtype=bool)
    kept_classes = sorted({index[label] for label in labels[keep]})
    if len(kept_classes) < 2:
        found.skipped_reason = f"fewer than 2 classes with at least {folds} rows (label_issues.folds)"
        return found
    remap = {c: i for i, c in enumerate(kept_classes)}
    y = np.array([remap[index[label]] for label in labels[keep]])
    if IMAGES in dataset.arrays:
        found.model = CNN
        probabilities = cnn_out_of_fold_probabilities(
            dataset.arrays[IMAGES][keep], y, len(kept_classes), folds, seed, image_epochs
        )
    else:
        x = features(dataset)[keep]
        if x.shape[1] == 0:  # every column is an id, text or ignored: nothing to predict a label from
            found.skipped_reason = "no feature columns to predict the labels from"
            return found
        tried = {name: fit(x, y, len(kept_classes), folds, seed) for name, fit in TABLE_MODELS.items()}
        found.considered = {name: macro_f1(y, p.argmax(axis=1), len(kept_classes)) for name, p in tried.items()}
        found.model = max(found.considered, key=lambda name: found.considered[name])
        probabilities = tried[found.model]
    found.model_quality = macro_f1(y, probabilities.argmax(axis=1), len(kept_classes))
    if found.model_quality < min_model_quality:
        found.unreliable_reason = (
            f"the out-of-fold {found.model} reaches macro-F1 {found.model_quality:.3f} on the given labels, under "
            f"validate.label_issues.min_model_quality {min_model_quality}: too weak a model flags hard rows, "
            "not wrong labels"
        )
    suspect, suggested, score, rate = confident_learning(probabilities, y)
    order = np.argsort(-score[suspect], kind="stable")
    rows = dataset.table[ROW_ID].to_numpy()[keep][suspect][order]
    found.checked_rows, found.estimated_rate = int(keep.sum()), rate
    found.row_ids = [int(r) for r in rows]
    found.given = [classes[kept_classes[j]] for j in y[suspect][order]]
    found.suggested = [classes[kept_classes[j]] for j in suggested[suspect][order]]
    found.scores = [float(s) for s in score[suspect][order]]
    return found


def macro_f1(y: np.ndarray, predicted: np.ndarray, k: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, predicted, labels=list(range(k)), average="macro", zero_division=0))


def plot_label_issues(issues: LabelIssues, datasets: list[Dataset], path: Path) -> None:
    """The top suspects: for images the pixels titled given -> suggested, for
    tables their rows as a table; a note when there are none. `datasets`: where
    the rows are now (kept, or quarantined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.core.io import atomic_path

    top = list(zip(issues.row_ids, issues.given, issues.suggested, issues.scores))[:TOP_SHOWN]
    if top and IMAGES in datasets[0].arrays:
        where = {int(r): d.arrays[IMAGES][i] for d in datasets for i, r in enumerate(d.table[ROW_ID])}
        cols = min(8, len(top))
        fig, axes = plt.subplots(
            (len(top) + cols - 1) // cols,
            cols,
            figsize=(1.6 * cols, 1.9 * ((len(top) + cols - 1) // cols)),
            squeeze=False,
        )
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (row, given, suggested, score) in zip(axes.ravel(), top):
            image = where[row]
            if image.ndim == 3 and image.shape[-1] == 3:  # a colour picture (H, W, C), shown as it is
                ax.imshow(image.astype("uint8"))
            else:
                ax.imshow(image.reshape(image.shape[-2:]) if image.ndim > 2 else image, cmap="gray_r")
            ax.set_title(f"row {row}\n{given} -> {suggested} ({score:.2f})", fontsize=7)
        fig.suptitle("likely label errors: given -> suggested (score)", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * max(1, len(top))))
        ax.axis("off")
        if top:
            cells = [[str(r), g, s, f"{c:.3f}"] for r, g, s, c in top]
            ax.table(cellText=cells, colLabels=["row_id", "given", "suggested", "score"], loc="center")
            ax.set_title("likely label errors (most suspect first)", fontsize=9)
        else:
            ax.text(
                0.5,
                0.5,
                issues.skipped_reason or f"no likely label errors among {issues.checked_rows} rows",
                ha="center",
                va="center",
                fontsize=9,
            )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
