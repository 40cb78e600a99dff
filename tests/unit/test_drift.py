"""tasks/monitor: PSI, KS, chi-squared, prediction drift, operations, live
quality (stats), the training reference (reference), windows and verdicts
(windows), and reading the prediction log (tasks.contracts.predlog), labels
(feedback) and the state (state)."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import image_meta, params_section

from tasks.contracts import predlog
from tasks.contracts.dataset import IMAGES, LABELS, Dataset, DatasetMeta, write_dataset
from tasks.contracts.processed import ProcessedMeta, save_split, write_meta
from tasks.core.errors import DistilleryError
from tasks.core.io import save_npz
from tasks.core.provenance import hash_arrays
from tasks.monitor import feedback, state, stats, windows
from tasks.monitor.reference import Reference, build_reference

MONITOR = params_section(
    "monitor",
    psi_threshold=0.2,
    p_value=0.01,
    max_drifted_fraction=0.3,
    prediction_psi_threshold=0.2,
    min_rows=50,
    window_minutes=60,
)
PREPROCESS = params_section("preprocess", val_fraction=0.15, test_fraction=0.2, seed=42, resample="none")


# --------------------------------------------------------------------------- PSI


def _hand_psi(p: list[float], q: list[float]) -> float:
    return sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q))


def test_psi_matches_a_hand_computation():
    reference = np.arange(100.0)  # quartile cut points 24.75, 49.5, 74.25: 25 values in each bin
    current = np.concatenate([np.full(40, 10.0), np.full(30, 30.0), np.full(20, 60.0), np.full(10, 90.0)])
    np.testing.assert_allclose(stats.quantile_edges(reference, 4), [24.75, 49.5, 74.25])
    expected = _hand_psi([0.25] * 4, [0.4, 0.3, 0.2, 0.1])  # the missing-value bin is empty on both sides: 0
    assert stats.psi(reference, current, bins=4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2282, abs=1e-4)


def test_psi_gives_an_empty_bin_epsilon_rather_than_infinity():
    reference = np.arange(100.0)
    current = np.full(50, 5.0)  # every value in the first quartile bin
    eps = stats.EPSILON
    expected = (1 - 0.25) * math.log(1 / 0.25) + 3 * (eps - 0.25) * math.log(eps / 0.25)
    value = stats.psi(reference, current, bins=4)
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-12)


def test_psi_of_identical_distributions_is_about_zero():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=5000)
    assert stats.psi(sample, sample) == pytest.approx(0.0, abs=1e-12)
    assert stats.psi(sample, rng.normal(size=5000)) < 0.02


def test_psi_of_a_shifted_distribution_is_a_major_shift():
    rng = np.random.default_rng(1)
    assert stats.psi(rng.normal(size=5000), rng.normal(loc=1.0, size=2000)) > 0.2


def test_psi_counts_a_rise_in_missing_values_as_a_shift():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=5000)
    current = rng.normal(size=1000)
    current[:400] = np.nan
    assert stats.psi(reference, current) > 0.2


def test_psi_handles_a_reference_of_one_repeated_value():
    """Pixel minimums are nearly always 0: the quantile cut points collapse to one."""
    reference = np.zeros(1000)
    np.testing.assert_array_equal(stats.quantile_edges(reference), [0.0])
    assert stats.psi(reference, np.zeros(100)) == pytest.approx(0.0)
    assert stats.psi(reference, np.ones(100)) > 1.0


def test_psi_is_nan_without_current_values():
    assert math.isnan(stats.psi(np.arange(10.0), np.array([])))


# --------------------------------------------------------------------------- KS and chi-squared


def test_ks_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=3000)
    _, p_noise = stats.ks_test(reference, rng.normal(size=300))
    stat, p_shift = stats.ks_test(reference, rng.normal(loc=0.5, size=300))
    assert p_noise > 0.05
    assert p_shift < 1e-6 and stat > 0.15


def test_ks_is_nan_when_a_side_has_no_values():
    stat, p = stats.ks_test(np.arange(10.0), np.array([np.nan, np.nan]))
    assert math.isnan(stat) and math.isnan(p)


def _draw(rng: np.random.Generator, shares: dict[str, float], n: int) -> np.ndarray:
    return rng.choice(np.array(list(shares), dtype=object), size=n, p=list(shares.values()))


def test_chi2_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(4)
    mix = {"Biscoe": 0.5, "Dream": 0.35, "Torgersen": 0.15}
    reference = _draw(rng, mix, 2000)
    noise = stats.chi2_test(reference, _draw(rng, mix, 300))
    shifted = stats.chi2_test(reference, _draw(rng, {"Biscoe": 0.2, "Dream": 0.35, "Torgersen": 0.45}, 300))
    assert noise["p_value"] > 0.05
    assert shifted["p_value"] < 1e-6
    assert noise["unseen"] == shifted["unseen"] == 0


def test_chi2_aligns_categories_and_counts_unseen_ones():
    reference = ["a"] * 50 + ["b"] * 50
    current = ["b"] * 30 + ["a"] * 30 + ["c"] * 40  # order differs, "c" is new
    categories, ref, cur = stats.category_counts(reference, current)
    assert categories == ["a", "b", "c"]
    assert ref.tolist() == [50, 50, 0] and cur.tolist() == [30, 30, 40]
    result = stats.chi2_test(reference, current)
    assert result["unseen"] == 40 and result["unseen_fraction"] == pytest.approx(0.4)
    assert result["p_value"] < 1e-10


def test_chi2_of_a_single_category_on_both_sides_finds_nothing():
    assert stats.chi2_test(["a"] * 10, ["a"] * 5) == {
        "unseen": 0,
        "unseen_fraction": 0.0,
        "statistic": 0.0,
        "p_value": 1.0,
    }


def test_categorical_psi_is_zero_for_the_same_mix_and_large_for_an_unseen_category():
    assert stats.categorical_psi(["a", "b"] * 50, ["b", "a"] * 20) == pytest.approx(0.0)
    assert stats.categorical_psi(["a", "b"] * 50, ["z"] * 20) > 1.0


def test_a_feature_drifts_only_when_psi_and_the_test_agree():
    rng = np.random.default_rng(5)
    reference = rng.normal(size=3000)
    shifted = stats.numeric_drift("x", reference, rng.normal(loc=1.0, size=500), 0.2, 0.01)
    assert shifted["drifted"] and shifted["psi"] > 0.2 and shifted["p_value"] < 0.01
    # A tiny shift on a huge window: significant, but not material.
    small = stats.numeric_drift("x", reference, rng.normal(loc=0.1, size=100_000), 0.2, 0.01)
    assert small["p_value"] < 0.01 and small["psi"] < 0.2 and not small["drifted"]
    # A column that stops arriving drifted.
    assert stats.numeric_drift("x", reference, np.full(60, np.nan), 0.2, 0.01)["drifted"]


# --------------------------------------------------------------------------- predictions, operations, quality


def test_prediction_drift_reports_shares_and_detects_a_moved_mix():
    reference = {"cat": 500, "dog": 400, "eel": 100}
    rng = np.random.default_rng(6)
    same = stats.prediction_drift(reference, _draw(rng, {"cat": 0.5, "dog": 0.4, "eel": 0.1}, 400), 0.2, 0.01)
    moved = stats.prediction_drift(reference, _draw(rng, {"cat": 0.1, "dog": 0.3, "eel": 0.6}, 400), 0.2, 0.01)
    assert not same["drifted"] and same["psi"] < 0.05
    assert moved["drifted"] and moved["psi"] > 0.2
    assert list(moved["shares"]) == ["cat", "dog", "eel"] and sum(moved["shares"].values()) == pytest.approx(1.0)
    unknown = stats.prediction_drift(reference, ["cat", "fox"], 0.2, 0.01)
    assert unknown["shares"] == {"cat": 0.5, "dog": 0.0, "eel": 0.0, "fox": 0.5}


def test_operational_percentiles_count_each_request_once():
    rng = np.random.default_rng(7)
    per_request = rng.gamma(2.0, 3.0, size=200)
    rows_per_request = rng.integers(1, 5, size=200)
    latency = np.repeat(per_request, rows_per_request)
    row = np.concatenate([np.arange(n) for n in rows_per_request])
    ts = 1000.0 + np.sort(rng.uniform(0, 3600, size=len(row)))
    ops = stats.operational(ts, latency, row, window_s=3600.0)
    for q in (50, 95, 99):
        assert ops[f"latency_p{q}_ms"] == pytest.approx(np.percentile(per_request, q))
    assert ops["rows"] == len(row) and ops["requests"] == 200
    assert ops["throughput_rows_per_s"] == pytest.approx(len(row) / 3600.0)
    assert ops["requests_per_s"] == pytest.approx(200 / 3600.0)
    assert "error_rate" not in ops
    assert stats.operational(ts, latency, row, 3600.0, errors=50)["error_rate"] == pytest.approx(50 / 250)


def test_live_quality_matches_sklearn_and_tasks_metrics():
    from sklearn.metrics import accuracy_score, f1_score

    from tasks.evaluation.metrics import expected_calibration_error

    rng = np.random.default_rng(8)
    classes = ["a", "b", "c"]
    probs = rng.dirichlet([1, 1, 1], size=300)
    truth = rng.integers(0, 3, size=300)
    predicted = np.array(classes)[probs.argmax(1)]
    labels = np.array(classes, dtype=object)[truth]
    labels[:5] = "zebra"  # a label the model does not know: wrong for accuracy, left out of ECE
    quality = stats.live_quality(labels, predicted, probs, classes, n_bins=10)
    assert quality["labeled_rows"] == 300
    assert quality["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert quality["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0))
    assert quality["ece"] == pytest.approx(expected_calibration_error(probs[5:], truth[5:], 10))
    assert math.isnan(stats.live_quality([], [], None, classes)["accuracy"])


# --------------------------------------------------------------------------- the reference


def test_image_summaries_are_the_servers(tmp_path):
    """Parity with what the prediction-log writer logs for an image request
    (tasks.contracts.predlog.records, which deploy/predlog.py writes)."""
    x = np.random.default_rng(9).uniform(0, 16, size=(5, 1, 8, 8)).astype(np.float32)
    entry = predlog.Entry(
        ts=1.0,
        request_id="r",
        endpoint="predict",
        model_name="m",
        model_version="1",
        latency_ms=1.0,
        task="multiclass",
        classes=("a", "b"),
        x=x,
        outputs=np.full((5, 2), 0.5, np.float32),
    )
    inputs = predlog.NAMES.index(predlog.INPUTS)
    logged = [json.loads(record[inputs]) for record in predlog.records([entry])]
    assert len(logged) == 5
    ours = predlog.image_summary(x)
    flat = x.reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(ours["mean"], flat.mean(1), rtol=1e-12)
    np.testing.assert_allclose(ours["std"], flat.std(1), rtol=1e-12)
    for i, row in enumerate(logged):
        assert list(row) == list(predlog.IMAGE_SUMMARY)
        for key in predlog.IMAGE_SUMMARY:
            assert ours[key][i] == pytest.approx(row[key], rel=1e-12)


def tiny_onnx(path: Path, n_pixels: int, n_classes: int, favourite: int) -> Path:
    """An ONNX 'model' whose probabilities always favour class `favourite`."""
    import onnx
    from onnx import TensorProto, helper

    bias = np.zeros(n_classes, np.float32)
    bias[favourite] = 10.0
    weights = np.zeros((n_pixels, n_classes), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", n_classes])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def image_project(
    root: Path, resample: str = "none", task: str = "multiclass", classes: tuple[str, ...] = ("a", "b", "c")
) -> dict:
    """data/processed and data/validated of a 3-class 8x8 image set, written
    through the contracts (ProcessedMeta, save_split)."""
    from tasks.data.split import split_indices

    rng = np.random.default_rng(10)
    labels = np.repeat(np.arange(3), [60, 40, 20]).astype(np.int64)
    images = rng.uniform(0, 16, size=(len(labels), 8, 8)).astype(np.float32)
    parts = split_indices(labels, PREPROCESS)
    y = labels if task != "binary" else np.minimum(labels, 1)
    for name, ix in parts.items():
        save_split(name, {"x": images[ix][:, None], "y": y[ix]}, root / "data/processed")
    write_meta(
        image_meta(task=task, classes=classes, resample=resample, data_hash=hash_arrays(images, labels)),
        root / "data/processed",
    )
    save_npz(root / "data/validated/arrays.npz", **{IMAGES: images, LABELS: labels})
    return {"images": images, "labels": labels, "parts": parts}


def test_image_reference_is_the_train_split_summary_and_the_champions_mix(tmp_path):
    data = image_project(tmp_path)
    champion = tiny_onnx(tmp_path / "champion.onnx", 64, 3, favourite=2)
    reference = build_reference(tmp_path, champion)
    train = data["images"][data["parts"]["train"]]
    assert reference.kind == "image" and reference.rows == len(train)
    assert reference.features == list(predlog.IMAGE_SUMMARY)
    np.testing.assert_allclose(reference.numeric["mean"], train.reshape(len(train), -1).mean(1))
    n_test = len(data["parts"]["test"])
    assert reference.predicted_counts == {"a": 0, "b": 0, "c": n_test}
    assert "champion.onnx" in reference.predictions_from
    # Without a champion file: the test split's label mix.
    fallback = build_reference(tmp_path, tmp_path / "missing.onnx")
    assert fallback.predicted_counts == dict(zip("abc", np.bincount(data["labels"][data["parts"]["test"]]).tolist()))


def test_a_resampled_train_split_is_replaced_by_the_validated_images(tmp_path):
    data = image_project(tmp_path, resample="over")
    save_npz(
        tmp_path / "data/processed/train.npz", x=np.full((500, 1, 8, 8), 99.0, np.float32), y=np.zeros(500, np.int64)
    )
    reference = build_reference(tmp_path)
    assert reference.rows == len(data["images"])
    np.testing.assert_allclose(reference.numeric["max"], data["images"].reshape(len(data["images"]), -1).max(1))
    # Validated data that is not what data/processed was made from is refused.
    save_npz(tmp_path / "data/validated/arrays.npz", images=data["images"] + 1, labels=data["labels"])
    with pytest.raises(DistilleryError, match="data_hash differs"):
        build_reference(tmp_path)


def test_a_missing_processed_folder_says_to_run_the_pipeline(tmp_path):
    with pytest.raises(DistilleryError, match="not found; run the stage"):
        build_reference(tmp_path)


def validated_meta(rows: int, data_hash: str) -> DatasetMeta:
    return DatasetMeta(
        source="table",
        kind="tabular",
        rows=rows,
        data_hash=data_hash,
        task="multiclass",
        column_types={"mass": "numeric", "island": "categorical", "notes": "text"},
        features=("mass", "island"),
    )


def table_project(root: Path, task: str = "multiclass") -> pd.DataFrame:
    """data/validated and data/processed of a small table: a numeric column with
    gaps, a categorical one with gaps, and a text column that is no feature;
    written through the contracts (write_dataset, ProcessedMeta, save_split)."""
    from tasks.data.encoding import fit_encoder
    from tasks.data.split import split_indices

    rng = np.random.default_rng(11)
    n = 150
    table = pd.DataFrame(
        {
            "row_id": np.arange(n),
            "mass": rng.normal(4000, 500, n),
            "island": rng.choice(["Biscoe", "Dream", None], n),
            "notes": ["free text"] * n,
            "label": np.repeat(["Adelie", "Gentoo", "Chinstrap"], [70, 50, 30]),
        }
    )
    table.loc[:4, "mass"] = np.nan
    classes = ("Adelie", "Chinstrap", "Gentoo")
    labels = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    parts = split_indices(labels, PREPROCESS)
    encoder = fit_encoder(table.iloc[parts["train"]], {"mass": "numeric", "island": "categorical"}, "median")
    write_dataset(root / "data/validated", Dataset(table, {}, validated_meta(n, "h1")))
    regression = task == "regression"
    write_meta(
        ProcessedMeta(
            kind="tabular",
            task=task,
            classes=() if regression else classes,
            input_shape=(encoder.width,),
            mean=(0.0,) * encoder.width,
            std=(1.0,) * encoder.width,
            data_hash="h1",
            resample="none",
            counts={},
            encoder=encoder,
        ),
        root / "data/processed",
    )
    y = labels[parts["test"]] if not regression else rng.normal(size=len(parts["test"]))
    save_split("test", {"x": encoder.encode(table.iloc[parts["test"]]), "y": y}, root / "data/processed")
    return table


def test_table_reference_takes_the_raw_validated_rows_by_column_type(tmp_path):
    table = table_project(tmp_path)
    reference = build_reference(tmp_path)
    assert reference.kind == "tabular" and reference.rows == len(table)
    assert list(reference.numeric) == ["mass"] and list(reference.categorical) == ["island"]  # notes is not a feature
    np.testing.assert_array_equal(reference.numeric["mass"], table["mass"].to_numpy())  # raw: gaps stay gaps
    assert reference.categorical["island"].tolist() == table["island"].fillna(stats.MISSING).tolist()
    test_labels = np.load(tmp_path / "data/processed/test.npz")["y"]
    assert reference.predicted_counts == dict(zip(["Adelie", "Chinstrap", "Gentoo"], np.bincount(test_labels).tolist()))
    write_dataset(tmp_path / "data/validated", Dataset(table, {}, validated_meta(len(table), "h2")))
    with pytest.raises(DistilleryError, match="rerun the pipeline"):
        build_reference(tmp_path)


def test_a_regression_reference_has_features_and_the_predicted_values(tmp_path):
    table_project(tmp_path, task="regression")
    reference = build_reference(tmp_path)
    assert reference.task == "regression" and reference.predicted_counts == {}
    assert list(reference.numeric) == ["mass"]
    test_y = np.load(tmp_path / "data/processed/test.npz")["y"]  # no champion file: the test split's targets
    np.testing.assert_array_equal(reference.predicted_values, test_y)
    rng = np.random.default_rng(17)
    rows = _rows(rng, 80, 0.0)
    rows[predlog.INPUTS] = [json.dumps({"mass": 9000.0, "island": "Dream"})] * 80
    rows[predlog.PREDICTED] = rows[predlog.PROBABILITY] = rows[predlog.PROBABILITIES] = (
        None  # as the writer logs regression
    )
    rows[predlog.VALUE] = rng.normal(size=80)  # the targets' distribution
    (calm,) = windows.analyse(rows, reference, MONITOR)
    assert calm["prediction"]["feature"] == predlog.VALUE and not calm["prediction"]["drifted"]
    assert calm["retrain"] and "mass" in calm["drifted_features"] and "prediction" not in calm["reason"]
    rows[predlog.VALUE] = rng.normal(loc=4.0, size=80)  # predictions moved away from the targets'
    (moved,) = windows.analyse(rows, reference, MONITOR)
    assert moved["prediction"]["drifted"] and moved["prediction"]["psi"] > 0.2
    assert moved["retrain"] and "prediction PSI" in moved["reason"]


def test_a_binary_champion_with_one_sigmoid_logit_gives_two_classes(tmp_path):
    """A sigmoid binary head, exported by the pipeline's export_onnx: the graph
    answers both classes' probabilities, and the reference counts them."""
    import torch

    from tasks.contracts.onnx import IMAGE_INPUT
    from tasks.onnx.export import export_onnx

    class MeanPixelLogit(torch.nn.Module):
        """logit(P(yes)) = mean pixel - 8: about half the uniform 0..16 images each way."""

        spec = type("Spec", (), {"n_classes": 1})()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3)).unsqueeze(1) - 8.0

    image_project(tmp_path, task="binary", classes=("no", "yes"))
    export_onnx(
        MeanPixelLogit(), (1, 8, 8), tmp_path / "champion.onnx", opset=17, input_name=IMAGE_INPUT, task="binary"
    )
    test = np.load(tmp_path / "data/processed/test.npz")
    counts = build_reference(tmp_path, tmp_path / "champion.onnx").predicted_counts
    expected_yes = int((test["x"].reshape(len(test["x"]), -1).mean(1) > 8).sum())
    assert counts == {"no": len(test["x"]) - expected_yes, "yes": expected_yes} and 0 < expected_yes < len(test["x"])


