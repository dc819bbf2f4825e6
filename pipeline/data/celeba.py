"""The three CelebA layouts people download, and their attribute, identity and partition files.

Three layouts, told apart by :func:`detect_layout` (the generated default uses the first)::

    official (the authors' files, flat in one folder)
    <root>/img_align_celeba/000001.jpg ...
    <root>/list_attr_celeba.txt     # count line, header of attribute names, "id v1 v2 ..." rows, v in {-1, 1}
    <root>/identity_CelebA.txt      # "id identity" rows (optional; split.group_by: identity needs it)
    <root>/list_eval_partition.txt  # "id partition" rows, 0 train, 1 val, 2 test (split.method: official)

    archive (the authors' Google Drive / Baidu folder as downloaded, img_align_celeba.zip unzipped in Img/)
    <root>/Img/img_align_celeba/000001.jpg ...
    <root>/Anno/list_attr_celeba.txt
    <root>/Anno/identity_CelebA.txt
    <root>/Eval/list_eval_partition.txt

    Kaggle (jessicali9530/celeba-dataset)
    <root>/img_align_celeba/img_align_celeba/000001.jpg ...
    <root>/list_attr_celeba.csv     # header "image_id,5_o_Clock_Shadow,...", "id,v1,v2,..." rows, v in {-1, 1}
    <root>/identity_CelebA.txt      # not in the Kaggle set; the official file, copied in, works
    <root>/list_eval_partition.csv  # header "image_id,partition", "id,p" rows (split.method: official)

Kaggle's other CSVs (list_bbox_celeba, list_landmarks_align_celeba) are not read, nor the
archive's other annotations. Image files that no attribute row lists (a subset such as CelebA30k)
are ignored, and so are partition rows of such images; a listed image that is missing is an error.

No torch here (nor in :mod:`pipeline.data.images`): the split stage, and its failure on bad data,
starts in well under a second.
"""
from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.core.cli import PipelineError

IMAGE_DIR = "img_align_celeba"  # official layout: <root>/img_align_celeba/; Kaggle: twice nested
ATTR_FILE = "list_attr_celeba.txt"  # official attribute file
ATTR_CSV = "list_attr_celeba.csv"  # Kaggle's attribute file
IDENTITY_FILE = "identity_CelebA.txt"
PARTITION_FILE = "list_eval_partition.txt"  # the authors' train/val/test partition
PARTITION_CSV = "list_eval_partition.csv"  # Kaggle's copy of it
ANNO_DIR, IMG_DIR, EVAL_DIR = "Anno", "Img", "Eval"  # the authors' archive: <root>/Anno/list_attr_celeba.txt, ...
OFFICIAL, KAGGLE, ARCHIVE = "official", "kaggle", "archive"
ID_COLUMN = "image_id"  # Kaggle CSV's id column
PARTITION_COLUMN = "partition"  # Kaggle partition CSV's other column
PARTITIONS = ("0", "1", "2")  # the partition file's values: train, val, test
LABEL_ATTR = "Male"


