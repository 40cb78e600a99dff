"""tasks/onnx/export.py, tasks/onnx/runtime.py and tasks/export.py: a tiny CNN
to ONNX fp32 and int8, checked through onnx and onnxruntime."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import image_meta, params_section, tiny_spec

from tasks.contracts.onnx import LOGITS, PROBABILITIES, ArtifactMetadata, output_names
from tasks.core.errors import DistilleryError
from tasks.export import artifact_metadata, export_candidate
from tasks.ml.models import CNN
from tasks.onnx.runtime import read_metadata, run_batches, session

META = image_meta(
    classes=("a", "b", "c"), input_shape=(1, 8, 8), pixel_max=16.0, mean=(8.0,), std=(4.0,), data_hash="0123abcd"
)
PIXELS = "pixels"  # the input name clients send raw pixels under: part of the contract
PARAMS = params_section("export", opset=17, atol=1e-4, calibration_samples=32, per_channel=True)
EVALUATE = params_section(
    "evaluate", threads=1, latency_threads=(1,), latency_seconds=0.05, latency_rounds=2, ece_bins=5
)
METADATA = artifact_metadata(META, PARAMS.label_threshold)


def tiny_model() -> CNN:
    torch.manual_seed(0)
    model = CNN(tiny_spec(channels=(4, 6), hidden=8))
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, (n, 1, 8, 8)).astype(np.float32)


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return pixels(n, seed), np.random.default_rng(seed).integers(0, 3, n)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    model = tiny_model()
    figures = export_candidate("tiny", model, labelled(20, 1), pixels(32, 2), METADATA, PARAMS, out)
    return model, figures, out / "tiny.fp32.onnx", out / "tiny.int8.onnx"


def test_export_writes_fp32_and_int8_that_pass_the_checker(exported):
    _, figures, fp32, int8 = exported
    for path in (fp32, int8):
        assert path.exists()
        onnx.checker.check_model(onnx.load(str(path)))
    assert figures["fp32_size_bytes"] == fp32.stat().st_size
    assert figures["int8_size_bytes"] == int8.stat().st_size
    assert figures["parameters"] == sum(p.numel() for p in tiny_model().parameters())
    assert 0 <= figures["fp32_max_abs_diff"] <= PARAMS.atol


def test_the_int8_file_is_quantized(exported):
    _, _, fp32, int8 = exported
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "QuantizeLinear" not in {node.op_type for node in onnx.load(str(fp32)).graph.node}


def test_fp32_logits_match_pytorch_divided_by_the_temperature(exported):
    model, figures, fp32, _ = exported
    x = pixels(9, 3)  # not the rows the export checked itself on
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).numpy() / figures["temperature"]
    got = run_batches(session(fp32), x, output=LOGITS)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert read_metadata(fp32).temperature == figures["temperature"]


def test_temperature_is_fitted_and_kept_only_when_val_ece_does_not_rise(exported):
    _, figures, _, _ = exported
    assert figures["temperature"] > 0
    assert figures["val_ece_after"] <= figures["val_ece_before"]
    if figures["temperature"] == 1.0:
        assert figures["val_ece_after"] == figures["val_ece_before"]


@pytest.mark.parametrize("which", ["fp32", "int8"])
@pytest.mark.parametrize("batch", [1, 7])
def test_the_batch_dimension_is_dynamic(exported, which, batch):
    path = exported[2] if which == "fp32" else exported[3]
    sess = session(path, threads=1)
    (graph_input,) = sess.get_inputs()
    assert graph_input.name == PIXELS
    assert not isinstance(graph_input.shape[0], int)  # a named, free dimension
    assert all(not isinstance(output.shape[0], int) for output in sess.get_outputs())
    logits, probabilities = sess.run(list(output_names("multiclass")), {PIXELS: pixels(batch, 4)})
    assert logits.shape == probabilities.shape == (batch, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_int8_stays_close_to_fp32(exported):
    _, _, fp32, int8 = exported
    x = pixels(16, 5)
    p32 = run_batches(session(fp32), x, output=PROBABILITIES)
    p8 = run_batches(session(int8), x, output=PROBABILITIES)
    assert np.abs(p32 - p8).max() < 0.05  # quantization noise, not a different model


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_every_file_describes_itself(exported, which):
    path = exported[2] if which == "fp32" else exported[3]
    metadata = read_metadata(path)
    stored = {p.key for p in onnx.load(str(path)).metadata_props}
    assert {"classes", "input_spec", "preprocessing", "git_commit", "data_hash"} <= stored
    assert stored == {f.name for f in dataclasses.fields(ArtifactMetadata)}
    assert metadata.task == META.task
    assert metadata.classes == META.classes
    assert metadata.data_hash == META.data_hash
    assert metadata.input_spec.name == PIXELS
    assert metadata.input_spec.shape == (-1, 1, 8, 8)
    assert metadata.input_spec.range == (0, META.pixel_max)
    assert metadata.preprocessing.mean == META.mean and metadata.preprocessing.std == META.std
    assert isinstance(metadata.git_commit, str) and metadata.git_commit
    assert metadata.precision == which and metadata.candidate == f"tiny.{which}"
    assert (metadata.quantization is not None) is (which == "int8")


def test_export_refuses_logits_outside_atol(tmp_path):
    # A negative tolerance cannot be met by any export: the gate's wiring, deterministically.
    strict = params_section("export", opset=17, atol=-1.0, calibration_samples=8, per_channel=False)
    with pytest.raises(DistilleryError) as err:
        export_candidate("tiny", tiny_model(), labelled(4, 1), pixels(8, 2), METADATA, strict, tmp_path)
    assert str(tmp_path / "tiny.fp32.onnx") in str(err.value) and "export.atol" in str(err.value)
    assert not (tmp_path / "tiny.int8.onnx").exists()


def test_read_metadata_refuses_a_truncated_copy(exported, tmp_path):
    copy = tmp_path / "cut.onnx"
    data = exported[2].read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(DistilleryError) as err:
        read_metadata(copy)
    assert str(copy) in str(err.value)


def test_read_metadata_refuses_a_well_formed_but_invalid_graph(exported, tmp_path):
    # It parses as protobuf; only onnx.checker can tell the graph is broken.
    model = onnx.load(str(exported[2]))
    model.graph.node[0].input[0] = "nowhere"
    path = tmp_path / "dangling.onnx"
    onnx.save(model, str(path))
    with pytest.raises(DistilleryError) as err:
        read_metadata(path)
    assert str(path) in str(err.value) and "nowhere" in str(err.value)


def test_read_metadata_refuses_random_bytes(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DistilleryError) as err:
        read_metadata(path)
    assert str(path) in str(err.value)


def test_read_metadata_names_a_missing_file(tmp_path):
    with pytest.raises(DistilleryError, match="not found") as err:
        read_metadata(tmp_path / "gone.onnx")
    assert str(tmp_path / "gone.onnx") in str(err.value)


def test_session_refuses_a_file_onnxruntime_cannot_load(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(b"\x00\x01not a model" * 10)
    with pytest.raises(DistilleryError) as err:
        session(path)
    assert str(path) in str(err.value)


def test_read_metadata_accepts_an_intact_copy(exported, tmp_path):
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(exported[2], copy)
    assert read_metadata(copy) == read_metadata(exported[2])


def test_evaluate_candidate_scores_what_onnxruntime_predicts(exported):
    from tasks.evaluate import candidate_files, evaluate_candidate

    _, _, fp32, int8 = exported
    assert candidate_files(fp32.parent) == {"tiny.fp32": fp32, "tiny.int8": int8}
    x = pixels(12, 6)
    predicted = run_batches(session(int8), x, output=PROBABILITIES).argmax(axis=1)
    y = predicted.copy()
    y[:3] = (y[:3] + 1) % 3  # 9 of 12 right, by construction
    result = evaluate_candidate(int8, x, y, META, EVALUATE)
    assert result["accuracy"] == pytest.approx(9 / 12)
    assert result["size_bytes"] == int8.stat().st_size
    assert {"size_bytes", "macro_f1", "ece", "confusion_matrix"} <= set(result)


def test_evaluate_candidate_refuses_a_corrupt_file(tmp_path):
    from tasks.evaluate import evaluate_candidate

    path = tmp_path / "bad.int8.onnx"
    path.write_bytes(b"garbage")
    with pytest.raises(DistilleryError, match=str(path)):
        evaluate_candidate(path, pixels(2, 0), np.array([0, 1]), META, EVALUATE)


def test_evaluate_candidate_refuses_a_file_of_other_classes(exported):
    from tasks.evaluate import evaluate_candidate

    int8 = exported[3]
    with pytest.raises(DistilleryError, match="rerun export") as err:
        evaluate_candidate(int8, pixels(2, 0), np.array([0, 1]), image_meta(classes=("x", "y", "z")), EVALUATE)
    assert str(int8) in str(err.value)


def test_the_tolerance_grows_with_the_logits_not_below_atol():
    """float32 rounding grows with the values summed: logits of 20 may be 1e-4 off with no fault in the
    export (a pruned CNN on 32x32 colour pictures was 1.07e-4 off), probabilities are held to atol itself."""
    from tasks.export import allowed_difference

    assert allowed_difference(1e-4, np.array([[20.0, -3.0], [1.0, -25.0]])) == pytest.approx(2.5e-3)
    assert allowed_difference(1e-4, np.array([[0.9, 0.1]])) == 1e-4
