"""Seeded stratified 80/10/10 split."""
import pandas as pd
import pytest

from pipeline.core.cli import PipelineError
from pipeline.data.dataset import read_split
from pipeline.data.synthetic import generate_from_params
from pipeline.stages.split import split, stratified_split

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
    generated = generate_from_params(params)
    summary = split(params)
    out = params.path("split.dir")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "split.json", "test.csv", "test_attributes.csv", "train.csv",
                                                      "val.csv"]
    attributes = pd.read_csv(out / "test_attributes.csv", dtype={"image_id": str})
    test_ids = pd.read_csv(out / "test.csv", dtype={"image_id": str})["image_id"]
    assert attributes["image_id"].tolist() == test_ids.tolist()  # the test images, in the split's order
    assert len(attributes.columns) == 1 + 39 and "Male" not in attributes  # every attribute but the label
    assert set(attributes.drop(columns="image_id").to_numpy().ravel()) <= {-1, 1}
    train = pd.read_csv(out / "train.csv")
    assert list(train.columns) == ["image_id", "label"] and len(train) == 160
    assert summary["train"]["male"] + summary["val"]["male"] + summary["test"]["male"] == generated["images"] - (
        summary["train"]["female"] + summary["val"]["female"] + summary["test"]["female"])
    first = (out / "test.csv").read_text()
    split(params)  # a rerun reproduces the same files
    assert (out / "test.csv").read_text() == first


# --- split.group_by: identity -------------------------------------------------------------------

import json  # noqa: E402

import numpy as np  # noqa: E402
from helpers.config import CELEBA_SAMPLE  # noqa: E402

from pipeline.data.celeba import identities_of, read_attributes  # noqa: E402
from pipeline.stages.split import SPLITS, identity_split, limit_subset  # noqa: E402

needs_sample = pytest.mark.needs(CELEBA_SAMPLE.is_dir(), reason=f"real CelebA sample not found at {CELEBA_SAMPLE}")


def people(n_people=800, seed=0):
    """Images of ``n_people`` persons (1-6 each), labelled by person with 5 % noise."""
    rng = np.random.default_rng(seed)
    ids, labels, who = [], [], []
    for person in range(n_people):
        male = rng.random() < 0.42
        for _ in range(int(rng.integers(1, 7))):
            ids.append(f"{len(ids) + 1:06d}.jpg")
            labels.append(int(male != (rng.random() < 0.05)))
            who.append(person * 7 + 3)  # identities need not be 0..n-1
    return pd.DataFrame({"image_id": ids, "label": labels}), pd.Series(who)


def assert_identity_split(parts, frame, identity, within=0.01):
    person = dict(zip(frame["image_id"], identity))
    sets = {name: {person[i] for i in parts[name]["image_id"]} for name in SPLITS}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sorted(pd.concat(parts.values())["image_id"]) == sorted(frame["image_id"])
    whole = frame["label"].mean()
    for name in SPLITS:
        part = parts[name]
        assert abs(part["label"].mean() - whole) <= within, (name, part["label"].mean(), whole)
        assert abs(len(part) - FRACTIONS[name] * len(frame)) <= 0.01 * len(frame), (name, len(part))
        assert list(part.columns) == ["image_id", "label"] and part["image_id"].is_monotonic_increasing
    return sets


def test_identity_split_is_disjoint_balanced_and_seeded():
    f, who = people()
    a = identity_split(f, who, FRACTIONS, seed=0)
    assert_identity_split(a, f, who)
    assert all(a[k].equals(identity_split(f, who, FRACTIONS, seed=0)[k]) for k in SPLITS)
    assert not a["test"].equals(identity_split(f, who, FRACTIONS, seed=1)["test"])
    # other fractions too
    other = identity_split(f, who, {"train": 0.6, "val": 0.25, "test": 0.15}, seed=0)
    assert abs(len(other["val"]) - 0.25 * len(f)) <= 0.01 * len(f)


def test_identity_split_too_few_people_or_of_a_class():
    two = pd.DataFrame({"image_id": [f"{i:06d}.jpg" for i in range(10)], "label": [0, 1] * 5})
    with pytest.raises(PipelineError, match="only 2 identities, too few to split by person"):
        identity_split(two, pd.Series([1] * 5 + [2] * 5), FRACTIONS, seed=0)
    with pytest.raises(PipelineError, match="only 2 images of class male"):
        identity_split(frame(100, 0.02), pd.Series(range(100)), FRACTIONS, seed=0)