def test_a_champion_with_another_class_count_is_refused(tmp_path):
    image_project(tmp_path)
    with pytest.raises(DistilleryError, match="gives 4 classes but data/processed has 3"):
        build_reference(tmp_path, tiny_onnx(tmp_path / "champion.onnx", 64, 4, favourite=0))


# --------------------------------------------------------------------------- windows and verdicts


def _reference(rng: np.random.Generator, n: int = 2000) -> Reference:
    x = rng.uniform(0, 16, size=(n, 1, 8, 8))
    return Reference("image", "multiclass", predlog.image_summary(x), {}, ["a", "b"], {"a": 600, "b": 400}, "labels", n)


def _rows(
    rng: np.random.Generator, n: int, start: float, shift: float = 0.0, classes=("a", "b"), p=(0.6, 0.4)
) -> pd.DataFrame:
    """Answered single-row requests, with every column of the log (tasks.contracts.predlog.NAMES)."""
    x = rng.uniform(0, 16, size=(n, 1, 8, 8)) + shift
    summaries = predlog.image_summary(x)
    predicted = rng.choice(classes, size=n, p=p)
    return pd.DataFrame(
        {
            "ts": np.sort(start + rng.uniform(0, 3599, n)),
            "request_id": [f"r{i}" for i in range(n)],
            "row": 0,
            "endpoint": "predict",
            "model_name": "distillery",
            "model_version": "3",
            "status": 200,
            "error": None,
            "inputs": [json.dumps({k: float(summaries[k][i]) for k in predlog.IMAGE_SUMMARY}) for i in range(n)],
            "predicted": predicted,
            "probability": 0.9,
            "probabilities": [json.dumps([0.9, 0.1] if v == "a" else [0.1, 0.9]) for v in predicted],
            "value": None,
            "unseen": None,  # image rows carry no flag
            "latency_ms": rng.gamma(2.0, 2.0, n),
        }
    )[list(predlog.NAMES)]


