"""What evaluate reports beyond accuracy (pipeline/evaluation/: scores.py, slices.py, card.py), on predictions
made up so that every number can be worked out by hand."""
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import card, scores, slices
from pipeline.evaluation.compare import wilson


def test_ece_is_guo_et_al_s_with_the_predicted_class_confidence():
    # confidences (probability of the predicted class): 0.9, 0.9, 0.6, 0.6 -> bins (13/15, 14/15] and (8/15, 9/15]
    labels = np.array([1, 0, 1, 1])
    p_male = np.array([0.9, 0.9, 0.6, 0.4])  # predicted 1, 1, 1, 0; right, wrong, right, wrong
    # bin of 0.9: accuracy 1/2, confidence 0.9; bin of 0.6: accuracy 1/2, confidence 0.6
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.6)
    assert scores.expected_calibration_error(labels, p_male, 0.5) == pytest.approx(expected)
    assert scores.expected_calibration_error([1, 0], [1.0, 0.0], 0.5) == 0.0  # certain and right
    perfect = np.repeat([0.8], 10)
    assert scores.expected_calibration_error([1] * 8 + [0] * 2, perfect, 0.5) == pytest.approx(0.0)


def test_summary_has_the_interval_auc_and_probability_scores():
    labels = np.array([0, 0, 1, 1, 1])
    p_male = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    s = scores.summary(labels, p_male, 0.5)
    assert (s["right"], s["n"], s["accuracy"]) == (3, 5, 0.6)
    assert s["ci95"] == pytest.approx(wilson(3, 5))
    assert s["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 (male, female) pairs ranked right
    assert s["brier"] == pytest.approx(np.mean((p_male - labels) ** 2))
    assert s["log_loss"] == pytest.approx(-np.mean(labels * np.log(p_male) + (1 - labels) * np.log(1 - p_male)))
    one_class = scores.summary(np.ones(3, int), np.array([0.7, 0.8, 0.2]), 0.5)
    assert one_class["roc_auc"] is None and one_class["average_precision"] is None and one_class["n"] == 3


def test_curves_are_tables_for_dvc_plots():
    labels = np.array([0, 0, 1, 1])
    c = scores.curves(labels, np.array([0.1, 0.3, 0.5, 0.8]))
    assert list(c["roc"].columns) == ["fpr", "tpr"] and c["roc"].iloc[-1].tolist() == [1.0, 1.0]
    assert list(c["pr"].columns) == ["recall", "precision"]
    cal = c["calibration"]
    assert list(cal.columns) == ["mean_p_male", "fraction_male", "images"] and cal["images"].sum() == 4
    assert cal["fraction_male"].tolist() == [0.0, 0.0, 1.0, 1.0]  # one image per non-empty bin here


def slice_data():
    """20 test images: glasses on the first 8 (5 right), hats on none, smiling on all."""
    labels = np.array([1, 0] * 10)
    right = np.array([1] * 5 + [0] * 3 + [1] * 10 + [0] * 2, dtype=bool)
    predicted = np.where(right, labels, 1 - labels)
    attributes = pd.DataFrame({"Eyeglasses": [1] * 8 + [-1] * 12, "Wearing_Hat": [-1] * 20, "Smiling": [1] * 20})
    return labels, predicted, attributes


def test_slices_give_each_side_of_each_attribute_its_n_and_interval():
    t = slices.table(*slice_data())
    glasses = t.set_index("slice").loc["Eyeglasses=present"]
    assert (glasses["n"], glasses["right"], glasses["accuracy"]) == (8, 5, 5 / 8)
    assert (glasses["low"], glasses["high"]) == pytest.approx(wilson(5, 8))
    no_glasses = t.set_index("slice").loc["Eyeglasses=absent"]
    assert (no_glasses["n"], no_glasses["right"]) == (12, 10)
    hat = t.set_index("slice").loc["Wearing_Hat=present"]  # no image on this side: n = 0, no crash
    assert hat["n"] == 0 and pd.isna(hat["accuracy"]) and (hat["low"], hat["high"]) == (0.0, 1.0)
    assert len(t) == 6 and list(t.columns) == list(slices.COLUMNS)


def test_the_worst_slices_and_the_largest_gap_count_only_slices_big_enough():
    t = slices.table(*slice_data())
    worst = slices.worst(t, min_slice=8)
    assert worst["slice"].tolist()[:2] == ["Eyeglasses=present", "Smiling=present"]
    # 15 of 20 right on both Smiling=present and Wearing_Hat=absent (every image): ties go by name
    assert slices.worst(t, min_slice=10)["slice"].tolist() == ["Smiling=present", "Wearing_Hat=absent",
                                                               "Eyeglasses=absent"]
    gap = slices.largest_gap(t, min_slice=8)
    assert gap["attribute"] == "Eyeglasses" and gap["gap"] == pytest.approx(10 / 12 - 5 / 8)
    assert slices.largest_gap(t, min_slice=9) is None  # the glasses side is too small then
    assert slices.describe(worst.iloc[0]).startswith("Eyeglasses=present 0.625 [")


def test_the_model_card_has_mitchell_et_al_s_sections_and_the_numbers():
    summary = scores.summary(np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.1]), 0.5)
    info = {"model": {"name": "m", "version": 3, "variant": "last_block-lr1e-4", "strategy": "last_block", "lr": 1e-4,
                      "weights": "imagenet", "image_size": 224, "epochs": 10, "batch_size": 64, "dtype": "float16",
                      "run_id": "abc"},
            "data": {"source": "celeba", "root": "/data/celeba", "method": "stratified", "group_by": "identity",
                     "limit": 30000,
                     "splits": {"train": {"images": 24000, "male": 10000, "digest": "d1"},
                                "val": {"images": 3000, "male": 1250, "digest": "d2"},
                                "test": {"images": 3000, "male": 1251, "digest": "d3"}}},
            "choice": {"candidates": [{"variant": "last_block-lr1e-4", "best_val_acc": 0.9807, "ci95": (0.975, 0.985)},
                                      {"variant": "last_block-lr1e-3", "best_val_acc": 0.977, "ci95": (0.971, 0.982)}],
                       "runner_up": "last_block-lr1e-3", "runner_up_p": 0.12, "alpha": 0.05,
                       "decision": "v3 promoted: v3 gets 2942 of 3000 validation images right, v2 2931"},
            "test": summary,
            "slices": {"worst": ["Eyeglasses=present 0.900 [0.80, 0.95] (n 60)"], "gap": "Eyeglasses: 0.9 vs 0.99",
                       "min_slice": 30, "skipped": None}}
    text = card.render(info)
    for section in ("Model details", "Intended use", "Factors", "Metrics", "Training and evaluation data",
                    "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"):
        assert f"## {section}" in text
    assert "# Model card: m v3" in text and "| val | 3000 | 1250 | `d2` |" in text
    assert "| last_block-lr1e-4 | 98.1 % | [97.5 %, 98.5 %] |" in text
    assert "exact McNemar p = 0.12" in text and "within noise" in text
    assert f"| accuracy | 75.0 % [{100 * summary['ci95'][0]:.1f} %, {100 * summary['ci95'][1]:.1f} %] |" in text
    assert "- Eyeglasses=present 0.900" in text and "binary" in text and "celebrity photos" in text.lower()
    assert "split by person, stratified (`split.method: stratified`, `split.group_by: identity`)" in text
    official = card.render({**info, "data": {**info["data"], "method": "official", "group_by": "none"}})
    assert "split as CelebA's own partition (`split.method: official`, list_eval_partition.txt)" in official
    skipped = card.render({**info, "slices": {"worst": [], "gap": None, "min_slice": 30, "skipped": "only Male"}})
    assert "Slices: none (only Male)." in skipped


