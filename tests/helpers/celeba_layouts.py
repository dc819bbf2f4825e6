"""CelebA folders in both on-disk layouts, made from an official-layout folder (the real sample
``../shared/celeba-sample`` or a generated one). Image files are linked, never copied."""
from __future__ import annotations

from pathlib import Path

from pipeline.data.celeba import ATTR_CSV, ATTR_FILE, IDENTITY_FILE, IMAGE_DIR

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
