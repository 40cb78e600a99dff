"""Loading is safe: a model's external data must live inside its own folder,
is checked in the protobuf before onnxruntime opens the model, and is covered
by the sha256. Otherwise onnxruntime resolves `location` against the server's
working directory, and a crafted model returns any file there as outputs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploy.model import PathSource
from tasks.core.errors import DistilleryError


def _externalise(model: Path, folder: Path, location: str, blob: bytes | None = None) -> Path:
    """A copy of `model` in `folder` whose largest initializer reads its bytes from `location`."""
    proto = onnx.load(str(model))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    folder.mkdir(parents=True, exist_ok=True)
    if blob is not None:  # a genuine external file, next to the model
        (folder / location).write_bytes(blob)
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    tensor.external_data.add(key="length", value=str(length))  # as onnx.save_model writes it
    target = folder / "crafted.onnx"
    target.write_bytes(proto.SerializeToString())
    return target


def _largest_initializer(model: Path) -> bytes:
    proto = onnx.load(str(model))
    return max(proto.graph.initializer, key=lambda t: len(t.raw_data)).raw_data


@pytest.mark.parametrize("location", ["params.yaml", "../params.yaml", "/etc/passwd", "sub/../../params.yaml", ""])
def test_external_data_outside_the_models_folder_is_refused_naming_the_file(tmp_path, models, monkeypatch, location):
    (tmp_path / "params.yaml").write_text("secret: 1\n" * 1000)  # the server's working directory holds it
    monkeypatch.chdir(tmp_path)
    crafted = _externalise(models["image"], tmp_path / "models", location)
    with pytest.raises(DistilleryError) as err:
        PathSource(str(crafted), "distillery").load(threads=1)
    assert str(crafted) in str(err.value) and f"in {location!r}, which is not a file inside" in str(err.value)


def test_external_data_next_to_the_model_is_served_and_covered_by_the_sha256(tmp_path, models):
    blob = _largest_initializer(models["image"])
    crafted = _externalise(models["image"], tmp_path / "m", "weights.bin", blob)
    reference = PathSource(str(models["image"]), "distillery").load(threads=1)
    loaded = PathSource(str(crafted), "distillery").load(threads=1)
    x = np.random.default_rng(0).random((3, *reference.signature.input_shape), dtype=np.float32)
    for name, value in reference.run(x).items():
        np.testing.assert_array_equal(loaded.run(x)[name], value)
    assert loaded.sha256 == hashlib.sha256(crafted.read_bytes() + blob).hexdigest()
    # Other weights in the external file: another sha256, another version.
    (tmp_path / "m" / "weights.bin").write_bytes(bytes(len(blob)))
    changed = PathSource(str(crafted), "distillery").load(threads=1)
    assert changed.sha256 != loaded.sha256 and changed.version != loaded.version
    # A length past the end of the file is refused, not read short.
    (tmp_path / "m" / "weights.bin").write_bytes(blob[:-4])
    with pytest.raises(DistilleryError, match="past the end of 'weights.bin'"):
        PathSource(str(crafted), "distillery").load(threads=1)


def test_the_server_refuses_to_start_on_a_model_reading_its_working_directory(tmp_path, models):
    (tmp_path / "params.yaml").write_text("secret: 1\n" * 1000)
    crafted = _externalise(models["image"], tmp_path / "models", "params.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "deploy.server"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"DISTILLERY_SERVE_MODEL": str(crafted), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "'params.yaml', which is not a file inside" in out.stderr
    assert "Traceback" not in out.stderr
