"""The CelebA-layout reader and the image transforms."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.cli import PipelineError
from pipeline.data.celeba import read_attributes, read_identities
from pipeline.data.dataset import FaceDataset, epoch_flips
from pipeline.data.synthetic import ATTRIBUTES


def write_celeba(root: Path, males: list[int], header=ATTRIBUTES, size=(178, 218)):
    """A tiny CelebA folder: one image per entry of ``males`` (1 male, 0 female)."""
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    male_col = list(header).index("Male") if "Male" in header else None
    for i, male in enumerate(males, start=1):
        image_id = f"{i:06d}.jpg"
        Image.new("RGB", size, (200 * male, 40, 90)).save(root / "img_align_celeba" / image_id)
        values = ["-1"] * len(header)
        if male_col is not None:
            values[male_col] = "1" if male else "-1"
        rows.append(f"{image_id} " + " ".join(values))
    (root / "list_attr_celeba.txt").write_text(f"{len(males)}\n{' '.join(header)}\n" + "\n".join(rows) + "\n")
    (root / "identity_CelebA.txt").write_text("".join(f"{i:06d}.jpg {i % 3}\n" for i in range(1, len(males) + 1)))
    return root


def test_reader_maps_male_to_0_1(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 0, 1, 1])
    frame = read_attributes(root)
    assert list(frame["image_id"]) == [f"{i:06d}.jpg" for i in range(1, 6)]
    assert list(frame["label"]) == [1, 0, 0, 1, 1]
    assert read_identities(root)["identity"].tolist() == [1, 2, 0, 1, 2]


def test_reader_rejects_missing_male_column(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0], header=[a for a in ATTRIBUTES if a != "Male"])
    with pytest.raises(PipelineError, match="no 'Male' column"):
        read_attributes(root)


def test_reader_rejects_label_outside_minus_one_one(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 1])
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    fields = lines[3].split()
    fields[1 + ATTRIBUTES.index("Male")] = "0"
    lines[3] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=r"000002\.jpg has Male=0"):
        read_attributes(root)


def test_reader_rejects_duplicate_id(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0])
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(PipelineError, match=r"000001\.jpg is listed more than once"):
        read_attributes(root)


@pytest.mark.parametrize("content", [None, "", "0\n"])
def test_reader_missing_or_empty_file(tmp_path, content):
    root = tmp_path / "c"
    root.mkdir()
    if content is not None:
        (root / "list_attr_celeba.txt").write_text(content)
    with pytest.raises(PipelineError, match="list_attr_celeba.txt"):
        read_attributes(root)


def test_dataset_resizes_normalises_and_flips_by_epoch(tmp_path):
    root = tmp_path / "c"
    (root / "img_align_celeba").mkdir(parents=True)
    img = np.zeros((218, 178, 3), dtype=np.uint8)
    img[:, :89] = 255  # left half white
    Image.fromarray(img).save(root / "img_align_celeba" / "000001.jpg", quality=100)
    import pandas as pd

    frame = pd.DataFrame({"image_id": ["000001.jpg"] * 64, "label": [1] * 64})
    ds = FaceDataset(root, frame, 32, train=True, seed=3)
    ds.set_epoch(1)
    flips = epoch_flips(64, 3, 1)
    assert flips.any() and not flips.all()
    assert torch.equal(ds.flips, flips)
    x0, y0 = ds[int(torch.nonzero(~flips)[0])]
    x1, _ = ds[int(torch.nonzero(flips)[0])]
    assert x0.shape == (3, 32, 32) and y0.item() == 1.0
    assert x0[:, :, 2].mean() > x0[:, :, -3].mean()  # left bright, unflipped
    assert torch.allclose(x1, torch.flip(x0, dims=[2]), atol=1e-5)
    # white normalises to (1 - mean) / std
    assert x0[0, 5, 2].item() == pytest.approx((1 - 0.485) / 0.229, abs=0.05)
    # evaluation never flips, and flips of a new epoch differ
    assert not FaceDataset(root, frame, 32).flips.any()
    assert not torch.equal(epoch_flips(64, 3, 2), flips)


# --- both layouts: official and Kaggle ---------------------------------------------------------

from helpers.celeba_layouts import KAGGLE_EXTRAS, attr_rows, kaggle_from, official_from  # noqa: E402
from helpers.config import CELEBA_SAMPLE  # noqa: E402

from pipeline.data.celeba import (  # noqa: E402
    ATTR_CSV,
    KAGGLE,
    OFFICIAL,
    detect_layout,
    identities_of,
)
from pipeline.data.images import check_images  # noqa: E402

needs_sample = pytest.mark.needs(CELEBA_SAMPLE.is_dir(), reason=f"real CelebA sample not found at {CELEBA_SAMPLE}")


def test_layouts_are_detected(tmp_path):
    official = write_celeba(tmp_path / "o", [1, 0, 1])
    kaggle = kaggle_from(official, tmp_path / "k")
    o, k = detect_layout(official), detect_layout(kaggle)
    assert (o.kind, o.attr_file, o.image_dir) == (OFFICIAL, official / "list_attr_celeba.txt",
                                                  official / "img_align_celeba")
    assert (k.kind, k.attr_file, k.image_dir) == (KAGGLE, kaggle / "list_attr_celeba.csv",
                                                  kaggle / "img_align_celeba" / "img_align_celeba")
    assert k.identity_file == kaggle / "identity_CelebA.txt"
    # nothing there yet: the official names, which the errors then show
    empty = detect_layout(tmp_path / "none")
    assert (empty.kind, empty.attr_file.name, empty.image_dir) == (OFFICIAL, "list_attr_celeba.txt",
                                                                   tmp_path / "none" / "img_align_celeba")
    # a Kaggle CSV without its images: the error names the folder Kaggle's zip makes
    (tmp_path / "csv-only").mkdir()
    (tmp_path / "csv-only" / ATTR_CSV).write_text("image_id,Male\n000001.jpg,1\n")
    assert detect_layout(tmp_path / "csv-only").image_dir == tmp_path / "csv-only" / "img_align_celeba" / "img_align_celeba"


def test_kaggle_layout_reads_and_loads_like_the_official_one(tmp_path):
    official = write_celeba(tmp_path / "o", [1, 0, 0, 1, 1, 0])
    kaggle = kaggle_from(official, tmp_path / "k")
    frame = read_attributes(kaggle)
    assert frame.equals(read_attributes(official))
    assert read_identities(kaggle).equals(read_identities(official))
    assert check_images(kaggle, frame["image_id"]) == 6
    a, b = FaceDataset(official, frame, 32), FaceDataset(kaggle, frame, 32)
    assert b.folder == kaggle / "img_align_celeba" / "img_align_celeba"
    for i in range(6):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]


def test_the_official_file_wins_when_both_exist(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 1])
    (root / ATTR_CSV).write_text("image_id,Male\n000001.jpg,-1\n")  # would say otherwise
    assert detect_layout(root).kind == OFFICIAL
    assert list(read_attributes(root)["label"]) == [1, 0, 1]


def test_images_without_a_row_and_kaggles_other_csvs_are_ignored(tmp_path):
    official = write_celeba(tmp_path / "o", [1, 0, 0, 1, 1, 0])
    kaggle = kaggle_from(official, tmp_path / "k", n=4)  # 6 images, 4 rows (a subset such as CelebA30k)
    assert all((kaggle / name).is_file() for name in KAGGLE_EXTRAS)
    frame = read_attributes(kaggle)
    assert list(frame["image_id"]) == [f"{i:06d}.jpg" for i in range(1, 5)]
    assert check_images(kaggle, frame["image_id"]) == 4


def test_a_listed_image_missing_in_the_kaggle_folder_is_named(tmp_path):
    kaggle = kaggle_from(write_celeba(tmp_path / "o", [1, 0, 1]), tmp_path / "k")
    gone = kaggle / "img_align_celeba" / "img_align_celeba" / "000002.jpg"
    gone.unlink()
    with pytest.raises(PipelineError) as exc:
        check_images(kaggle, read_attributes(kaggle)["image_id"])
    assert str(exc.value) == f"{gone}: listed in list_attr_celeba.csv but not found"
    (kaggle / "img_align_celeba").rename(tmp_path / "elsewhere")  # no image folder at all
    with pytest.raises(PipelineError, match=r"img_align_celeba/img_align_celeba: image folder not found "
                                            r"\(the images listed in list_attr_celeba.csv belong there\)"):
        check_images(kaggle, ["000001.jpg"])


HEADER = "image_id,5_o_Clock_Shadow,Male,Young"


@pytest.mark.parametrize("text,message", [
    ("", "list_attr_celeba.csv: attribute file is empty"),
    (f"{HEADER}\n", "list_attr_celeba.csv: attribute file lists no images"),
    ("id,5_o_Clock_Shadow,Male,Young\n000001.jpg,1,1,1\n", "list_attr_celeba.csv:1: header has no 'image_id' column"),
    ("202599\n5_o_Clock_Shadow Male Young\n", "list_attr_celeba.csv:1: header has no 'image_id' column"),
    ("image_id,5_o_Clock_Shadow,Gender,Young\n000001.jpg,1,1,1\n", "list_attr_celeba.csv:1: header has no 'Male' column"),
    (f"{HEADER}\n000001.jpg,1,1,1\n000002.jpg,1,0,1\n", "list_attr_celeba.csv:3: 000002.jpg has Male=0, expected -1 or 1"),
    (f"{HEADER}\n000001.jpg,1,1,1\n\n000002.jpg,1,,1\n", "list_attr_celeba.csv:4: 000002.jpg has Male=, expected -1 or 1"),
    (f"{HEADER}\n000001.jpg,1,1,1\n000002.jpg,1,1,1\n000001.jpg,1,-1,1\n",
     "list_attr_celeba.csv:4: image id 000001.jpg is listed more than once (first on line 2)"),
    (f"{HEADER}\n000001.jpg,1,1,1\n000002.jpg,1,1\n", "list_attr_celeba.csv:3: 000002.jpg has 2 values, the header names 3"),
    (f"{HEADER}\n000001.jpg 1 1 1\n", "list_attr_celeba.csv:2: 000001.jpg 1 1 1 has 0 values, the header names 3"),
    (f"{HEADER}\n../000001.jpg,1,1,1\n", "list_attr_celeba.csv:2: image id '../000001.jpg' is not a file name"),
], ids=["empty", "header-only", "no-image_id", "official-text-renamed", "no-Male", "Male-0", "Male-empty",
        "duplicate", "short-row", "not-comma-separated", "path-as-id"])
def test_kaggle_csv_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / ATTR_CSV).write_text(text)
    with pytest.raises(PipelineError) as exc:
        read_attributes(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / ATTR_CSV}") and message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_kaggle_csv_with_bom_crlf_and_spaces(tmp_path):
    (tmp_path / ATTR_CSV).write_bytes(("\ufeff" + f"{HEADER}\r\n000001.jpg, 1, 1 ,1\r\n000002.jpg,1,-1,1\r\n")
                                      .encode("utf-8"))
    frame = read_attributes(tmp_path)
    assert list(frame["image_id"]) == ["000001.jpg", "000002.jpg"] and list(frame["label"]) == [1, 0]


def test_identities_of_names_the_missing_file_or_image(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 1, 0])
    assert identities_of(root, ["000003.jpg", "000001.jpg"]).tolist() == [0, 1]
    path = root / "identity_CelebA.txt"
    path.write_text("000001.jpg 1\n000002.jpg 2\n")
    with pytest.raises(PipelineError) as exc:
        identities_of(root, read_attributes(root)["image_id"])
    assert str(exc.value) == f"{path}: no identity for 000003.jpg, listed in list_attr_celeba.txt (and 1 more)"
    path.write_text("000001.jpg 1\n000002.jpg two\n")
    with pytest.raises(PipelineError, match=rf"^{path}:2: expected 'image_id identity' \(an integer\), got '000002.jpg two'$"):
        identities_of(root, ["000001.jpg"])
    path.write_text("000001.jpg 1\n000001.jpg 2\n")
    with pytest.raises(PipelineError, match=rf"^{path}:2: image id 000001.jpg is listed more than once"):
        identities_of(root, ["000001.jpg"])
    path.unlink()
    with pytest.raises(PipelineError, match=rf"^{path}: identity file not found \(split.group_by: identity needs"):
        identities_of(root, ["000001.jpg"])


@needs_sample
def test_real_sample_in_kaggle_layout_reads_to_the_same_frame(tmp_path):
    """A few hundred rows of the real sample, written both ways; Kaggle's folder holds all 4,584
    images (most without a row)."""
    n = 300
    official = official_from(CELEBA_SAMPLE, tmp_path / "official", n)
    kaggle = kaggle_from(CELEBA_SAMPLE, tmp_path / "kaggle", n)
    a, b = read_attributes(official), read_attributes(kaggle)
    assert (detect_layout(official).kind, detect_layout(kaggle).kind) == (OFFICIAL, KAGGLE)
    assert list(a.columns) == list(b.columns) == ["image_id", "label"] and len(a) == n
    assert a.equals(b)
    header, rows = attr_rows(CELEBA_SAMPLE, n)
    assert list(b["label"]) == [int(r[1 + header.index("Male")] == "1") for r in rows]
    assert read_attributes(CELEBA_SAMPLE).head(n).equals(a)
    assert len(list((kaggle / "img_align_celeba" / "img_align_celeba").iterdir())) == 4584
    assert check_images(official, a["image_id"]) == check_images(kaggle, b["image_id"]) == n
    assert identities_of(kaggle, b["image_id"]).equals(identities_of(official, a["image_id"]))
    x, y = FaceDataset(kaggle, b.head(2), 64)[1]
    assert torch.equal(x, FaceDataset(official, a.head(2), 64)[1][0]) and y.item() == a["label"][1]


# --- the authors' archive layout and the partition file -------------------------------------

import pathlib  # noqa: E402

from helpers.celeba_layouts import archive_from, partition_blocks, write_partition  # noqa: E402

from pipeline.data.celeba import ARCHIVE, partition_file  # noqa: E402
from pipeline.data.partition import partitions_of, read_partition  # noqa: E402


def test_the_archive_layout_is_detected_and_reads_like_the_official_one(tmp_path):
    official = write_celeba(tmp_path / "o", [1, 0, 0, 1, 1, 0])
    archive = archive_from(official, tmp_path / "a", n=4)
    a = detect_layout(archive)
    assert (a.kind, a.attr_file, a.image_dir, a.identity_file, a.partition_file) == (
        ARCHIVE, archive / "Anno" / "list_attr_celeba.txt", archive / "Img" / "img_align_celeba",
        archive / "Anno" / "identity_CelebA.txt", archive / "Eval" / "list_eval_partition.txt")
    frame = read_attributes(archive)
    assert frame.equals(read_attributes(official).head(4))
    assert read_identities(archive).equals(read_identities(official))
    assert check_images(archive, frame["image_id"]) == 4
    assert FaceDataset(archive, frame, 32).folder == archive / "Img" / "img_align_celeba"
    assert torch.equal(FaceDataset(archive, frame, 32)[2][0], FaceDataset(official, frame, 32)[2][0])
    # each layout's partition file, also where it is not (yet) there
    kaggle = kaggle_from(official, tmp_path / "k")
    assert partition_file(official) == official / "list_eval_partition.txt"
    assert partition_file(kaggle) == kaggle / "list_eval_partition.csv"
    assert partition_file(archive) == archive / "Eval" / "list_eval_partition.txt"
    # an Anno/ folder without its attribute file: the error names where it belongs, and the layouts
    (archive / "Anno" / "list_attr_celeba.txt").unlink()
    assert detect_layout(archive).kind == ARCHIVE
    with pytest.raises(PipelineError) as exc:
        read_attributes(archive)
    assert str(exc.value) == (f"{archive}/Anno/list_attr_celeba.txt: attribute file not found (CelebA keeps it "
                              "as list_attr_celeba.txt in the data folder, as Anno/list_attr_celeba.txt in the "
                              "authors' archive, or as Kaggle's list_attr_celeba.csv)")


def test_detect_layout_is_a_few_stat_calls(tmp_path, monkeypatch):
    """The preflight may call it on every stage: it never lists a folder or reads a file."""
    official = write_celeba(tmp_path / "o", [1, 0])
    folders = [official, kaggle_from(official, tmp_path / "k"), archive_from(official, tmp_path / "a"),
               tmp_path / "none"]
    calls = []
    real_stat = pathlib.Path.stat
    monkeypatch.setattr(pathlib.Path, "stat", lambda self, **kw: calls.append(self) or real_stat(self, **kw))
    for forbidden in ("iterdir", "read_text", "read_bytes", "open", "glob", "rglob"):
        monkeypatch.setattr(pathlib.Path, forbidden, lambda self, *a, **kw: pytest.fail("detect_layout read"))
    for root in folders:
        calls.clear()
        detect_layout(root)
        assert len(calls) <= 5, (root, calls)  # at most: two attribute files, Anno/, two image folders


def test_partition_file_reads_both_formats_and_checks_every_row(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 1, 0, 1])
    ids = [f"{i:06d}.jpg" for i in range(1, 6)]
    write_partition(root / "list_eval_partition.txt", {**dict(zip(ids, [0, 2, 1, 0, 2])), "202599.jpg": 1})
    table = read_partition(root)
    assert table["image_id"].tolist() == [*ids, "202599.jpg"] and table["partition"].tolist() == [0, 2, 1, 0, 2, 1]
    assert partitions_of(root, ["000003.jpg", "000002.jpg"]).tolist() == [1, 2]  # the order asked for
    kaggle = kaggle_from(root, tmp_path / "k")  # Kaggle's CSV, CRLF and spaces
    (kaggle / "list_eval_partition.csv").write_text("image_id,partition\r\n" + "".join(
        f"{i}, {p}\r\n" for i, p in zip(ids, [2, 2, 0, 1, 0])))
    assert partitions_of(kaggle, ids).tolist() == [2, 2, 0, 1, 0]
    assert read_partition(tmp_path / "k-less") is None


TXT, CSV = "list_eval_partition.txt", "list_eval_partition.csv"


@pytest.mark.parametrize("name,content,message", [
    (TXT, "000001.jpg 0\n000002.jpg 0 1\n", f"{TXT}:2: expected 'image_id partition' (0 train, 1 val, 2 test), "
                                           "got '000002.jpg 0 1'"),
    (TXT, "000001.jpg 0\n\n000002.jpg\n", f"{TXT}:3: expected 'image_id partition' (0 train, 1 val, 2 test), "
                                         "got '000002.jpg'"),
    (TXT, "000001.jpg 0\n000002.jpg 3\n", f"{TXT}:2: 000002.jpg has partition 3, expected 0 (train), 1 (val) or 2 (test)"),
    (TXT, "image_id partition\n000001.jpg 0\n", f"{TXT}:1: image_id has partition partition, expected 0"),
    (TXT, "000001.jpg 0\n000002.jpg 1\n000001.jpg 2\n",
     f"{TXT}:3: image id 000001.jpg is listed more than once (first on line 1)"),
    (TXT, b"000001.jpg 0\n000002.jpg 1\n0000\xff3.jpg 2\n", f"{TXT}:3: not a text file (byte 30 is not UTF-8)"),
    (TXT, "\n", f"{TXT}: partition file lists no images"),
    (CSV, "image_id;partition\n000001.jpg;0\n", f"{CSV}:1: expected the header 'image_id,partition' (Kaggle's "
                                                f"{CSV}), got 'image_id;partition'"),
    (CSV, "image_id,partition\n000001.jpg,0\n000002.jpg,4\n", f"{CSV}:3: 000002.jpg has partition 4, expected 0"),
    (CSV, "image_id,partition\n000001.jpg,\n", f"{CSV}:2: 000001.jpg has partition (none), expected 0"),
    (CSV, "image_id,partition\n000001.jpg,0,1\n", f"{CSV}:2: expected 'image_id,partition' values (0 train, "
                                                  "1 val, 2 test), got '000001.jpg,0,1'"),
], ids=["txt-three-fields", "txt-one-field", "txt-partition-3", "txt-header", "txt-duplicate", "txt-not-utf8",
        "txt-empty", "csv-header", "csv-partition-4", "csv-partition-empty", "csv-three-fields"])
def test_partition_file_errors_name_file_and_line(tmp_path, name, content, message):
    root = write_celeba(tmp_path / "c", [1, 0])
    if name == CSV:
        root = kaggle_from(root, tmp_path / "k")
    path = root / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PipelineError) as exc:
        partitions_of(root, ["000001.jpg"])
    assert str(exc.value).startswith(f"{path}") and message in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)


def test_partitions_of_names_the_missing_file_or_image(tmp_path):
    root = write_celeba(tmp_path / "c", [1, 0, 1, 0])
    path = root / "list_eval_partition.txt"
    with pytest.raises(PipelineError) as exc:
        partitions_of(root, ["000001.jpg"])
    assert str(exc.value) == (f"{path}: partition file not found (split.method: official reads CelebA's own "
                              "train/val/test partition from it: 'image_id partition' rows, 0 train, 1 val, 2 test)")
    write_partition(path, {"000001.jpg": 0, "000002.jpg": 1})
    with pytest.raises(PipelineError) as exc:
        partitions_of(root, read_attributes(root)["image_id"])
    assert str(exc.value) == f"{path}: no partition for 000003.jpg, listed in list_attr_celeba.txt (and 1 more)"
    kaggle = kaggle_from(root, tmp_path / "k")
    (kaggle / "list_eval_partition.csv").unlink()
    with pytest.raises(PipelineError, match=r"list_eval_partition.csv: partition file not found \(split.method: "
                                            r"official .*: header image_id,partition, 0 train"):
        partitions_of(kaggle, ["000001.jpg"])


def test_partition_blocks_cut_like_celeba():
    ids = [f"{i:06d}.jpg" for i in range(1, 202_600)]
    values = list(partition_blocks(ids).values())
    assert [values.count(k) for k in (0, 1, 2)] == [162_770, 19_867, 19_962]
    assert values == sorted(values)


@needs_sample
def test_real_sample_in_the_archive_layout(tmp_path):
    n = 300
    archive = archive_from(CELEBA_SAMPLE, tmp_path / "archive", n)
    layout = detect_layout(archive)
    assert layout.kind == ARCHIVE and layout.image_dir.resolve() == (CELEBA_SAMPLE / "img_align_celeba")
    frame = read_attributes(archive)
    assert frame.equals(read_attributes(CELEBA_SAMPLE).head(n))
    assert check_images(archive, frame["image_id"]) == n
    assert identities_of(archive, frame["image_id"]).equals(identities_of(CELEBA_SAMPLE, frame["image_id"]))
    table = read_partition(archive)
    assert len(table) == 4584  # every image of the sample, as the authors' file lists every image
    assert partitions_of(archive, frame["image_id"]).value_counts().sort_index().tolist() == [241, 29, 30]
