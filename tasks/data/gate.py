"""The data-quality gate's building blocks (the validate stage wires them):

1. Measure the four dimensions (representation, completeness, uniqueness,
   balance) and apply the corrections params.yaml allows (tasks/data/correct.py).
2. Run the dataset's Great Expectations suite through a GX checkpoint, which
   also builds Data Docs.
3. Rows that a correction could not save, or that fail a critical row-level
   expectation, go to quarantine with their reasons; every other row is
   validated. rows_in == rows_valid + rows_quarantined, always.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

from tasks.contracts.dataset import (
    IMAGES,
    LABEL,
    LABELS,
    REASON,
    ROW_ID,
    Dataset,
    DatasetMeta,
)
from tasks.core import paths
from tasks.core.errors import DistilleryError
from tasks.core.io import read_json
from tasks.core.params import LabelIssuesParams, ValidateParams
from tasks.core.report import markdown_table
from tasks.core.task import kind_of, task_of
from tasks.data.correct import DUPLICATE_OF, FEATURE_TYPES, Corrected, correct_images, correct_table
from tasks.data.label_issues import LabelIssues, find_label_issues
from tasks.data.quality import PICTURE_WARNINGS, class_balance


@dataclass
class ValidationOutcome:
    success: bool
    results: list[dict[str, Any]]
    reasons: dict[int, list[str]] = field(default_factory=dict)  # row_id -> failed critical checks

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"] and r["severity"] == "critical"]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"] and r["severity"] != "critical"]


def load_suite(path: str | Path) -> dict:
    suite = read_json(path, "GX expectation suite")
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise DistilleryError(f"{path}: a GX suite needs a 'name' and an 'expectations' list")
    return suite


def default_suite(source: str, task: str) -> Path:
    """The suite a run uses when validate.suite is null: expectations/<source>.json,
    whose checks on the target are those of the source's usual task. A task
    without classes (regression) on a source that has one takes
    expectations/<source>.regression.json instead: the generic csv and parquet
    suites check a class target's set, counts and balance, which a number has not."""
    usual = paths.EXPECTATIONS / f"{source}.json"
    values = paths.EXPECTATIONS / f"{source}.regression.json"
    return values if task_of(task).regression and values.exists() else usual


def _describe(config: Any) -> str:
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


def _severity(config: Any) -> str:
    return str(getattr(config, "severity", None) or "critical").split(".")[-1].lower()


def run_suite(
    table: pd.DataFrame, suite: dict, parameters: dict[str, Any], docs_dir: Optional[Path] = None
) -> ValidationOutcome:
    """Run `suite` on `table` through a GX checkpoint and collect per-row
    failures of critical expectations. With `docs_dir`, GX builds Data Docs there."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    import expectations.custom  # noqa: F401  registers the project's expectations

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # stage logs stay readable
    batch = (
        context.data_sources.add_pandas("distillery")
        .add_dataframe_asset("table")
        .add_batch_definition_whole_dataframe("whole table")
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="gate", data=batch, suite=_gx_suite(context, suite))
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="gate",
            validation_definitions=[definition],
            actions=_data_docs_actions(context, docs_dir),
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": table}, expectation_parameters=parameters)
    return _outcome(result for validation in run.run_results.values() for result in validation.results)


def _gx_suite(context: Any, suite: dict) -> Any:
    """The suite as GX's object, refused if GX would not run every expectation in it."""
    import great_expectations as gx

    body = {k: v for k, v in suite.items() if k in ("name", "expectations", "meta", "notes")}
    try:
        gx_suite = context.suites.add(gx.ExpectationSuite(**body))
    except Exception as err:  # GX raises several types for a malformed suite
        raise DistilleryError(f"GX suite '{suite.get('name')}' is not valid: {err}") from err
    # GX logs and drops an expectation whose type it does not know instead of
    # raising; a gate that silently skips a check must stop instead.
    if len(gx_suite.expectations) != len(suite["expectations"]):
        known = {e.expectation_type for e in gx_suite.expectations}
        dropped = sorted({str(e.get("type")) for e in suite["expectations"] if isinstance(e, dict)} - known)
        raise DistilleryError(f"GX suite '{suite.get('name')}' is not valid: unknown expectation types {dropped}")
    return gx_suite


def _data_docs_actions(context: Any, docs_dir: Optional[Path]) -> list:
    """With `docs_dir`, the checkpoint action that builds GX's Data Docs there."""
    import great_expectations as gx

    if docs_dir is None:
        return []
    context.add_data_docs_site(
        site_name="reports",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["reports"])]


