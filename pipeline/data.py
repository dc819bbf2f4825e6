"""Reading a face data set in either CelebA layout people download, and the image transforms.

Two layouts, told apart by :func:`detect_layout` (the generated default uses the first)::

    official (the authors' Google Drive / Baidu files)
    <root>/img_align_celeba/000001.jpg ...
    <root>/list_attr_celeba.txt     # count line, header of attribute names, "id v1 v2 ..." rows, v in {-1, 1}
    <root>/identity_CelebA.txt      # "id identity" rows (optional; split.group_by: identity needs it)

    Kaggle (jessicali9530/celeba-dataset)
    <root>/img_align_celeba/img_align_celeba/000001.jpg ...
    <root>/list_attr_celeba.csv     # header "image_id,5_o_Clock_Shadow,...", "id,v1,v2,..." rows, v in {-1, 1}
    <root>/identity_CelebA.txt      # not in the Kaggle set; the official file, copied in, works

Kaggle's other CSVs (list_eval_partition, list_bbox_celeba, list_landmarks_align_celeba) are
not read. Image files that no attribute row lists (a subset such as CelebA30k) are ignored; a
listed image that is missing is an error.

The reader and the image checks need no torch: torch and torchvision are imported where the
tensors are made, so the split stage (and its failure on bad data) starts in well under a second.
"""
from __future__ import annotations

import csv
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.config import PipelineError, one_line

IMAGE_DIR = "img_align_celeba"  # official layout: <root>/img_align_celeba/; Kaggle: twice nested
ATTR_FILE = "list_attr_celeba.txt"  # official attribute file
ATTR_CSV = "list_attr_celeba.csv"  # Kaggle's attribute file
IDENTITY_FILE = "identity_CelebA.txt"
OFFICIAL, KAGGLE = "official", "kaggle"
ID_COLUMN = "image_id"  # Kaggle CSV's id column
LABEL_ATTR = "Male"
CLASS_NAMES = ("female", "male")  # label 0, label 1
THRESHOLD = 0.5  # the decision: "male" when P(male) > THRESHOLD (train, evaluate, predict)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TAIL_BYTES = 4096  # the end of a file read to see whether it was cut short
JPEG_END = b"\xff\xd9"  # EOI marker
PNG_END = b"IEND\xaeB`\x82"  # IEND chunk type and its CRC


