"""The data are a dependency of split: ``dvc.lock`` holds the hash of ``data.root``, and a changed
label or image re-runs split, on real CelebA and on the generated default; a replaced image changes
split's manifest. (That it re-runs every stage that reads images: tests/test_mistakes.py.)"""

import pandas as pd
import pytest
import yaml
from helpers.config import CELEBA_SAMPLE
from helpers.projects import UP_TO_DATE, changed_stages, new_project, sh, stages_run

from pipeline.data.celeba import ATTR_FILE, IDENTITY_FILE, IMAGE_DIR

pytestmark = pytest.mark.slow
N = 120
VARIANT = "head_only-lr1e-3"
ONE_VARIANT = {"train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}


@pytest.fixture
def celeba_links(tmp_path):
    """The first N images of the real sample in the official layout: the two text files written,
    each image a symlink to the sample (never a copy), so single images can be added or replaced."""
    if not CELEBA_SAMPLE.is_dir():
        pytest.skip(f"real CelebA sample not found at {CELEBA_SAMPLE}")
    root = tmp_path / "celeba"
    (root / IMAGE_DIR).mkdir(parents=True)
    lines = (CELEBA_SAMPLE / ATTR_FILE).read_text().splitlines()
    (root / ATTR_FILE).write_text("\n".join([str(N), lines[1], *lines[2:2 + N]]) + "\n")
    (root / IDENTITY_FILE).write_text("\n".join((CELEBA_SAMPLE / IDENTITY_FILE).read_text().splitlines()[:N]) + "\n")
    for line in lines[2:2 + N]:
        name = line.split()[0]
        (root / IMAGE_DIR / name).symlink_to(CELEBA_SAMPLE / IMAGE_DIR / name)
    spare = [line.split()[0] for line in lines[2 + N:4 + N]]  # two sample images not in the subset
    return root, lines[1].split().index("Male") + 1, spare


def split_labels(project) -> dict[str, int]:
    frames = [pd.read_csv(project / "data" / "split" / f"{s}.csv", dtype={"image_id": str}) for s in ("train", "val", "test")]
    return dict(pd.concat(frames).itertuples(index=False, name=None))


def test_a_flipped_label_or_a_changed_image_reruns_split_and_what_follows(celeba_links, tmp_path):
    root, male_col, spare = celeba_links
    project = new_project(tmp_path / "project", {"data.source": "celeba", "data.root": str(root), **ONE_VARIANT})

    # the experiment: repro split, flip one Male value, ask dvc status
    assert stages_run(sh(["dvc", "repro", "split"], project).stdout) == ["split"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (dep,) = [d for d in lock["stages"]["split"]["deps"] if d["path"] == str(root)]
    assert dep["md5"].endswith(".dir") and dep["nfiles"] == N + 2  # N images, the attribute and identity files
    assert sh(["dvc", "status", "split"], project).stdout.strip() == UP_TO_DATE
    attr = root / ATTR_FILE
    lines = attr.read_text().splitlines()
    fields = lines[2 + 7].split()  # the 8th image
    image, old = fields[0], int(fields[male_col])
    assert split_labels(project)[image] == (old == 1)
    fields[male_col] = str(-old)
    lines[2 + 7] = " ".join(fields)
    attr.write_text("\n".join(lines) + "\n")
    status = sh(["dvc", "status", "split"], project).stdout
    print(f"dvc status after flipping {image}'s Male value:\n{status}")  # for the record
    assert status != UP_TO_DATE and "split:" in status and f"modified:           {root}" in status
    assert stages_run(sh(["dvc", "repro", "split"], project).stdout) == ["split"]
    assert split_labels(project)[image] == (old == -1)  # the new label reached data/split
    assert sh(["dvc", "status", "split"], project).stdout.strip() == UP_TO_DATE
    new_lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert [d["md5"] for d in new_lock["stages"]["split"]["deps"] if d["path"] == str(root)] != [dep["md5"]]

    # replacing one image (same name, other pixels) leaves the split lists as they were, yet split
    # is out of date, and its manifest records the new hash
    victim = root / IMAGE_DIR / fields[0]
    victim.unlink()
    victim.symlink_to(CELEBA_SAMPLE / IMAGE_DIR / spare[0])
    assert f"modified:           {root}" in sh(["dvc", "status", "split"], project).stdout
    lists = {s: (project / "data" / "split" / f"{s}.csv").read_bytes() for s in ("train", "val", "test")}
    hashes = pd.read_csv(project / "data" / "split" / "manifest.csv", dtype=str).set_index("image_id")["blake2b"]
    assert stages_run(sh(["dvc", "repro", "split"], project).stdout) == ["split"]
    assert {s: (project / "data" / "split" / f"{s}.csv").read_bytes() for s in lists} == lists
    after = pd.read_csv(project / "data" / "split" / "manifest.csv", dtype=str).set_index("image_id")["blake2b"]
    assert [i for i in hashes.index if hashes[i] != after[i]] == [fields[0]]  # what the later stages follow
    assert sh(["dvc", "status", "split"], project).stdout.strip() == UP_TO_DATE

    # adding one image (not listed yet) is a change to the data too
    (root / IMAGE_DIR / spare[1]).symlink_to(CELEBA_SAMPLE / IMAGE_DIR / spare[1])
    assert f"modified:           {root}" in sh(["dvc", "status", "split"], project).stdout
    assert stages_run(sh(["dvc", "repro", "split"], project).stdout) == ["split"]


def test_a_synthetic_param_reruns_generate_and_split(tmp_path):
    project = new_project(tmp_path / "project", ONE_VARIANT)
    assert stages_run(sh(["dvc", "repro", "split"], project).stdout) == ["generate", "split"]
    assert (project / "data" / "synthetic" / ATTR_FILE).is_file()
    assert not (project / "data" / "split" / "synthetic").exists()
    before = split_labels(project)
    assert sh(["dvc", "status", "generate", "split"], project).stdout.strip() == UP_TO_DATE
    params_file = project / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["data"]["synthetic"]["label_noise"] = 0.5
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "generate" in changed_stages(project)
    assert stages_run(sh(["dvc", "repro", "split"], project).stdout) == ["generate", "split"]
    after = split_labels(project)
    assert set(after) == set(before) and after != before  # the same images, other labels
