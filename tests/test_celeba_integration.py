"""split -> one variant -> select -> evaluate on real CelebA images (../shared/celeba-sample)."""
import json

import pandas as pd
import pytest

from helpers.config import CELEBA_SAMPLE
from pipeline.celeba import ATTR_FILE, IDENTITY_FILE, IMAGE_DIR
from pipeline.evaluate import evaluate
from pipeline.select import select
from pipeline.split import split
from pipeline.train import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs(CELEBA_SAMPLE.is_dir(), reason=f"real CelebA sample not found at {CELEBA_SAMPLE}"),
]
N = 300
VARIANT = "last_block-lr1e-4"


@pytest.fixture
def celeba_subset(tmp_path):
    """The first N images of the sample, official layout, images linked (never copied)."""
    root = tmp_path / "celeba"
    root.mkdir()
    lines = (CELEBA_SAMPLE / ATTR_FILE).read_text().splitlines()
    (root / ATTR_FILE).write_text("\n".join([str(N), lines[1], *lines[2:2 + N]]) + "\n")
    ids = (CELEBA_SAMPLE / IDENTITY_FILE).read_text().splitlines()[:N]
    (root / IDENTITY_FILE).write_text("\n".join(ids) + "\n")
    (root / IMAGE_DIR).symlink_to(CELEBA_SAMPLE / IMAGE_DIR)
    return root, lines[1].split(), lines[2:2 + N]


def test_real_celeba_end_to_end(make_params, celeba_subset, tmp_path):
    root, header, rows = celeba_subset
    params = make_params({"data.source": "celeba", "data.root": str(root), "data.image_size": 64,
                          "train.variants": {VARIANT: {"strategy": "last_block", "lr": 0.0001}}},
                         folder=tmp_path / "project")
    males = sum(r.split()[1 + header.index("Male")] == "1" for r in rows)
    summary = split(params)
    assert summary["source"] == "celeba" and "synthetic" not in summary
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == N
    assert sum(summary[s]["male"] for s in ("train", "val", "test")) == males
    assert not params.path("data.synthetic.dir").exists()  # nothing generated
    trained = train(params, VARIANT)
    assert 0.0 <= trained["best_val_acc"] <= 1.0
    best = select(params)
    assert best["variant"] == VARIANT and best["run_id"] == trained["run_id"]
    metrics = evaluate(params)
    cm = pd.read_csv(params.path("evaluate.confusion_csv"))
    assert metrics["n_test"] == summary["test"]["images"] == len(cm)
    assert metrics["accuracy"] == pytest.approx((cm["actual"] == cm["predicted"]).mean())
    assert json.loads(params.path("evaluate.metrics").read_text())["accuracy"] == metrics["accuracy"]


def test_real_celeba_kaggle_layout_limit_and_identity_split(make_params, tmp_path):
    """The whole sample in Kaggle's layout (CSV, images twice nested), a data.limit subset of it,
    split by identity, through training, selection and evaluation."""
    from helpers.celeba_layouts import kaggle_from

    root = kaggle_from(CELEBA_SAMPLE, tmp_path / "kaggle")
    params = make_params({"data.source": "celeba", "data.root": str(root), "data.image_size": 64,
                          "data.limit": N, "split.group_by": "identity",
                          "train.variants": {VARIANT: {"strategy": "last_block", "lr": 0.0001}}},
                         folder=tmp_path / "project")
    summary = split(params)
    assert summary["layout"] == "kaggle" and summary["limit"] == {"images": N, "of": 4584}
    assert summary["group_by"] == "identity" and summary["identity_overlap"] == 0
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == N
    assert abs(sum(summary[s]["male"] for s in ("train", "val", "test")) - N * 2054 / 4584) <= 1
    assert sum(summary[s]["identities"] for s in ("train", "val", "test")) == summary["identities"]
    trained = train(params, VARIANT)
    assert 0.0 <= trained["best_val_acc"] <= 1.0
    assert select(params)["run_id"] == trained["run_id"]
    metrics = evaluate(params)
    assert metrics["n_test"] == summary["test"]["images"]