def test_windows_are_judged_separately_and_only_big_drifted_ones_call_for_retraining():
    rng = np.random.default_rng(12)
    reference = _reference(rng)
    hour = 3600.0
    t0 = 1_800_000_000 // 3600 * 3600.0
    rows = pd.concat(
        [_rows(rng, 200, t0), _rows(rng, 200, t0 + hour, shift=4.0), _rows(rng, 20, t0 + 2 * hour, shift=4.0)]
    )
    reports = windows.analyse(rows, reference, MONITOR)
    assert [w["start"] for w in reports] == [t0, t0 + hour, t0 + 2 * hour]
    assert [w["step"] for w in reports] == [int(t0 / hour), int(t0 / hour) + 1, int(t0 / hour) + 2]
    calm, drifted, small = reports
    assert not calm["retrain"] and calm["drifted_features"] == [] and calm["reason"] == "no drift"
    assert drifted["retrain"] and {"mean", "min", "max"} <= set(drifted["drifted_features"])
    assert "features drifted" in drifted["reason"]
    assert not small["retrain"] and "min_rows" in small["reason"]
    assert drifted["operations"]["rows"] == 200 and drifted["models"] == ["distillery:3"]
    assert drifted["operations"]["error_rate"] == 0.0


def test_a_moved_prediction_mix_alone_calls_for_retraining():
    rng = np.random.default_rng(13)
    rows = _rows(rng, 300, 0.0, p=(0.1, 0.9))
    (window,) = windows.analyse(rows, _reference(rng), MONITOR)
    assert window["drifted_features"] == [] and window["prediction"]["drifted"]
    assert window["retrain"] and "prediction PSI" in window["reason"]


