"""The run report: one self-contained HTML page (reports/index.html) that
shows what a run measured.

The page needs no network: images are inlined as data: URIs, the style is
inline, and there is no script. It reads only what the stages wrote (the
reports/ files and the model card) and asks the registry what it holds. The
report stage writes it at the end of every `dvc repro` and `dvc exp run`;
`make run`'s flow writes it again with each stage's time (flows/report.py).
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tasks.contracts import reports
from tasks.contracts.reports import (
    BOOSTED_BASELINE,
    CompressionReport,
    EvaluationReport,
    Selection,
    ValidationReport,
)
from tasks.core import paths
from tasks.core.task import task_of
from tasks.evaluation.card import baseline_rows, class_scores

INDEX = paths.REPORTS / "index.html"
NO_STAGE_TABLE = (
    "<p class=muted>written by the report stage of <code>dvc repro</code> or <code>dvc exp run</code>: "
    "<code>dvc status</code> says what is stale; <code>make run</code> lists each stage with its time</p>"
)
REGISTRY_SECTIONS = ("data", "select")  # what names the registered model (Params.registered_model)
QUALITY_DIMENSIONS = ("representation", "completeness", "uniqueness", "balance")

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px} h2{margin:32px 0 10px;font-size:20px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}
.muted{color:#5b6475} .card{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:14px 18px;margin:10px 0}
.headline{display:flex;flex-wrap:wrap;gap:12px} .headline div{background:#fff;border:1px solid #d8dce3;border-radius:8px;
padding:10px 16px;min-width:150px} .headline b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;margin:6px 0;font-size:13px} th,td{border:1px solid #d8dce3;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#eef1f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17803d;font-weight:600} .bad{color:#b42318;font-weight:600} .warn{color:#a15c07;font-weight:600}
img{max-width:100%;border:1px solid #d8dce3;border-radius:6px;background:#fff} .plots{display:flex;flex-wrap:wrap;gap:12px}
.plots figure{margin:0;flex:1 1 440px} figcaption{font-size:13px;color:#5b6475}
.dims{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
code{background:#eef1f5;padding:1px 4px;border-radius:4px} nav a{margin-right:14px}
"""


def _read(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e("" if value is None else value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def table(rows: list[dict], columns: Optional[list[str]] = None) -> str:
    """Rows as an HTML table; the columns are every key, in first-seen order."""
    if not rows:
        return "<p class=muted>(none)</p>"
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Markup(str):
    """HTML the report made itself: put in a cell as it is."""


def _cell(value: Any) -> str:
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td class=num>{_num(value)}</td>" if numeric else f"<td>{_num(value)}</td>"


def image(path: Path, caption: str) -> str:
    """A PNG inlined as a data: URI (no file or network request), or why there is none."""
    shown = Path(*path.parts[path.parts.index("reports") :]) if "reports" in path.parts else path
    if not path.exists():
        return f"<figure><p class=muted>{_e(caption)}: not written ({_e(shown)} is absent)</p></figure>"
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)} (<code>{_e(shown)}</code>)</figcaption></figure>"
    )


def verdict(ok: Optional[bool], yes: str = "passed", no: str = "failed") -> str:
    if ok is None:
        return "<span class=muted>not run</span>"
    return f"<span class=ok>{yes}</span>" if ok else f"<span class=bad>{no}</span>"


def expectation_name(name: str) -> str:
    """`expect_column_values_to_be_between` -> `column values to be between`."""
    return name.removeprefix("expect_").replace("_", " ")


def _kwargs(kwargs: dict) -> str:
    shown = {k: v for k, v in kwargs.items() if k not in ("column", "batch_id")}
    text = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in shown.items())
    return text if len(text) < 160 else text[:157] + "..."


def _observed(result: dict) -> str:
    value = result.get("observed_value")
    if value is None and result.get("unexpected_count") is not None:
        return f"{result['unexpected_count']:,} unexpected"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) < 100 else text[:97] + "..."


def _data_quality(quality: dict) -> str:
    parts = []
    for dimension in QUALITY_DIMENSIONS:
        value = quality.get(dimension)
        if value is None:
            continue
        flat = _flatten(value)
        parts.append(
            f"<div><h3>{dimension}</h3>" + table([{"measure": k, "value": v} for k, v in flat.items()]) + "</div>"
        )
    return "<div class=dims>" + "".join(parts) + "</div>"