# --- layout ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where a data folder keeps its files; :func:`detect_layout` makes it. Every reader of
    the folder (attributes, identities, image checks, the Dataset, the feature cache) takes
    its paths from here."""

    kind: str  # OFFICIAL or KAGGLE: the format of attr_file
    attr_file: Path
    image_dir: Path
    identity_file: Path


def detect_layout(root: Path) -> Layout:
    """The layout of ``root``, from the files present (a few ``stat`` calls).

    Attribute file: ``list_attr_celeba.txt`` (official) if present, else ``list_attr_celeba.csv``
    (Kaggle) if present, else the official name (so that the error names it). Image folder:
    ``img_align_celeba/img_align_celeba/`` when that folder exists (Kaggle's zip), else
    ``img_align_celeba/``; when neither exists, the one the attribute file's layout would have.
    """
    root = Path(root)
    if (root / ATTR_FILE).is_file() or not (root / ATTR_CSV).is_file():
        kind, attr_file = OFFICIAL, root / ATTR_FILE
    else:
        kind, attr_file = KAGGLE, root / ATTR_CSV
    flat, nested = root / IMAGE_DIR, root / IMAGE_DIR / IMAGE_DIR
    if nested.is_dir():
        image_dir = nested
    elif flat.is_dir():
        image_dir = flat
    else:
        image_dir = nested if kind == KAGGLE else flat
    return Layout(kind, attr_file, image_dir, root / IDENTITY_FILE)


# --- attribute and identity files ----------------------------------------------------------

def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is fine
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror})") from None


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
    lines = _text_lines(path)
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
    lines = _text_lines(path)
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
    order, from the attribute file of either layout (see :func:`detect_layout`)."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: data folder not found")
    layout = detect_layout(root)
    if not layout.attr_file.is_file():
        raise PipelineError(f"{layout.attr_file}: attribute file not found (nor Kaggle's {ATTR_CSV} beside it)")
    return (_read_official if layout.kind == OFFICIAL else _read_kaggle)(layout.attr_file)


def read_identities(root: Path) -> pd.DataFrame | None:
    """``image_id, identity`` rows of ``identity_CelebA.txt`` (``None`` when there is no file)."""
    path = detect_layout(root).identity_file
    if not path.is_file():
        return None
    ids, identities, first_line = [], [], {}
    for lineno, line in enumerate(_text_lines(path), start=1):
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


# --- image checks ----------------------------------------------------------------------

def _complete(fmt: str | None, tail: bytes) -> bool:
    """Whether a file's last bytes are its format's end marker (trailing zero padding allowed)."""
    tail = tail.rstrip(b"\0")
    if fmt in ("JPEG", "MPO"):
        return tail.endswith(JPEG_END)
    if fmt == "PNG":
        return tail.endswith(PNG_END)
    return False  # other formats: no cheap test, decode them


def image_problem(path: Path) -> str | None:
    """What is wrong with one image file, or ``None`` if it is usable.

    Cheap for the usual file: ``stat``, the header (format, size, mode) and the last bytes.
    A JPEG must end with its end-of-image marker, a PNG with its IEND chunk; a file that does
    not (or another format) is decoded in full, which settles it: data after the end marker
    is fine, a file cut short is not.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    fmt = None
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, st.st_size - TAIL_BYTES))
            tail = fh.read()
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. a corrupt EXIF block: harmless here
                with Image.open(fh) as img:
                    fmt, (w, h) = img.format, img.size
                    if w < 1 or h < 1:
                        return f"{fmt} image of {w}x{h} pixels"
                    if _complete(fmt, tail):
                        return None
                    img.load()
    except UnidentifiedImageError:
        return f"not an image file Pillow can read ({st.st_size} bytes of unknown format)"
    except Image.DecompressionBombError as exc:
        return f"image too large to decode ({exc})"
    except PermissionError as exc:
        return f"cannot read ({exc.strerror})"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on a damaged file
        return _decode_problem(exc, fmt)
    return None


def _decode_problem(exc: Exception, fmt: str | None = None) -> str:
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return f"{fmt + ' ' if fmt else ''}file is truncated ({exc})"
    return f"cannot decode image ({type(exc).__name__}: {exc})"


def check_images(root: Path, image_ids, listed_in: str | None = None) -> int:
    """Check that every image of ``image_ids`` exists in the folder's image directory (see
    :func:`detect_layout`) and that its file is a whole, readable image (see
    :func:`image_problem`); raise one :class:`PipelineError` naming the first bad one (and how
    many more there are). Returns the number of images checked. ``listed_in``: what the
    message says listed them (default: the attribute file's name)."""
    layout = detect_layout(root)
    folder = layout.image_dir
    listed_in = listed_in or layout.attr_file.name
    if not folder.is_dir():
        raise PipelineError(f"{folder}: image folder not found (the images listed in {listed_in} belong there)")
    first, bad, n = None, 0, 0
    for image_id in image_ids:
        n += 1
        problem = image_problem(folder / image_id)
        if problem is not None:
            bad += 1
            if first is None:
                first = (image_id, problem)
    if first is not None:
        image_id, problem = first
        if problem == "not found":
            problem = f"listed in {listed_in} but not found"
        more = f" (and {bad - 1} more bad image{'s' if bad > 2 else ''})" if bad > 1 else ""
        raise PipelineError(f"{folder / image_id}: {problem}{more}")
    return n


# --- tensors ---------------------------------------------------------------------------

def _rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB (grey, palette, CMYK, 16-bit ...); transparency is dropped."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when a palette with transparency goes straight to RGB
    return img.convert("RGB")