def _outcome(gx_results: Iterable[Any]) -> ValidationOutcome:
    """GX's results as the gate's: one row per expectation, and per row id the
    critical expectations it failed."""
    results: list[dict[str, Any]] = []
    reasons: dict[int, list[str]] = {}
    for result in gx_results:
        config = result.expectation_config
        info = result.exception_info or {}
        detail = result.result or {}
        severity = _severity(config)
        results.append(
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")},
                "severity": severity,
                "success": bool(result.success),
                "observed_value": detail.get("observed_value"),
                "details": detail.get("details"),
                "unexpected_count": detail.get("unexpected_count"),
                "exception": info.get("exception_message") if info.get("raised_exception") else None,
            }
        )
        if severity == "critical":
            for row in detail.get("unexpected_index_list") or []:
                reasons.setdefault(int(row[ROW_ID]), []).append(_describe(config))
    outcome = ValidationOutcome(success=True, results=results, reasons=reasons)
    outcome.success = not outcome.failed
    return outcome


CLASS_COUNT = "expect_column_value_counts_to_be_at_least"  # every class has enough rows


def with_min_class_rows(suite: dict, rows: Optional[int]) -> dict:
    """The suite with validate.min_class_rows as every class-count check's
    min_count (unchanged when it is null)."""
    if rows is None:
        return suite
    return {
        **suite,
        "expectations": [
            {**e, "kwargs": {**e.get("kwargs", {}), "min_count": rows}} if e.get("type") == CLASS_COUNT else e
            for e in suite["expectations"]
        ],
    }


ROW_LOSS = "max_quarantined_fraction"  # the row-loss alarm's line among the gate's results
TOP_REASONS = 3


def row_loss(reasons: dict[int, list[str]], rows_in: int, limit: float) -> dict[str, Any]:
    """The row-loss alarm, as one more critical result: every expectation may
    pass while the rows they refused are a fifth of the data. Over `limit`, it
    fails naming the reasons that cost the most rows. An exact duplicate is not
    counted: the row it copies is kept, so nothing it says is lost."""
    lost = {row: whys for row, whys in reasons.items() if not all(w.startswith(DUPLICATE_OF) for w in whys)}
    share = len(lost) / rows_in if rows_in else 0.0
    counts = Counter(reason for whys in lost.values() for reason in dict.fromkeys(whys))
    top = [{"rows": n, "reason": reason} for reason, n in counts.most_common(TOP_REASONS)]
    failed = share > limit
    message = None
    if failed:
        message = (
            f"{len(lost):,} of {rows_in:,} rows ({share:.1%}) were quarantined, more than "
            f"validate.max_quarantined_fraction {limit}: "
            + "; ".join(f"{t['rows']:,} rows: {t['reason']}" for t in top)
            + ". Declare the column's type in data.columns if it was read wrong, fix the data, or raise "
            "validate.max_quarantined_fraction if losing these rows is right"
        )
    return {
        "expectation": ROW_LOSS,
        "column": None,
        "kwargs": {"max_quarantined_fraction": limit},
        "severity": "critical",
        "success": not failed,
        "observed_value": round(share, 6),
        "details": {"top_reasons": top},
        "unexpected_count": len(lost),
        "exception": message,
    }


def split_quarantine(dataset: Dataset, reasons: dict[int, list[str]]) -> tuple[Dataset, Dataset]:
    """Split rows into (valid, quarantined); every row lands in exactly one."""
    row_ids = dataset.table[ROW_ID].to_numpy()
    bad = np.isin(row_ids, np.fromiter(reasons, dtype=np.int64, count=len(reasons)))

    def subset(mask: np.ndarray) -> Dataset:
        return Dataset(
            table=dataset.table[mask].reset_index(drop=True),
            arrays={k: v[mask] for k, v in dataset.arrays.items()},
            meta=dataset.meta.replace(rows=int(mask.sum())),
        )

    quarantined = subset(bad)
    quarantined.table[REASON] = ["; ".join(reasons[int(r)]) for r in quarantined.table[ROW_ID]]
    return subset(~bad), quarantined


def merge_reasons(*sources: dict[int, list[str]]) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for source in sources:
        for row_id, why in source.items():
            merged.setdefault(row_id, []).extend(why)
    return merged


def classes_of(corrected: Corrected, meta: DatasetMeta, task: str) -> tuple[str, ...]:
    """Declared classes if any, else the labels found (sorted, so stable); none
    for a regression target."""
    if task_of(task).regression:
        return ()
    if meta.classes:
        return tuple(meta.classes)
    return tuple(sorted(corrected.table[LABEL].dropna().astype(str).unique().tolist()))