@needs_sample
@pytest.mark.parametrize("seed", [0, 42])
def test_identity_split_on_the_real_sample(seed):
    """4,584 real images of 3,614 people: no person in two splits, each split's male share within
    one percentage point of the whole's (44.8 %)."""
    f = read_attributes(CELEBA_SAMPLE)
    who = identities_of(CELEBA_SAMPLE, f["image_id"])
    sets = assert_identity_split(identity_split(f, who, FRACTIONS, seed=seed), f, who)
    assert sum(len(s) for s in sets.values()) == who.nunique() == 3614


def test_split_stage_by_identity_records_people(make_params):
    params = make_params({"data.synthetic.images": 300, "split.group_by": "identity"})
    generated = generate_from_params(params)
    summary = split(params)
    recorded = json.loads((params.path("split.dir") / "split.json").read_text())
    assert recorded == summary and summary["group_by"] == "identity"
    assert summary["identity_overlap"] == 0
    assert sum(summary[s]["identities"] for s in SPLITS) == summary["identities"] == generated["identities"]
    assert sum(summary[s]["images"] for s in SPLITS) == 300
    root = params.dataset_root()
    who = identities_of(root, read_attributes(root)["image_id"])
    parts = {s: pd.read_csv(params.path("split.dir") / f"{s}.csv", dtype={"image_id": str}) for s in SPLITS}
    assert_identity_split(parts, read_attributes(root), who, within=0.05)  # 30 images in val: a person is 3 points


def test_split_by_identity_without_identities(make_params):
    params = make_params({"data.synthetic.images": 60, "split.group_by": "identity"})
    generate_from_params(params)
    root = params.dataset_root()
    params = make_params({"data.source": "celeba", "data.root": str(root), "split.group_by": "identity",
                          "data.synthetic.dir": "data/unused"})  # the generated set, read as CelebA
    (root / "identity_CelebA.txt").write_text("000001.jpg 1\n")
    with pytest.raises(PipelineError, match=r"identity_CelebA.txt: no identity for 000002.jpg, listed in "
                                            r"list_attr_celeba.txt \(and 58 more\)$"):
        split(params)
    (root / "identity_CelebA.txt").unlink()
    with pytest.raises(PipelineError, match=r"identity_CelebA.txt: identity file not found"):
        split(params)


def test_default_split_records_group_by_none_and_reports_the_identity_overlap(make_params):
    """The plain split ignores people; with identity_CelebA.txt at hand it says how many straddle splits."""
    params = make_params({"data.synthetic.images": 60})
    generate_from_params(params)
    summary = split(params)
    assert summary["group_by"] == "none" and "limit" not in summary
    people = {}
    for name in ("train", "val", "test"):
        assert summary[name]["identities"] <= summary[name]["images"]
    ids = pd.read_csv(make_params().dataset_root() / "identity_CelebA.txt", sep=" ", header=None,
                      names=["image_id", "identity"]).set_index("image_id")["identity"]
    for name in ("train", "val", "test"):
        for image in read_split(make_params().path("split.dir"), name)["image_id"]:
            people.setdefault(ids[image], set()).add(name)
    assert summary["identities"] == len(people)
    assert summary["identity_overlap"] == sum(len(splits) > 1 for splits in people.values()) > 0


# --- data.limit ---------------------------------------------------------------------------------

def test_limit_subset_count_stratified_seeded():
    f = frame(1000, 0.42)
    a = limit_subset(f, 300, seed=0, source="attr")
    assert len(a) == 300 and abs(a["label"].sum() - 0.42 * 300) <= 1
    assert a["image_id"].is_monotonic_increasing and set(a["image_id"]) <= set(f["image_id"])
    assert a.equals(limit_subset(f.sample(frac=1, random_state=5), 300, seed=0, source="attr"))  # row order: no matter
    assert not a.equals(limit_subset(f, 300, seed=1, source="attr"))
    assert limit_subset(f, 1000, seed=0, source="attr").equals(f)
    with pytest.raises(PipelineError, match=r"^params.yaml: data.limit is 1001, more than the 1000 images listed in attr$"):
        limit_subset(f, 1001, seed=0, source="attr")


def test_split_stage_with_a_limit(make_params):
    params = make_params({"data.synthetic.images": 200, "data.limit": 100})
    generate_from_params(params)
    summary = split(params)
    assert summary["limit"] == {"images": 100, "of": 200}
    assert sum(summary[s]["images"] for s in SPLITS) == 100
    assert {s: summary[s]["images"] for s in SPLITS} == {"train": 80, "val": 10, "test": 10}
    males = read_attributes(params.dataset_root())["label"].mean()
    assert abs(sum(summary[s]["male"] for s in SPLITS) - 100 * males) <= 1
    first = (params.path("split.dir") / "train.csv").read_text()
    split(params)
    assert (params.path("split.dir") / "train.csv").read_text() == first


