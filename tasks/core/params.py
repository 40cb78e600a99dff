"""params.yaml, read once into frozen typed objects (tasks.core.config parses).

Each stage owns one section and declares the sections it reads (`SECTIONS` in
its module); `load_params(path, SECTIONS)` hands it only those, so a stage
cannot read a key that dvc.yaml does not list for it (tests/unit/test_dag.py
holds the two together). The checks here need no ML library; the options of
losses, optimisers, schedules and constraints are checked by
tasks.ml.checks, which the training stages and the flow call on load.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from tasks.core.config import load_yaml, parse
from tasks.core.errors import DistilleryError
from tasks.core.task import TaskType, task_of

PARAMS_FILE = "params.yaml"


MODEL_PREFIX = "distillery-"  # + the dataset's name: the default registered model, one champion per dataset


def model_name(dataset: str) -> str:
    """The default registered model for a dataset: `distillery-<name>`, the
    name folded to lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-")
    return MODEL_PREFIX + (slug or "data")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DigitsParams:
    # Fraction of each digit's samples kept, index = digit. One rare class mimics
    # the course's imbalanced Quick Draw notebook.
    keep_fractions: tuple[float, ...]


@dataclass(frozen=True)
class Digits28Params:
    """digits28: the kept 8x8 digits upsampled to 28x28 (bilinear), each copy
    moved by its own seeded random affine jitter."""

    copies: int  # jittered 28x28 copies made of each kept digit
    rotate_deg: float  # rotation drawn uniformly in +-this, degrees
    scale: float  # zoom drawn uniformly in 1 +- this
    shift_px: float  # shift drawn uniformly in +-this, pixels, per axis

    def __post_init__(self) -> None:
        if self.copies < 1 or self.rotate_deg < 0 or not 0 <= self.scale < 0.5 or self.shift_px < 0:
            raise ValueError("digits28 needs copies >= 1, rotate_deg >= 0, 0 <= scale < 0.5 and shift_px >= 0")


@dataclass(frozen=True)
class QuickDrawParams:
    classes: tuple[str, ...]  # file stems (<class>.npy) to load, in label order
    samples_per_class: dict[str, int]  # how many drawings to take from each class


@dataclass(frozen=True)
class ImagesParams:
    """A folder of pictures (data.source images): how each becomes the model's pixels
    (tasks.contracts.image.ImagePolicy) and how many are read."""

    size: int  # side of the square every picture is resized to (28, 32, 64 ...)
    channels: Literal[1, 3]  # 1 = grayscale, 3 = RGB
    fit: Literal["pad", "crop", "stretch"]  # pad keeps the whole picture; crop its centre; stretch ignores aspect
    max_per_class: Optional[int]  # at most this many pictures per class (seeded); null = all

    def __post_init__(self) -> None:
        if self.size < 4:
            raise ValueError("images.size must be >= 4 pixels")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError("images.max_per_class must be >= 1 (or null for all)")


@dataclass(frozen=True)
class ProductionParams:
    """Labelled production rows (tasks.contracts.production) appended to a table source's rows."""

    path: str  # the snapshot folder the monitor writes; a DVC dep of ingest
    max_share: float  # at most this many production rows per source row (newest kept); 0 = none

    def __post_init__(self) -> None:
        if not self.max_share >= 0:
            raise ValueError("production.max_share must be >= 0")


ColumnType = Literal["numeric", "boolean", "datetime", "categorical", "text", "id", "ignore"]
TABULAR_SOURCES = ("penguins", "breast_cancer", "diabetes", "csv", "parquet")
DIGIT_SOURCES = ("digits", "digits28")
FILE_SOURCES = (
    "quickdraw",
    "images",
    "csv",
    "parquet",
)  # the user's own data, at data.path  # scikit-learn's digits: the multilabel attributes apply


