"""The ONNX artifact contract (tasks/contracts/onnx.py) on real files: what
tasks.onnx.export writes for each task type passes tasks.onnx.runtime.check_artifact
(the server's checks plus a trial run), and a file that breaks the contract is
refused with a DistilleryError that names it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from conftest import image_meta, params_section, tiny_spec

from tasks.contracts.onnx import (
    FLOAT,
    IMAGE_INPUT,
    LOGITS,
    PREDICTION,
    PROBABILITIES,
    TABLE_INPUT,
    ArtifactMetadata,
    Quantization,
    Tensor,
    check_outputs,
    check_servable,
    input_name,
    output_names,
)
from tasks.contracts.processed import ProcessedMeta
from tasks.core.errors import DistilleryError
from tasks.data.encoding import fit_encoder
from tasks.export import artifact_metadata
from tasks.ml.models import CNN, MLP, spec_for
from tasks.onnx.export import export_onnx, set_metadata
from tasks.onnx.runtime import check_artifact, read_metadata, run_batches

THRESHOLD = 0.4
TASKS = ("binary", "multiclass", "multilabel", "regression")
COLUMN_TYPES = {
    "age": "numeric",
    "bmi": "numeric",
    "insured": "boolean",
    "admitted": "datetime",
    "sex": "categorical",
    "smoker": "categorical",
}
DATE_FORMATS = {"admitted": "%d/%m/%Y"}


def raw_rows(n: int, seed: int) -> pd.DataFrame:
    """Raw table rows, with gaps, as a client sends them: numbers, yes/no in any
    spelling, dates day first, categories."""
    rng = np.random.default_rng(seed)
    days = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 400, n), unit="D")
    frame = pd.DataFrame(
        {
            "age": rng.uniform(20, 80, n),
            "bmi": rng.normal(27, 4, n),
            "insured": rng.choice(["Y", "n", "true", "F"], n).astype(object),
            "admitted": days.strftime("%d/%m/%Y").astype(object),
            "sex": rng.choice(["f", "m"], n),
            "smoker": rng.choice(["no", "yes", "former"], n),
        }
    )
    frame.loc[::5, "bmi"] = np.nan
    frame.loc[::6, "insured"] = None
    frame.loc[::4, "admitted"] = None
    frame.loc[::7, "smoker"] = None
    return frame


def table_meta(impute: str = "mean") -> ProcessedMeta:
    """A regression table's meta with the encoder fitted on training rows (tasks.data.encoding)."""
    train = raw_rows(40, 0)
    encoder = fit_encoder(train, COLUMN_TYPES, impute, knn_neighbors=3, date_formats=DATE_FORMATS)
    x = encoder.encode(train)
    return ProcessedMeta(
        kind="tabular",
        task="regression",
        classes=(),
        input_shape=(encoder.width,),
        mean=tuple(x.mean(axis=0).tolist()),
        std=tuple(np.maximum(x.std(axis=0), 1e-6).tolist()),
        data_hash="tablehash",
        resample="none",
        counts={},
        encoder=encoder,
        target_mean=150.0,
        target_std=40.0,
    )


def meta_for(task: str) -> ProcessedMeta:
    if task == "regression":
        return table_meta()
    if task == "binary":
        return image_meta(task="binary", classes=("no", "yes"))
    return image_meta(task=task, classes=("a", "b", "c"))


def model_for(meta: ProcessedMeta) -> torch.nn.Module:
    torch.manual_seed(0)
    if meta.kind == "tabular":
        return MLP(spec_for(meta, params_section("train", mlp_layers=(8,), dropout=0.0), outputs=1)).eval()
    # A binary model with one sigmoid logit: the graph turns it into two softmax columns.
    outputs = 1 if meta.task == "binary" else len(meta.classes)
    return CNN(tiny_spec(n_classes=outputs)).eval()


def export(meta: ProcessedMeta, path, name: str | None = None, metadata: ArtifactMetadata | None = None):
    """`meta`'s model exported as the export stage does, with its metadata (or `metadata`)."""
    model = model_for(meta)
    export_onnx(model, meta.input_shape, path, 17, name or input_name(meta.kind), 1.5, meta.task)
    set_metadata(path, metadata or artifact_metadata(meta, THRESHOLD))
    return model


def write_props(path, props: dict[str, str]) -> None:
    """Replace a file's metadata_props wholesale (what a foreign or damaged file carries)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One exported file per task type: (meta, model, path)."""
    folder = tmp_path_factory.mktemp("contract")
    files = {}
    for task in TASKS:
        meta = meta_for(task)
        path = folder / f"{task}.onnx"
        files[task] = (meta, export(meta, path), path)
    return files


