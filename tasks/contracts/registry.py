"""The MLflow registry as the pipeline and the server share it: the alias that
production follows, and the tag that proves a downloaded file is the one
registered."""

CHAMPION_ALIAS = "champion"  # select moves it last, only after every gate passed; the server follows it
SHA256_TAG = "sha256"  # on every registered version: the sha256 of its ONNX file
DVC_TAG_PREFIX = "dvc/"  # + a path: dvc.lock's md5 of that input when the version was trained (tasks.trace)
LINEAGE_LOCK = "lineage/dvc.lock"  # the select run's artifact: dvc.lock as it stood when the version was registered
ONNX_ARTIFACT = "onnx"  # the registered pyfunc model's artifact key for the ONNX file (deploy/pyfunc.py)


def onnx_files(folder) -> list:
    """The ONNX file(s) of a downloaded registered model: beside MLmodel (the
    older onnx flavor) or among its pyfunc artifacts (artifacts/)."""
    from pathlib import Path

    folder = Path(folder)
    return sorted(folder.glob("*.onnx")) + sorted((folder / "artifacts").glob("*.onnx"))
