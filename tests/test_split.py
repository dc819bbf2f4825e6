"""Seeded stratified 80/10/10 split."""
import pandas as pd
import pytest

from pipeline.config import PipelineError
from pipeline.split import split, stratified_split

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def frame(n=1000, male_share=0.42):
    n_male = int(n * male_share)
    return pd.DataFrame({"image_id": [f"{i:06d}.jpg" for i in range(1, n + 1)],
                         "label": [1] * n_male + [0] * (n - n_male)})


def test_sizes_stratification_and_disjointness():
    parts = stratified_split(frame(), FRACTIONS, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 800, "val": 100, "test": 100}
    for part in parts.values():
        assert abs(part["label"].sum() - 0.42 * len(part)) <= 1  # class share kept within one image
    ids = [set(p["image_id"]) for p in parts.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(frame()["image_id"])


def test_seeded():
    a = stratified_split(frame(), FRACTIONS, seed=1)
    b = stratified_split(frame(), FRACTIONS, seed=1)
    c = stratified_split(frame(), FRACTIONS, seed=2)
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["test"].equals(c["test"])


def test_too_few_of_a_class():
    with pytest.raises(PipelineError, match="only 2 images of class male"):
        stratified_split(frame(100, 0.02), FRACTIONS, seed=0)


def test_split_stage_on_the_generated_default(make_params):
    params = make_params({"data.synthetic.images": 200})
    summary = split(params)
    out = params.path("split.dir")
    assert sorted(p.name for p in out.iterdir()) == ["split.json", "synthetic", "test.csv", "train.csv", "val.csv"]
    train = pd.read_csv(out / "train.csv")
    assert list(train.columns) == ["image_id", "label"] and len(train) == 160
    assert summary["train"]["male"] + summary["val"]["male"] + summary["test"]["male"] == summary["synthetic"]["images"] - (
        summary["train"]["female"] + summary["val"]["female"] + summary["test"]["female"])
    first = (out / "test.csv").read_text()
    split(params)  # a rerun reproduces the same files
    assert (out / "test.csv").read_text() == first