@pytest.mark.parametrize("overrides,message", [
    ({"data.limit": 19}, "data.limit must be null (every image) or an integer >= 20"),
    ({"data.limit": 30000.0}, "data.limit must be null (every image) or an integer >= 20, got 30000.0"),
    ({"data.limit": "30k"}, "data.limit must be null"),
    ({"split.group_by": "person"}, "split.group_by must be one of none, identity, got 'person'"),
    ({"split.group_by": None}, "split.group_by must be one of none, identity, got None"),
])
def test_limit_and_group_by_are_checked(make_params, overrides, message):
    with pytest.raises(PipelineError) as exc:
        make_params(overrides)
    assert str(exc.value).startswith("params.yaml: ") and message in str(exc.value)


@needs_sample
def test_limit_on_the_real_sample():
    f = read_attributes(CELEBA_SAMPLE)
    a = limit_subset(f, 1000, seed=42, source=CELEBA_SAMPLE)
    assert len(a) == 1000 and abs(a["label"].sum() - 1000 * 2054 / 4584) <= 1
    assert a.equals(limit_subset(f, 1000, seed=42, source=CELEBA_SAMPLE))


# --- split.method: official ---------------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from helpers.celeba_layouts import archive_from, kaggle_from, write_partition  # noqa: E402
from helpers.config import REPO, write_params  # noqa: E402

from pipeline.data.celeba import ARCHIVE, detect_layout  # noqa: E402
from pipeline.stages.split import official_split  # noqa: E402


def celeba_with_partition(make_params, n=200, sizes=(130, 37, 33), seed=0, extra=True):
    """The generated set read as CelebA, with a ``list_eval_partition.txt`` that puts a seeded
    random ``sizes`` of its images in train / val / test (plus, with ``extra``, rows of images
    the attribute file does not list, as the authors' file beside a subset); returns the root
    and the file's assignment of the listed images."""
    generate_from_params(make_params({"data.synthetic.images": n}))
    root = make_params().dataset_root()
    ids = read_attributes(root)["image_id"].tolist()
    codes = np.random.default_rng(seed).permutation(np.repeat([0, 1, 2], sizes))
    partition = dict(zip(ids, codes.tolist()))
    write_partition(root / "list_eval_partition.txt",
                    {**partition, **({"150001.jpg": 0, "190001.jpg": 1, "200001.jpg": 2} if extra else {})})
    return root, partition


def official_params(make_params, root, **overrides):
    return make_params({"data.source": "celeba", "data.root": str(root), "data.synthetic.dir": "data/unused",
                        "split.method": "official", **overrides})


def split_ids(params) -> dict[str, set]:
    return {s: set(read_split(params.path("split.dir"), s)["image_id"]) for s in SPLITS}


def file_sets(partition: dict) -> dict[str, set]:
    return {s: {i for i, p in partition.items() if p == k} for k, s in enumerate(SPLITS)}


def test_official_split_is_the_partition_file_as_it_is(make_params):
    root, partition = celeba_with_partition(make_params)
    params = official_params(make_params, root)
    summary = split(params)
    assert split_ids(params) == file_sets(partition)  # 130 / 37 / 33, not split.fractions' 160 / 20 / 20
    assert {s: summary[s]["images"] for s in SPLITS} == {"train": 130, "val": 37, "test": 33}
    assert summary["method"] == "official" and summary["group_by"] == "none" and "limit" not in summary
    assert json.loads((params.path("split.dir") / "split.json").read_text()) == summary
    labels = dict(zip(*read_attributes(root).to_dict("list").values()))
    for s in SPLITS:
        part = read_split(params.path("split.dir"), s)
        assert all(labels[i] == y for i, y in zip(part["image_id"], part["label"]))
        assert summary[s]["male"] == sum(labels[i] for i in file_sets(partition)[s])
    # the default records its method too
    assert split(make_params({"data.source": "celeba", "data.root": str(root),
                              "data.synthetic.dir": "data/unused"}))["method"] == "stratified"


