"""Bad input gets a clear error and loses nothing.

Each case breaks a small CelebA-layout folder (or params.yaml) in one way, runs the real stage
as a subprocess and expects: a non-zero exit, exactly one line on stderr that starts with
``error:`` and names the culprit (file, image id or params key), no traceback, and the split
files of an earlier good run byte for byte as they were. Images that are merely unusual
(grey, CMYK, palette, a PNG named .jpg, odd sizes) are accepted.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.config import REPO, set_dotted, write_params
from PIL import Image

from pipeline.core.cli import PipelineError, run_main
from pipeline.core.config import load_params
from pipeline.data import synthetic
from pipeline.data.celeba import ATTR_FILE, IMAGE_DIR, read_attributes
from pipeline.data.dataset import FaceDataset, make_loader, read_split
from pipeline.data.images import check_images
from pipeline.stages.split import split

N_IMAGES = 40  # 24 male, 16 female with seed 0
VARIANT = "head_only-lr1e-3"


# --- helpers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One generated CelebA-layout folder; each test breaks its own copy."""
    root = tmp_path_factory.mktemp("pristine") / "celeba"
    synthetic.generate(root, N_IMAGES, 0.0, seed=0)
    return root


@pytest.fixture
def celeba(pristine, tmp_path) -> Path:
    root = tmp_path / "celeba"
    shutil.copytree(pristine, root)
    return root