def test_table_windows_read_the_logged_rows():
    rng = np.random.default_rng(14)
    reference = Reference(
        "tabular",
        "multiclass",
        {"mass": rng.normal(4000, 500, 1000)},
        {"island": rng.choice(["Biscoe", "Dream"], 1000).astype(object)},
        ["a", "b"],
        {"a": 50, "b": 50},
        "labels",
        1000,
    )
    n = 200
    rows = _rows(rng, n, 0.0, p=(0.5, 0.5))
    rows["inputs"] = [json.dumps({"mass": float(m), "island": "Torgersen"}) for m in rng.normal(4000, 500, n)]
    (window,) = windows.analyse(rows, reference, MONITOR)
    by_name = {f["feature"]: f for f in window["features"]}
    assert not by_name["mass"]["drifted"] and by_name["mass"]["test"] == "ks"
    assert by_name["island"]["drifted"] and by_name["island"]["unseen_fraction"] == 1.0
    assert window["drifted_fraction"] == 0.5 and window["retrain"]


def test_window_boundaries_and_steps():
    assert windows.window_boundary(7200.0 + 59.0, 3600.0) == 7200.0
    assert windows.window_step(7200.0, 3600.0) == 2
    assert windows.window_seconds(MONITOR) == 3600.0


# --------------------------------------------------------------------------- the log, the labels, the state