def suite_parameters(meta: DatasetMeta, table: pd.DataFrame | None = None) -> dict[str, Any]:
    """Values the suites refer to as {"$PARAMETER": name}, taken from the data's own meta."""
    if kind_of(meta.kind).image:
        return {"class_labels": list(range(len(meta.classes or ())))}
    declared = list(meta.declared_columns)
    observed = list(table.columns) if table is not None else []
    return {
        "class_labels": list(meta.classes or ()),
        "expected_columns": [ROW_ID, LABEL, *declared] if declared else observed,
    }


def assess(dataset: Dataset, task: str, params: ValidateParams) -> tuple[Corrected, Dataset]:
    """Measure and correct for task type `task`; return the corrections and the
    corrected dataset, its meta typed (task, classes, column types, features)."""
    meta = dataset.meta.replace(task=task)
    if kind_of(meta.kind).table:
        corrected = correct_table(dataset.table, meta.target, meta.declared_types, task, params)
        types = corrected.column_types
        meta = meta.replace(
            classes=classes_of(corrected, meta, task),
            column_types=types,
            features=tuple(c for c, t in types.items() if t in FEATURE_TYPES),
            date_formats=corrected.date_formats,
            reading=corrected.reading,
        )
        return corrected, Dataset(table=corrected.table, arrays=dataset.arrays, meta=meta)
    corrected = correct_images(dataset.table, dataset.arrays[IMAGES], params)
    return corrected, Dataset(table=dataset.table, arrays=dataset.arrays, meta=meta)


def failure_message(outcome: ValidationOutcome, suite_path: Path, target: str | None = None) -> str:
    """What failed, naming each column; the suites check the target under its
    internal name, so `target` (the user's name for it) is said next to it."""
    lines = [f"data validation failed ({suite_path}); these critical expectations failed:"]
    for r in outcome.failed:
        what = r["expectation"] + (f" on column '{r['column']}'" if r["column"] else "")
        if r["column"] == LABEL and target and target != LABEL:
            what += f" (the target column '{target}')"
        if r["exception"]:
            seen = r["exception"]
        elif r["unexpected_count"]:
            seen = f"{r['unexpected_count']} unexpected rows"
        else:
            seen = f"observed {r['observed_value']}"
        mismatched = (r.get("details") or {}).get("mismatched")
        if mismatched:
            seen += f" (mismatched columns: {mismatched})"
        too_few = (r.get("details") or {}).get("too_few")
        if too_few:
            least = r["details"]["min_count"]
            seen = "; ".join(f"class {c!r} has {n} row(s), fewer than the {least} needed" for c, n in too_few.items())
            seen += (
                f". Either declare data.classes without {'it' if len(too_few) == 1 else 'them'} (its rows go to "
                f"quarantine with a reason), or set validate.min_class_rows (now {least})"
            )
        lines.append(f"  - {what}: {seen}")
    lines.append(f"details: {paths.VALIDATION_REPORT}; Data Docs: {paths.DATA_DOCS / 'index.html'}")
    return "\n".join(lines)


def split_picture_checks(suite: dict) -> tuple[dict, list[dict]]:
    """The suite without the expectations on the pictures as read (a column of
    quality.PICTURE_WARNINGS: size, aspect, channels, exposure, information,
    blur), and those: they run on quality.picture_flags, not on the table. A
    source with no files (Quick Draw arrays) has nothing to measure them on."""
    on_pictures, rest = [], []
    for expectation in suite["expectations"]:
        picture = expectation.get("kwargs", {}).get("column") in PICTURE_WARNINGS
        (on_pictures if picture else rest).append(expectation)
    return {**suite, "expectations": rest}, on_pictures


def picture_findings(report: dict) -> str:
    """A folder of pictures: the files that could not be read, and the warnings on the pictures as stored."""
    if "unreadable" not in report:
        return ""
    unreadable = report["unreadable"]
    named = "; ".join(f"`{e['file']}`: {e['reason']}" for e in unreadable["examples"])
    text = f"; unreadable files {unreadable['count']} (quarantined{': ' + named if named else ''})"
    if conflicts := report["uniqueness"].get("label_conflicts", {}).get("count"):
        text += f"; label conflicts {conflicts} (one picture under two classes: every copy quarantined)"
    source = report["representation"].get("source", {})
    found = {k: source[k]["count"] for k in PICTURE_WARNINGS if source.get(k, {}).get("count")}
    if source.get("format_mix"):
        found["format_mix"] = len(source["formats"])
    text += f"; warnings on the pictures as stored {found or 'none'} (examples in data_quality.json)"
    if turned := source.get("exif_oriented", {}).get("count"):
        text += f"; {turned} turned upright by their EXIF orientation, as serving reads them"
    return text


