"""The MLflow registry as the pipeline and the server share it: the alias that
production follows, and the tag that proves a downloaded file is the one
registered."""

CHAMPION_ALIAS = "champion"  # select moves it last, only after every gate passed; the server follows it
SHA256_TAG = "sha256"  # on every registered version: the sha256 of its ONNX file
