"""CelebA folders in the three on-disk layouts, made from an official-layout folder (the real
sample ``../shared/celeba-sample`` or a generated one). Image files are linked, never copied."""
from __future__ import annotations

from pathlib import Path

from pipeline.data.celeba import (
    ANNO_DIR,
    ATTR_CSV,
    ATTR_FILE,
    EVAL_DIR,
    IDENTITY_FILE,
    IMAGE_DIR,
    IMG_DIR,
    PARTITION_FILE,
)

CELEBA_PARTITION = (162_770, 19_867, 19_962)  # CelebA's own train / val / test sizes

# Kaggle's other files, which the reader must ignore (their real headers, one row each)
KAGGLE_EXTRAS = {
    "list_eval_partition.csv": "image_id,partition\n000001.jpg,0\n",
    "list_bbox_celeba.csv": "image_id,x_1,y_1,width,height\n000001.jpg,95,71,226,313\n",
    "list_landmarks_align_celeba.csv": ("image_id,lefteye_x,lefteye_y,righteye_x,righteye_y,nose_x,nose_y,"
                                        "leftmouth_x,leftmouth_y,rightmouth_x,rightmouth_y\n"
                                        "000001.jpg,69,109,106,113,77,142,73,152,108,154\n"),
}


def attr_rows(source: Path, n: int | None = None) -> tuple[list[str], list[list[str]]]:
    """The attribute names and the first ``n`` rows (id and values) of ``source``'s official file."""
    lines = (Path(source) / ATTR_FILE).read_text().splitlines()
    rows = [line.split() for line in lines[2:] if line.strip()]
    return lines[1].split(), rows[:n] if n is not None else rows


def official_from(source: Path, dest: Path, n: int | None = None) -> Path:
    """``dest`` in the official layout: the first ``n`` attribute rows of ``source``, its whole
    image folder (linked) and its identity file (linked, when there is one)."""
    header, rows = attr_rows(source, n)
    dest.mkdir(parents=True)
    (dest / ATTR_FILE).write_text(f"{len(rows)}\n{' '.join(header)}\n" + "".join(" ".join(r) + "\n" for r in rows))
    (dest / IMAGE_DIR).symlink_to(Path(source).resolve() / IMAGE_DIR)
    if (Path(source) / IDENTITY_FILE).is_file():
        (dest / IDENTITY_FILE).symlink_to(Path(source).resolve() / IDENTITY_FILE)
    return dest


def kaggle_from(source: Path, dest: Path, n: int | None = None, identity: bool = True) -> Path:
    """``dest`` in Kaggle's layout: ``list_attr_celeba.csv`` with the first ``n`` attribute rows of
    ``source``, every image file of ``source`` linked one by one into
    ``img_align_celeba/img_align_celeba/`` (so with ``n`` set there are images without a row, as
    in a subset), Kaggle's other CSVs, and ``identity_CelebA.txt`` (linked) if ``identity``."""
    header, rows = attr_rows(source, n)
    images = dest / IMAGE_DIR / IMAGE_DIR
    images.mkdir(parents=True)
    (dest / ATTR_CSV).write_text(",".join(["image_id", *header]) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    src_images = Path(source).resolve() / IMAGE_DIR
    for path in sorted(src_images.iterdir()):
        (images / path.name).symlink_to(src_images / path.name)
    for name, text in KAGGLE_EXTRAS.items():
        (dest / name).write_text(text)
    if identity and (Path(source) / IDENTITY_FILE).is_file():
        (dest / IDENTITY_FILE).symlink_to(Path(source).resolve() / IDENTITY_FILE)
    return dest


def partition_blocks(ids: list[str], sizes=CELEBA_PARTITION) -> dict[str, int]:
    """``ids``, in their order, cut in three blocks in proportion to ``sizes``: 0 (train), then
    1 (val), then 2 (test), as CelebA's own partition cuts its ids."""
    total = sum(sizes)
    ends = [round(len(ids) * sizes[0] / total), round(len(ids) * (sizes[0] + sizes[1]) / total)]
    return {image_id: sum(i >= end for end in ends) for i, image_id in enumerate(ids)}


def write_partition(path: Path, partition: dict[str, int], csv: bool = False) -> Path:
    """``partition`` (image id -> 0, 1 or 2) as the authors' ``image_id partition`` rows, or with
    ``csv`` as Kaggle's ``list_eval_partition.csv`` (header ``image_id,partition``)."""
    sep = "," if csv else " "
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("image_id,partition\n" if csv else "")
                    + "".join(f"{image_id}{sep}{value}\n" for image_id, value in partition.items()))
    return path


def archive_from(source: Path, dest: Path, n: int | None = None, partition: dict[str, int] | None = None) -> Path:
    """``dest`` in the layout of the authors' archive: ``Anno/list_attr_celeba.txt`` with the first
    ``n`` attribute rows of ``source``, ``Anno/identity_CelebA.txt`` (linked, when there is one),
    ``Img/img_align_celeba`` (a link to ``source``'s image folder) and
    ``Eval/list_eval_partition.txt``: ``partition`` (image id -> 0/1/2) for the ``n`` rows, by
    default :func:`partition_blocks` of them, then every other image of ``source`` as partition 0
    (the authors' file lists all 202,599 images, also beside a subset's attribute file)."""
    header, rows = attr_rows(source, n)
    _, every = attr_rows(source)
    anno = dest / ANNO_DIR
    anno.mkdir(parents=True)
    (anno / ATTR_FILE).write_text(f"{len(rows)}\n{' '.join(header)}\n" + "".join(" ".join(r) + "\n" for r in rows))
    if (Path(source) / IDENTITY_FILE).is_file():
        (anno / IDENTITY_FILE).symlink_to(Path(source).resolve() / IDENTITY_FILE)
    (dest / IMG_DIR).mkdir()
    (dest / IMG_DIR / IMAGE_DIR).symlink_to(Path(source).resolve() / IMAGE_DIR)
    listed = [r[0] for r in rows]
    parts = dict(partition if partition is not None else partition_blocks(listed))
    parts.update({r[0]: 0 for r in every if r[0] not in parts})
    write_partition(dest / EVAL_DIR / PARTITION_FILE, parts)
    return dest