def write_log(path: Path, rows: pd.DataFrame) -> None:
    """Rows into a log file with the writer's own schema and INSERT (tasks.contracts.predlog)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = predlog.connect(path)
    records = [
        tuple(None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row)
        for row in rows[list(predlog.NAMES)].astype(object).itertuples(index=False, name=None)
    ]
    db.executemany(predlog.INSERT, records)
    db.close()


def _day(ts: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


def test_read_log_spans_daily_files_and_replicas_within_the_bounds(tmp_path):
    rng = np.random.default_rng(15)
    t0 = 1_800_000_000 // 86400 * 86400.0 + 22 * 3600.0  # 22:00 UTC: the rows cross midnight
    rows = _rows(rng, 100, t0, classes=("a", "b"))
    rows["ts"] = t0 + np.arange(100) * 144.0  # 4 hours
    first = rows[rows["ts"] < t0 + 7200]
    write_log(tmp_path / f"predictions-{_day(t0)}.db", first)
    # The later rows come from a second replica, writing in a folder of its own.
    write_log(tmp_path / "replica-2" / f"predictions-{_day(t0 + 7200)}.db", rows[rows["ts"] >= t0 + 7200])
    assert _day(t0) != _day(t0 + 7200)
    everything = predlog.read_rows(tmp_path, None, t0 + 10 * 3600)
    assert len(everything) == 100 and everything["ts"].is_monotonic_increasing
    middle = predlog.read_rows(tmp_path, t0 + 3600, t0 + 3 * 3600)
    assert middle["ts"].min() >= t0 + 3600 and middle["ts"].max() < t0 + 3 * 3600 and len(middle) == 50
    assert predlog.read_rows(tmp_path / "nothing-here", None, t0).empty
    (tmp_path / "predictions-20990101.db").write_bytes(b"")
    sqlite3.connect(tmp_path / "predictions-20990101.db").execute("CREATE TABLE other (x)").connection.close()
    with pytest.raises(DistilleryError, match="not a prediction log"):
        predlog.read_rows(tmp_path, None, 5e9)


def _image_entries(rng: np.random.Generator, start: float, requests: int) -> list:
    """Answered image requests of 1 to 3 rows each, as the server hands them to the log."""
    entries = []
    for i in range(requests):
        n = 1 + i % 3
        probs = rng.dirichlet([3, 2], size=n).astype(np.float32)
        entries.append(
            predlog.Entry(
                ts=start + 10 + i * 40.0,
                request_id=f"ok-{i}",
                endpoint="predict" if i % 2 else "infer",
                model_name="distillery",
                model_version="3",
                latency_ms=float(rng.gamma(2.0, 2.0)),
                task="multiclass",
                classes=("a", "b"),
                x=rng.uniform(0, 16, size=(n, 1, 8, 8)).astype(np.float32),
                outputs=probs,
            )
        )
    return entries


def _write_entries(folder: Path, entries: list) -> None:
    """Through the writer's own code: records() into a file opened by connect()."""
    folder.mkdir(parents=True, exist_ok=True)
    db = predlog.connect(predlog.file_for(folder, entries[0].ts))
    db.executemany(predlog.INSERT, predlog.records(entries))
    db.close()