def _flatten(value: Any, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out: dict = {}
        for k, v in value.items():
            out.update(
                _flatten(
                    v, f"{prefix}{k}." if not isinstance(v, (int, float, str, bool, type(None))) else f"{prefix}{k}"
                )
            )
        return out
    if isinstance(value, list):
        return {prefix.rstrip("."): ", ".join(map(str, value))[:200]}
    return {prefix.rstrip("."): value}


def _markdown(text: str) -> str:
    import markdown

    # The card is ours (tasks/evaluation/card.py), but escape anyway: column names come from user data.
    return markdown.markdown(html.escape(text, quote=False), extensions=["tables"])


def registry_state(root: Path) -> dict:
    """What the registry holds for models/champion.onnx, asked now (never read
    from a report, which DVC may have restored): the registered model, the
    complete version of this very file, whether the alias points at it."""
    from mlflow import MlflowClient

    from tasks.contracts.registry import alias_version, complete_versions
    from tasks.core.params import load_params
    from tasks.core.provenance import sha256_file
    from tasks.core.tracking import resolved_at, sqlite_path

    params = load_params(root / paths.PARAMS, REGISTRY_SECTIONS)
    uri = resolved_at(params.mlflow.resolved_uri(), root)
    state = {
        "registered_model": params.registered_model,
        "uri": params.mlflow.resolved_uri(),
        "version": None,
        "promoted": False,
    }
    champion = root / paths.CHAMPION
    database = sqlite_path(uri)
    if not champion.exists() or (database is not None and not database.exists()):
        return state
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        found = complete_versions(client, state["registered_model"], sha256_file(champion))
        alias = alias_version(client, state["registered_model"])
    except Exception as err:  # noqa: BLE001 - a server that is down: say so, the report is still worth writing
        return {**state, "error": f"{type(err).__name__}: {err}"}
    if found:
        versions = [str(v.version) for v in found]
        version = alias if alias in versions else versions[0]
        state.update(version=version, promoted=alias == version)
    return state


@dataclass(frozen=True)
class Found:
    """What the page shows, read once: each stage's report through its
    contract (None when that stage has not run here) and the registry's answer."""

    root: Path
    selection: Optional[Selection]
    compression: Optional[CompressionReport]
    evaluation: Optional[EvaluationReport]
    validation: Optional[ValidationReport]
    quality: dict
    labels: dict
    registry: dict

    @classmethod
    def read(cls, root: Path) -> "Found":
        def contract(kind: type) -> Any:
            return reports.read_optional(kind, root / reports.FILES[kind])

        return cls(
            root=root,
            selection=contract(Selection),
            compression=contract(CompressionReport),
            evaluation=contract(EvaluationReport),
            validation=contract(ValidationReport),
            quality=_read(root / paths.DATA_QUALITY_REPORT) or {},
            labels=_read(root / paths.LABEL_ISSUES_REPORT) or {},
            registry=registry_state(root),
        )

    @property
    def reports_dir(self) -> Path:
        return self.root / paths.REPORTS


def render(root: Path, stages: Optional[list[dict]] = None) -> str:
    """The page; `stages`: the stage table, when the caller has one (the flow's, with times)."""
    found = Found.read(root)
    champion = found.selection.champion if found.selection else None
    out = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Distillery run: {_e(champion)}</title>"
        f"<style>{STYLE}</style></head><body><main>",
        "<h1>Distillery run report</h1>",
        f"<p class=muted>{_e(os.path.basename(str(root)))} · every figure below is read from <code>reports/</code>"
        " as the stages wrote it</p>",
        '<nav><a href="#stages">stages</a><a href="#gate">gates</a><a href="#data">data quality</a><a href="#label-issues">label issues</a>'
        '<a href="#candidates">candidates</a><a href="#evaluation">evaluation</a><a href="#card">model card</a>'
        '<a href="data_docs/index.html">GX Data Docs</a><a href="model_card.md">model_card.md</a></nav>',
        _champion_section(found),
        "<h2 id=stages>Stages</h2>" + (table(stages) if stages else NO_STAGE_TABLE),
        _gates_section(found),
        _quality_section(found),
        _labels_section(found),
        _candidates_section(found),
        _evaluation_section(found),
        "<h2 id=card>Model card</h2><div class=card>",
        _markdown((root / paths.MODEL_CARD).read_text())
        if (root / paths.MODEL_CARD).exists()
        else "<p class=muted>not written yet</p>",
        "</div></main></body></html>",
    ]
    return "\n".join(out)