# --- layout ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where a data folder keeps its files; :func:`detect_layout` makes it. Every reader of
    the folder (attributes, identities, partition, image checks, the Dataset, the feature cache)
    takes its paths from here."""

    kind: str  # OFFICIAL, ARCHIVE or KAGGLE
    attr_file: Path
    image_dir: Path
    identity_file: Path
    partition_file: Path  # CelebA's own train/val/test partition (split.method: official)

    @property
    def csv(self) -> bool:
        """Kaggle's comma-separated files with a header; the other two layouts hold the authors'
        whitespace-separated text files."""
        return self.kind == KAGGLE


def detect_layout(root: Path) -> Layout:
    """The layout of ``root``, from the files present (a few ``stat`` calls: the stages and the
    preflight call it freely, so it never lists a folder or reads a file).

    Attribute file: ``list_attr_celeba.txt`` (official) if present, else ``list_attr_celeba.csv``
    (Kaggle) if present, else ``Anno/list_attr_celeba.txt`` (the authors' archive) when there is
    an ``Anno/`` folder (the file in it or not, so that the error names where it belongs), else
    the official name. Image folder: the archive's ``Img/img_align_celeba/``; else
    ``img_align_celeba/img_align_celeba/`` when that folder exists (Kaggle's zip), else
    ``img_align_celeba/``; when neither exists, the one the attribute file's layout would have.
    The identity and partition files are named, not looked for: the reader that needs one says
    when it is missing.
    """
    root = Path(root)
    if (root / ATTR_FILE).is_file():
        kind = OFFICIAL
    elif (root / ATTR_CSV).is_file():
        kind = KAGGLE
    else:
        kind = ARCHIVE if (root / ANNO_DIR).is_dir() else OFFICIAL
    if kind == ARCHIVE:
        anno = root / ANNO_DIR
        return Layout(kind, anno / ATTR_FILE, root / IMG_DIR / IMAGE_DIR, anno / IDENTITY_FILE,
                      root / EVAL_DIR / PARTITION_FILE)
    flat, nested = root / IMAGE_DIR, root / IMAGE_DIR / IMAGE_DIR
    if nested.is_dir():
        image_dir = nested
    elif flat.is_dir():
        image_dir = flat
    else:
        image_dir = nested if kind == KAGGLE else flat
    partition = root / (PARTITION_CSV if kind == KAGGLE else PARTITION_FILE)
    return Layout(kind, root / (ATTR_CSV if kind == KAGGLE else ATTR_FILE), image_dir, root / IDENTITY_FILE,
                  partition)


def partition_file(root: Path) -> Path:
    """Where ``root``'s layout keeps CelebA's train/val/test partition (it may not be there):
    what ``split.method: official`` reads, for a check before any stage runs."""
    return detect_layout(root).partition_file


# --- attribute and identity files ----------------------------------------------------------

def text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark is fine); a byte that is not UTF-8 is a
    one-line error naming its line, as for any other bad line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror})") from None
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        lineno = body.count(b"\n", 0, exc.start) + 1
        raise PipelineError(f"{path}:{lineno}: not a text file (byte {len(data) - len(body) + exc.start} "
                            "is not UTF-8)") from None


class _Rows:
    """Collects ``image_id, Male value`` rows with the checks both formats share."""

    def __init__(self, path: Path):
        self.path = path
        self.ids: list[str] = []
        self.labels: list[int] = []
        self.first_line: dict[str, int] = {}

    def add(self, lineno: int, image_id: str, value: str) -> None:
        path = self.path
        if image_id in ("", ".", "..") or "/" in image_id or "\\" in image_id:
            raise PipelineError(f"{path}:{lineno}: image id {image_id!r} is not a file name")
        if image_id in self.first_line:
            raise PipelineError(f"{path}:{lineno}: image id {image_id} is listed more than once "
                                f"(first on line {self.first_line[image_id]})")
        self.first_line[image_id] = lineno
        if value not in ("-1", "1"):
            raise PipelineError(f"{path}:{lineno}: {image_id} has {LABEL_ATTR}={value}, expected -1 or 1")
        self.ids.append(image_id)
        self.labels.append(1 if value == "1" else 0)

    def frame(self) -> pd.DataFrame:
        if not self.ids:
            raise PipelineError(f"{self.path}: attribute file lists no images")
        return pd.DataFrame({"image_id": self.ids, "label": self.labels})


def _read_official(path: Path) -> pd.DataFrame:
    """``list_attr_celeba.txt``: count line, header of attribute names, whitespace-separated rows."""
    lines = text_lines(path)
    if not any(line.strip() for line in lines):
        raise PipelineError(f"{path}: attribute file is empty (expected a count line, a header and rows)")
    if not lines[0].strip().isdigit():
        raise PipelineError(f"{path}:1: expected the image count (official format: count line, header, rows), "
                            f"got {lines[0].strip()[:40]!r}")
    if len(lines) < 3:
        raise PipelineError(f"{path}: attribute file lists no images (expected a count line, a header and rows)")
    header = lines[1].split()
    if LABEL_ATTR not in header:
        raise PipelineError(f"{path}:2: header has no '{LABEL_ATTR}' column")
    col = header.index(LABEL_ATTR)
    rows = _Rows(path)
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(header) + 1:
            raise PipelineError(f"{path}:{lineno}: {fields[0]} has {len(fields) - 1} values, "
                                f"the header names {len(header)}")
        rows.add(lineno, fields[0], fields[col + 1])
    return rows.frame()


def _read_kaggle(path: Path) -> pd.DataFrame:
    """Kaggle's ``list_attr_celeba.csv``: header ``image_id,<attribute names>``, comma-separated rows."""
    lines = text_lines(path)
    if not any(line.strip() for line in lines):
        raise PipelineError(f"{path}: attribute file is empty (expected a header {ID_COLUMN},<attribute names> "
                            "and rows)")
    reader = csv.reader(lines)
    try:
        header = [name.strip() for name in next(reader)]
        if ID_COLUMN not in header:
            raise PipelineError(f"{path}:1: header has no '{ID_COLUMN}' column (Kaggle format: "
                                f"{ID_COLUMN},5_o_Clock_Shadow,...,Young), got {','.join(header)[:60]!r}")
        if LABEL_ATTR not in header:
            raise PipelineError(f"{path}:1: header has no '{LABEL_ATTR}' column")
        id_col, col = header.index(ID_COLUMN), header.index(LABEL_ATTR)
        rows = _Rows(path)
        for fields in reader:
            lineno = reader.line_num
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if len(fields) != len(header):
                raise PipelineError(f"{path}:{lineno}: {fields[id_col] if id_col < len(fields) else fields[0]} "
                                    f"has {len(fields) - 1} values, the header names {len(header) - 1}")
            rows.add(lineno, fields[id_col], fields[col])
    except csv.Error as exc:
        raise PipelineError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return rows.frame()


def read_attributes(root: Path) -> pd.DataFrame:
    """Rows of ``image_id`` and ``label`` (``Male`` mapped from {-1, 1} to {0, 1}), in file
    order, from the attribute file of any layout (see :func:`detect_layout`)."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: data folder not found")
    layout = detect_layout(root)
    if not layout.attr_file.is_file():
        raise PipelineError(f"{layout.attr_file}: attribute file not found (CelebA keeps it as {ATTR_FILE} in "
                            f"the data folder, as {ANNO_DIR}/{ATTR_FILE} in the authors' archive, or as "
                            f"Kaggle's {ATTR_CSV})")
    return (_read_kaggle if layout.csv else _read_official)(layout.attr_file)


def attribute_columns(root: Path, image_ids) -> pd.DataFrame:
    """Every attribute but ``Male`` of ``image_ids`` (in that order), values 1 / -1 as int8, from
    the attribute file :func:`read_attributes` has already checked: what evaluate slices by."""
    layout = detect_layout(root)
    if layout.csv:
        table = pd.read_csv(layout.attr_file, encoding="utf-8-sig", skipinitialspace=True).set_index(ID_COLUMN)
    else:  # a header of names, rows one field longer: the id is the index
        table = pd.read_csv(layout.attr_file, sep=r"\s+", skiprows=1, header=0, encoding="utf-8-sig")
    table.index = table.index.astype(str)
    return table.drop(columns=[LABEL_ATTR]).loc[list(image_ids)].astype("int8")


def read_identities(root: Path) -> pd.DataFrame | None:
    """``image_id, identity`` rows of ``identity_CelebA.txt`` (``None`` when there is no file)."""
    path = detect_layout(root).identity_file
    if not path.is_file():
        return None
    ids, identities, first_line = [], [], {}
    for lineno, line in enumerate(text_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            identity = int(fields[1])
        except ValueError:
            raise PipelineError(f"{path}:{lineno}: expected 'image_id identity' (an integer), "
                                f"got {line.strip()[:60]!r}") from None
        if fields[0] in first_line:
            raise PipelineError(f"{path}:{lineno}: image id {fields[0]} is listed more than once "
                                f"(first on line {first_line[fields[0]]})")
        first_line[fields[0]] = lineno
        ids.append(fields[0])
        identities.append(identity)
    return pd.DataFrame({"image_id": ids, "identity": pd.Series(identities, dtype="int64")})


def identities_of(root: Path, image_ids) -> pd.Series:
    """The identity of each of ``image_ids`` (same order); a one-line error when the identity
    file is missing or lacks one of them."""
    layout = detect_layout(root)
    table = read_identities(root)
    if table is None:
        raise PipelineError(f"{layout.identity_file}: identity file not found (split.group_by: identity needs "
                            f"CelebA's {IDENTITY_FILE}, 'image_id identity' rows, in the data folder)")
    mapping = dict(zip(table["image_id"], table["identity"]))
    ids = list(image_ids)
    missing = [i for i in ids if i not in mapping]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PipelineError(f"{layout.identity_file}: no identity for {missing[0]}, listed in "
                            f"{layout.attr_file.name}{more}")
    return pd.Series([mapping[i] for i in ids], dtype="int64", name="identity")
