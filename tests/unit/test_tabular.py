"""The tabular model path: the encoder fitted on train and shared with serving
(tasks/data/encoding.py, tasks/contracts/encoder.py, tasks/preprocess.py),
train-only resampling (tasks/data/split.py), the MLP and its artifacts
(tasks/ml/models.py), and its ONNX export (tasks/export.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from conftest import params_section

from tasks.contracts.dataset import Dataset, DatasetMeta
from tasks.contracts.encoder import Imputer, TableEncoder
from tasks.contracts.processed import ProcessedMeta, load_split, read_meta, save_split, write_meta
from tasks.core.errors import DistilleryError
from tasks.data.encoding import fit_encoder
from tasks.data.split import resample_train, split_indices
from tasks.export import artifact_metadata, export_candidate
from tasks.ml.models import MLP, MLPSpec, build_model, load_model, save_model, spec_for
from tasks.onnx.runtime import read_metadata, run_batches, session
from tasks.preprocess import preprocess, preprocess_table

TYPES = {"x": "numeric", "z": "numeric", "color": "categorical"}


def preprocess_params(**overrides):
    base = dict(val_fraction=0.15, test_fraction=0.2, seed=42, impute="median", knn_neighbors=3, resample="none")
    return params_section("preprocess", **{**base, **overrides})


# --------------------------------------------------------------------------- encoder


def train_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [1.0, 1.0, 3.0, None, 10.0],
            "z": [None] * 5,
            "color": ["red", "green", None, "red", "green"],
            "note": ["free text"] * 5,
        }
    )


@pytest.mark.parametrize(
    "impute, fill_x", [("median", 2.0), ("mean", 3.75), ("most_frequent", 1.0), ("knn", 3.75), ("iterative", 3.75)]
)
def test_fit_encoder_learns_fill_values_and_categories(impute, fill_x):
    # x present: 1, 1, 3, 10 -> median 2, mean 15/4, mode 1; knn and iterative fall
    # back to (start from) the mean, as scikit-learn's imputers do.
    encoder = fit_encoder(train_frame(), TYPES, impute)
    assert encoder.numeric == ("x", "z")
    assert encoder.categorical == {"color": ("green", "red")}
    assert encoder.imputer.fill_values == {"x": fill_x, "z": 0.0}  # z has no value at all: 0
    assert encoder.imputer.method == impute
    assert encoder.columns == ("x", "z", "color") and encoder.width == 4


def test_encode_table_one_hot_unseen_and_missing():
    encoder = TableEncoder(
        numeric=("x", "z"), categorical={"color": ("green", "red")}, imputer=Imputer("median", {"x": 1.5, "z": -2.0})
    )
    rows = pd.DataFrame(
        {
            "color": ["red", "purple", None, "green"],  # purple was never seen in training
            "z": ["4", None, "5", "0.5"],
            "x": [1.0, np.nan, 3.0, 0.0],
            "extra": ["ignored"] * 4,
        }
    )
    encoded = encoder.encode(rows)
    assert encoded.dtype == np.float32
    np.testing.assert_array_equal(
        encoded,
        np.array(
            [
                [1.0, 4.0, 0.0, 1.0],
                [1.5, -2.0, 0.0, 0.0],
                [3.0, 5.0, 0.0, 0.0],
                [0.0, 0.5, 1.0, 0.0],
            ],
            dtype=np.float32,
        ),
    )


def test_encode_table_names_a_missing_feature_column():
    encoder = fit_encoder(train_frame(), TYPES, "median")
    with pytest.raises(DistilleryError, match=r"\['color'\]"):
        encoder.encode(train_frame().drop(columns=["color"]))


# --------------------------------------------------------------------------- preprocess_table


def tabular_dataset(counts=(30, 30, 30), seed: int = 0) -> Dataset:
    """Typed rows as the gate leaves them: numbers with gaps, a category with gaps,
    a text column that is not a feature. x depends on the class, so imputers
    have something to learn from."""
    rng = np.random.default_rng(seed)
    classes = [f"k{i}" for i in range(len(counts))]
    labels = np.repeat(np.arange(len(counts)), counts)
    n = len(labels)
    x = labels * 10.0 + rng.normal(0, 1, n)
    x[rng.random(n) < 0.15] = np.nan
    z = rng.normal(0, 1, n)
    z[rng.random(n) < 0.1] = np.nan
    color = rng.choice(["red", "green", "blue"], n).astype(object)
    color[rng.random(n) < 0.1] = None
    table = pd.DataFrame(
        {
            "row_id": np.arange(n),
            "x": x,
            "z": z,
            "color": color,
            "note": [f"note {i}" for i in range(n)],
            "label": np.asarray(classes, dtype=object)[labels],
        }
    )
    meta = DatasetMeta(
        source="csv",
        kind="tabular",
        rows=n,
        data_hash="test",
        classes=tuple(classes),
        target="label",
        task="multiclass",
        column_types={**TYPES, "note": "text"},
        features=("x", "z", "color"),
    )
    return Dataset(table=table, arrays={}, meta=meta)


def label_indices(dataset: Dataset) -> np.ndarray:
    return dataset.table["label"].map({c: i for i, c in enumerate(dataset.meta.classes)}).to_numpy(np.int64)


def test_the_encoder_is_fitted_on_the_train_split_only():
    dataset = tabular_dataset()
    params = preprocess_params(impute="mean")
    parts = split_indices(label_indices(dataset), params)
    # Put a category and an extreme number only into validation rows.
    val_rows = parts["val"][:2]
    dataset.table.loc[val_rows[0], "color"] = "purple"
    dataset.table.loc[val_rows[1], "x"] = 1e6
    _, meta = preprocess_table(dataset, params, "multiclass")
    encoder = meta.encoder
    train = dataset.table.iloc[parts["train"]]
    assert "purple" not in encoder.categorical["color"]
    assert encoder.categorical["color"] == tuple(sorted(train["color"].dropna().unique()))
    assert encoder.imputer.fill_values["x"] == pytest.approx(np.nanmean(train["x"].to_numpy()))
    assert encoder.imputer.fill_values["z"] == pytest.approx(np.nanmean(train["z"].to_numpy()))


def test_median_fill_values_are_the_train_medians():
    dataset = tabular_dataset()
    params = preprocess_params(impute="median")
    train = dataset.table.iloc[split_indices(label_indices(dataset), params)["train"]]
    _, meta = preprocess_table(dataset, params, "multiclass")
    for col in ("x", "z"):
        assert meta.encoder.imputer.fill_values[col] == pytest.approx(np.nanmedian(train[col].to_numpy()))


def test_preprocess_table_outputs_are_complete_and_consistent():
    dataset = tabular_dataset()
    splits, meta = preprocess_table(dataset, preprocess_params(), "multiclass")
    encoder = meta.encoder
    names = (*encoder.numeric, *(f"color={v}" for v in encoder.categorical["color"]))
    assert meta.feature_names == encoder.feature_names == names == ("x", "z", "color=blue", "color=green", "color=red")
    assert meta.input_shape == (len(names),) and encoder.width == len(names)
    assert meta.kind == "tabular" and meta.task == "multiclass" and meta.classes == dataset.meta.classes
    assert "note" not in " ".join(names)  # text is not a feature
    assert sum(len(s["y"]) for s in splits.values()) == len(dataset.table)
    for name, split in splits.items():
        assert split["x"].shape == (len(split["y"]), len(names)), name
        assert split["x"].dtype == np.float32 and not np.isnan(split["x"]).any(), name
    assert len(meta.mean) == len(meta.std) == len(names)
    np.testing.assert_allclose(meta.mean, splits["train"]["x"].mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize("impute", ["knn", "iterative"])
def test_model_imputers_leave_no_gap_and_keep_observed_values(impute):
    dataset = tabular_dataset()
    params = preprocess_params(impute=impute)
    before = dataset.table.copy()
    splits, _ = preprocess_table(dataset, params, "multiclass")
    pd.testing.assert_frame_equal(dataset.table, before)  # the input is not imputed in place
    train_rows = dataset.table.iloc[split_indices(label_indices(dataset), params)["train"]]
    x_train = splits["train"]["x"]
    assert not np.isnan(x_train).any() and not np.isnan(splits["test"]["x"]).any()
    observed = train_rows["x"].notna().to_numpy()
    np.testing.assert_allclose(x_train[observed, 0], train_rows["x"].to_numpy()[observed], rtol=1e-6)


@pytest.mark.parametrize("impute", ["knn", "iterative"])
def test_the_stored_encoder_encodes_raw_test_rows_as_the_saved_test_split(impute, tmp_path):
    # Train/serve parity: what serving does to a raw row (the encoder from the
    # saved meta.json) is exactly what preprocess saved for the test split.
    dataset = tabular_dataset()
    splits, meta = preprocess(dataset, preprocess_params(impute=impute), "multiclass")  # the stage's function
    assert meta.encoder.imputer.method == impute
    for name, arrays in splits.items():
        save_split(name, arrays, tmp_path)
    write_meta(meta, tmp_path)
    stored = read_meta(tmp_path).encoder
    assert stored == meta.encoder
    saved_x, _ = load_split("test", tmp_path)
    row_ids = splits["test"]["row_id"]
    raw = dataset.table.set_index("row_id").loc[row_ids].reset_index()  # the validated rows, untouched
    gaps = raw[["x", "z"]].isna().to_numpy()
    assert gaps.any(axis=0).all()  # the test split has gaps in both numeric columns
    encoded = stored.encode(raw)
    assert encoded.dtype == saved_x.dtype == np.float32
    np.testing.assert_array_equal(encoded, saved_x)
    np.testing.assert_array_equal(meta.encoder.encode(raw), saved_x)

    # The imputer really ran: every gap differs from the median fill, every
    # observed value and every one-hot column is the same.
    median_splits, _ = preprocess(dataset, preprocess_params(impute="median"), "multiclass")
    median_x = median_splits["test"]["x"]
    np.testing.assert_array_equal(median_splits["test"]["row_id"], row_ids)
    assert (encoded[:, :2][gaps] != median_x[:, :2][gaps]).all()
    np.testing.assert_array_equal(encoded[:, :2][~gaps], median_x[:, :2][~gaps])
    np.testing.assert_array_equal(encoded[:, 2:], median_x[:, 2:])


@pytest.mark.parametrize("impute", ["median", "knn", "iterative"])
def test_the_processed_meta_round_trips_through_meta_json(impute, tmp_path):
    _, meta = preprocess_table(tabular_dataset(), preprocess_params(impute=impute), "multiclass")
    write_meta(meta, tmp_path)
    assert read_meta(tmp_path) == meta


# --------------------------------------------------------------------------- resampling


def imbalanced(counts=(20, 8, 4), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    x = (rng.normal(size=(len(y), 3)) + y[:, None] * 5).astype(np.float32)
    return x, y


def test_no_resampling_returns_the_input():
    x, y = imbalanced()
    x_out, y_out = resample_train(x, y, "none", 0)
    assert x_out is x and y_out is y


@pytest.mark.parametrize("method, expected", [("over", [20, 20, 20]), ("under", [4, 4, 4]), ("smote", [20, 20, 20])])
def test_resampling_balances_the_classes(method, expected):
    x, y = imbalanced()
    x_out, y_out = resample_train(x, y, method, seed=0)
    assert np.bincount(y_out).tolist() == expected
    assert x_out.shape == (len(y_out), 3) and x_out.dtype == np.float32 and y_out.dtype == np.int64
    originals = {(tuple(row), label) for row, label in zip(x.tolist(), y.tolist())}
    resampled = {(tuple(row), label) for row, label in zip(x_out.tolist(), y_out.tolist())}
    if method == "smote":
        assert originals <= resampled  # SMOTE adds synthetic rows, keeps the real ones
    else:
        assert resampled <= originals  # random sampling only repeats or drops real rows


def test_smote_refuses_a_class_with_one_sample():
    x, y = imbalanced(counts=(10, 5, 1))
    with pytest.raises(DistilleryError, match="smote"):
        resample_train(x, y, "smote", seed=0)


@pytest.mark.parametrize("method", ["over", "under", "smote"])
def test_preprocess_resamples_the_train_split_only(method):
    dataset = tabular_dataset(counts=(40, 20, 10))
    labels = label_indices(dataset)
    parts = split_indices(labels, preprocess_params())
    splits, meta = preprocess_table(dataset, preprocess_params(resample=method), "multiclass")
    train_counts = np.bincount(labels[parts["train"]], minlength=3)
    expected_train = [int(train_counts.min())] * 3 if method == "under" else [int(train_counts.max())] * 3
    assert list(meta.counts["train"]) == expected_train == np.bincount(splits["train"]["y"]).tolist()
    for name in ("val", "test"):
        assert list(meta.counts[name]) == np.bincount(labels[parts[name]], minlength=3).tolist()
        np.testing.assert_array_equal(splits[name]["y"], labels[parts[name]])
    assert meta.resample == method


# --------------------------------------------------------------------------- the MLP

# Five encoded features: x, z, color=blue, color=green, color=red.
ENCODER = TableEncoder(
    numeric=("x", "z"), categorical={"color": ("blue", "green", "red")}, imputer=Imputer("median", {"x": 0.0, "z": 0.0})
)

SPEC = MLPSpec(
    n_features=5,
    layers=(8, 6),
    n_classes=3,
    dropout=0.2,
    mean=(0.5, -1.0, 2.0, 0.0, 0.25),
    std=(1.0, 2.0, 0.5, 1.0, 3.0),
)


def trained_looking_mlp(spec: MLPSpec = SPEC, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(spec)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def features(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (n, SPEC.n_features)).astype(np.float32)


def test_mlp_save_load_round_trip(tmp_path):
    model = trained_looking_mlp()
    save_model(model, tmp_path / "student")
    described = json.loads((tmp_path / "student.json").read_text())
    assert described["architecture"] == "MLP"
    loaded = load_model(tmp_path / "student")
    assert isinstance(loaded, MLP) and loaded.spec == SPEC and not loaded.training
    x = torch.from_numpy(features(7, 1))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_the_mlp_standardises_inside_its_graph():
    model = trained_looking_mlp()
    x = torch.from_numpy(features(4, 2))
    standardised = (x - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net[1:](standardised), atol=1e-6)


def test_spec_for_a_table_is_an_mlp_spec():
    meta = ProcessedMeta(
        kind="tabular",
        task="multiclass",
        classes=("a", "b", "c", "d"),
        input_shape=(5,),
        mean=(0.0, 1.0, 2.0, 3.0, 4.0),
        std=(1.0, 1.0, 2.0, 2.0, 3.0),
        data_hash="test",
        resample="none",
        counts={},
        encoder=ENCODER,
    )
    params = params_section("train", mlp_layers=(16, 8), dropout=0.1)
    spec = spec_for(meta, params)
    assert spec == MLPSpec(
        n_features=5,
        layers=(16, 8),
        n_classes=4,
        dropout=0.1,
        mean=(0.0, 1.0, 2.0, 3.0, 4.0),
        std=(1.0, 1.0, 2.0, 2.0, 3.0),
    )
    model = build_model(spec)
    assert isinstance(model, MLP)
    with torch.no_grad():
        assert model.eval()(torch.zeros(3, 5)).shape == (3, 4)


# --------------------------------------------------------------------------- export

# No temperature: the fp32 logits must then be the PyTorch logits themselves.
EXPORT = params_section(
    "export", opset=17, atol=1e-4, calibration_samples=32, per_channel=True, temperature_scaling=False
)
TABLE_META = ProcessedMeta(
    kind="tabular",
    task="multiclass",
    classes=("a", "b", "c"),
    input_shape=(5,),
    mean=SPEC.mean,
    std=SPEC.std,
    data_hash="0123abcd",
    resample="none",
    counts={},
    encoder=ENCODER,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp_onnx")
    model = trained_looking_mlp()
    val = (features(20, 3), np.random.default_rng(3).integers(0, 3, 20))
    figures = export_candidate("mlp", model, val, features(32, 4), artifact_metadata(TABLE_META, 0.5), EXPORT, out)
    return model, figures, out / "mlp.fp32.onnx", out / "mlp.int8.onnx"


def test_mlp_export_writes_fp32_and_int8_taking_features(exported):
    _, figures, fp32, int8 = exported
    for path in (fp32, int8):
        assert path.exists()
        inputs = session(path).get_inputs()
        assert [i.name for i in inputs] == ["features"]
        assert inputs[0].shape[1] == SPEC.n_features
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert figures["fp32_max_abs_diff"] <= 1e-4


def test_export_leaves_the_model_in_eval_mode(exported):
    # Regression: the exporter restored its wrapper's (training) mode onto the model.
    model, _, _, _ = exported
    assert not any(module.training for module in model.modules())


def test_mlp_fp32_matches_pytorch(exported):
    model, _, fp32, _ = exported
    x = features(9, 5)  # not the batch size exported with
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = run_batches(session(fp32), x, output="logits")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_mlp_int8_probabilities_sum_to_one(exported):
    _, _, _, int8 = exported
    probabilities = run_batches(session(int8), features(11, 6), output="probabilities")
    assert probabilities.shape == (11, 3)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_mlp_files_describe_a_table_input(exported):
    _, _, fp32, int8 = exported
    for path, precision in ((fp32, "fp32"), (int8, "int8")):
        metadata = read_metadata(path)
        assert metadata.precision == precision
        assert metadata.kind == "tabular"
        assert metadata.input_spec.name == "features"
        assert metadata.input_spec.features == TABLE_META.feature_names == ENCODER.feature_names
        assert metadata.preprocessing.encoder == TABLE_META.encoder
