"""How sure a comparison of classifiers on the same images is (SciPy's ``binomtest`` for both):

* :func:`wilson`: the 95 % Wilson score interval of an accuracy, ``k`` right of ``n``;
* :func:`mcnemar`: the exact McNemar test of two classifiers scored on the same images. Only
  the images where they disagree count: ``only_a`` that ``a`` gets right and ``b`` wrong, and
  ``only_b`` the reverse; under "equally good" each such image is a fair coin, so the two-sided
  p-value is a binomial test of ``only_a`` in ``only_a + only_b`` at 1/2 (1 when they never
  disagree).

No torch, no MLflow: ``select`` and ``evaluate`` use them on prediction files.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.cli import PipelineError

LEVEL = 0.95


def wilson(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """``(low, high)`` of the Wilson score interval of ``correct / n``; ``(0, 1)`` for ``n = 0``."""
    from scipy.stats import binomtest

    if n == 0:
        return 0.0, 1.0
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict:
    """The exact McNemar test of two classifiers' per-image correctness (same images, same order):
    ``{"only_a", "only_b", "p_value"}``."""
    from scipy.stats import binomtest

    a_right, b_right = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    if a_right.shape != b_right.shape:
        raise ValueError(f"scored on {a_right.shape} and {b_right.shape} images: not the same images")
    only_a, only_b = int((a_right & ~b_right).sum()), int((b_right & ~a_right).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def correct(predictions: pd.DataFrame, threshold: float) -> pd.Series:
    """Per image (indexed by ``image_id``): whether ``p_male > threshold`` is its label."""
    return pd.Series(((predictions["p_male"] > threshold).astype(int) == predictions["label"]).to_numpy(),
                     index=predictions["image_id"].to_numpy())


def aligned(a: pd.Series, b: pd.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Two per-image correctness series on the same images, in one order; an error naming ``what``
    when they were scored on different images."""
    if set(a.index) != set(b.index) or len(a) != len(b):
        raise PipelineError(f"{what}: not scored on the same images ({len(a)} and {len(b)})")
    return a.to_numpy(dtype=bool), b.loc[a.index].to_numpy(dtype=bool)
