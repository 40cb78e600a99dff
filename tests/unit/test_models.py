"""tasks/ml/models.py: the CNN and its safetensors + JSON artifacts."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import image_meta, params_section, tiny_spec

from tasks.core.errors import DistilleryError
from tasks.ml.models import CNN, CNNSpec, count_parameters, load_model, save_model, spec_for


def trained_looking_model(spec: CNNSpec, seed: int = 0) -> CNN:
    """Random weights and non-default batch-norm statistics, so a round trip that
    dropped the buffers would show."""
    torch.manual_seed(seed)
    model = CNN(spec)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    spec = tiny_spec(channels=(4, 6), dropout=0.3)
    model = trained_looking_model(spec)
    save_model(model, tmp_path / "teacher")
    assert (tmp_path / "teacher.safetensors").exists() and (tmp_path / "teacher.json").exists()

    loaded = load_model(tmp_path / "teacher")
    assert loaded.spec == spec
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8) * 16
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_the_json_describes_the_architecture(tmp_path):
    spec = tiny_spec()
    save_model(trained_looking_model(spec), tmp_path / "m")
    described = json.loads((tmp_path / "m.json").read_text())
    assert described["architecture"] == "CNN"
    assert CNNSpec.from_json(described["spec"]) == spec


@pytest.mark.parametrize("missing", [".json", ".safetensors"])
def test_load_model_names_a_missing_file(tmp_path, missing):
    save_model(trained_looking_model(tiny_spec()), tmp_path / "m")
    (tmp_path / f"m{missing}").unlink()
    with pytest.raises(DistilleryError) as err:
        load_model(tmp_path / "m")
    assert str(tmp_path / f"m{missing}") in str(err.value)


@pytest.mark.parametrize(
    "change",
    [{"channels": [6]}, {"hidden": 9}, {"n_classes": 4}, {"input_shape": [1, 16, 16]}],
    ids=["channels", "hidden", "n_classes", "input_shape"],
)
def test_load_model_refuses_weights_that_do_not_match_the_spec(tmp_path, change):
    save_model(trained_looking_model(tiny_spec()), tmp_path / "m")
    described = json.loads((tmp_path / "m.json").read_text())
    described["spec"].update(change)
    (tmp_path / "m.json").write_text(json.dumps(described))
    with pytest.raises(DistilleryError) as err:
        load_model(tmp_path / "m")
    assert str(tmp_path / "m.safetensors") in str(err.value)
    assert str(tmp_path / "m.json") in str(err.value)


def test_load_model_refuses_weights_missing_a_tensor(tmp_path):
    # Without this check the layer would silently keep its random initialisation.
    from safetensors.torch import load_file, save_file

    save_model(trained_looking_model(tiny_spec()), tmp_path / "m")
    weights = tmp_path / "m.safetensors"
    tensors = load_file(str(weights))
    dropped = next(k for k in tensors if k.startswith("head."))
    del tensors[dropped]
    save_file(tensors, str(weights))
    with pytest.raises(DistilleryError) as err:
        load_model(tmp_path / "m")
    assert str(weights) in str(err.value) and dropped in str(err.value)


def test_load_model_refuses_corrupt_weights(tmp_path):
    save_model(trained_looking_model(tiny_spec()), tmp_path / "m")
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DistilleryError) as err:
        load_model(tmp_path / "m")
    assert str(weights) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"architecture": "CNN"}),
        json.dumps({"spec": {"unknown_arg": 1}}),
        json.dumps([1, 2]),
        json.dumps({"architecture": "Transformer", "spec": {}}),
    ],
    ids=["invalid-json", "no-spec", "bad-spec", "not-an-object", "unknown-architecture"],
)
def test_load_model_refuses_a_bad_description(tmp_path, content):
    save_model(trained_looking_model(tiny_spec()), tmp_path / "m")
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(DistilleryError) as err:
        load_model(tmp_path / "m")
    assert str(tmp_path / "m.json") in str(err.value)


def test_the_model_normalises_inside_its_graph():
    # Shifting the input by the mean and scaling by std must equal feeding
    # already-normalised data to a model with mean 0, std 1.
    spec = tiny_spec()
    model = trained_looking_model(spec)
    plain = CNN(CNNSpec(**{**spec.__dict__, "mean": (0.0,), "std": (1.0,)})).eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("features.0.")}, strict=False
    )
    x = torch.rand(3, 1, 8, 8) * 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - 8.0) / 4.0))


def test_tiny_inputs_keep_a_spatial_map():
    spec = tiny_spec(channels=(2, 2, 2, 2))  # 8 -> 4 -> 2, then no more pooling
    model = CNN(spec).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 2


def test_spec_for_reads_the_processed_meta():
    meta = image_meta(classes=("a", "b"), mean=(3.0,), std=(2.0,))
    spec = spec_for(meta, params_section("train", channels=(4, 8), hidden=16, dropout=0.1))
    assert spec == CNNSpec((1, 8, 8), (4, 8), 16, 2, 0.1, (3.0,), (2.0,))
    assert count_parameters(CNN(spec)) > 0
