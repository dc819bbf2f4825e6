"""MLflow "model from code" entry point: the registry's model is defined here, not pickled."""
import mlflow

from pipeline.tracking.served_model import GenderClassifier

mlflow.models.set_model(GenderClassifier())