@pytest.mark.parametrize("task", TASKS)
def test_check_artifact_accepts_every_task_type_with_its_outputs(artifacts, task):
    meta, _, path = artifacts[task]
    metadata, signature, sess = check_artifact(path)
    assert metadata == artifact_metadata(meta, THRESHOLD)
    assert metadata.task == task and metadata.kind == meta.kind
    assert signature.input_name == input_name(meta.kind) == sess.get_inputs()[0].name
    assert signature.input_shape == tuple(meta.input_shape)
    width = 1 if task == "regression" else len(meta.classes)
    assert signature.outputs == tuple((name, (width,)) for name in output_names(task))
    assert [o.name for o in sess.get_outputs()] == list(output_names(task))


def test_a_regression_file_answers_only_prediction_in_target_units(artifacts):
    meta, model, path = artifacts["regression"]
    metadata, signature, sess = check_artifact(path)
    assert signature.outputs == ((PREDICTION, (1,)),) and metadata.outputs == (PREDICTION,)
    assert [o.name for o in sess.get_outputs()] == [PREDICTION]
    assert signature.input_name == TABLE_INPUT and metadata.input_spec.features == meta.encoder.feature_names
    assert metadata.preprocessing.encoder == meta.encoder
    # Dates and yes/no travel as plain strings and numbers: their format and the parts they became.
    encoder = metadata.preprocessing.encoder
    assert encoder.booleans == ("insured",) and encoder.dates["admitted"].format == "%d/%m/%Y"
    assert {"insured", "admitted.year", "admitted.weekday"} <= set(metadata.input_spec.features)
    assert (metadata.target_units.mean, metadata.target_units.std) == (meta.target_mean, meta.target_std)
    # Raw rows through the file's own encoder, then the graph: the model's value, in target units.
    x = metadata.preprocessing.encoder.encode(raw_rows(9, 1))
    (values,) = sess.run(None, {TABLE_INPUT: x})
    assert values.shape == (9, 1)
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-3)
    assert abs(float(values.mean()) - meta.target_mean) < 10 * meta.target_std  # scaled back, not standardised