def _champion_section(found: Found) -> str:
    selection, registry = found.selection, found.registry
    if selection is None:
        return (
            "<h2 id=champion>Champion</h2><p class=bad>No champion: select has not completed "
            "(see the stage table and its summary).</p>"
        )
    ours = selection.ours
    return (
        "<h2 id=champion>Champion</h2><div class=headline>"
        f"<div>champion<b id=champion-name>{_e(selection.champion)}</b></div>"
        f"<div>{task_of(selection.task).quality_label}<b id=champion-quality>{ours['quality']:.4f}</b></div>"
        + (f"<div>ECE<b>{ours['ece']:.4f}</b></div>" if ours.get("ece") is not None else "")
        + f"<div>speed vs {_e(selection.reference)}<b>{selection.speedup:.2f}×</b>"
        f"<span class=muted>{_e(selection.speed_key)}</span></div>"
        f"<div>size<b>{ours['size_bytes'] / 1024:.1f} KiB</b></div>"
        f"<div>registry<b>{_e(version_text(registry))}</b>"
        f"<span class=muted>{_e(registry['registered_model'])}"
        f"{'@champion' if registry['promoted'] else ' (not promoted)'}</span></div></div>"
        "<p>File: <code>models/champion.onnx</code>. Serve it with <code>make serve</code>.</p>"
        + _baselines_table(selection)
    )


def _baselines_table(selection: Selection) -> str:
    """The champion beside the trivial and boosted baselines, same test split."""
    if not selection.baselines:
        return ""
    return "<h3 id=baselines>Beside the baselines (same test split)</h3>" + table(baseline_rows(selection))


def _gates_section(found: Found) -> str:
    out = ["<h2 id=gate>Gates</h2><div class=card>"]
    validation = found.validation
    if validation:
        out.append(
            f"<p><b>Data gate</b> (Great Expectations, <code>{_e(validation.suite)}</code>): "
            f"{verdict(validation.success)}. Rows in {validation.rows_in:,}, valid "
            f"{validation.rows_valid:,}, quarantined {validation.rows_quarantined:,} "
            "(<code>data/quarantine/</code>).</p>"
        )
        out.append(
            table(
                [
                    {
                        "expectation": expectation_name(r["expectation"]),
                        "column": r.get("column") or "",
                        "settings": _kwargs(r.get("kwargs", {})),
                        "severity": r.get("severity", ""),
                        "result": Markup(verdict(r.get("success"))),
                        "observed": _observed(r),
                        "measured on": r.get("measured_on", "every row read"),
                    }
                    for r in validation.results
                ]
            )
        )
    else:
        out.append("<p><b>Data gate</b>: <span class=muted>not run</span></p>")
    if found.selection:
        registry = found.registry
        held = (
            f"version {registry['version']} of <code>{_e(registry['registered_model'])}</code> holds this "
            f"champion" + (" and the alias" if registry["promoted"] else ", without the alias")
            if registry["version"]
            else "no registered version holds this champion yet"
        )
        out.append(
            f"<p><b>Evaluation gate</b> (register): the champion must reach the <code>select.*</code> "
            f"floors and not fall behind the current champion; {held} (the registry, asked now).</p>"
        )
    out.append("</div>")
    return "".join(out)


def _quality_section(found: Found) -> str:
    quality, reports_dir = found.quality, found.reports_dir
    if not quality:
        return "<h2 id=data>Data quality</h2><p class=muted>not measured yet (validate has not run)</p>"
    plots = [image(reports_dir / "quality" / "balance.png", "class balance")]
    missing = reports_dir / "quality" / "missingness.png"
    plots.append(
        image(missing, "missingness")
        if missing.exists()
        else "<figure><p class=muted>missingness: no plot, because no value is missing</p></figure>"
    )
    return (
        "<h2 id=data>Data quality</h2>"
        f"<p>{quality.get('rows', 0):,} rows ({_e(quality.get('kind', ''))}). "
        'Full expectations and their results: <a href="data_docs/index.html">GX Data Docs</a>.</p>'
        + _data_quality(quality)
        + "<div class=plots>"
        + "".join(plots)
        + "</div>"
    )


