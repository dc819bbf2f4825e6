"""Accuracy by slice: for every attribute of the attribute file other than ``Male`` (Eyeglasses,
Wearing_Hat, Heavy_Makeup, Young, Pale_Skin ...), the test images where it is present and where
it is absent, each with its n and a 95 % Wilson interval.

A face classifier's known failures are slices (Buolamwini and Gebru 2018, "Gender Shades"), so
evaluate reports them on every run: Fairlearn's :class:`~fairlearn.metrics.MetricFrame` does the
grouping (the field's library for disaggregated metrics), :func:`pipeline.evaluation.compare.wilson` the
intervals. A side with no image is a row with n = 0 (no accuracy, interval 0 to 1). Only slices of
at least ``evaluate.min_slice`` images are ranked: the worst by error, and the attribute whose
two sides differ most.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.compare import wilson

SIDES = ("present", "absent")  # attribute value 1, -1
TOP = 5
COLUMNS = ("slice", "attribute", "side", "n", "right", "accuracy", "low", "high")


def table(labels, predicted, attributes: pd.DataFrame) -> pd.DataFrame:
    """One row per attribute and side (``COLUMNS``); ``attributes``: one column per attribute,
    values 1 / -1, rows in the order of ``labels``."""
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    labels, predicted = np.asarray(labels, dtype=int), np.asarray(predicted, dtype=int)
    rows = []
    for attribute in attributes.columns:
        side = np.where(attributes[attribute].to_numpy() == 1, SIDES[0], SIDES[1])
        frame = MetricFrame(metrics={"accuracy": accuracy_score, "n": count}, y_true=labels, y_pred=predicted,
                            sensitive_features=pd.Series(side, name=attribute)).by_group
        for name in SIDES:
            n = int(frame.loc[name, "n"]) if name in frame.index else 0
            accuracy = float(frame.loc[name, "accuracy"]) if n else None
            right = round(accuracy * n) if n else 0
            low, high = wilson(right, n)
            rows.append({"slice": f"{attribute}={name}", "attribute": attribute, "side": name, "n": n,
                         "right": right, "accuracy": accuracy, "low": low, "high": high})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def worst(slices: pd.DataFrame, min_slice: int, top: int = TOP) -> pd.DataFrame:
    """The ``top`` slices of at least ``min_slice`` images with the lowest accuracy (ties: the
    larger slice, then the name)."""
    ranked = slices[slices["n"] >= min_slice].sort_values(["accuracy", "n", "slice"], ascending=[True, False, True])
    return ranked.head(top).reset_index(drop=True)


def largest_gap(slices: pd.DataFrame, min_slice: int) -> dict | None:
    """The attribute whose two sides (each of at least ``min_slice`` images) differ most in
    accuracy: ``{"attribute", "present", "absent", "gap"}``, or None when no attribute has both."""
    best = None
    for attribute, rows in slices[slices["n"] >= min_slice].groupby("attribute", sort=True):
        if len(rows) < 2:
            continue
        acc = dict(zip(rows["side"], rows["accuracy"]))
        gap = abs(acc["present"] - acc["absent"])
        if best is None or gap > best["gap"]:
            best = {"attribute": attribute, "present": acc["present"], "absent": acc["absent"], "gap": gap}
    return best


def describe(row) -> str:
    """``Eyeglasses=present 0.882 [0.73, 0.95] (n 34)``."""
    return f"{row['slice']} {row['accuracy']:.3f} [{row['low']:.3f}, {row['high']:.3f}] (n {row['n']})"


def figure(slices: pd.DataFrame, overall: float, title: str):
    """Accuracy per slice with its interval (slices with images), the overall accuracy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = slices[slices["n"] > 0].sort_values("accuracy", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.22 * max(len(shown), 1)))
    y = np.arange(len(shown))
    acc = shown["accuracy"].to_numpy(dtype=float)
    ax.errorbar(acc, y, xerr=[acc - shown["low"].to_numpy(dtype=float), shown["high"].to_numpy(dtype=float) - acc],
                fmt="o", ms=3, capsize=2)
    ax.axvline(overall, color="grey", ls="--", lw=1, label=f"all test images ({overall:.3f})")
    ax.set_yticks(y, [f"{s} (n {n})" for s, n in zip(shown["slice"], shown["n"])], fontsize=7)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("accuracy (95 % Wilson interval)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
