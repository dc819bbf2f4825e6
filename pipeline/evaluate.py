"""Stage ``evaluate``: the selected model, once, on the test split.

Usage::

    python -m pipeline evaluate [--params params.yaml]

Loads the model version that ``select`` registered (``models:/<name>/<version>`` from
``select.output``: the self-contained champion the registry serves) and predicts the test split
through its pyfunc interface, as ``mlflow models serve`` does: the image files' bytes in, the
preprocessing inside the model. Writes ``evaluate.metrics`` (accuracy and the number of test
images: what ``dvc exp show`` compares), ``evaluate.confusion_csv``
(``actual,predicted`` per test image, for DVC's confusion template) and
``evaluate.confusion_png``. Logs all of it, and precision, recall and F1 per class and macro
(scikit-learn), to an MLflow run named ``evaluate``, a child of the selected training run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from pipeline import serving, tracking
from pipeline.cli import PipelineError, run_main
from pipeline.config import Params, load_params
from pipeline.files import atomic_write, write_json
from pipeline.data import CLASS_NAMES, FaceDataset, THRESHOLD, read_split
from pipeline.engine import resolve_device


def report(labels: np.ndarray, preds: np.ndarray) -> dict:
    """Accuracy plus precision / recall / F1 per class and macro (scikit-learn)."""
    rep = classification_report(labels, preds, labels=[0, 1], target_names=list(CLASS_NAMES),
                                output_dict=True, zero_division=0)
    out = {"accuracy": float(accuracy_score(labels, preds)), "n_test": int(len(labels))}
    for key in (*CLASS_NAMES, "macro avg"):
        out[key.split()[0]] = {m: float(rep[key][k]) for m, k in
                               (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"))}
    return out


def read_selection(path) -> dict:
    """``select.output``: which registered model version to evaluate."""
    if not path.is_file():
        raise PipelineError(f"{path}: not found (run the select stage first)")
    try:
        best = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc}; run the select stage again)") from None
    keys = ("registered_model", "version", "variant", "run_id")
    missing = [k for k in keys if not isinstance(best, dict) or k not in best]
    if missing:
        raise PipelineError(f"{path}: lacks '{missing[0]}' (run the select stage again)")
    return best


def evaluate(params: Params) -> dict:
    """Predict the test split; every output is written after the MLflow run is logged, so a
    failure leaves the previous outputs as they were."""
    best = read_selection(params.path("select.output"))
    test_frame = read_split(params.path("split.dir"), "test")
    root = params.dataset_root()
    tracking.setup(params.mlflow_config())
    uri = f"models:/{best['registered_model']}/{best['version']}"
    model = mlflow.pyfunc.load_model(uri)
    model.unwrap_python_model().net.to(resolve_device(params.get("train.device")))
    test_ds = FaceDataset(root, test_frame, model.unwrap_python_model().image_size)  # checks the files
    paths = [test_ds.folder / image_id for image_id in test_ds.ids]
    batch = params.get("train.batch_size")
    probs = np.concatenate([
        model.predict(pd.DataFrame({serving.INPUT_COLUMN: [p.read_bytes() for p in paths[i:i + batch]]}))
        for i in range(0, len(paths), batch)])
    labels = test_ds.labels.numpy().astype(int)
    preds = (probs > THRESHOLD).astype(int)
    metrics = report(labels, preds)
    cm = confusion_matrix(labels, preds, labels=[0, 1])
    names = np.array(CLASS_NAMES)
    confusion = pd.DataFrame({"actual": names[labels], "predicted": names[preds]})
    csv_path = params.path("evaluate.confusion_csv")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="evaluate"):
        mlflow.set_tags({tracking.TAG_STAGE: "evaluate", tracking.TAG_VARIANT: best["variant"],
                         "selected_run_id": best["run_id"], "mlflow.parentRunId": best["run_id"],
                         "model_uri": uri, tracking.TAG_COMMIT: tracking.git_commit(params.root)})
        mlflow.log_params({"variant": best["variant"], "registered_model": best["registered_model"],
                           "model_version": best["version"], "n_test": metrics["n_test"]})
        tracking.log_split_input(test_frame, "test", params.get("data.source"), root, "test")
        mlflow.log_metric("test_accuracy", metrics["accuracy"])
        for cls in (*CLASS_NAMES, "macro"):
            mlflow.log_metrics({f"test_{m}_{cls}": v for m, v in metrics[cls].items()})
        mlflow.log_dict(metrics, "classification_report.json")
        tmp_csv = Path(tmp) / csv_path.name
        confusion.to_csv(tmp_csv, index=False)
        mlflow.log_artifact(str(tmp_csv), "confusion_matrix")
        tracking.log_confusion(cm, CLASS_NAMES, "confusion_matrix/test",
                               f"test: {best['variant']} (acc {metrics['accuracy']:.3f})",
                               save_png=params.path("evaluate.confusion_png"))
    atomic_write(csv_path, lambda t: confusion.to_csv(t, index=False))
    write_json(params.path("evaluate.metrics"), {k: metrics[k] for k in ("accuracy", "n_test")})  # the rest: MLflow
    return {**metrics, "variant": best["variant"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    m = evaluate(load_params(args.params))
    print(f"evaluate: {m['variant']} test accuracy {m['accuracy']:.4f} on {m['n_test']} images")


if __name__ == "__main__":
    run_main(main)
