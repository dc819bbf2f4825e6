"""Training learns: the selected variant clears the majority class on the synthetic faces, and
``last_block`` does at least as well as ``head_only``, as the README says.

Every other training test compares runs with each other (plain vs reuse, rerun, resumed); with
``optimizer.step()`` removed they all still pass. These do not.
"""
import pytest

from pipeline import select, split, train
from pipeline.synthetic import generate_from_params

pytestmark = pytest.mark.slow

# Each strategy at the lr that suits it (the default's other two variants never won a seed below).
VARIANTS = {"head_only-lr1e-3": {"strategy": "head_only", "lr": 0.001},
            "last_block-lr1e-4": {"strategy": "last_block", "lr": 0.0001}}
CONFIG = {"data.synthetic.images": 400, "data.image_size": 64, "train.epochs": 3, "train.batch_size": 64,
          "train.variants": VARIANTS}
MARGIN = 0.2  # above the majority class, in validation accuracy


def test_the_selected_variant_learns_and_last_block_is_not_worse_than_head_only(make_params):
    """400 synthetic images (320 train, 40 val), 64x64, 3 epochs, batch 64, the default seed.

    Measured (this config, all four default variants, seeds 42 / 1 / 2, CPU), best_val_acc:

    ======  ========  ==============  ==============  ===============  ===============
    seed    majority  head_only 1e-3  head_only 1e-4  last_block 1e-3  last_block 1e-4
    ======  ========  ==============  ==============  ===============  ===============
    42      0.500     0.875           0.650           0.625            0.875
    1       0.550     0.575           0.550           0.550            0.775
    2       0.500     0.500           0.500           0.500            0.825
    ======  ========  ==============  ==============  ===============  ===============

    The selected variant cleared the majority class by 0.375 / 0.225 / 0.325: the test asks for
    MARGIN = 0.2 (8 of 40 images; no learning scores the majority class, 0.5-0.55). last_block
    beat head_only by 0.2 and 0.325 on seeds 1 and 2 and tied on 42: on 40 validation images
    the test asks for "not worse" (the README's "head_only less so" holds by a clear margin on
    the default 1,500 images: 0.953 vs 0.867). With optimizer.step() replaced by `pass`
    every variant predicts as initialised and scores the majority class or less.
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
    assert accuracy["last_block-lr1e-4"] >= accuracy["head_only-lr1e-3"], accuracy
