"""The registered champion as an MLflow pyfunc model: `mlflow models serve -m
models:/distillery@champion` and `mlflow.pyfunc.load_model(...).predict`
answer what `POST /predict` answers, for the rows it accepts.

The ONNX file is the model's one artifact; this wrapper runs it through the
server's own checks (deploy.model.build_model) and its own request parsing
and answers (deploy.protocol), so a row means the same thing everywhere and a
bad one is refused with the same message, naming the row and the column. The
signature (tasks/register.py, signature_and_example) says what goes in:
- images: float32 rows of the flat pixel count (MLflow's scoring server casts
  a JSON body's integers to it; the serving docs' pixel row works as it is);
- tables: the model's columns by name, any type, none required (null is a
  gap), so a DataFrame of ints, floats and strings goes through to the same
  encoder training used, which checks each value.
It is logged as code (deploy/pyfunc_model.py), not pickled; the deploy/ server
does not load it at all: it reads the ONNX artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from tasks.contracts.registry import ONNX_ARTIFACT


def _rows(model_input: Any) -> list:
    """What MLflow hands predict (a DataFrame, an array, a list) as /predict's rows."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        frame = model_input.astype(object).where(model_input.notna(), None)
        return frame.to_dict("records")
    if isinstance(model_input, dict):  # a single tensor named by MLflow's tensor parsing
        model_input = next(iter(model_input.values())) if len(model_input) == 1 else [model_input]
    if isinstance(model_input, np.ndarray):
        return model_input.tolist()
    return list(model_input)


class ChampionModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from deploy.model import build_model

        path = Path(context.artifacts[ONNX_ARTIFACT])
        self.model = build_model(
            path.read_bytes(), name="champion", version=None, source=str(path), threads=1, folder=path.parent
        )

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        import orjson
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from deploy.protocol import NUMPY, RequestError, parse_predict, predictions

        rows = _rows(model_input)
        try:
            request = parse_predict({"rows": rows}, self.model, max_rows=max(len(rows), 1))
        except RequestError as err:  # the scoring server answers 400 with /predict's message
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from err
        answer = self.model.run(request.x)[self.model.answer]
        # Plain floats and strings, as /predict's JSON: MLflow's encoder knows no numpy scalars.
        return orjson.loads(orjson.dumps(predictions(self.model, answer, request.unseen), option=NUMPY))