def test_refused_requests_give_the_error_rate_and_stay_out_of_the_drift(tmp_path):
    rng = np.random.default_rng(18)
    reference = _reference(rng)
    start = 1_800_000_000 // 3600 * 3600.0
    answered = _image_entries(rng, start, 60)
    # Refused requests, slow and from the same window: one row each, no inputs, no answer.
    refused = [
        predlog.Entry(
            ts=start + 15 + j * 150.0,
            request_id=f"bad-{j}",
            endpoint="predict" if j % 2 else "infer",
            model_name="distillery",
            model_version="3",
            latency_ms=9000.0,
            status=(422, 503)[j % 2],
            error=f"refused {j}",
        )
        for j in range(15)
    ]
    _write_entries(tmp_path / "with-errors", [*answered, *refused])
    _write_entries(tmp_path / "answered-only", answered)
    rows = predlog.read_rows(tmp_path / "with-errors")
    answered_rows = sum(len(e) for e in answered)
    assert len(rows) == answered_rows + 15 and (rows[predlog.STATUS] != 200).sum() == 15
    assert rows.loc[rows[predlog.STATUS] != 200, predlog.ERROR].str.startswith("refused").all()

    (window,) = windows.analyse(rows, reference, MONITOR)
    (clean,) = windows.analyse(predlog.read_rows(tmp_path / "answered-only"), reference, MONITOR)
    ops = window["operations"]
    assert ops["error_rate"] == pytest.approx(15 / (60 + 15))  # refused / (answered requests + refused)
    assert ops["rows"] == answered_rows and ops["requests"] == 60
    assert clean["operations"]["error_rate"] == 0.0
    # The refused rows enter no statistic but the error rate: not latency, features, predictions nor probabilities.
    assert {k: v for k, v in ops.items() if k != "error_rate"} == {
        k: v for k, v in clean["operations"].items() if k != "error_rate"
    }
    assert ops["latency_p99_ms"] < 9000.0
    assert window["features"] == clean["features"] and window["prediction"] == clean["prediction"]
    assert list(window["prediction"]["shares"]) == ["a", "b"]
    assert window["mean_probability"] == clean["mean_probability"]
    assert window["drifted_features"] == clean["drifted_features"] and window["retrain"] == clean["retrain"]


