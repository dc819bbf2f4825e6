"""CelebA's own train/val/test partition file (``list_eval_partition.txt``; Kaggle's ``.csv``),
what ``split.method: official`` splits by; where it lies in each layout:
:func:`pipeline.data.celeba.detect_layout`."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipeline.core.cli import PipelineError
from pipeline.data.celeba import ID_COLUMN, PARTITION_COLUMN, PARTITION_CSV, PARTITIONS, text_lines, detect_layout


class _Partition:
    """Collects ``image_id, partition`` rows with the checks both formats share."""

    def __init__(self, path: Path):
        self.path = path
        self.first_line: dict[str, int] = {}
        self.partition: list[int] = []

    def add(self, lineno: int, image_id: str, value: str) -> None:
        path = self.path
        if image_id in self.first_line:
            raise PipelineError(f"{path}:{lineno}: image id {image_id} is listed more than once "
                                f"(first on line {self.first_line[image_id]})")
        if value not in PARTITIONS:
            raise PipelineError(f"{path}:{lineno}: {image_id} has partition {value or '(none)'}, "
                                "expected 0 (train), 1 (val) or 2 (test)")
        self.first_line[image_id] = lineno
        self.partition.append(PARTITIONS.index(value))

    def frame(self) -> pd.DataFrame:
        if not self.first_line:
            raise PipelineError(f"{self.path}: partition file lists no images")
        return pd.DataFrame({"image_id": list(self.first_line), "partition": pd.Series(self.partition, dtype="int8")})


def _read_partition_text(path: Path) -> pd.DataFrame:
    """The authors' ``list_eval_partition.txt``: ``image_id partition`` rows, no header."""
    rows = _Partition(path)
    for lineno, line in enumerate(text_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise PipelineError(f"{path}:{lineno}: expected 'image_id partition' (0 train, 1 val, 2 test), "
                                f"got {line.strip()[:60]!r}")
        rows.add(lineno, fields[0], fields[1])
    return rows.frame()


def _read_partition_csv(path: Path) -> pd.DataFrame:
    """Kaggle's ``list_eval_partition.csv``: header ``image_id,partition``, comma-separated rows."""
    header = f"{ID_COLUMN},{PARTITION_COLUMN}"
    reader = csv.reader(text_lines(path))
    rows, header_seen = _Partition(path), False
    try:
        for fields in reader:
            lineno = reader.line_num
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if not header_seen:
                if fields != [ID_COLUMN, PARTITION_COLUMN]:
                    raise PipelineError(f"{path}:{lineno}: expected the header '{header}' (Kaggle's "
                                        f"{PARTITION_CSV}), got {','.join(fields)[:60]!r}")
                header_seen = True
                continue
            if len(fields) != 2:
                raise PipelineError(f"{path}:{lineno}: expected '{header}' values (0 train, 1 val, 2 test), "
                                    f"got {','.join(fields)[:60]!r}")
            rows.add(lineno, fields[0], fields[1])
    except csv.Error as exc:
        raise PipelineError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return rows.frame()


def read_partition(root: Path) -> pd.DataFrame | None:
    """``image_id, partition`` rows (0 train, 1 val, 2 test) of the layout's partition file, in
    file order (``None`` when there is no file). Every row is checked, also those of images the
    attribute file does not list: a damaged file should not pass because the damage lies
    outside a subset."""
    layout = detect_layout(root)
    if not layout.partition_file.is_file():
        return None
    return (_read_partition_csv if layout.csv else _read_partition_text)(layout.partition_file)


def partitions_of(root: Path, image_ids) -> pd.Series:
    """CelebA's partition of each of ``image_ids`` (same order; 0 train, 1 val, 2 test); a one-line
    error when the partition file is missing or lacks one of them. The file may list more
    images (all 202,599 beside a subset's attribute file): those are ignored."""
    layout = detect_layout(root)
    table = read_partition(root)
    path = layout.partition_file
    if table is None:
        rows = (f"header {ID_COLUMN},{PARTITION_COLUMN}" if layout.csv
                else f"'{ID_COLUMN} {PARTITION_COLUMN}' rows")
        raise PipelineError(f"{path}: partition file not found (split.method: official reads CelebA's own "
                            f"train/val/test partition from it: {rows}, 0 train, 1 val, 2 test)")
    mapping = dict(zip(table["image_id"], table["partition"]))
    ids = list(image_ids)
    missing = [i for i in ids if i not in mapping]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PipelineError(f"{path}: no partition for {missing[0]}, listed in {layout.attr_file.name}{more}")
    return pd.Series([mapping[i] for i in ids], dtype="int8", name="partition")