def _labels_section(found: Found) -> str:
    labels = found.labels
    head = "<h2 id=label-issues>Label issues</h2>"
    if labels.get("skipped_reason"):
        return head + f"<p class=muted>not looked for: {_e(labels['skipped_reason'])}</p>"
    if not labels:
        return head + "<p class=muted>not measured yet (validate has not run)</p>"
    skipped = "".join(
        f"; class <code>{_e(c)}</code> skipped ({n} rows, fewer than the folds)"
        for c, n in labels.get("skipped_classes", {}).items()
    )
    return (
        head + f"<p>Confident learning (out-of-fold {_e(labels.get('model') or 'model')}): "
        f"<b>{labels['suspects']:,}</b> likely "
        f"label errors among {labels['checked_rows']:,} rows ({labels['flagged_rate']:.1%}; estimated "
        f"rate {labels['estimated_rate']:.1%}); action <code>{_e(labels['action'])}</code>: "
        f"{labels['quarantined']:,} quarantined, {labels['relabelled']:,} relabelled{skipped}. "
        "Full list: <code>reports/label_issues.json</code>.</p>"
        + table(labels.get("issues", [])[:10])
        + "<div class=plots>"
        + image(found.reports_dir / "label_issues.png", "top suspects: given -> suggested")
        + "</div>"
    )


def _candidates_section(found: Found) -> str:
    selection = found.selection
    if selection is None:
        return "<h2 id=candidates>Candidates</h2>"
    keys = [
        "quality",
        "quality_drop",
        *(["vs_boosted"] if BOOSTED_BASELINE in selection.baselines else []),
        "ece",
        "size_bytes",
        selection.speed_key,
        "eligible",
        "within_budget",
        "qualifies",
    ]
    front = found.compression.pareto_front if found.compression else ()
    return (
        "<h2 id=candidates>Candidates</h2>"
        + table(
            [
                {
                    "candidate": Markup(f"<b>{_e(n)}</b>" if n == selection.champion else _e(n)),
                    **{k: r.get(k) for k in keys},
                }
                for n, r in selection.candidates.items()
            ],
            ["candidate", *keys],
        )
        + f"<p>Quality budget: within {selection.max_quality_drop:.1%} of the best candidate, "
        f"<code>{_e(selection.best)}</code> ({selection.candidates[selection.best]['quality']:.4f}). "
        f"Pareto front: {', '.join(map(_e, front)) or 'n/a'}.</p>"
        + "<div class=plots>"
        + image(found.reports_dir / "pareto.png", "Pareto: latency against quality")
        + "</div>"
    )


def _evaluation_section(found: Found) -> str:
    out = ["<h2 id=evaluation>Evaluation of the champion</h2>"]
    if found.selection is None:
        return out[0]
    champion = found.selection.champion
    scores = found.evaluation.candidates.get(champion, {}) if found.evaluation else {}
    per_class = [
        {
            "class": c,
            "precision": v["precision"],
            "recall": v["recall"],
            "f1": v["f1-score"],
            "support": int(v["support"]),
        }
        for c, v in class_scores(scores).items()
    ]
    if per_class:
        out.append(table(per_class))
    plots_dir = found.reports_dir / "plots"
    plots = [
        image(plots_dir / f"{kind}_{champion}.png", caption)
        for kind, caption in (
            ("confusion", "confusion matrix"),
            ("curves", "ROC and PR curves"),
            ("reliability", "reliability diagram"),
            ("residuals", "residuals"),
        )
        if (plots_dir / f"{kind}_{champion}.png").exists()
    ]
    out.append("<div class=plots>" + "".join(plots) + "</div>")
    return "".join(out)


def write_report(root: Path, stages: Optional[list[dict]] = None) -> Path:
    from tasks.core.io import write_text

    target = root / INDEX
    write_text(target, render(root, stages))
    return target


def version_text(registry: dict) -> str:
    if registry.get("error"):
        return "registry unreachable"
    return f"v{registry['version']}" if registry["version"] else "not registered"