def test_a_single_logit_binary_head_gives_two_probability_columns(artifacts):
    _, model, path = artifacts["binary"]
    _, signature, sess = check_artifact(path)
    assert signature.outputs == ((LOGITS, (2,)), (PROBABILITIES, (2,)))
    x = np.random.default_rng(2).uniform(0, 16, (6, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        p = torch.sigmoid(model(torch.as_tensor(x)) / 1.5).numpy().ravel()  # the export's temperature
    np.testing.assert_allclose(run_batches(sess, x, output=PROBABILITIES), np.column_stack([1 - p, p]), atol=1e-5)


def test_multilabel_probabilities_are_per_label(artifacts):
    meta, _, path = artifacts["multilabel"]
    metadata, _, sess = check_artifact(path)
    assert metadata.threshold == THRESHOLD
    probs = run_batches(
        sess, np.random.default_rng(3).uniform(0, 16, (20, 1, 8, 8)).astype(np.float32), output=PROBABILITIES
    )
    assert probs.shape == (20, len(meta.classes)) and ((probs >= 0) & (probs <= 1)).all()
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent sigmoids, not a softmax


# Refusals: each names the file.


def refused(path, match: str) -> None:
    with pytest.raises(DistilleryError, match=match) as err:
        check_artifact(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(ArtifactMetadata)])
def test_metadata_missing_a_key_is_refused(artifacts, tmp_path, key):
    meta, _, _ = artifacts["multiclass"]
    path = tmp_path / "missing.onnx"
    export(meta, path)
    props = read_metadata(path).to_props()
    del props[key]
    write_props(path, props)
    refused(path, f"'{key}': missing key")


def test_an_unknown_metadata_key_is_refused_with_a_suggestion(artifacts, tmp_path):
    meta, _, _ = artifacts["multiclass"]
    path = tmp_path / "unknown.onnx"
    export(meta, path)
    props = read_metadata(path).to_props()
    props["thresold"] = props["threshold"]
    write_props(path, props)
    refused(path, "'thresold': unknown key; did you mean 'threshold'")


def test_metadata_that_is_not_json_is_refused(artifacts, tmp_path):
    meta, _, _ = artifacts["multiclass"]
    path = tmp_path / "text.onnx"
    export(meta, path)
    write_props(path, {**read_metadata(path).to_props(), "task": "multiclass"})  # a bare word, not JSON
    refused(path, "not JSON-encoded")


@pytest.mark.parametrize(
    ("graph", "says", "match"),
    [
        ("multiclass", image_meta(task="regression", classes=()), "a regression model needs the output 'prediction'"),
        (
            "regression",
            dataclasses.replace(table_meta(), task="multiclass", classes=("a", "b", "c")),
            "a multiclass model needs the output 'logits'",
        ),
        (
            "multiclass",
            image_meta(task="binary", classes=("no", "yes")),
            "output 'logits' has shape \\[-1, 3\\] but the model has 2 classes per row",
        ),
        ("multiclass", image_meta(classes=("a", "b", "c", "d")), "has 4 classes per row"),
        ("multilabel", image_meta(classes=("a", "b", "c")), "not one distribution per row"),
    ],
    ids=[
        "multiclass-as-regression",
        "regression-as-multiclass",
        "multiclass-as-binary",
        "wrong-class-count",
        "multilabel-as-multiclass",
    ],
)
def test_outputs_that_do_not_match_the_task_are_refused(tmp_path, graph, says, match):
    path = tmp_path / "mismatch.onnx"
    meta = meta_for(graph)
    export(meta, path, metadata=artifact_metadata(says, THRESHOLD))
    refused(path, match)


def test_an_input_name_that_differs_from_input_spec_is_refused(tmp_path):
    path = tmp_path / "renamed.onnx"
    export(meta_for("multiclass"), path, name="input")
    refused(path, f"the input is 'input' but metadata_props input_spec says '{IMAGE_INPUT}'")
    # A table model's graph described as an image model: the other name of the contract.
    path = tmp_path / "table_as_image.onnx"
    export(meta_for("multiclass"), path, name=TABLE_INPUT)
    refused(path, f"the input is '{TABLE_INPUT}'")


def test_an_input_shape_that_differs_from_input_spec_is_refused(tmp_path):
    path = tmp_path / "shape.onnx"
    meta = meta_for("multiclass")
    export(meta, path, metadata=artifact_metadata(dataclasses.replace(meta, input_shape=(1, 16, 16)), THRESHOLD))
    refused(path, "takes \\[1, 8, 8\\] per row but metadata_props input_spec says \\[1, 16, 16\\]")


def test_a_table_model_without_its_encoder_is_refused(artifacts, tmp_path):
    meta, _, _ = artifacts["regression"]
    path = tmp_path / "no_encoder.onnx"
    export(meta, path)
    metadata = read_metadata(path)
    props = metadata.to_props()
    props["preprocessing"] = json.dumps(dataclasses.asdict(metadata.preprocessing) | {"encoder": None})
    write_props(path, props)
    refused(path, "a table model needs preprocessing.encoder")
    with pytest.raises(ValueError, match="preprocessing.encoder"):  # and it cannot even be built
        metadata.replace(preprocessing=dataclasses.replace(metadata.preprocessing, encoder=None))


def test_an_encoder_of_another_width_is_refused(tmp_path):
    meta = table_meta()
    path = tmp_path / "width.onnx"
    export(meta, path)
    metadata = read_metadata(path)
    narrower = dataclasses.replace(meta.encoder, categorical={"sex": ("f", "m")})  # drops 'smoker'
    write_props(
        path, metadata.replace(preprocessing=dataclasses.replace(metadata.preprocessing, encoder=narrower)).to_props()
    )
    refused(path, f"the encoder gives {narrower.width} features but the input takes \\[{meta.encoder.width}\\]")


# check_servable and check_outputs on their own: what onnxruntime reports, as Tensors.


def image_metadata() -> ArtifactMetadata:
    return artifact_metadata(image_meta(), THRESHOLD)


def outputs(width: int = 3) -> list[Tensor]:
    return [Tensor(LOGITS, FLOAT, ("batch", width)), Tensor(PROBABILITIES, FLOAT, ("batch", width))]


def test_check_servable_accepts_the_contracts_tensors():
    signature = check_servable([Tensor(IMAGE_INPUT, FLOAT, ("batch", 1, 8, 8))], outputs(), image_metadata(), "m.onnx")
    assert signature.describe() == "pixels[-1, 1, 8, 8] -> logits[3], probabilities[3]"


@pytest.mark.parametrize(
    ("inputs", "outs", "match"),
    [
        ([Tensor(IMAGE_INPUT, "tensor(double)", ("batch", 1, 8, 8))], outputs(), "is tensor\\(double\\)"),
        ([Tensor(IMAGE_INPUT, FLOAT, (4, 1, 8, 8))], outputs(), "fixed batch size 4"),
        ([Tensor(IMAGE_INPUT, FLOAT, ("batch", 1, 8, 8))] * 2, outputs(), "has 2 inputs"),
        ([Tensor(IMAGE_INPUT, FLOAT, ("batch", 1, 8, 8))], outputs()[:1], "needs the output 'probabilities'"),
        (
            [Tensor(IMAGE_INPUT, FLOAT, ("batch", 1, 8, 8))],
            [outputs()[0], Tensor(PROBABILITIES, "tensor(int64)", ("batch", 3))],
            "output 'probabilities' is tensor",
        ),
        ([Tensor(IMAGE_INPUT, FLOAT, ("batch", 1, "h", 8))], outputs(), "non-batch dimensions"),
    ],
    ids=["input-type", "fixed-batch", "two-inputs", "missing-output", "output-type", "symbolic-input"],
)
def test_check_servable_refuses_and_names_the_source(inputs, outs, match):
    with pytest.raises(DistilleryError, match=match) as err:
        check_servable(inputs, outs, image_metadata(), "models/x.onnx")
    assert str(err.value).startswith("models/x.onnx: ")


def test_check_outputs_refuses_a_run_that_breaks_the_contract():
    metadata = image_metadata()
    good = {LOGITS: np.zeros((2, 3)), PROBABILITIES: np.full((2, 3), 1 / 3)}
    check_outputs(metadata, good, 2, "m.onnx")
    with pytest.raises(DistilleryError, match="m.onnx: .*shape \\[1, 3\\]"):
        check_outputs(metadata, {LOGITS: np.zeros((1, 3)), PROBABILITIES: np.full((1, 3), 1 / 3)}, 2, "m.onnx")
    with pytest.raises(DistilleryError, match="m.onnx: .*finite"):
        check_outputs(metadata, {**good, LOGITS: np.array([[0, np.nan, 0], [0, 0, 0]])}, 2, "m.onnx")
    multilabel = artifact_metadata(image_meta(task="multilabel"), THRESHOLD)
    with pytest.raises(DistilleryError, match="m.onnx: .*outside \\[0, 1\\]"):
        check_outputs(multilabel, {**good, PROBABILITIES: np.full((2, 3), 1.2)}, 2, "m.onnx")


# The metadata itself.


@pytest.mark.parametrize("impute", ["mean", "knn", "iterative"])
def test_to_props_and_from_props_round_trip_a_table_model(impute):
    metadata = artifact_metadata(table_meta(impute), THRESHOLD).replace(
        temperature=1.25,
        candidate="student.int8",
        precision="int8",
        quantization=Quantization(
            mode="static", per_channel=True, calibration_method="minmax", reduce_range=False, cpu_has_vnni=True
        ),
    )
    props = metadata.to_props()
    assert set(props) == {f.name for f in dataclasses.fields(ArtifactMetadata)}
    assert all(isinstance(v, str) for v in props.values())
    back = ArtifactMetadata.from_props(props, "m.onnx")
    assert back == metadata
    assert back.preprocessing.encoder.imputer.method == impute
    # The decoded encoder encodes raw rows exactly as the fitted one.
    rows = raw_rows(12, 5)
    np.testing.assert_array_equal(back.preprocessing.encoder.encode(rows), metadata.preprocessing.encoder.encode(rows))


@pytest.mark.parametrize("task", TASKS)
def test_to_props_and_from_props_round_trip_every_task(artifacts, task):
    meta, _, path = artifacts[task]
    metadata = artifact_metadata(meta, THRESHOLD)
    assert ArtifactMetadata.from_props(metadata.to_props(), "m.onnx") == metadata
    assert read_metadata(path) == metadata  # and through the file's metadata_props


def test_metadata_that_contradicts_itself_cannot_be_built():
    metadata = image_metadata()
    with pytest.raises(ValueError, match="not those of a regression model"):
        metadata.replace(task="regression")
    with pytest.raises(ValueError, match="binary model has 2 classes"):
        metadata.replace(task="binary")
    with pytest.raises(ValueError, match="neither"):
        metadata.replace(input_spec=dataclasses.replace(metadata.input_spec, name="input"))