def test_an_attribute_file_with_only_male_gives_no_slices_and_says_so(make_params, tmp_path):
    from pipeline.data import synthetic
    from pipeline.data.celeba import ATTR_FILE
    from pipeline.data.dataset import read_split
    from pipeline.stages.evaluate import short_metrics, slice_report
    from pipeline.stages.split import split

    root = tmp_path / "celeba"
    synthetic.generate(root, 40, 0.0, seed=0)
    lines = (root / ATTR_FILE).read_text().splitlines()
    col = lines[1].split().index("Male")
    rows = [f"{fields[0]} {fields[1 + col]}" for fields in (line.split() for line in lines[2:])]
    (root / ATTR_FILE).write_text("\n".join([lines[0], "Male", *rows]) + "\n")
    params = make_params({"data.source": "celeba", "data.root": str(root)}, folder=tmp_path / "project")
    split(params)
    frame = read_split(params.path("split.dir"), "test")
    said = []
    sliced = slice_report(params, frame, frame["label"].to_numpy(), said.append)
    assert sliced["skipped"] and sliced["table"] is None
    assert said == ["evaluate: no slices (the attribute file holds no attribute but Male)"]
    summary = scores.summary(frame["label"], np.where(frame["label"] == 1, 0.9, 0.2), 0.5)
    assert "worst_slices" not in short_metrics(summary, sliced) and short_metrics(summary, sliced)["accuracy"] == 1.0