OLD_SCHEMA = """CREATE TABLE predictions (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT NOT NULL, row INTEGER NOT NULL,
    endpoint TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, inputs TEXT NOT NULL,
    predicted TEXT NOT NULL, probability REAL NOT NULL, probabilities TEXT NOT NULL, latency_ms REAL NOT NULL)"""
OLD_COLUMNS = [
    "ts",
    "request_id",
    "row",
    "endpoint",
    "model_name",
    "model_version",
    "inputs",
    "predicted",
    "probability",
    "probabilities",
    "latency_ms",
]


def test_an_old_schema_log_is_read_as_answered_and_migrated_when_opened(tmp_path):
    """A file written before the status, error and value columns existed."""
    rng = np.random.default_rng(19)
    start = 1_800_000_000 // 3600 * 3600.0
    old = _rows(rng, 60, start)
    path = predlog.file_for(tmp_path, start)
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA)
    db.executemany(
        f"INSERT INTO predictions ({', '.join(OLD_COLUMNS)}) VALUES ({', '.join('?' * len(OLD_COLUMNS))})",
        old[OLD_COLUMNS].astype(object).itertuples(index=False, name=None),
    )
    db.commit()
    db.close()

    rows = predlog.read_rows(tmp_path)
    assert set(rows.columns) == {"id", *predlog.NAMES} and len(rows) == 60
    assert (rows[predlog.STATUS] == 200).all()
    assert rows[predlog.ERROR].isna().all() and rows[predlog.VALUE].isna().all()
    pd.testing.assert_frame_equal(
        rows[OLD_COLUMNS], old[OLD_COLUMNS].sort_values("ts").reset_index(drop=True), check_dtype=False
    )
    (window,) = windows.analyse(rows, _reference(rng), MONITOR)  # judged as answered rows
    assert window["operations"]["rows"] == 60 and window["operations"]["error_rate"] == 0.0
    labels = pd.DataFrame({"request_id": old["request_id"][:5], "row": 0})
    assert len(predlog.lookup(tmp_path, labels)) == 5  # the old file answers label look-ups too

    # Opening it to write migrates it: today's schema, its rows kept, and a refused request fits.
    db = predlog.connect(path)
    assert [r[1] for r in db.execute("PRAGMA table_info(predictions)")] == ["id", *predlog.NAMES]
    assert db.execute("SELECT COUNT(*), MIN(status), MAX(status) FROM predictions").fetchone() == (60, 200, 200)
    db.executemany(
        predlog.INSERT,
        predlog.records(
            [
                predlog.Entry(
                    ts=start + 100,
                    request_id="late",
                    endpoint="predict",
                    model_name="distillery",
                    model_version="3",
                    latency_ms=1.0,
                    status=422,
                    error="rows[0]: expected a number",
                )
            ]
        ),
    )
    db.close()
    migrated = predlog.read_rows(tmp_path)
    assert len(migrated) == 61
    kept = migrated[migrated[predlog.REQUEST_ID] != "late"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept[["id", *OLD_COLUMNS]], rows[["id", *OLD_COLUMNS]], check_dtype=False)
    (late,) = migrated[migrated[predlog.REQUEST_ID] == "late"].to_dict("records")
    assert late[predlog.STATUS] == 422 and late[predlog.ERROR] == "rows[0]: expected a number"
    db = predlog.connect(path)  # a migrated file is not migrated again
    assert db.execute("SELECT COUNT(*) FROM predictions").fetchone() == (61,)
    db.close()


def test_feedback_files_are_read_append_only(tmp_path):
    folder = tmp_path / "feedback"
    folder.mkdir()
    (folder / "a.csv").write_text("request_id,row,label\nr1,0,a\nr2,0,b\n")
    labels, seen = feedback.read_feedback(folder, {})
    assert labels.to_dict("records") == [
        {"request_id": "r1", "row": 0, "label": "a"},
        {"request_id": "r2", "row": 0, "label": "b"},
    ]
    assert seen == {"a.csv": 2}
    with open(folder / "a.csv", "a") as handle:
        handle.write("r3,1,a\n")
    pd.DataFrame({"request_id": ["r4"], "row": [0], "label": ["b"]}).to_parquet(folder / "b.parquet")
    labels, seen = feedback.read_feedback(folder, seen)
    assert labels[["request_id", "row"]].values.tolist() == [["r3", 1], ["r4", 0]]
    assert seen == {"a.csv": 3, "b.parquet": 1}
    assert feedback.read_feedback(folder, seen)[0].empty
    assert feedback.read_feedback(tmp_path / "absent", {})[0].empty
    (folder / "bad.csv").write_text("request_id,label\nr1,a\n")
    with pytest.raises(DistilleryError, match=r"bad.csv: feedback file lacks the columns \['row'\]"):
        feedback.read_feedback(folder, seen)


