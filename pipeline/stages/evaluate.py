"""Stage ``evaluate``: the selected model, once, on the test split, with everything needed to trust it.

Usage::

    python -m pipeline evaluate [--params params.yaml]

Loads the model version that ``select`` registered (``models:/<name>/<version>`` from
``select.output``: this repro's pick, self-contained, as the registry serves it) and predicts the
test split through its pyfunc interface, as ``mlflow models serve`` does: the image files' bytes
in, the preprocessing inside the model. Then:

* accuracy with its 95 % Wilson interval, ROC AUC, average precision, log loss, Brier score and
  the 15-bin expected calibration error (:mod:`pipeline.evaluation.scores`);
* accuracy on each side of every attribute but ``Male`` (:mod:`pipeline.evaluation.slices`): the worst
  slices of at least ``evaluate.min_slice`` images and the largest gap between two sides;
* the model card (:mod:`pipeline.evaluation.card`), written as the version's description (and the
  registered model's, when the version is the champion).

Writes ``evaluate.metrics`` (the short summary ``dvc exp show`` compares), the confusion matrix
(``evaluate.confusion_csv``: ``actual,predicted`` per test image; ``evaluate.confusion_png``) and
the DVC plots' tables ``evaluate.roc``, ``evaluate.pr``, ``evaluate.calibration`` and
``evaluate.slices``. Logs all of it, the test predictions (``test_predictions.csv``), the
reliability diagram, ROC and PR curves, the slice table and figure, precision / recall / F1 per
class and ``model_card.md`` to an MLflow run ``evaluate``, a child of the selected training run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from pipeline.core.cli import PipelineError
from pipeline.core.config import Params, load_params
from pipeline.core.files import atomic_write, write_json
from pipeline.data.dataset import (
    CLASS_NAMES,
    SPLIT_SUMMARY,
    THRESHOLD,
    read_split,
    read_test_attributes,
)
from pipeline.evaluation import card, scores, slices
from pipeline.tracking import runs, train_log
from pipeline.tracking import served_model as serving

TEST_PREDICTIONS = "test_predictions.csv"


def report(labels: np.ndarray, preds: np.ndarray) -> dict:
    """Precision / recall / F1 per class and macro (scikit-learn)."""
    rep = classification_report(labels, preds, labels=[0, 1], target_names=list(CLASS_NAMES),
                                output_dict=True, zero_division=0)
    return {key.split()[0]: {m: float(rep[key][k]) for m, k in
                             (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"))}
            for key in (*CLASS_NAMES, "macro avg")}


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


def slice_report(params: Params, frame: pd.DataFrame, preds: np.ndarray, log) -> dict:
    """The slice table and its worst slices (``skipped``: why there are none)."""
    attributes = read_test_attributes(params.path("split.dir"), frame["image_id"])
    min_slice = params.get("evaluate.min_slice")
    if attributes.shape[1] == 0:
        why = "the attribute file holds no attribute but Male"
        log(f"evaluate: no slices ({why})")
        return {"table": None, "worst": [], "gap": None, "min_slice": min_slice, "skipped": why}
    table = slices.table(frame["label"], preds, attributes)
    worst = slices.worst(table, min_slice)
    gap = slices.largest_gap(table, min_slice)
    gap_text = (f"{gap['attribute']}: {gap['present']:.3f} present vs {gap['absent']:.3f} absent "
                f"(gap {gap['gap']:.3f})" if gap else None)
    described = [slices.describe(row) for _, row in worst.iterrows()]
    log(f"evaluate: worst slices of at least {min_slice} test images: " + ("; ".join(described) or "none that large"))
    if gap_text:
        log(f"evaluate: largest gap between the two sides of one attribute: {gap_text}")
    return {"table": table, "worst": described, "gap": gap_text, "min_slice": min_slice, "skipped": None}


def short_metrics(summary: dict, sliced: dict) -> dict:
    """``evaluate.metrics``: what ``dvc exp show`` compares (the rest is in MLflow)."""
    out = {"accuracy": summary["accuracy"], "n_test": summary["n"],
           "ci95": {"low": round(summary["ci95"][0], 4), "high": round(summary["ci95"][1], 4)},
           **{k: None if summary[k] is None else round(summary[k], 4)
              for k in ("roc_auc", "average_precision", "log_loss", "brier", "ece")}}
    if not sliced["skipped"]:
        out["worst_slices"] = {str(i): text for i, text in enumerate(sliced["worst"], start=1)}
        out["largest_gap"] = sliced["gap"]
    return out


def card_info(params: Params, best: dict, summary: dict, sliced: dict) -> dict:
    """What :func:`pipeline.evaluation.card.render` takes, from params, the split and select's output."""
    split_dir = params.path("split.dir")
    summary_file = split_dir / SPLIT_SUMMARY
    split = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    spec = params.variant(best["variant"])
    pick, decision = best.get("pick") or {}, best.get("decision_text", "")
    return {
        "model": {"name": best["registered_model"], "version": best["version"], "variant": best["variant"],
                  "strategy": spec["strategy"], "lr": spec["lr"], "weights": params.get("model.weights"),
                  "image_size": params.get("data.image_size"), "epochs": params.get("train.epochs"),
                  "batch_size": params.get("train.batch_size"), "dtype": params.get("select.champion_dtype"),
                  "run_id": best["run_id"]},
        "data": {"source": params.get("data.source"), "root": str(params.path("data.root")),
                 "method": params.get("split.method"), "group_by": params.get("split.group_by"),
                 "limit": params.get("data.limit"),
                 "splits": {name: {"images": split.get(name, {}).get("images"), "male": split.get(name, {}).get("male"),
                                   "digest": runs.split_digest(read_split(split_dir, name))}
                            for name in ("train", "val", "test")}},
        "choice": {"candidates": best.get("candidates", []), "runner_up": pick.get("runner_up"),
                   "runner_up_p": pick.get("p_value"), "alpha": params.get("select.alpha"), "decision": decision},
        "test": summary, "slices": sliced}