@dataclass(frozen=True)
class DataParams:
    source: Literal[
        "digits", "digits28", "quickdraw", "images", "penguins", "breast_cancer", "diabetes", "csv", "parquet"
    ]
    path: Optional[str]  # folder (quickdraw, images) or file (csv, parquet)
    target: Optional[str]  # target column of a tabular source; null = the source's default
    # Declared column types; undeclared columns are inferred. null (the default) is none: it keeps
    # `dvc exp run -S 'data.columns={age: numeric}'` working as typed (Hydra will not set a mapping into {}).
    columns: Optional[dict[str, ColumnType]]
    classes: Optional[tuple[str, ...]]  # declared classes; null = the classes found in the data
    encoding: str  # text encoding of a CSV file
    seed: int  # fixes which samples are kept
    digits: DigitsParams
    digits28: Digits28Params
    quickdraw: QuickDrawParams
    images: ImagesParams
    production: ProductionParams

    @property
    def tabular(self) -> bool:
        return self.source in TABULAR_SOURCES

    @property
    def name(self) -> str:
        """What the data is called: a bundled source's name, or the user's file
        (without its suffix) or folder name. Names the default registered model."""
        if self.source in FILE_SOURCES and self.path:
            path = Path(self.path)
            return (path.stem if path.suffix else path.name) or self.source
        return self.source

    def __post_init__(self) -> None:
        if self.columns is None:
            object.__setattr__(self, "columns", {})  # frozen: set once, here
        if len(self.digits.keep_fractions) != 10:
            raise ValueError("digits.keep_fractions needs one fraction per digit (10)")
        if any(not 0 < f <= 1 for f in self.digits.keep_fractions):
            raise ValueError("digits.keep_fractions must lie in (0, 1]")
        missing = [c for c in self.quickdraw.classes if c not in self.quickdraw.samples_per_class]
        if missing:
            raise ValueError(f"quickdraw.samples_per_class has no count for {missing}")
        if any(n < 1 for n in self.quickdraw.samples_per_class.values()):
            raise ValueError("quickdraw.samples_per_class counts must be >= 1")
        if self.source in ("csv", "parquet") and not self.target:
            raise ValueError(f"source '{self.source}' needs 'target', the column to predict")


@dataclass(frozen=True)
class LabelIssuesParams:
    """Likely label errors by confident learning (tasks/data/label_issues.py)."""

    action: Literal["report", "quarantine", "relabel"]  # relabel: suspects scored >= relabel_above take the suggestion
    relabel_above: float  # margin p(suggested) - p(given), in [0, 1]
    folds: int  # out-of-fold probabilities; a class with fewer rows is reported and skipped
    seed: int
    max_rate: float  # the gate: a GX expectation on the fraction of rows flagged
    severity: Literal["warning", "critical"]  # critical: a rate over max_rate stops the flow
    # The out-of-fold model's own macro-F1 against the given labels must reach this for its
    # suspects to be acted on and gated: a model too weak for the data flags hard rows, not errors.
    min_model_quality: float = 0.7
    image_epochs: int = 8  # pictures: epochs of the small CNN trained per fold

    def __post_init__(self) -> None:
        if not 0 <= self.min_model_quality <= 1:
            raise ValueError("min_model_quality must lie in [0, 1]")
        if self.image_epochs < 1:
            raise ValueError("image_epochs must be >= 1")
        if not 0 <= self.relabel_above <= 1:
            raise ValueError("relabel_above must lie in [0, 1]")
        if self.folds < 2:
            raise ValueError("folds must be at least 2")
        if not 0 <= self.max_rate <= 1:
            raise ValueError("max_rate must lie in [0, 1]")