def quality_summary(report: dict) -> str:
    """The four dimensions in a few lines, for the Prefect artifact."""
    balance, unique = report["balance"], report["uniqueness"]
    completeness = report["completeness"]
    if kind_of(report["kind"]).table:
        missing = {c: f"{v['fraction']:.1%}" for c, v in completeness["columns"].items() if v["missing"]}
        rows_missing = completeness["rows_with_missing"]
        variants = {
            c: len(e.get("variants", [])) for c, e in report["representation"]["columns"].items() if e.get("variants")
        }
        representation = f"category variants {variants or 'none'}; corrections {report['corrections']}"
    else:
        missing = {"pixels": completeness["missing_pixels"]}
        rows_missing = completeness["images_with_missing_pixels"]
        representation = (
            f"shapes {report['representation']['shapes']}, value range {report['representation']['value_range']}"
        )
        representation += picture_findings(report)
    ratio = balance["imbalance_ratio"]
    if "target" in balance:
        t = balance["target"]
        balance_text = f"target mean {t['mean']:.4g}, std {t['std']:.4g}, skew {t['skew']:.2f}, range [{t['min']:.4g}, {t['max']:.4g}]"
    elif ratio:
        balance_text = (
            f"imbalance ratio {ratio:.2f}, normalised entropy {balance['normalized_entropy']:.3f}, "
            f"gini {balance['gini']:.3f}"
        )
        kept = balance.get("kept")
        if kept and kept.get("imbalance_ratio") is not None and kept["counts"] != balance["counts"]:
            balance_text += (
                f" over every row read; over the rows kept, imbalance ratio {kept['imbalance_ratio']:.2f}, "
                f"normalised entropy {kept['normalized_entropy']:.3f}"
            )
    else:
        balance_text = "no labels"
    return markdown_table(
        [
            {"dimension": "representation", "finding": representation},
            {
                "dimension": "completeness",
                "finding": f"rows with a missing value: {rows_missing}; missing: {missing or 'none'}",
            },
            {
                "dimension": "uniqueness",
                "finding": f"duplicate rows {unique['duplicate_rows']}, near-duplicates "
                f"{unique.get('near_duplicate_rows', unique.get('near_duplicate_images'))}",
            },
            {"dimension": "balance", "finding": balance_text},
        ]
    )


@dataclass
class GateResult:
    report: dict[str, Any]  # the four dimensions and the corrections
    outcome: ValidationOutcome
    valid: Dataset
    quarantined: Dataset
    label_issues: Optional[LabelIssues] = None
    label_report: dict[str, Any] = field(default_factory=dict)  # reports/label_issues.json

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "success": self.outcome.success,
            "rows_in": len(self.valid.table) + len(self.quarantined.table),
            "rows_valid": len(self.valid.table),
            "rows_quarantined": len(self.quarantined.table),
        }


