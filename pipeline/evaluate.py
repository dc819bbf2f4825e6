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

if __name__ == "__main__":  # before the heavy imports below: a bad params.yaml or an unreachable
    from pipeline.store import preflight  # tracking server fails in well under a second

    preflight()

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from pipeline import tracking
from pipeline.config import Params, PipelineError, atomic_write, load_params, run_main, write_json
from pipeline.data import CLASS_NAMES, FaceDataset, make_loader, read_split
from pipeline.engine import resolve_device
from pipeline.resident import resolve_workers


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
    tracking.setup(params)
    uri = f"models:/{best['registered_model']}/{best['version']}"
    classifier = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    classifier.net.to(resolve_device(str(params.get("train.device"))))
    test_ds = FaceDataset(root, test_frame, classifier.image_size)
    loader = make_loader(test_ds, int(params.get("train.batch_size")), resolve_workers(params.get("train.num_workers")), shuffle=False)
    probs = torch.cat([classifier.predict_proba(x) for x, _ in loader]).numpy()
    labels = test_ds.labels.numpy().astype(int)
    preds = (probs > 0.5).astype(int)
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
