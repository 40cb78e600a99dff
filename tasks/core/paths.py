"""Every path the pipeline reads or writes, declared once. dvc.yaml names the same
paths as stage deps and outs."""

from pathlib import Path

PARAMS = Path("params.yaml")
EXPECTATIONS = Path("expectations")

INGESTED = Path("data/ingested")  # table.parquet + arrays.npz + meta.json
VALIDATED = Path("data/validated")
QUARANTINE = Path("data/quarantine")
PROCESSED = Path("data/processed")  # train/val/test .npz + meta.json

MODELS = Path("models")
ONNX_DIR = MODELS / "onnx"
CHAMPION = MODELS / "champion.onnx"
BOOSTED = MODELS / "boosted"  # the boost stage's output: model.onnx (tables) and boosted.json
BOOSTED_ONNX = BOOSTED / "model.onnx"  # the contract's graph, without metadata: export finishes it
BOOSTED_INFO = BOOSTED / "boosted.json"  # whether one was trained, its settings and checks

REPORTS = Path("reports")
VALIDATION_REPORT = REPORTS / "validation.json"
EVALUATION_REPORT = REPORTS / "evaluation.json"
METRICS = REPORTS / "metrics.json"  # the headline numbers `dvc metrics show` prints (a few, all numbers)
MODEL_CARD = REPORTS / "model_card.md"  # the champion's model card (also its registry description)
SELECTION = REPORTS / "selection.json"  # select's full record: every candidate's row and verdict, the champion
PLOTS = REPORTS / "plots"

# A table plus arrays: the canonical form every source is turned into.
TABLE = "table.parquet"
ARRAYS = "arrays.npz"
META = "meta.json"

SUMMARIES = REPORTS / "summaries"  # one Markdown summary per stage (also the flow's Prefect artifacts)
DATA_DOCS = REPORTS / "data_docs"
DATA_QUALITY_REPORT = REPORTS / "data_quality.json"
LABEL_ISSUES_REPORT = REPORTS / "label_issues.json"  # confident learning's suspects (tasks/data/label_issues.py)
LABEL_ISSUES_PLOT = REPORTS / "label_issues.png"
QUALITY_PLOTS = REPORTS / "quality"  # class balance and missingness matrix
SEARCH_DIR = REPORTS / "search"
BEST_PARAMS = SEARCH_DIR / "best_params.json"  # the search's best train values, applied by train
EXPORT_REPORT = REPORTS / "export.json"
BOOST_REPORT = REPORTS / "boost.json"
PRUNING_REPORT = REPORTS / "pruning.json"
COMPRESSION_REPORT = REPORTS / "compression.json"
CURVES = REPORTS / "curves"  # ROC, PR, reliability and residual data for `dvc plots`
PARETO_PLOT = REPORTS / "pareto.png"
TENSORBOARD = Path("runs")  # `tensorboard --logdir runs`: live per-epoch curves