def test_official_split_with_a_limit_takes_a_seeded_stratified_share_of_each_part(make_params):
    root, partition = celeba_with_partition(make_params)
    sets = file_sets(partition)
    params = official_params(make_params, root, **{"data.limit": 100})
    summary = split(params)
    got = split_ids(params)
    # 100 x 130/200, 37/200, 33/200 = 65, 18.5, 16.5: rounded down, the one left over to the first
    # of the two equal remainders
    assert {s: len(got[s]) for s in SPLITS} == {"train": 65, "val": 19, "test": 16}
    assert summary["limit"] == {"images": 100, "of": 200}
    labels = dict(zip(*read_attributes(root).to_dict("list").values()))
    for s in SPLITS:
        assert got[s] <= sets[s], s  # each image stays in the part the file puts it in
        share = sum(labels[i] for i in sets[s]) / len(sets[s])
        assert abs(sum(labels[i] for i in got[s]) - share * len(got[s])) <= 1, s  # the part's balance kept
    first = {s: (params.path("split.dir") / f"{s}.csv").read_bytes() for s in SPLITS}
    split(params)
    assert {s: (params.path("split.dir") / f"{s}.csv").read_bytes() for s in SPLITS} == first  # seeded
    other = official_params(make_params, root, **{"data.limit": 100, "base.seed": 7})
    split(other)
    assert split_ids(other) != got and all(split_ids(other)[s] <= sets[s] for s in SPLITS)


def test_official_split_from_kaggles_csv(make_params, tmp_path):
    root, partition = celeba_with_partition(make_params)
    kaggle = kaggle_from(root, tmp_path / "kaggle")
    write_partition(kaggle / "list_eval_partition.csv", partition, csv=True)
    params = official_params(make_params, kaggle)
    summary = split(params)
    assert summary["layout"] == "kaggle" and split_ids(params) == file_sets(partition)


def test_official_split_needs_both_classes_in_each_part():
    f = frame(40, 0.5)  # 000001-000020 male, the rest female
    partition = pd.Series([0] * 20 + [1] * 2 + [0] * 14 + [2] * 4)  # val: two women only
    with pytest.raises(PipelineError) as exc:
        official_split(f, partition, "Eval/list_eval_partition.txt")
    assert str(exc.value) == ("Eval/list_eval_partition.txt: partition 1 (val) holds 2 of the listed images, 0 male "
                              "and 2 female; split.method: official needs both classes in train, val and test")
    parts = official_split(f, pd.Series([0] * 16 + [1, 2] * 2 + [0] * 16 + [1, 2] * 2), "p")
    assert {s: len(parts[s]) for s in SPLITS} == {"train": 32, "val": 4, "test": 4}


@pytest.mark.parametrize("overrides,message", [
    ({"split.method": "official", "split.group_by": "identity"},
     "params.yaml: split.method: official takes CelebA's own partition as it is, so split.group_by must be none "
     "(identity applies to split.method: stratified)"),
    ({"split.method": "celeba"}, "params.yaml: split.method must be one of stratified, official, got 'celeba'"),
    ({"split.method": None}, "params.yaml: split.method must be one of stratified, official, got None"),
])
def test_split_method_is_checked(make_params, overrides, message):
    with pytest.raises(PipelineError) as exc:
        make_params(overrides)
    assert str(exc.value) == message


@needs_sample
def test_real_sample_in_the_archive_layout_split_by_its_partition_file(tmp_path):
    """600 rows of the real sample in the authors' archive layout, the partition file written in
    CelebA's proportions (the sample's ids all lie in CelebA's own train part), split by
    ``python -m pipeline split`` as dvc.yaml runs it."""
    ids = read_attributes(CELEBA_SAMPLE)["image_id"].tolist()[:600]
    partition = dict(zip(ids, np.random.default_rng(3).permutation(np.repeat([0, 1, 2], [480, 60, 60])).tolist()))
    archive = archive_from(CELEBA_SAMPLE, tmp_path / "archive", 600, partition=partition)
    assert detect_layout(archive).kind == ARCHIVE
    project = tmp_path / "project"
    project.mkdir()
    params = write_params(project, {"data.source": "celeba", "data.root": str(archive), "split.method": "official"})
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_DEBUG")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "split", "--params", str(params)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = project / "data" / "split"
    assert {s: set(read_split(out, s)["image_id"]) for s in SPLITS} == file_sets(partition)
    summary = json.loads((out / "split.json").read_text())
    assert (summary["layout"], summary["method"]) == ("archive", "official")
    labels = dict(zip(*read_attributes(CELEBA_SAMPLE).to_dict("list").values()))
    assert summary["test"]["male"] == sum(labels[i] for i in file_sets(partition)["test"])
