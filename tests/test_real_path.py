"""The path the project's users come for, rehearsed on the CPU: their own CelebA folder as the
authors ship it, CelebA's official partition, ImageNet weights from the torch cache, and the
224x224 input of the original experiment.

* After the default repro, the README's real-data command (taken from README.md, with smaller
  numbers) on the shared sample in the authors' archive layout (``Anno/``, ``Img/``, ``Eval/``,
  made by links, with a partition file written here) and ``model.weights: imagenet`` read from a
  weights *file* in torchvision's format in a temporary ``TORCH_HOME``: the real run becomes
  champion v1 of ``gender-vgg16-celeba``, the synthetic champion stays where it was, and
  ``python -m pipeline predict`` names the real champion on stderr.
* One train stage at ``data.image_size: 224`` on a few dozen images: the 224 shapes, the cache
  sizes and the classifier's input."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.celeba_layouts import archive_from
from helpers.champion_project import save_vgg16_weights
from helpers.config import CELEBA_SAMPLE
from helpers.projects import copy_project, default_repro
from helpers.readme import as_a_user, readme_lines
from mlflow.tracking import MlflowClient

from pipeline.core.config import load_params
from pipeline.core.weights import IMAGENET_WEIGHTS_URL
from pipeline.data.dataset import read_split

pytestmark = pytest.mark.slow
README_SECTION = "## Your CelebA, with ImageNet weights, on a GPU"
# the README's numbers -> what a 2-core CPU trains in a few minutes (the command otherwise as written)
SMALLER = {"data.limit=30000": "data.limit=400", "data.image_size=224": "data.image_size=32",
           "train.epochs=10": "train.epochs=1", "train.batch_size=64": "train.batch_size=16"}


def readme_real_data_command(root: Path) -> str:
    (line,) = [ln for ln in readme_lines(README_SECTION) if ln.startswith("dvc exp run")]
    assert "-S data.root=/data/celeba" in line and "-S model.weights=imagenet" in line, line
    for old, new in SMALLER.items():
        assert old in line, (old, line)
        line = line.replace(old, new)
    return line.replace("/data/celeba", str(root)) + " -S split.method=official"


def champion(client: MlflowClient, name: str):
    return client.get_model_version_by_alias(name, "champion")


@pytest.mark.needs(CELEBA_SAMPLE.is_dir(), reason=f"real CelebA sample not found at {CELEBA_SAMPLE}")
def test_your_celeba_in_the_authors_layout_becomes_the_first_champion_of_its_own_model(tmp_path_factory, tmp_path):
    project = copy_project(default_repro(tmp_path_factory), tmp_path / "project")
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    synthetic_before = champion(client, "gender-vgg16-synthetic")

    celeba = archive_from(CELEBA_SAMPLE, tmp_path / "celeba")  # every sample row; a partition file of ours
    partition = pd.read_csv(celeba / "Eval" / "list_eval_partition.txt", sep=" ", header=None,
                            names=["image_id", "partition"], dtype={"image_id": str})
    torch_home = tmp_path / "torch-home"
    weights = torch_home / "hub" / "checkpoints" / IMAGENET_WEIGHTS_URL.rsplit("/", 1)[-1]
    weights.parent.mkdir(parents=True)
    save_vgg16_weights(weights)  # seeded random weights with ImageNet's shapes, in torchvision's format

    command = readme_real_data_command(celeba)
    proc = as_a_user(project, command, TORCH_HOME=str(torch_home))
    out = proc.stdout + proc.stderr

    params = load_params(project / "params.yaml")  # dvc exp run in the workspace leaves its -S values here
    assert (params.get("data.source"), params.get("split.method"), params.get("model.weights")) == \
        ("celeba", "official", "imagenet")
    summary = json.loads((params.path("split.dir") / "split.json").read_text())
    assert summary["layout"] == "archive" and summary["method"] == "official"
    parts = {name: set(read_split(params.path("split.dir"), name)["image_id"]) for name in ("train", "val", "test")}
    for k, name in enumerate(("train", "val", "test")):  # every image in the part the file gives it
        assert parts[name] <= set(partition.loc[partition["partition"] == k, "image_id"]), name
    assert sum(map(len, parts.values())) == 400

    real = champion(client, "gender-vgg16-celeba")
    assert int(real.version) == 1 and real.tags["decision"] == "first" and real.tags["data_source"] == "celeba"
    assert "select: gender-vgg16-celeba v1 @challenger; v1 is the first champion" in out, out
    synthetic_after = champion(client, "gender-vgg16-synthetic")
    assert (synthetic_after.version, synthetic_after.run_id) == (synthetic_before.version, synthetic_before.run_id)
    assert len(client.search_model_versions("name = 'gender-vgg16-synthetic'")) == 1
    assert json.loads((project / "metrics" / "select.json").read_text())["split_method"] == "official"
    card = client.get_model_version("gender-vgg16-celeba", "1").description
    assert "split as CelebA's own partition (`split.method: official`" in card

    image = celeba / "Img" / "img_align_celeba" / sorted(parts["test"])[0]
    predicted = as_a_user(project, f"python -m pipeline predict {image}", TORCH_HOME=str(tmp_path / "empty-cache"))
    (said,) = predicted.stderr.splitlines()
    assert re.fullmatch(r"predict: answering with gender-vgg16-celeba v1 @champion \(data set celeba; validation "
                        r"accuracy 0\.\d{4} 95 % CI \[0\.\d{3}, 0\.\d{3}\] on \d+ images\)", said), said
    assert predicted.stdout.startswith(f"{image}\t")


def test_one_train_stage_at_224(make_params):
    """The original experiment's input size on the CPU, on 40 synthetic images: the frozen prefix
    cut at pool4 caches 512 x 14 x 14 per image and orientation, conv5 and the head train on it,
    and the classifier takes the 7 x 7 map as VGG-16 does at 224 (no folded fc6)."""
    from pipeline.data.synthetic import generate_from_params
    from pipeline.stages.split import split
    from pipeline.stages.train import train

    variant = "last_block-lr1e-4"
    params = make_params({"data.image_size": 224, "data.synthetic.images": 40, "train.batch_size": 8,
                          "train.variants": {variant: {"strategy": "last_block", "lr": 0.0001}}})
    generate_from_params(params)
    split(params)
    train(params, variant)
    n = {name: len(read_split(params.path("split.dir"), name)) for name in ("train", "val")}
    (entry,) = [p.parent for p in params.path("train.feature_cache").glob("*/pool4.train.npy")]
    pool4 = np.load(entry / "pool4.train.npy", mmap_mode="r")
    assert pool4.shape == (2, n["train"], 512, 14, 14)  # both orientations of each training image
    assert np.load(entry / "pool4.val.npy", mmap_mode="r").shape == (1, n["val"], 512, 14, 14)  # unflipped only
    assert sum(f.stat().st_size for f in entry.glob("*.npy")) == 4 * 512 * 14 * 14 * (2 * n["train"] + n["val"]) + 128 * 2
    metrics = json.loads((params.path("train.metrics_dir") / f"{variant}.json").read_text())
    assert 0 <= metrics["best_val_acc"] <= 1 and metrics["best_epoch"] == 1
    history = pd.read_csv(params.path("train.history_dir") / f"{variant}.csv")
    assert history["epoch"].tolist() == [1] and np.isfinite(history["val_loss"]).all()
    run = json.loads(params.run_file(variant).read_text())
    logged = MlflowClient(params.mlflow_config().uri).get_run(run["run_id"]).data.params
    assert (logged["image_size"], logged["cached_layer"]) == ("224", "pool4")