def gate(
    dataset: Dataset, task: str, params: ValidateParams, suite: dict, docs_dir: Optional[Path] = None
) -> GateResult:
    """Measure, correct, run the suite, and split the rows into valid and quarantined."""
    suite, picture_checks = split_picture_checks(with_min_class_rows(suite, params.min_class_rows))
    corrected, typed = assess(dataset, task, params)
    parameters = suite_parameters(typed.meta, typed.table)
    outcome = run_suite(typed.table, suite, parameters, docs_dir)
    if picture_checks and corrected.picture_flags is not None:
        pictures = run_suite(corrected.picture_flags, {"name": "pictures as read", "expectations": picture_checks}, {})
        outcome.results += [{**r, "measured_on": "pictures as read"} for r in pictures.results]
        outcome.success = not outcome.failed
    reasons = merge_reasons(corrected.row_issues, outcome.reasons)
    valid, quarantined = split_quarantine(typed, reasons)
    # Label errors are looked for among the rows kept: a row already refused says nothing about the others.
    options = params.label_issues
    issues = find_label_issues(
        valid,
        list(typed.meta.classes or ()),
        task,
        options.folds,
        options.seed,
        options.min_model_quality,
        options.image_epochs,
    )
    gate_on_kept(outcome, suite, parameters, valid.table, issues, options)
    relabelled = 0
    # A model too weak for the data (issues.reliable false) is reported, never acted on.
    if options.action == "quarantine" and issues.row_ids and issues.reliable:
        reasons = merge_reasons(reasons, issues.quarantine_reasons())
        valid, quarantined = split_quarantine(typed, reasons)
    elif options.action == "relabel" and issues.reliable:
        relabelled = relabel(valid, issues, options.relabel_above)
    outcome.results.append(row_loss(reasons, len(typed.table), params.max_quarantined_fraction))
    outcome.success = not outcome.failed
    label_report = issues.report(
        options.action, relabelled, len(issues.row_ids) if options.action == "quarantine" and issues.reliable else 0
    )
    report = corrected.report
    if report.get("balance", {}).get("counts") and LABEL in valid.table:
        # The balance of every row read says what the source holds; this, of the rows kept, is what trains.
        # A few foreign labels in quarantine can make the first look far worse than the data that is used.
        report["balance"]["kept"] = class_balance(valid.table[LABEL])
    return GateResult(
        report=report,
        outcome=outcome,
        valid=valid,
        quarantined=quarantined,
        label_issues=issues,
        label_report=label_report,
    )


# The class-balance expectations: measured again on the rows kept, and gated on that. Over every row read,
# a few quarantined rows of a foreign class make a class of one (a corrupted penguins file: ratio 165
# over all rows, 2.2 over the rows kept); data_quality.json reports both.
BALANCE_EXPECTATIONS = (
    CLASS_COUNT,
    "expect_column_imbalance_ratio_to_be_at_most",
    "expect_column_normalized_entropy_to_be_at_least",
)
KEPT = "rows kept"  # `measured_on` of a result measured again on the rows kept


def gate_on_kept(
    outcome: ValidationOutcome,
    suite: dict,
    parameters: dict[str, Any],
    kept: pd.DataFrame,
    issues: LabelIssues,
    options: LabelIssuesParams,
) -> None:
    """The checks measured on the rows kept, in one GX run: the suite's balance
    expectations (their results replace those over every row read) and the
    label-error rate (added). In place."""
    checks = [e for e in suite["expectations"] if e.get("type") in BALANCE_EXPECTATIONS]
    if issues.reliable:
        flags = set(issues.row_ids)
        kept = kept.assign(**{LABEL_ISSUE_COLUMN: [float(r in flags) for r in kept[ROW_ID]]})
        checks += label_issue_suite(options.max_rate, options.severity)["expectations"]
    if not checks or kept.empty:
        return
    again = run_suite(kept, {"name": f"{suite.get('name', 'suite')} (rows kept)", "expectations": checks}, parameters)
    by_key = {(r["expectation"], r["column"]): {**r, "measured_on": KEPT} for r in again.results}
    replaced = [by_key.pop((r["expectation"], r["column"]), r) for r in outcome.results]
    outcome.results = replaced + list(by_key.values())
    outcome.success = not outcome.failed


LABEL_ISSUE_COLUMN = "label_issue"  # 1.0 for a row confident learning flags, in the gate's rate check


def label_issue_suite(max_rate: float, severity: str) -> dict:
    """The gate on the label-error rate: the mean of the flags is the fraction flagged."""
    return {
        "name": "label_issues",
        "expectations": [
            {
                "type": "expect_column_mean_to_be_between",
                "severity": severity,
                "kwargs": {"column": LABEL_ISSUE_COLUMN, "min_value": 0.0, "max_value": max_rate},
            }
        ],
    }


def relabel(valid: Dataset, issues: LabelIssues, above: float) -> int:
    """Give the suspects scored at `above` or more the suggested label, in the
    table and (images) in the label array; how many changed. In place."""
    chosen = {r: s for r, s, c in zip(issues.row_ids, issues.suggested, issues.scores) if c >= above}
    if not chosen:
        return 0
    table = valid.table
    mask = table[ROW_ID].isin(list(chosen)).to_numpy()
    suggested = [chosen[int(r)] for r in table.loc[mask, ROW_ID]]
    if LABELS in valid.arrays:  # images: labels are class indices
        index = {c: i for i, c in enumerate(issues.classes)}
        values = np.array([index[s] for s in suggested], dtype=valid.arrays[LABELS].dtype)
        valid.arrays[LABELS][mask] = values
        table.loc[mask, LABEL] = values
    else:
        table.loc[mask, LABEL] = suggested
    return int(mask.sum())