@dataclass(frozen=True)
class ValidateParams:
    suite: Optional[str]  # GX suite JSON; null means expectations/<data.source>.json
    missing_tokens: tuple[str, ...]  # text values that mean "missing" ("", ".", "NA", ...)
    coerce_numeric: bool  # strip units/currency ("65000 $") and parse numeric columns
    normalise_categories: bool  # fold case and whitespace in categorical columns and the target
    synonyms: dict[str, dict[str, str]]  # per column: variant -> canonical spelling
    drop_duplicates: bool  # exact duplicate rows go to quarantine (never silently dropped)
    duplicate_keys: tuple[str, ...]  # columns that identify a row; duplicates on them are reported
    near_duplicate_ratio: float  # SequenceMatcher ratio above which two values look like typos of each other
    near_duplicate_decimals: int  # numbers rounded to this many decimals when looking for near-duplicate rows
    outlier_method: Literal["iqr", "robust_z"]
    outlier_threshold: float  # IQR multiplier (1.5 usual) or robust z cut-off (3.5 usual)
    max_quarantined_fraction: float  # the row-loss alarm: quarantining more of the rows read fails the gate
    min_class_rows: Optional[int]  # rows every class needs; null = the suite's min_count
    label_issues: LabelIssuesParams

    def __post_init__(self) -> None:
        if not 0 < self.near_duplicate_ratio <= 1:
            raise ValueError("near_duplicate_ratio must lie in (0, 1]")
        if self.outlier_threshold <= 0:
            raise ValueError("outlier_threshold must be > 0")
        if not 0 <= self.max_quarantined_fraction <= 1:
            raise ValueError("max_quarantined_fraction must lie in [0, 1]")
        if self.min_class_rows is not None and self.min_class_rows < 1:
            raise ValueError("min_class_rows must be >= 1 (or null for the suite's min_count)")


