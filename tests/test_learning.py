"""Training learns: the selected variant clears the majority class on the synthetic faces, and
``last_block`` is not worse than ``head_only`` beyond noise, as the README says.

Every other training test compares runs with each other (plain vs reuse, rerun, resumed); with
``optimizer.step()`` removed they all still pass. These do not.
"""
import mlflow
import pandas as pd
import pytest

from pipeline.data.dataset import THRESHOLD
from pipeline.data.synthetic import generate_from_params
from pipeline.evaluation import compare
from pipeline.stages import select, split, train
from pipeline.tracking.runs import VAL_PREDICTIONS

pytestmark = pytest.mark.slow

# Each strategy at the lr that suits it (the default's other two variants never won a seed below).
VARIANTS = {"head_only-lr1e-3": {"strategy": "head_only", "lr": 0.001},
            "last_block-lr1e-4": {"strategy": "last_block", "lr": 0.0001}}
CONFIG = {"data.synthetic.images": 400, "data.image_size": 64, "train.epochs": 3, "train.batch_size": 64,
          "train.variants": VARIANTS}
MARGIN = 0.2  # above the majority class, in validation accuracy
ALPHA = 0.05  # select.alpha's default: "worse" means an exact McNemar p below it


def right(run_id: str, folder) -> pd.Series:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VAL_PREDICTIONS, dst_path=str(folder))
    return compare.correct(pd.read_csv(path), THRESHOLD)


def test_the_selected_variant_learns_and_last_block_is_not_worse_than_head_only(make_params, tmp_path):
    """400 synthetic images (320 train, 40 val), 64x64, 3 epochs, batch 64, the default seed.

    Measured (this config, all four default variants, CPU, train.reproducible kernels: the same on
    any x86-64), best_val_acc:

    ======  ========  ==============  ==============  ===============  ===============
    seed    majority  head_only 1e-3  head_only 1e-4  last_block 1e-3  last_block 1e-4
    ======  ========  ==============  ==============  ===============  ===============
    42      0.500     0.875           0.650           0.650            0.850
    1       0.550     0.575           0.550           0.550            0.775
    ======  ========  ==============  ==============  ===============  ===============

    The selected variant cleared the majority class by 0.375 / 0.225: the test asks for
    MARGIN = 0.2 (8 of 40 images; no learning scores the majority class, 0.5-0.55). On seed 42
    head_only beats last_block by one image of 40, on seed 1 last_block wins by 8: on 40 images
    "not worse" is the project's own test of a margin, the exact McNemar test on the validation
    predictions each run logged (select's ``alpha``); a last_block that does not learn (0.5
    against 0.875) fails it. With optimizer.step() replaced by `pass` every variant predicts as
    initialised and scores the majority class or less.
    """
    params = make_params(CONFIG)
    generate_from_params(params)
    summary = split.split(params)
    val = summary["val"]
    majority = max(val["male"], val["female"]) / val["images"]
    results = {name: train.train(params, name) for name in VARIANTS}
    best = select.select(params)
    accuracy = {name: r["best_val_acc"] for name, r in results.items()}
    print(f"majority {majority:.3f}; best_val_acc {accuracy}; selected {best['variant']}")
    assert best["variant"] in VARIANTS and best["best_val_acc"] == max(accuracy.values())
    assert best["best_val_acc"] >= majority + MARGIN, (majority, accuracy)
    head, last = (right(results[name]["run_id"], tmp_path / name) for name in VARIANTS)
    test = compare.mcnemar(*compare.aligned(last, head, "validation"))
    assert test["only_b"] <= test["only_a"] or test["p_value"] >= ALPHA, (accuracy, test)