@pytest.fixture
def project(tmp_path, celeba) -> Path:
    """A project folder whose params.yaml reads ``celeba``; returns the params file."""
    folder = tmp_path / "project"
    folder.mkdir()
    return write_params(folder, {"data.source": "celeba", "data.root": str(celeba),
                                 "train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}})


def run_stage(stage: str, params: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m pipeline <stage> --params <params> <args>``, as dvc.yaml runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_DEBUG")}
    env.update(TQDM_DISABLE="1", MLFLOW_LOGGING_LEVEL="WARNING")  # no progress bars, no "creating the DB" logs
    return subprocess.run([sys.executable, "-m", "pipeline", stage, "--params", str(params), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *culprits: str) -> str:
    assert proc.returncode != 0, f"expected a failure, got exit 0; stdout: {proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert err.startswith("error: "), err
    for culprit in culprits:
        assert culprit in err, f"{culprit!r} not named in: {err}"
    return err


def edit_params(path: Path, changes: dict) -> None:
    raw = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        set_dotted(raw, key, value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def split_outputs(params_path: Path) -> dict[str, bytes]:
    """The split folder's files (``split.dir`` is data/split in the params written above)."""
    out = params_path.parent / "data" / "split"
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def attr_lines(root: Path) -> list[str]:
    return (root / ATTR_FILE).read_text().splitlines()


def write_attr_lines(root: Path, lines: list[str]) -> None:
    (root / ATTR_FILE).write_text("\n".join(lines) + "\n")


def set_male(root: Path, image_ids, value: str) -> None:
    lines = attr_lines(root)
    col = 1 + lines[1].split().index("Male")
    for i, line in enumerate(lines[2:], start=2):
        fields = line.split()
        if fields[0] in image_ids:
            fields[col] = value
            lines[i] = " ".join(fields)
    write_attr_lines(root, lines)


def image(root: Path, number: int) -> Path:
    return root / IMAGE_DIR / f"{number:06d}.jpg"


# --- the breakages: each gets (data root, params file), breaks one thing -----------------

def data_root_missing(root, params):
    edit_params(params, {"data.root": str(root.parent / "no-such-celeba")})


def attr_file_missing(root, params):
    (root / ATTR_FILE).unlink()


def attr_file_empty(root, params):
    (root / ATTR_FILE).write_text("")


def header_without_male(root, params):
    lines = attr_lines(root)
    lines[1] = lines[1].replace(" Male ", " Gender ")
    write_attr_lines(root, lines)


def label_outside(root, params):
    set_male(root, {"000005.jpg"}, "0")


def duplicated_id(root, params):
    lines = attr_lines(root)
    write_attr_lines(root, lines + [lines[2 + 2]])  # 000003.jpg again


def image_absent(root, params):
    image(root, 7).unlink()


def truncated_jpeg(root, params):
    data = image(root, 8).read_bytes()
    image(root, 8).write_bytes(data[: len(data) // 2])


def garbage_jpeg(root, params):
    image(root, 9).write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def too_few_of_a_class(root, params):
    ids = [line.split()[0] for line in attr_lines(root)[2:]]
    set_male(root, set(ids[:2]), "1")
    set_male(root, set(ids[2:]), "-1")  # two men, 38 women


def too_few_for_the_fractions(root, params):
    ids = [line.split()[0] for line in attr_lines(root)[2:]]
    set_male(root, set(ids[:5]), "1")
    set_male(root, set(ids[5:]), "-1")  # five men: not two of them left for val + test


def params_change(changes):
    return lambda root, params: edit_params(params, changes)


def params_not_yaml(root, params):
    params.write_text("data: [1, 2\nsplit: {dir: data/split}\n")


def to_kaggle_with_bad_value(root, params):
    """The folder moved into Kaggle's layout (CSV, images one folder deeper), one Male value 0."""
    lines = attr_lines(root)
    (root / ATTR_FILE).unlink()
    rows = [line.split() for line in lines[2:]]
    rows[4][1 + lines[1].split().index("Male")] = "0"  # 000005.jpg, line 6 of the CSV
    (root / "list_attr_celeba.csv").write_text(",".join(["image_id", *lines[1].split()]) + "\n"
                                               + "".join(",".join(r) + "\n" for r in rows))
    (root / IMAGE_DIR).rename(root.parent / "images")
    (root / IMAGE_DIR).mkdir()
    (root.parent / "images").rename(root / IMAGE_DIR / IMAGE_DIR)


def identity_file_missing(root, params):
    edit_params(params, {"split.group_by": "identity"})
    (root / "identity_CelebA.txt").unlink()


PARTITION = "list_eval_partition.txt"


def official_with_partition(lines_of=None):
    """``split.method: official`` and a partition file for the 40 images (1-6 val, 25-30 test, the
    rest train: both classes in each), its lines first passed through ``lines_of``."""
    def breakage(root, params):
        edit_params(params, {"split.method": "official"})
        lines = [f"{i:06d}.jpg {1 if i <= 6 else 2 if 25 <= i <= 30 else 0}" for i in range(1, N_IMAGES + 1)]
        text = "\n".join(lines_of(lines) if lines_of else lines) + "\n"
        (root / PARTITION).write_bytes(text.encode("utf-8", "surrogateescape"))
    return breakage


def partition_file_missing(root, params):
    edit_params(params, {"split.method": "official"})


def partition_val_of_one_class(root, params):
    """A partition file whose val part holds two women only."""
    edit_params(params, {"split.method": "official"})
    frame = read_attributes(root)
    women, men = frame[frame["label"] == 0]["image_id"].tolist(), frame[frame["label"] == 1]["image_id"].tolist()
    part = {**{i: 0 for i in frame["image_id"]}, women[0]: 1, women[1]: 1, women[2]: 2, men[0]: 2}
    (root / PARTITION).write_text("".join(f"{i} {k}\n" for i, k in part.items()))


def _replace(index, line):
    return lambda lines: lines[:index] + [line] + lines[index + 1:]


def params_duplicate_key(root, params):
    params.write_text(params.read_text() + "train:\n  epochs: 5\n")


def params_missing_key(root, params):
    raw = yaml.safe_load(params.read_text())
    del raw["train"]["epochs"]
    params.write_text(yaml.safe_dump(raw, sort_keys=False))


V = f"train.variants.{VARIANT}"
SPLIT_CASES = [
    # id, breakage, culprits named in the error line ({root}: the data folder)
    ("01-data-root-missing", data_root_missing, ["data.root", "no-such-celeba", "not found"]),
    ("02-attr-file-missing", attr_file_missing, ["{root}/list_attr_celeba.txt", "not found"]),
    ("03-attr-file-empty", attr_file_empty, ["{root}/list_attr_celeba.txt", "empty"]),
    ("04-header-without-Male", header_without_male, ["list_attr_celeba.txt:2", "no 'Male' column"]),
    ("05-label-outside-minus1-1", label_outside, ["list_attr_celeba.txt:7", "000005.jpg has Male=0"]),
    ("06-duplicated-image-id", duplicated_id, ["list_attr_celeba.txt:43", "000003.jpg is listed more than once"]),
    ("07-image-listed-but-absent", image_absent, ["{root}/img_align_celeba/000007.jpg", "not found"]),
    ("08-truncated-jpeg", truncated_jpeg, ["{root}/img_align_celeba/000008.jpg", "truncated"]),
    ("09-garbage-bytes-as-jpg", garbage_jpeg, ["{root}/img_align_celeba/000009.jpg", "not an image"]),
    ("10-too-few-of-a-class", too_few_of_a_class, ["list_attr_celeba.txt", "only 2 images of class male"]),
    ("10b-too-few-for-the-fractions", too_few_for_the_fractions,
     ["list_attr_celeba.txt", "only 5 images of class male, too few to stratify"]),
    ("12-zero-lr", params_change({f"{V}.lr": 0}), [f"{V}.lr must be a positive number, got 0"]),
    ("13-unknown-strategy", params_change({f"{V}.strategy": "everything"}), [f"{V}.strategy must be one of"]),
    ("14-epochs-below-1", params_change({"train.epochs": 0}), ["train.epochs must be an integer >= 1, got 0"]),
    ("15-image-size-below-32", params_change({"data.image_size": 16}), ["data.image_size", "got 16"]),
    ("16-fractions-not-summing-to-1", params_change({"split.fractions": {"train": 0.8, "val": 0.1, "test": 0.2}}),
     ["split.fractions must sum to 1, got 1.1"]),
    ("19a-params-not-yaml", params_not_yaml, ["params.yaml: not valid YAML at line 2"]),
    ("19b-params-missing-key", params_missing_key, ["params.yaml: missing key 'train.epochs'"]),
    ("19c-params-duplicate-key", params_duplicate_key, ["params.yaml: not valid YAML", "duplicate key 'train'"]),
    ("20-kaggle-csv-bad-value", to_kaggle_with_bad_value, ["{root}/list_attr_celeba.csv:6", "000005.jpg has Male=0"]),
    ("21-identity-file-missing", identity_file_missing,
     ["{root}/identity_CelebA.txt: identity file not found", "split.group_by: identity"]),
    ("22-limit-above-available", params_change({"data.limit": 41}),
     ["params.yaml: data.limit is 41, more than the 40 images listed in {root}/list_attr_celeba.txt"]),
    ("23-partition-file-missing", partition_file_missing,
     ["{root}/list_eval_partition.txt: partition file not found", "split.method: official"]),
    ("24-partition-wrong-field-count", official_with_partition(_replace(4, "000005.jpg 0 1")),
     ["{root}/list_eval_partition.txt:5: expected 'image_id partition'", "got '000005.jpg 0 1'"]),
    ("25-partition-3", official_with_partition(_replace(5, "000006.jpg 3")),
     ["{root}/list_eval_partition.txt:6: 000006.jpg has partition 3, expected 0 (train), 1 (val) or 2 (test)"]),
    ("26-partition-duplicated-id", official_with_partition(lambda lines: lines + ["000003.jpg 1"]),
     ["{root}/list_eval_partition.txt:41: image id 000003.jpg is listed more than once (first on line 3)"]),
    ("27-image-missing-from-partition", official_with_partition(lambda lines: lines[:6] + lines[7:]),
     ["{root}/list_eval_partition.txt: no partition for 000007.jpg, listed in list_attr_celeba.txt"]),
    ("28-partition-not-utf8", official_with_partition(_replace(3, "0000\udcff4.jpg 0")),
     ["{root}/list_eval_partition.txt:4: not a text file", "is not UTF-8"]),
    ("29-official-with-identity", params_change({"split.method": "official", "split.group_by": "identity"}),
     ["params.yaml: split.method: official", "split.group_by must be none"]),
    ("31-imagenet-weights-missing", params_change({"model.weights": "imagenet"}),
     ["model.weights=imagenet: vgg16-397923af.pth is not in the torch cache; place it at",
      "/hub/checkpoints/vgg16-397923af.pth (from https://download.pytorch.org/models/vgg16-397923af.pth"]),
    ("32-weights-file-missing", params_change({"model.weights": "/no/such/vgg16.pt"}),
     ["model.weights: /no/such/vgg16.pt not found"]),
    ("30-partition-one-class-in-val", partition_val_of_one_class,
     ["{root}/list_eval_partition.txt: partition 1 (val) holds 2 of the listed images, 0 male and 2 female",
      "split.method: official needs both classes"]),
]


@pytest.mark.parametrize("breakage,culprits", [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_split_fails_in_one_line_and_keeps_the_earlier_split(project, celeba, breakage, culprits):
    split(load_params(project))  # an earlier good run
    before = split_outputs(project)
    assert set(before) == {"train.csv", "val.csv", "test.csv", "test_attributes.csv", "manifest.csv", "split.json"}
    breakage(celeba, project)
    proc = run_stage("split", project)
    assert_one_line_error(proc, *(c.format(root=celeba) for c in culprits))
    assert proc.returncode == 1
    assert split_outputs(project) == before  # byte for byte, and no temp file left behind


def test_the_unbroken_partition_file_splits(project, celeba):
    """The control for cases 24-28: their partition file, unbroken, is the split."""
    official_with_partition()(celeba, project)
    proc = run_stage("split", project)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = project.parent / "data" / "split"
    assert {s: read_split(out, s)["image_id"].tolist() for s in ("train", "val", "test")} == {
        "train": [f"{i:06d}.jpg" for i in [*range(7, 25), *range(31, 41)]],
        "val": [f"{i:06d}.jpg" for i in range(1, 7)], "test": [f"{i:06d}.jpg" for i in range(25, 31)]}


# --- params cases run through the train stage --------------------------------------------

def test_11_negative_lr_fails_the_train_stage(project):
    edit_params(project, {f"{V}.lr": -0.001})
    proc = run_stage("train", project, "--variant", VARIANT)
    err = assert_one_line_error(proc)
    assert err == f"error: params.yaml: {V}.lr must be a positive number, got -0.001"


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (4-5 s), copied into each train project."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def split_project(project, empty_mlflow_db):
    """``project`` with a good split made (the train stage reads it before the model) and
    its MLflow store (``sqlite:///mlflow.db``) created."""
    split(load_params(project))
    shutil.copy(empty_mlflow_db, project.parent / "mlflow.db")
    return project


def test_17_weights_file_missing(split_project, tmp_path):
    missing = tmp_path / "no-such-weights.pt"
    edit_params(split_project, {"model.weights": str(missing)})
    proc = run_stage("train", split_project, "--variant", VARIANT)
    assert_one_line_error(proc, "model.weights", str(missing), "not found")
    assert not (split_project.parent / "models").exists()


def test_18_weights_with_wrong_shapes(split_project, tmp_path):
    weights = tmp_path / "small.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, weights)  # a real VGG-16 would be 528 MB
    edit_params(split_project, {"model.weights": str(weights)})
    proc = run_stage("train", split_project, "--variant", VARIANT)
    assert_one_line_error(proc, str(weights), "model.weights key 'features.0.weight' has shape (1,)",
                          "expected (64, 3, 3, 3)")
    assert not (split_project.parent / "models").exists()


def test_train_names_an_image_that_broke_after_the_split(split_project, celeba):
    train_ids = read_split(load_params(split_project).path("split.dir"), "train")["image_id"]
    bad = celeba / IMAGE_DIR / train_ids[0]
    bad.write_bytes(bad.read_bytes()[:300])
    proc = run_stage("train", split_project, "--variant", VARIANT)
    assert_one_line_error(proc, str(bad), "truncated")


# --- unusual images are accepted -----------------------------------------------------------

def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_unusual_images_are_accepted(celeba, project):
    face = Image.open(image(celeba, 1)).convert("RGB")
    unusual = {
        1: lambda p: face.convert("L").save(p, "JPEG"),  # greyscale
        2: lambda p: face.convert("CMYK").save(p, "JPEG"),  # CMYK JPEG
        3: lambda p: face.convert("P", palette=Image.ADAPTIVE).save(p, "PNG"),  # palette, PNG under .jpg
        4: lambda p: face.save(p, "PNG"),  # RGB PNG under .jpg
        5: lambda p: face.resize((100, 120)).save(p, "JPEG"),
        6: lambda p: face.resize((300, 300)).save(p, "JPEG"),
        7: lambda p: face.convert("RGBA").save(p, "PNG"),  # alpha
        8: lambda p: p.write_bytes(_jpeg_bytes(face) + b"\0" * 5000),  # zero padding after the end marker
        9: lambda p: p.write_bytes(_jpeg_bytes(face) + b"trailing data"),  # data after the end marker
        10: lambda p: face.save(p, "JPEG", progressive=True),
        11: lambda p: Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 257).save(p, "PNG"),  # 16 bit
        12: lambda p: face.convert("P", palette=Image.ADAPTIVE).save(p, "PNG", transparency=0),
        13: lambda p: face.convert("1").save(p, "PNG"),  # bilevel
    }
    for number, save in unusual.items():
        save(image(celeba, number))
    modes = {Image.open(image(celeba, n)).mode for n in unusual}
    assert {"L", "CMYK", "P", "RGB", "RGBA", "1"} <= modes

    proc = run_stage("split", project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""

    frame = read_attributes(celeba)
    assert check_images(celeba, frame["image_id"]) == N_IMAGES
    ds = FaceDataset(celeba, frame, 32, train=True, seed=1)
    ds.set_epoch(1)
    for number in unusual:
        x, _ = ds[number - 1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    x, y = next(iter(make_loader(ds, 16, 0, shuffle=False)))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)


# --- the data set checks and the loader, in process ----------------------------------------

def test_check_images_reports_the_first_bad_one_and_how_many_more(celeba):
    image(celeba, 3).unlink()
    image(celeba, 5).write_bytes(b"")
    image(celeba, 6).write_bytes(image(celeba, 6).read_bytes()[:-100])
    with pytest.raises(PipelineError) as exc:
        check_images(celeba, read_attributes(celeba)["image_id"])
    assert str(exc.value) == (f"{image(celeba, 3)}: listed in list_attr_celeba.txt but not found "
                              "(and 2 more bad images)")


def test_decode_errors_in_training_name_the_file(celeba, monkeypatch):
    frame = read_attributes(celeba)
    ds = FaceDataset(celeba, frame, 32)  # all images fine when the stage starts ...
    data = image(celeba, 1).read_bytes()
    image(celeba, 1).write_bytes(data[: len(data) // 2])  # ... then they change under it
    image(celeba, 2).write_bytes(b"not an image at all")
    image(celeba, 3).unlink()
    with pytest.raises(PipelineError, match=r"000001\.jpg: file is truncated \(image file is truncated"):
        ds[0]
    with pytest.raises(PipelineError, match=r"000002\.jpg: not an image file Pillow can read"):
        ds[1]
    with pytest.raises(PipelineError, match=r"000003\.jpg: image not found"):
        ds[2]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a decompression bomb, as Pillow sees it
    with pytest.raises(PipelineError, match=r"000004\.jpg: cannot decode image \(DecompressionBombError"):
        ds[3]
    with pytest.raises(PipelineError, match=r"000004\.jpg: image too large"):
        check_images(celeba, ["000004.jpg"])


def test_a_worker_error_is_still_one_line(celeba, capsys):
    frame = read_attributes(celeba)
    ds = FaceDataset(celeba, frame, 32)
    image(celeba, 1).write_bytes(image(celeba, 1).read_bytes()[:500])
    batches = iter(make_loader(ds, 8, 1, shuffle=False))
    try:
        with pytest.raises(SystemExit) as exc:
            run_main(lambda: next(batches))
    finally:
        batches._shutdown_workers()  # now: the error's traceback would keep it alive, then a 5 s join
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {image(celeba, 1)}: file is truncated (")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_edited_split_file_is_named(project):
    params = load_params(project)
    split(params)
    path = params.path("split.dir") / "test.csv"
    path.write_text(path.read_text().replace(",1\n", ",2\n", 1))
    with pytest.raises(PipelineError, match=r"test\.csv:\d+: expected an image id and a label 0 or 1"):
        read_split(params.path("split.dir"), "test")


# --- params checks, in process ----------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    ({f"{V}.lr": float("inf")}, f"{V}.lr must be a positive number, got inf"),
    ({f"{V}.lr": float("nan")}, f"{V}.lr must be a positive number, got nan"),
    ({f"{V}.lr": True}, f"{V}.lr must be a positive number, got True"),
    ({f"{V}.lr": "1e-3"}, "got '1e-3' (text: YAML reads a number without a dot"),
    ({f"{V}.learning_rate": 0.1}, f"{V} has unknown key 'learning_rate'"),
    ({"train.epochs": True}, "train.epochs must be an integer >= 1, got True"),
    ({"train.epochs": 2.5}, "train.epochs must be an integer >= 1, got 2.5"),
    ({"train.batch_size": 0}, "train.batch_size must be an integer >= 1, got 0"),
    ({"train.num_workers": -1}, "train.num_workers must be auto or an integer >= 0, got -1"),
    ({"train.device": "gpu"}, "train.device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ({"data.image_size": True}, "data.image_size must be an integer >= 32"),
    ({"data.image_size": 31}, "data.image_size must be an integer >= 32"),
    ({"split.fractions": {"train": 0.9, "val": 0.1, "test": 0}}, "split.fractions.test must be a positive number"),
    ({"model.weights": None}, "model.weights must be none, imagenet or the path of a VGG-16 state dict, got None"),
    ({"base.seed": -1}, "base.seed must be an integer >= 0"),
    ({"data.synthetic.label_noise": 2}, "data.synthetic.label_noise must be a number from 0 to 1"),
    ({"data.limit": 5}, "data.limit must be null (every image) or an integer >= 20, got 5"),
    ({"split.group_by": "identities"}, "split.group_by must be one of none, identity, got 'identities'"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_params_checks(tmp_path, overrides, message):
    path = write_params(tmp_path, {"train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}})
    edit_params(path, overrides)
    with pytest.raises(PipelineError) as exc:
        load_params(path)
    assert str(exc.value).startswith("params.yaml: ") and message in str(exc.value)


def test_data_root_that_is_a_file(tmp_path):
    (tmp_path / "celeba").write_text("")
    params = load_params(write_params(tmp_path, {"data.source": "celeba", "data.root": str(tmp_path / "celeba")}))
    with pytest.raises(PipelineError, match=rf"^data.root: {tmp_path}/celeba is not a folder"):
        params.dataset_root()


# --- run_main ------------------------------------------------------------------------------

def _raise(exc: BaseException):
    def fn():
        raise exc
    return fn


def test_run_main_unexpected_error_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("PIPELINE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        run_main(_raise(ValueError("first line\n  second line")))
    assert exc.value.code == 1
    assert capsys.readouterr().err == ("error: ValueError: first line second line "
                                       "(unexpected; set PIPELINE_DEBUG=1 to see the traceback)\n")


def test_run_main_debug_reraises(monkeypatch):
    monkeypatch.setenv("PIPELINE_DEBUG", "1")
    with pytest.raises(ValueError, match="boom"):
        run_main(_raise(ValueError("boom")))
    with pytest.raises(PipelineError, match="bad"):
        run_main(_raise(PipelineError("bad")))


def test_run_main_interrupt_exits_130(capsys, monkeypatch):
    monkeypatch.delenv("PIPELINE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        run_main(_raise(KeyboardInterrupt()))
    assert exc.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_a_failed_synthetic_regeneration_keeps_the_set_and_the_split(make_params, monkeypatch):
    """The generate stage makes the set next to its place and swaps it in: a failure while
    generating keeps the set that the earlier split lists point at."""
    params = make_params({"data.synthetic.images": 40})
    synthetic.generate_from_params(params)
    split(params)
    before = split_outputs(Path(params.root) / "params.yaml")
    images_before = {p.name: p.read_bytes() for p in (params.dataset_root() / IMAGE_DIR).iterdir()}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synthetic, "generate", fail)
    with pytest.raises(OSError):
        synthetic.generate_from_params(params)
    assert split_outputs(Path(params.root) / "params.yaml") == before
    assert {p.name: p.read_bytes() for p in (params.dataset_root() / IMAGE_DIR).iterdir()} == images_before
    # features/: the split stage's record of the files it hashed (pipeline/data/manifest.py)
    assert sorted(p.name for p in params.path("data.synthetic.dir").parent.iterdir()) == ["features", "split",
                                                                                        "synthetic"]


def test_an_empty_data_root_is_one_line_and_leaves_the_split(make_params, tmp_path):
    params = make_params({"data.synthetic.images": 40})
    synthetic.generate_from_params(params)
    split(params)
    before = split_outputs(Path(params.root) / "params.yaml")
    (tmp_path / "empty").mkdir()
    write_params(tmp_path, {"data.source": "celeba", "data.root": str(tmp_path / "empty")})
    proc = run_stage("split", tmp_path / "params.yaml")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"error: data.root: {tmp_path}/empty is empty (params.yaml data.root must be a CelebA " \
                          "folder: img_align_celeba/ and list_attr_celeba.txt, the authors' Anno/ and Img/, or Kaggle's " \
                          "list_attr_celeba.csv)\n"
    assert split_outputs(tmp_path / "params.yaml") == before


def test_the_generated_set_never_overlaps_a_celeba_root(tmp_path):
    """The generate stage replaces data.synthetic.dir, so it may not be, hold or sit in data.root."""
    celeba = str(tmp_path / "data" / "celeba")
    for generated in ("data/celeba", "data", "data/celeba/gen"):
        path = write_params(tmp_path, {"data.source": "celeba", "data.root": celeba, "data.synthetic.dir": generated})
        with pytest.raises(PipelineError, match=rf"^params.yaml: data.root \({re.escape(celeba)}\) and data.synthetic.dir "
                                                rf"\({generated}\) must not overlap"):
            load_params(path)
    path = write_params(tmp_path, {"data.root": "data/other"})  # synthetic: root is the generated set
    with pytest.raises(PipelineError, match=r"^params.yaml: data.root must be data.synthetic.dir \(data/synthetic\) "
                                            r"when data.source is synthetic, got 'data/other'"):
        load_params(path)


def test_a_relative_celeba_root_is_refused_in_one_line(tmp_path):
    """A queued or temporary ``dvc exp run`` works in a copy elsewhere, which DVC fills with
    tracked files only: a relative data.root (inside the repo or beside it) points at nothing
    there, and DVC itself would fail before any stage with a path in its temporary folder."""
    for given in ("data/celeba", "../celeba"):
        path = write_params(tmp_path, {"data.source": "celeba", "data.root": given})
        with pytest.raises(PipelineError, match=rf"^params.yaml: data.root must be an absolute path for data.source "
                                                rf"celeba, got '{re.escape(given)}': a queued or temporary dvc exp run"):
            load_params(path)


def test_the_readmes_error_lines_are_what_the_code_says(celeba, tmp_path):
    """The README quotes error lines; each must be the code's own, word for word (the folder
    /data/celeba standing for the user's)."""
    text = (REPO / "README.md").read_text()
    quoted = [line.strip() for line in text[text.index("## When something goes wrong"):].splitlines()
              if line.strip().startswith("error: ")]
    assert len(quoted) == 2, quoted
    label_outside(celeba, None)
    with pytest.raises(PipelineError) as male:
        read_attributes(celeba)
    params = write_params(tmp_path, {f"{V}.lr": -0.001})
    with pytest.raises(PipelineError) as lr:
        load_params(params)
    assert quoted == [f"error: {male.value}".replace(str(celeba), "/data/celeba"), f"error: {lr.value}"]