def test_labels_join_the_log_on_request_and_row(tmp_path):
    rng = np.random.default_rng(16)
    rows = _rows(rng, 40, 0.0)
    # A refused request under an answered row's id: labels join the answer only.
    refused = rows.iloc[:1].assign(
        status=503, error="at capacity", inputs=None, predicted=None, probability=None, probabilities=None
    )
    write_log(tmp_path / "log/predictions-20260101.db", pd.concat([rows, refused]))
    labels = pd.DataFrame(
        {
            "request_id": [*rows["request_id"][:30], "ghost"],
            "row": [0] * 31,
            "label": [*rows["predicted"][:20], *(["a"] * 10), "a"],
        }
    )
    quality = windows.quality_of_labels(labels, tmp_path / "log", ["a", "b"], 10)
    expected = np.mean(np.array([*rows["predicted"][:20], *(["a"] * 10)]) == rows["predicted"][:30].to_numpy())
    assert quality["labeled_rows"] == 30 and quality["unmatched_labels"] == 1
    assert quality["accuracy"] == pytest.approx(expected)
    assert np.isfinite(quality["ece"])


def test_state_round_trip_and_a_corrupt_file(tmp_path):
    path = tmp_path / "state.json"
    assert state.read_state(path) == state.MonitorState()
    state.write_state(path, state.MonitorState(7200.0, 10800.0, {"a.csv": 3}))
    assert state.read_state(path) == state.MonitorState(7200.0, 10800.0, {"a.csv": 3})
    assert json.loads(path.read_text())["watermark_utc"] == "1970-01-01T02:00:00Z"
    path.write_text("[1, 2]")
    with pytest.raises(DistilleryError, match="not a monitor state file"):
        state.read_state(path)


def test_bonferroni_holds_the_false_alarm_rate_across_many_features():
    """30 independent calm features at p < 0.01 each: without a correction some
    feature of a window is flagged often; with it, the window rarely is."""
    import dataclasses

    rng = np.random.default_rng(21)
    names = [f"f{i}" for i in range(30)]
    reference = Reference(
        "tabular", "multiclass", {n: rng.normal(size=2000) for n in names}, {}, ["a"], {}, "labels", 2000
    )
    loose = dataclasses.replace(MONITOR, correction="none", psi_threshold=1e-9)  # the test alone decides
    strict = dataclasses.replace(loose, correction="bonferroni")
    assert windows.feature_p_value(strict, 30) == pytest.approx(MONITOR.p_value / 30)
    alarms = {"none": 0, "bonferroni": 0}
    for _ in range(60):
        calm = pd.DataFrame({n: rng.normal(size=300) for n in names})
        for params in (loose, strict):
            alarms[params.correction] += any(f["drifted"] for f in windows.feature_drift(reference, calm, params))
    assert alarms["bonferroni"] <= 3 < alarms["none"]
    shifted = pd.DataFrame({n: rng.normal(0.5 if i < 3 else 0.0, size=300) for i, n in enumerate(names)})
    flagged = [f["feature"] for f in windows.feature_drift(reference, shifted, strict) if f["drifted"]]
    assert flagged == ["f0", "f1", "f2"]  # a real shift still stands out


def test_pictures_sent_as_files_are_compared_with_the_folder_by_size_channels_and_format(tmp_path):
    """A folder of pictures: the reference holds each validated file's stored size, channels and format;
    a window of larger RGB JPEGs sent as files drifts on them, one of pictures sent as pixels does not."""
    from tasks.data import images as folder

    data = image_project(tmp_path)
    n = len(data["labels"])
    rng = np.random.default_rng(3)
    stored = pd.DataFrame(
        {
            folder.WIDTH: rng.integers(30, 34, n),
            folder.HEIGHT: rng.integers(30, 34, n),
            folder.SOURCE_CHANNELS: 1,
            folder.FORMAT: "PNG",
        }
    )
    stored.to_parquet(tmp_path / "data/validated/table.parquet")
    reference = build_reference(tmp_path)
    assert set(predlog.PICTURE) <= set(reference.features)
    np.testing.assert_array_equal(reference.numeric["width"], stored[folder.WIDTH])
    assert set(reference.categorical["format"]) == {"PNG"} and set(reference.categorical["channels"]) == {"1"}

    t0 = 1_800_000_000 // 3600 * 3600.0
    as_pixels = _rows(rng, 200, t0)
    as_files = _rows(rng, 200, t0 + 3600)
    as_files["inputs"] = [
        json.dumps({**json.loads(text), "width": 640, "height": 480, "channels": 3, "format": "JPEG"})
        for text in as_files["inputs"]
    ]
    pixels_window, files_window = windows.analyse(pd.concat([as_pixels, as_files]), reference, MONITOR)
    assert not set(predlog.PICTURE) & {f["feature"] for f in pixels_window["features"]}  # nothing to compare
    assert not set(predlog.PICTURE) & set(pixels_window["drifted_features"])
    assert set(predlog.PICTURE) <= set(files_window["drifted_features"]), files_window["drifted_features"]