@dataclass(frozen=True)
class PreprocessParams:
    val_fraction: float
    test_fraction: float
    seed: int
    impute: Literal["mean", "median", "most_frequent", "knn", "iterative"]  # numeric columns, fitted on train
    knn_neighbors: int  # neighbours for impute: knn
    resample: Literal["none", "over", "under", "smote"]  # applied to the train split only

    def __post_init__(self) -> None:
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must lie in (0, 1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% to train on")
        if self.knn_neighbors < 1:
            raise ValueError("knn_neighbors must be >= 1")


# The task types' names; what each means is tasks.core.task's.


@dataclass(frozen=True)
class TaskParams:
    type: TaskType  # what the model predicts; sets the default loss, last activation and metrics


@dataclass(frozen=True)
class FitParams:
    """Everything a training run takes; train and distill each have a section."""

    channels: tuple[int, ...]  # CNN (images): output channels of each conv block
    hidden: int  # CNN: dense width before the classifier
    mlp_layers: tuple[int, ...]  # MLP (tables): width of each hidden layer
    dropout: float
    batch_norm: bool  # batch norm after each conv / hidden layer
    lr: float
    batch_size: int
    max_epochs: int
    seed: int
    loss: str  # auto = the task's default (ce / bce / mse), or a name from tasks/ml/losses.py
    loss_options: dict[str, Any]  # e.g. focal {gamma: 2, alpha: 0.25}; huber {delta: 1}; quantile {q: 0.9}
    optimizer: str  # sgd | momentum | adagrad | rmsprop | adam | adamw
    optimizer_options: dict[str, Any]  # e.g. momentum {momentum: 0.9, nesterov: true}; adamw {weight_decay: 0.01}
    schedule: str  # none | step | exponential | cosine | custom | plateau
    schedule_options: dict[str, Any]  # e.g. step {step_size: 10, gamma: 0.5}; custom {table: {0: 1, 20: 0.1}}
    clip: Literal["none", "norm", "value"]  # gradient clipping
    clip_value: float  # max gradient norm (norm) or absolute value (value)
    l1: float  # weight penalty; l1 and l2 together = elastic net
    l2: float
    penalty_target: Literal["weights", "biases", "both"]
    activity_l1: float  # penalty on ReLU activations
    activity_l2: float
    constraint: str  # none | max_norm | min_max_norm | non_negative, applied after each step
    constraint_options: dict[str, Any]  # e.g. max_norm {max_value: 3}
    stopping: Literal["patience", "correlation"]  # early stopping on val loss, or the correlation criterion
    patience: int
    min_delta: float
    correlation_window: int  # epochs in the rolling train/val loss correlation
    correlation_threshold: float  # stop when the correlation falls below this
    nproc_per_node: int  # > 1: the stage relaunches itself under torchrun, one process per CPU share or GPU (DDP)

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ValueError("nproc_per_node must be >= 1")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError("channels must be a non-empty list of positive ints")
        if not self.mlp_layers or any(c < 1 for c in self.mlp_layers):
            raise ValueError("mlp_layers must be a non-empty list of positive ints")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must lie in [0, 1)")
        for name in ("lr", "batch_size", "max_epochs", "hidden", "clip_value"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("l1", "l2", "activity_l1", "activity_l2", "min_delta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")
        if self.correlation_window < 3 or not -1 <= self.correlation_threshold <= 1:
            raise ValueError("correlation_window must be >= 3 and correlation_threshold in [-1, 1]")


@dataclass(frozen=True)
class TrainParams(FitParams):
    class_weighting: Literal["none", "balanced", "sqrt_inverse"]  # weights per class from their frequencies
    init_from: Optional[str]  # transfer learning: a model stem (e.g. models/teacher) to start from
    freeze: tuple[str, ...]  # module prefixes kept frozen (e.g. [features]); the head is always trained
    unfreeze_after: int  # epoch after which frozen modules train too (0 = never)


@dataclass(frozen=True)
class DistillParams(FitParams):
    temperature: float
    alpha: float
    # tables: which model the student learns from; auto = the boosted model where it beats the
    # network teacher on the validation split, else the teacher (images: always the teacher)
    teacher: Literal["auto", "teacher", "boosted"] = "auto"
    # function_matching (Beyer et al. 2022): the teacher's outputs computed on every augmented batch
    # the student sees; precomputed: once, on the unaugmented train split. auto = function_matching
    # where there is augmentation (pictures), precomputed otherwise (tables, the boosted teacher).
    mode: Literal["auto", "function_matching", "precomputed"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ValueError("alpha must lie in [0, 1]")


@dataclass(frozen=True)
class AugmentParams:
    """Training-time augmentation of pictures, batch by batch (tasks/ml/augment.py);
    used by the teacher, the student and pruning's fine-tune. Tables get none."""

    enabled: bool
    # Smaller pictures are not augmented: at 8x8 a sub-pixel shift or turn, resampled, blurs
    # strokes one pixel wide (on the 8x8 digits the teacher lost 1.1 macro-F1 points with it).
    min_side: int
    rotate_deg: float  # rotation drawn in +-this, degrees
    scale: float  # zoom drawn in 1 +- this
    shift: float  # shift drawn in +-this fraction of the side per axis (a random crop of the zero-padded picture)
    flip: bool  # horizontal flip; off where a mirrored picture is another class (digits, letters)
    erase: float  # probability of random erasing per picture
    mixup: float  # Beta(a, a) of mixup; 0 = off
    cutmix: float  # Beta(a, a) of cutmix; 0 = off (with mixup also on, a coin picks one per batch)

    def __post_init__(self) -> None:
        for name in ("rotate_deg", "scale", "shift", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.scale >= 1:
            raise ValueError("scale must be < 1 (a zoom of 1 - scale must stay positive)")
        if not 0 <= self.erase <= 1:
            raise ValueError("erase must lie in [0, 1]")
        if self.min_side < 1:
            raise ValueError("min_side must be >= 1")


@dataclass(frozen=True)
class PruneParams:
    structured_amount: float  # share of channels/units removed per layer, ranked by norm
    rank: Literal["bn_scale", "weight_norm"]  # bn_scale: by the batch norm's gamma where one follows, else by norm
    norm: Literal["l1", "l2"]  # the weight norm that ranks units without a batch norm (or with rank: weight_norm)
    fine_tune_epochs: int  # epochs of fine-tuning after structured pruning (0 = none)
    unstructured_amounts: tuple[float, ...]  # magnitude-pruning sweep, reported (the ONNX stays dense)
    scope: Literal["layer", "global"]  # per-layer or global magnitude threshold for the sweep

    def __post_init__(self) -> None:
        for amount in (self.structured_amount, *self.unstructured_amounts):
            if not 0 <= amount < 1:
                raise ValueError(f"a pruning amount must lie in [0, 1), got {amount}")
        if self.fine_tune_epochs < 0:
            raise ValueError("fine_tune_epochs must be >= 0")


@dataclass(frozen=True)
class BoostParams:
    """The gradient-boosted reference and candidate (tables): scikit-learn's
    HistGradientBoosting on the encoded features of the train split, early
    stopping on the validation split."""

    enabled: bool  # false: no boosted candidate
    max_iter: int  # boosting rounds at most
    learning_rate: float
    max_leaf_nodes: int  # leaves per tree
    min_samples_leaf: int  # rows a leaf needs
    l2_regularization: float
    class_weight: Literal["none", "balanced"]  # classifiers: weigh rare classes up
    n_iter_no_change: int  # early stopping patience, in rounds, on the validation loss
    seed: int
    atol: float  # ONNX against scikit-learn on the validation split: probabilities, or relative for regression

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.max_leaf_nodes < 2 or self.min_samples_leaf < 1 or self.n_iter_no_change < 1:
            raise ValueError("max_iter >= 1, max_leaf_nodes >= 2, min_samples_leaf >= 1 and n_iter_no_change >= 1")
        if not self.learning_rate > 0 or self.l2_regularization < 0 or not self.atol > 0:
            raise ValueError("learning_rate > 0, l2_regularization >= 0 and atol > 0 are required")


@dataclass(frozen=True)
class ExportParams:
    opset: int
    atol: float  # max abs logit difference allowed between ONNX fp32 and PyTorch, relative to the largest |logit| once over 1
    calibration_samples: int  # training samples used to calibrate int8 ranges
    per_channel: bool
    temperature_scaling: bool  # fit T on the validation split and fold it into the graph
    quantization: Literal["static", "dynamic"]  # static QDQ (calibrated) or dynamic (weights only, Gemm/MatMul)
    calibration_method: Literal["minmax", "entropy", "percentile"]  # static: how activation ranges are set
    reduce_range: Literal["auto", "on", "off"]  # 7-bit weights; auto = on where the CPU lacks VNNI
    calibration_bins: int  # confidence bins for the ECE check that guards the temperature
    label_threshold: float  # multilabel: a label is predicted when its probability reaches this

    def __post_init__(self) -> None:
        if self.calibration_samples < 1:
            raise ValueError("calibration_samples must be >= 1")
        if not 0 < self.label_threshold < 1:
            raise ValueError("label_threshold must lie in (0, 1)")


@dataclass(frozen=True)
class EvaluateParams:
    threads: int  # intra-op threads of the quality runs
    latency_threads: tuple[
        int, ...
    ]  # intra-op thread counts timed, each pinned (serving: DISTILLERY_SERVE_ORT_THREADS)
    latency_seconds: float  # timing budget per batch size and thread count, shared by every candidate
    latency_rounds: int  # interleaved rounds (A, B, C, A, B, C, ...) that budget is cut into; the median is kept
    ece_bins: int
    f_beta: float  # beta of the reported F-beta (2 favours recall, 0.5 precision)
    slice_column: Optional[str]  # a validated-table column to report metrics per value of (e.g. Island)

    def __post_init__(self) -> None:
        if self.threads < 1 or self.ece_bins < 2:
            raise ValueError("threads >= 1 and ece_bins >= 2 are required")
        if not self.latency_threads or any(t < 1 for t in self.latency_threads):
            raise ValueError("latency_threads must list thread counts >= 1")
        if self.latency_seconds <= 0 or self.latency_rounds < 1:
            raise ValueError("latency_seconds must be > 0 and latency_rounds >= 1")


@dataclass(frozen=True)
class SelectParams:
    max_quality_drop: float  # relative: a candidate qualifies at >= best x (1 - this) in quality (macro-F1, R^2)
    precisions: tuple[Literal["fp32", "int8"], ...]  # which exports may become champion
    speed_key: str  # what "fastest" means: latency_ms_b<1|256>_t<threads>, the batch and threads serving uses
    registered_model: Optional[str]  # MLflow registry name; null = distillery-<dataset> (one champion per dataset)
    min_gain_over_trivial: float  # gate: quality the champion must gain over the trivial baseline (majority / mean)
    min_macro_f1: Optional[float]  # gate: optional absolute floor for the champion's macro-F1 (null = none)
    min_r2: Optional[float]  # gate: optional absolute floor for its R^2 (regression; null = none)
    max_ece: float  # gate: absolute ceiling for its calibration error
    max_drop_vs_champion: float  # gate: quality it may lose against the current champion on this test split
    max_size_bytes: Optional[int]  # budget: largest ONNX file a champion may be (null = no limit)
    max_latency_ms: Optional[float]  # budget: slowest speed_key latency a champion may have (null = no limit)
    promote: Optional[bool]  # move the alias when the gate passes; null: see promotes()

    def promotes(self, has_champion: bool) -> bool:
        """Whether a passing champion takes the alias: `make run`, `dvc repro` and
        the scheduled or triggered flows promote; `dvc exp run` (which sets
        EXPERIMENT_ENV on its stages) registers only, unless promote is true,
        or the model has no champion yet: a first try on new data (README's
        `dvc exp run -S data.path=...`) has no champion to protect, and without
        one there is nothing for `make serve` to serve."""
        if self.promote is not None:
            return self.promote
        return not os.environ.get(EXPERIMENT_ENV) or not has_champion

    def quality_floor(self, best: float) -> float:
        """The least quality within the budget of `best`. The budget is a share of
        it, not points: 0.005 keeps a champion within 0.5% of the boosted model's
        R^2 0.92 and of a loans table's macro-F1 0.30 alike, where a fixed 0.01
        would be 1% of one and 3% of the other. |best|: an R^2 below 0 too."""
        return best - self.max_quality_drop * abs(best)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"latency_ms_b(1|256)_t[1-9][0-9]*", self.speed_key):
            raise ValueError(f"speed_key must read latency_ms_b<1|256>_t<threads>, got {self.speed_key!r}")
        if self.max_quality_drop < 0:
            raise ValueError("max_quality_drop must be >= 0")
        if not self.precisions:
            raise ValueError("precisions must name at least one of fp32, int8")


# Keys renamed in params.yaml: accepted for one release, with a message naming the new key.
RENAMED_KEYS: dict[str, dict[str, str]] = {
    "select": {"max_f1_drop": "max_quality_drop", "max_r2_drop": "max_quality_drop"},
}
RENAMED_WHY = {
    "max_quality_drop": "it is measured against the best candidate now (the boosted model on tables), "
    "not the fp32 teacher, in the task's own quality (macro-F1 or R^2), and as a share of that quality "
    "(0.005 = 0.5%), not in points",
}


def apply_renamed_keys(raw: Any, source: str, warn: Any = None) -> Any:
    """`raw` (params.yaml as loaded) with each renamed key moved to its new name,
    saying so once per key through `warn` (stderr by default). An old key wins
    over the new one: it is what the user just set (`dvc exp run -S
    select.max_f1_drop=0.05` adds it beside the new key). Two old spellings
    with different values are refused."""
    import sys

    warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
    if not isinstance(raw, dict):
        return raw
    for section, renames in RENAMED_KEYS.items():
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        given: dict[str, tuple[str, Any]] = {}
        for old, new in renames.items():
            if old not in values:
                continue
            value = values.pop(old)
            if new in given and given[new][1] != value:
                raise DistilleryError(
                    f"{source}: '{section}.{given[new][0]}' ({given[new][1]}) and '{section}.{old}' ({value}) "
                    f"are both old names of '{section}.{new}'; keep '{section}.{new}' alone"
                )
            given[new] = (old, value)
            warn(
                f"{source}: '{section}.{old}' is now '{section}.{new}' ({RENAMED_WHY.get(new, 'renamed')}); "
                f"the old name is accepted for this release only: rename it in {source}"
            )
        for new, (_, value) in given.items():
            values[new] = value
    return raw


@dataclass(frozen=True)
class SearchSpace:
    """One hyperparameter's range: `choices`, or `low`..`high` (log-uniform with `log`)."""

    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.choices is None and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError("give either choices, or low < high")
        if self.log and self.choices is None and self.low is not None and self.low <= 0:
            raise ValueError("a log range needs low > 0")


@dataclass(frozen=True)
class SearchParams:
    enabled: bool  # run the search before training (dvc repro then trains with the best values)
    sampler: Literal["grid", "random", "tpe"]  # tpe = Bayesian optimisation (Optuna)
    trials: int  # number of trials (grid: at most the grid's size)
    parallel: int  # trials run at once; they are independent
    max_epochs: int  # epoch budget of each trial
    grid_points: int  # values per numeric range for the grid sampler
    seed: int
    space: dict[str, SearchSpace]  # train param -> its range

    def __post_init__(self) -> None:
        if self.trials < 1 or self.parallel < 1 or self.max_epochs < 1 or self.grid_points < 2:
            raise ValueError("trials, parallel, max_epochs >= 1 and grid_points >= 2 are required")
        if not self.space:
            raise ValueError("space must name at least one train param")


@dataclass(frozen=True)
class MonitorParams:
    """Production monitoring (flows/monitor.py): drift, operations, live quality."""

    log_dir: str  # the server's prediction log folder (SQLite files)
    feedback_dir: str  # late labels: CSV/Parquet files with request_id, row, label
    state_file: str  # where the monitor remembers the last row it read
    window_minutes: float  # one MLflow step per window of this length
    min_rows: int  # windows with fewer rows are reported but never trigger a retrain
    psi_threshold: float  # population stability index above which a feature drifted (0.2 = major shift)
    p_value: float  # KS (numeric) / chi-squared (categorical) p-value below which a feature drifted
    correction: str  # bonferroni: p_value is the window's family-wise rate over its features | none: per feature
    max_drifted_fraction: float  # retrain when more than this share of features drifted...
    prediction_psi_threshold: float  # ...or the predicted-class distribution moved by more than this PSI
    experiment: str  # MLflow experiment that receives the production metrics
    retrain_deployment: str  # Prefect deployment to trigger, "<flow name>/<deployment name>"
    stale_run_minutes: float  # a run of it pending or running longer than this is presumed dead (kill -9) and crashed
    retrain_cron: str  # schedule of the retraining deployment (weekly by default)
    monitor_cron: str  # schedule of the monitoring deployment (hourly by default)

    def __post_init__(self) -> None:
        if not self.window_minutes > 0 or self.min_rows < 1:
            raise ValueError("window_minutes must be > 0 and min_rows >= 1")
        if self.psi_threshold <= 0 or self.prediction_psi_threshold <= 0 or not 0 < self.p_value < 1:
            raise ValueError("PSI thresholds must be > 0 and p_value in (0, 1)")
        if not 0 <= self.max_drifted_fraction <= 1:
            raise ValueError("max_drifted_fraction must lie in [0, 1]")
        if self.correction not in ("bonferroni", "none"):
            raise ValueError(f"correction must be bonferroni or none, not {self.correction!r}")
        if not self.stale_run_minutes > 0:
            raise ValueError("stale_run_minutes must be > 0")
        if "/" not in self.retrain_deployment:
            raise ValueError("retrain_deployment must read '<flow name>/<deployment name>'")


@dataclass(frozen=True)
class MlflowParams:
    tracking_uri: str  # MLFLOW_TRACKING_URI overrides it
    experiment: str

    def resolved_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri


@dataclass(frozen=True)
class Params:
    task: TaskParams
    data: DataParams
    validate: ValidateParams
    preprocess: PreprocessParams
    train: TrainParams
    distill: DistillParams
    augment: AugmentParams
    boost: BoostParams
    prune: PruneParams
    export: ExportParams
    evaluate: EvaluateParams
    select: SelectParams
    search: SearchParams
    monitor: MonitorParams
    mlflow: MlflowParams = field(metadata={"doc": "tracking only; not a stage input"})

    def __post_init__(self) -> None:
        # Checks across sections (the loss against the task is tasks.ml.checks').
        timed = int(self.select.speed_key.rsplit("_t", 1)[1])
        if timed not in self.evaluate.latency_threads:
            raise ValueError(
                f"select.speed_key {self.select.speed_key} needs {timed} thread(s) among "
                f"evaluate.latency_threads {list(self.evaluate.latency_threads)}"
            )
        student, teacher = self.distill, self.train
        if (
            sum(student.channels) > sum(teacher.channels)
            or student.hidden > teacher.hidden
            or sum(student.mlp_layers) > sum(teacher.mlp_layers)
        ):
            raise ValueError(
                "distill: the student (channels, hidden, mlp_layers) must not be larger than the "
                "teacher (train.channels, train.hidden, train.mlp_layers)"
            )
        if task_of(self.task.type).regression and not self.data.tabular:
            raise ValueError(
                f"task.type 'regression' needs a table with a numeric target (data.source "
                f"diabetes, penguins, csv or parquet), not '{self.data.source}'"
            )
        if task_of(self.task.type).multilabel and self.data.source not in DIGIT_SOURCES:
            raise ValueError(
                f"task.type 'multilabel' is wired for data.source {' or '.join(DIGIT_SOURCES)} "
                "(labels: even, large, loop)"
            )

    @property
    def registered_model(self) -> str:
        """The registered model the champion goes to, and the server follows."""
        return self.select.registered_model or model_name(self.data.name)


# --------------------------------------------------------------------------- loading

# Read by every stage that tracks, but not a stage input: not in dvc.yaml.
TRACKING_SECTIONS = ("mlflow",)


class StageParams:
    """The sections of `Params` one stage declared; any other raises, so what a
    stage reads is what it declares (and what dvc.yaml lists for it)."""

    def __init__(self, params: Params, sections: Sequence[str], source: str):
        unknown = [s for s in sections if not hasattr(params, s)]
        if unknown:
            raise ValueError(f"no params section {unknown} (sections: {list(Params.__dataclass_fields__)})")
        self._params, self._sections, self._source = params, tuple(sections), source

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._sections or name in TRACKING_SECTIONS:
            return getattr(self._params, name)
        raise AttributeError(
            f"{self._source}: section '{name}' is not among this stage's SECTIONS "
            f"{list(self._sections)}; declare it there and list its keys in dvc.yaml"
        )

    @property
    def registered_model(self) -> str:
        """As `Params.registered_model`, through this view: the stage must declare select and data."""
        return Params.registered_model.fget(self)  # type: ignore[attr-defined]


EXPERIMENT_ENV = "DVC_EXP_BASELINE_REV"


def load_params(path: str | Path = PARAMS_FILE, sections: Optional[Sequence[str]] = None) -> Any:
    """Every section of `path`, parsed and checked (a bad key anywhere stops any
    stage), as `Params`; or, given `sections`, a view of only those."""
    try:
        params = parse(Params, apply_renamed_keys(load_yaml(path, "params file"), str(path)), str(path))
    except DistilleryError as err:
        if os.environ.get(EXPERIMENT_ENV):  # set by DVC on the stages of `dvc exp run`
            raise DistilleryError(
                f"{err}\n(under `dvc exp run`: a value given with -S is written into {path} before the stages run, "
                f"and DVC leaves it there when the run fails; fix it there, or `git checkout {path}` to go back)"
            ) from err
        raise
    return params if sections is None else StageParams(params, sections, str(path))
