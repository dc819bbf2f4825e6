"""What one model's predictions on a split say: accuracy with its interval, how well P(male) ranks
and is calibrated, and the curves behind those numbers.

* accuracy at the decision threshold, with its 95 % Wilson interval (:func:`pipeline.evaluation.compare.wilson`);
* ROC AUC and average precision (how P(male) ranks the images), log loss and Brier score (how
  good the probabilities are), all scikit-learn's;
* the expected calibration error of Guo et al. 2017 ("On Calibration of Modern Neural
  Networks"): the confidence of a prediction is the probability of the class it predicts,
  binned into 15 equal-width bins over [0, 1]; ECE is the bins' mean |accuracy - confidence|,
  weighted by their share of the images;
* the ROC and precision-recall curves and the reliability diagram's points (scikit-learn's
  ``calibration_curve``: per bin of P(male), the mean P(male) against the fraction of men), as
  tables for ``dvc plots`` and as figures for MLflow.

No torch, no MLflow.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.compare import wilson

ECE_BINS = 15


def expected_calibration_error(labels, p_male, threshold: float, bins: int = ECE_BINS) -> float:
    """Guo et al.'s ECE with ``bins`` equal-width bins of the predicted class's probability."""
    labels, p_male = np.asarray(labels, dtype=int), np.asarray(p_male, dtype=float)
    predicted = (p_male > threshold).astype(int)
    confidence = np.where(predicted == 1, p_male, 1.0 - p_male)
    correct = predicted == labels
    # bin m holds confidences in ((m - 1) / bins, m / bins]; a confidence of 0 goes to the first
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for m in range(bins):
        in_bin = which == m
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def fmt(x, digits: int = 3) -> str:
    """A number as the log shows it, or ``n/a`` (AUC of a split with one class)."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def _both_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def summary(labels, p_male, threshold: float) -> dict:
    """The numbers of one split: ``accuracy``, ``ci95`` (low, high), ``n``, ``right``,
    ``roc_auc``, ``average_precision`` (None when the split holds one class only), ``log_loss``,
    ``brier``, ``ece``."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    labels, p_male = np.asarray(labels, dtype=int), np.asarray(p_male, dtype=float)
    right = int(((p_male > threshold).astype(int) == labels).sum())
    n = len(labels)
    both = _both_classes(labels)
    return {"accuracy": right / n if n else float("nan"), "ci95": wilson(right, n), "n": n, "right": right,
            "roc_auc": float(roc_auc_score(labels, p_male)) if both else None,
            "average_precision": float(average_precision_score(labels, p_male)) if both else None,
            "log_loss": float(log_loss(labels, np.clip(p_male, 1e-7, 1 - 1e-7), labels=[0, 1])),
            "brier": float(brier_score_loss(labels, p_male)),
            "ece": expected_calibration_error(labels, p_male, threshold)}


def curves(labels, p_male) -> dict[str, pd.DataFrame]:
    """``roc`` (fpr, tpr), ``pr`` (recall, precision) and ``calibration`` (mean_p_male,
    fraction_male, images per bin of 15 over P(male)); empty curves when a class is missing."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels, p_male = np.asarray(labels, dtype=int), np.asarray(p_male, dtype=float)
    out = {"roc": pd.DataFrame(columns=["fpr", "tpr"]), "pr": pd.DataFrame(columns=["recall", "precision"])}
    if _both_classes(labels):
        fpr, tpr, _ = roc_curve(labels, p_male)
        precision, recall, _ = precision_recall_curve(labels, p_male)
        out["roc"] = pd.DataFrame({"fpr": fpr, "tpr": tpr})
        out["pr"] = pd.DataFrame({"recall": recall, "precision": precision})
    fraction, mean = calibration_curve(labels, p_male, n_bins=ECE_BINS, strategy="uniform")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p_male), minlength=ECE_BINS)  # calibration_curve's bins
    out["calibration"] = pd.DataFrame({"mean_p_male": mean, "fraction_male": fraction,
                                       "images": counts[counts > 0]})
    return out


def figures(labels, p_male, title: str) -> dict:
    """Matplotlib figures (scikit-learn's displays): ``reliability`` (``CalibrationDisplay``, 15
    uniform bins), ``roc`` and ``pr``; the last two only when both classes are present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    labels, p_male = np.asarray(labels, dtype=int), np.asarray(p_male, dtype=float)
    out = {}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    CalibrationDisplay.from_predictions(labels, p_male, n_bins=ECE_BINS, strategy="uniform", ax=ax, name="model")
    ax.set_xlabel("mean predicted P(male)")
    ax.set_ylabel("fraction of men")
    ax.set_title(f"reliability: {title}")
    out["reliability"] = fig
    if _both_classes(labels):
        for name, display in (("roc", RocCurveDisplay), ("pr", PrecisionRecallDisplay)):
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            display.from_predictions(labels, p_male, ax=ax, name="model")
            ax.set_title(f"{name.upper()}: {title}")
            out[name] = fig
    for fig in out.values():
        fig.tight_layout()
    return out
