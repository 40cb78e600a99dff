"""The registered pyfunc model, logged as code (MLflow's models-from-code):
MLflow runs this file to build the model, so nothing is pickled and loading
it unpickles nothing. The one side effect at import is the point of the file."""

from mlflow.models import set_model

from deploy.pyfunc import ChampionModel

set_model(ChampionModel())
