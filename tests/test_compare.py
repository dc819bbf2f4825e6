"""Intervals and paired tests (pipeline/evaluation/compare.py), checked against their textbook formulas."""
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.core.cli import PipelineError
from pipeline.evaluation.compare import aligned, correct, mcnemar, wilson


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(143, 150), (150, 150), (0, 20), (11, 20), (2930, 3000)])
def test_wilson_is_the_score_interval(k, n):
    low, high = wilson(k, n)
    assert (low, high) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)
    assert 0 <= low <= k / n <= high <= 1


def test_wilson_of_the_default_test_split_is_about_four_points():
    low, high = wilson(141, 150)  # 0.94 on 150 test images
    assert high - low == pytest.approx(0.077, abs=0.002)


def test_mcnemar_counts_only_the_disagreements_and_is_exact():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 1], dtype=bool)
    b = np.array([1, 1, 0, 0, 0, 1, 0, 1], dtype=bool)
    out = mcnemar(a, b)
    assert (out["only_a"], out["only_b"]) == (3, 1)
    # two-sided exact binomial: P(X <= 1) + P(X >= 3) for X ~ Bin(4, 1/2) = (1 + 4 + 4 + 1) / 16
    assert out["p_value"] == pytest.approx(10 / 16)
    assert mcnemar(a, a)["p_value"] == 1.0  # never disagree: nothing to tell them apart
    five_to_none = mcnemar(np.ones(5, bool), np.zeros(5, bool))
    assert five_to_none["p_value"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError):
        mcnemar(a, b[:4])


def test_correctness_is_read_at_the_threshold_and_aligned_by_image():
    preds = pd.DataFrame({"image_id": ["b.jpg", "a.jpg", "c.jpg"], "label": [1, 0, 1],
                          "p_male": [0.50000006, 0.2, 0.5]})
    right = correct(preds, 0.5)
    assert right.to_dict() == {"b.jpg": True, "a.jpg": True, "c.jpg": False}  # 0.5 is not above 0.5
    other = right.loc[["c.jpg", "a.jpg", "b.jpg"]]
    a, b = aligned(right, other, "x")
    assert a.tolist() == b.tolist()
    with pytest.raises(PipelineError, match="not scored on the same images"):
        aligned(right, right.iloc[:2], "champion v1")
