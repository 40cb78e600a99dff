"""Stage, boost: the gradient-boosted model of a table (tasks/ml/boosting.py),
the quality reference and a candidate like the networks.

scikit-learn's HistGradientBoosting on the train split's encoded features
(the table encoder's output, the matrix the MLPs take), early stopping on the
validation split. It leaves as the artifact contract's graph
(models/boosted/model.onnx, tasks/onnx/boosted.py), checked against
scikit-learn on the validation split; export adds the temperature and the
metadata, and from there it is a candidate among the others. Images, or
`boost.enabled: false`, leave models/boosted/boosted.json saying why there is none.
"""

from __future__ import annotations

import shutil

from tasks.contracts.processed import ProcessedMeta, load_split, read_meta
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import atomic_path, write_json
from tasks.core.params import BoostParams, load_params
from tasks.core.report import markdown_table, write_summary
from tasks.core.task import kind_of, task_of
from tasks.evaluation.metrics import task_metrics

SECTIONS = ("boost",)
OPSET = 17  # the tree ensemble's ai.onnx.ml 3 with the default domain's 17, as export.opset's default


def why_not(meta: ProcessedMeta, params: BoostParams) -> str | None:
    """Why no boosted model is trained here, or None when one is."""
    if not params.enabled:
        return "boost.enabled is false"
    if not kind_of(meta.kind).table:
        return f"trees take a table's columns, not {kind_of(meta.kind).label}s"
    if not (task_of(meta.task).regression or task_of(meta.task).single_label):
        return f"a {meta.task} table has several targets per row"
    return None


def boost(train: tuple, val: tuple, meta: ProcessedMeta, params: BoostParams) -> tuple[object, dict]:
    """The fitted model, its graph written to models/boosted/model.onnx, and its figures."""
    import onnx

    from tasks.ml.boosting import boosted_predict, fit_boosted, tree_nodes
    from tasks.onnx.boosted import boosted_to_onnx, max_difference
    from tasks.onnx.runtime import run_batches, session

    model = fit_boosted(train, val, meta.task, params)
    proto = boosted_to_onnx(model, train[0].shape[1], meta.task, OPSET)
    onnx.checker.check_model(proto)
    with atomic_path(paths.BOOSTED_ONNX) as tmp:
        onnx.save(proto, str(tmp))
    expected = boosted_predict(model, val[0], meta.task)
    answer = "prediction" if task_of(meta.task).regression else "probabilities"
    got = run_batches(session(paths.BOOSTED_ONNX, threads=1), val[0], output=answer)
    diff = max_difference(expected, got, meta.task)
    if diff > params.atol:
        raise DistilleryError(
            f"{paths.BOOSTED_ONNX}: the ONNX graph's {answer} differ from scikit-learn's by {diff:.2e} on the "
            f"validation split, above boost.atol={params.atol:.0e}"
        )
    quality = task_metrics(
        meta.task,
        expected if task_of(meta.task).classes else expected.ravel(),
        val[1],
        list(meta.classes),
        probabilities=task_of(meta.task).classes,
    )["quality"]
    figures = {
        "trained": True,
        "estimator": type(model).__name__,
        "rounds": int(model.n_iter_),
        "tree_nodes": tree_nodes(model),
        "onnx_max_abs_diff": diff,
        "val_quality": float(quality),
    }
    return model, figures


def main() -> None:
    all_params = load_params(paths.PARAMS, SECTIONS)
    params = all_params.boost
    meta = read_meta()
    if paths.BOOSTED.exists():
        shutil.rmtree(paths.BOOSTED)
    paths.BOOSTED.mkdir(parents=True)
    reason = why_not(meta, params)
    if reason is None:
        print(f"boost: HistGradientBoosting on {len(meta.feature_names)} encoded features", flush=True)
        _, figures = boost(load_split("train"), load_split("val"), meta, params)
    else:
        figures = {"trained": False, "reason": reason}
    write_json(paths.BOOSTED_INFO, figures)
    write_json(paths.BOOST_REPORT, figures)
    from tasks.core.tracking import log_stage

    # A run either way: every stage is a run under the pipeline's, so MLflow shows the whole run.
    log_stage(all_params.mlflow, "boost", figures, {"task": meta.task}, (paths.BOOST_REPORT,))
    if reason is not None:
        write_summary("boost", f"No boosted model: {reason}.")
        return
    write_summary(
        "boost",
        f"`boosted`: {figures['estimator']}, {figures['rounds']} rounds (early stopping on the validation split), "
        f"{figures['tree_nodes']:,} tree nodes. Validation quality ({task_of(meta.task).quality_label}) "
        f"{figures['val_quality']:.4f}; the ONNX graph matches scikit-learn within "
        f"{figures['onnx_max_abs_diff']:.1e}.\n\n" + markdown_table([figures]),
    )


if __name__ == "__main__":
    run_cli(main)