class Preset:
    """Resize, optional horizontal flip, ImageNet normalisation (torchvision reference style)."""

    def __init__(self, image_size: int):
        self.size = (image_size, image_size)

    def __call__(self, img: Image.Image, flip: bool = False):
        from torchvision.transforms import functional as TF

        img = self.resized(img)
        if flip:
            img = TF.hflip(img)
        return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)

    def resized(self, img: Image.Image) -> Image.Image:
        """The RGB image at the preset's size (PIL bilinear): what every other step starts from."""
        return _rgb(img).resize(self.size, Image.BILINEAR)

    def pixels(self, img: Image.Image):
        """The resized image as a uint8 ``(3, S, S)`` tensor, before flip and normalisation
        (:func:`pipeline.resident.normalise` does those on whole batches, bitwise as here)."""
        import numpy as np
        import torch

        return torch.from_numpy(np.asarray(self.resized(img), dtype=np.uint8).transpose(2, 0, 1).copy())


def epoch_flips(n: int, seed: int, epoch: int):
    """The flips of one training epoch: one coin per sample, from (seed, epoch) alone."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.rand(n, generator=g) < 0.5


class FaceDataset:
    """Images of a split (a map-style dataset for :class:`torch.utils.data.DataLoader`);
    ``train=True`` flips each sample by :func:`epoch_flips` of the epoch set.

    On creation it checks every listed image again (:func:`check_images`: present, header
    readable, not cut short; about 0.05 ms an image); an image that still cannot be decoded
    later fails with a one-line :class:`PipelineError` naming it.
    """

    def __init__(self, root: Path, frame: pd.DataFrame, image_size: int, train: bool = False, seed: int = 0):
        import torch

        self.folder = detect_layout(root).image_dir
        self.ids = list(frame["image_id"])
        self.labels = torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)
        self.preset = Preset(image_size)
        self.train = train
        self.seed = seed
        self.flips = torch.zeros(len(self.ids), dtype=torch.bool)
        # the split lists may point at images that changed since the split stage checked them;
        # read_split records which file the list came from
        check_images(root, self.ids, listed_in=frame.attrs.get("source", "the split"))

    def set_epoch(self, epoch: int) -> None:
        if self.train:
            self.flips = epoch_flips(len(self.ids), self.seed, epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int):
        return self._read(idx, lambda img: self.preset(img, flip=bool(self.flips[idx]))), self.labels[idx]

    def pixels(self, idx: int):
        """Image ``idx`` resized, as uint8 ``(3, S, S)`` (no flip, no normalisation): what the
        image cache (:func:`pipeline.resident.ensure_images`) stores."""
        return self._read(idx, self.preset.pixels)

    def _read(self, idx: int, transform):
        path = self.folder / self.ids[idx]
        try:
            with Image.open(path) as img:
                return transform(img)
        except FileNotFoundError:
            raise PipelineError(f"{path}: image not found") from None
        except UnidentifiedImageError:
            raise PipelineError(f"{path}: not an image file Pillow can read") from None
        except Exception as exc:  # noqa: BLE001 - truncated file, decompression bomb, damaged data ...
            raise PipelineError(f"{path}: {_decode_problem(exc)}") from exc


def make_loader(ds, batch_size: int, num_workers: int, shuffle: bool, seed: int = 0):
    """A loader whose order depends on ``seed`` alone (when shuffled)."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())


def read_split(split_dir: Path, name: str) -> pd.DataFrame:
    """One split's ``image_id,label`` rows, checked (the file may have been edited by hand)."""
    path = Path(split_dir) / f"{name}.csv"
    if not path.is_file():
        raise PipelineError(f"{path}: split file not found (run the split stage first)")
    try:
        frame = pd.read_csv(path, dtype={"image_id": str})
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise PipelineError(f"{path}: not a valid split file ({one_line(exc)})") from None
    if list(frame.columns) != ["image_id", "label"]:
        raise PipelineError(f"{path}: expected the columns image_id,label, got {','.join(map(str, frame.columns))}")
    if frame.empty:
        raise PipelineError(f"{path}: split file lists no images (run the split stage again)")
    bad = frame[frame["image_id"].isna() | ~frame["label"].isin([0, 1])]
    if len(bad):
        row = bad.index[0]
        raise PipelineError(f"{path}:{row + 2}: expected an image id and a label 0 or 1, "
                            f"got {frame['image_id'][row]},{frame['label'][row]}")
    frame = frame.astype({"label": int}).reset_index(drop=True)
    frame.attrs["source"] = str(path)  # FaceDataset names the file when an image it lists is gone
    return frame