def log_run(params: Params, best: dict, uri: str, frame: pd.DataFrame, probs: np.ndarray, summary: dict,
            per_class: dict, sliced: dict, model_card: str) -> None:
    """The MLflow run ``evaluate``: metrics, predictions, figures, the slice table, the card."""
    labels = frame["label"].to_numpy(dtype=int)
    preds = (probs > THRESHOLD).astype(int)
    title = f"test: {best['variant']} (acc {summary['accuracy']:.3f})"
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=runs.run_name("evaluate")):
        mlflow.set_tags({**runs.run_tags("evaluate", params.root), runs.TAG_VARIANT: best["variant"],
                         "selected_run_id": best["run_id"], "mlflow.parentRunId": best["run_id"], "model_uri": uri})
        mlflow.log_params({"variant": best["variant"], "registered_model": best["registered_model"],
                           "model_version": best["version"], "n_test": summary["n"],
                           "min_slice": sliced["min_slice"]})
        runs.log_split_input(frame, "test", params.get("data.source"), params.path("data.root"), "test")
        mlflow.log_metrics({"test_accuracy": summary["accuracy"], "test_accuracy_low": summary["ci95"][0],
                            "test_accuracy_high": summary["ci95"][1],
                            **{f"test_{k}": summary[k] for k in ("roc_auc", "average_precision", "log_loss",
                                                                 "brier", "ece") if summary[k] is not None}})
        for cls, values in per_class.items():
            mlflow.log_metrics({f"test_{m}_{cls}": v for m, v in values.items()})
        mlflow.log_dict({"accuracy": summary["accuracy"], "n_test": summary["n"], **per_class},
                        "classification_report.json")
        runs.log_predictions(frame["image_id"], labels, probs, TEST_PREDICTIONS)
        confusion = pd.DataFrame({"actual": np.array(CLASS_NAMES)[labels], "predicted": np.array(CLASS_NAMES)[preds]})
        tmp_csv = Path(tmp) / "test.csv"
        confusion.to_csv(tmp_csv, index=False)
        mlflow.log_artifact(str(tmp_csv), "confusion_matrix")
        train_log.log_confusion(confusion_matrix(labels, preds, labels=[0, 1]), CLASS_NAMES, "confusion_matrix/test",
                               title, save_png=params.path("evaluate.confusion_png"))
        runs.log_figures(scores.figures(labels, probs, title), "curves")
        if sliced["table"] is not None:
            mlflow.log_text(sliced["table"].to_csv(index=False, float_format="%.4f"), "slices/slices.csv")
            runs.log_figures({"slices": slices.figure(sliced["table"], summary["accuracy"], title)}, "slices")
        mlflow.log_text(model_card, "model_card.md")
    atomic_write(params.path("evaluate.confusion_csv"), lambda t: confusion.to_csv(t, index=False))


def register_card(best: dict, model_card: str) -> None:
    """The card as the version's description, and the registered model's when it is the champion."""
    client = mlflow.tracking.MlflowClient()
    client.update_model_version(best["registered_model"], str(best["version"]), description=model_card)
    if best.get("champion") == best["version"]:
        client.update_registered_model(best["registered_model"], description=model_card)


def evaluate(params: Params, log=print) -> dict:
    """Predict the test split and report on it; the local outputs are written after the MLflow run
    is logged, so a failure leaves the previous ones as they were."""
    best = read_selection(params.path("select.output"))
    frame = read_split(params.path("split.dir"), "test")
    runs.setup(params.mlflow_config())
    uri = f"models:/{best['registered_model']}/{best['version']}"
    probs = serving.score_split(params, uri, frame)
    labels = frame["label"].to_numpy(dtype=int)
    preds = (probs > THRESHOLD).astype(int)
    summary = scores.summary(labels, probs, THRESHOLD)
    log(f"evaluate: {best['variant']} v{best['version']}: test accuracy {summary['accuracy']:.4f} 95 % CI "
        f"[{summary['ci95'][0]:.3f}, {summary['ci95'][1]:.3f}] on {summary['n']} images; ROC AUC "
        f"{scores.fmt(summary['roc_auc'])}, ECE {summary['ece']:.3f}, Brier {summary['brier']:.3f}")
    sliced = slice_report(params, frame, preds, log)
    model_card = card.render(card_info(params, best, summary, sliced))
    log_run(params, best, uri, frame, probs, summary, report(labels, preds), sliced, model_card)
    register_card(best, model_card)
    for name, table in scores.curves(labels, probs).items():
        atomic_write(params.path(f"evaluate.{name}"), lambda t, table=table: table.to_csv(t, index=False,
                                                                                      float_format="%.6f"))
    table = sliced["table"] if sliced["table"] is not None else pd.DataFrame(columns=list(slices.COLUMNS))
    atomic_write(params.path("evaluate.slices"), lambda t: table.to_csv(t, index=False, float_format="%.4f"))
    write_json(params.path("evaluate.metrics"), short_metrics(summary, sliced))
    return {**summary, "n_test": summary["n"], "variant": best["variant"], "slices": sliced}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    evaluate(load_params(args.params))
