"""Stage ``evaluate``: the selected model, once, on the test split.

Usage::

    python -m pipeline.evaluate [--params params.yaml]

Loads the model version that ``select`` registered (``models:/<name>/<version>`` from
``select.output``), predicts the test split, and writes ``evaluate.metrics`` (accuracy;
precision, recall, F1 per class and macro, from scikit-learn), ``evaluate.confusion_csv``
(``actual,predicted`` per test image, for DVC's confusion template) and
``evaluate.confusion_png``. Logs all of it to an MLflow run named ``evaluate``, a child of
the selected training run.
"""
from __future__ import annotations

import argparse
import json

import mlflow
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from pipeline import tracking
from pipeline.config import Params, PipelineError, atomic_write, load_params, run_main, write_json
from pipeline.data import CLASS_NAMES, FaceDataset, make_loader, read_split
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


def evaluate(params: Params) -> dict:
    best_path = params.path("select.output")
    if not best_path.is_file():
        raise PipelineError(f"{best_path}: not found (run the select stage first)")
    best = json.loads(best_path.read_text())
    tracking.setup(params)
    uri = f"models:/{best['registered_model']}/{best['version']}"
    classifier = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    classifier.net.to(resolve_device(str(params.get("train.device"))))
    test_ds = FaceDataset(params.dataset_root(), read_split(params.path("split.dir"), "test"),
                          classifier.image_size)
    loader = make_loader(test_ds, int(params.get("train.batch_size")), int(params.get("train.num_workers")),
                         shuffle=False)
    probs = torch.cat([classifier.predict_proba(x) for x, _ in loader]).numpy()
    labels = test_ds.labels.numpy().astype(int)
    preds = (probs > 0.5).astype(int)
    metrics = report(labels, preds)
    cm = confusion_matrix(labels, preds, labels=[0, 1])
    names = np.array(CLASS_NAMES)
    csv_path = params.path("evaluate.confusion_csv")
    atomic_write(csv_path, lambda t: pd.DataFrame({"actual": names[labels], "predicted": names[preds]})
                 .to_csv(t, index=False))
    with mlflow.start_run(run_name="evaluate"):
        mlflow.set_tags({tracking.TAG_STAGE: "evaluate", tracking.TAG_VARIANT: best["variant"],
                         "selected_run_id": best["run_id"], "mlflow.parentRunId": best["run_id"],
                         "model_uri": uri, tracking.TAG_COMMIT: tracking.git_commit(params.root)})
        mlflow.log_params({"variant": best["variant"], "registered_model": best["registered_model"],
                           "model_version": best["version"], "n_test": metrics["n_test"]})
        mlflow.log_metric("test_accuracy", metrics["accuracy"])
        for cls in (*CLASS_NAMES, "macro"):
            mlflow.log_metrics({f"test_{m}_{cls}": v for m, v in metrics[cls].items()})
        mlflow.log_dict(metrics, "classification_report.json")
        tracking.log_confusion(cm, CLASS_NAMES, "confusion_matrix/test",
                               f"test: {best['variant']} (acc {metrics['accuracy']:.3f})",
                               save_png=params.path("evaluate.confusion_png"))
        mlflow.log_artifact(str(csv_path), "confusion_matrix")
    write_json(params.path("evaluate.metrics"), metrics)
    return {**metrics, "variant": best["variant"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    m = evaluate(load_params(args.params))
    print(f"evaluate: {m['variant']} test accuracy {m['accuracy']:.4f} on {m['n_test']} images")


if __name__ == "__main__":
    run_main(main)
