"""Reading a face data set in CelebA's official on-disk layout, and the image transforms.

Layout (the real data set and the generated default share it)::

    <root>/img_align_celeba/000001.jpg ...
    <root>/list_attr_celeba.txt     # count line, header of attribute names, "id v1 v2 ..." rows, v in {-1, 1}
    <root>/identity_CelebA.txt      # "id identity" rows (optional)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
LABEL_ATTR = "Male"
CLASS_NAMES = ("female", "male")  # label 0, label 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

from pipeline.config import PipelineError  # noqa: E402


def read_attributes(root: Path) -> pd.DataFrame:
    """Rows of ``image_id`` and ``label`` (``Male`` mapped from {-1, 1} to {0, 1})."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: data folder not found")
    path = root / ATTR_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: attribute file not found")
    lines = path.read_text().splitlines()
    if len(lines) < 3:
        raise PipelineError(f"{path}: attribute file is empty (expected a count line, a header and rows)")
    header = lines[1].split()
    if LABEL_ATTR not in header:
        raise PipelineError(f"{path}: header has no '{LABEL_ATTR}' column")
    col = header.index(LABEL_ATTR)
    ids, labels = [], []
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(header) + 1:
            raise PipelineError(f"{path}:{lineno}: expected {len(header) + 1} fields, got {len(fields)}")
        value = fields[col + 1]
        if value not in ("-1", "1"):
            raise PipelineError(f"{path}:{lineno}: {fields[0]} has {LABEL_ATTR}={value}, expected -1 or 1")
        ids.append(fields[0])
        labels.append(1 if value == "1" else 0)
    frame = pd.DataFrame({"image_id": ids, "label": labels})
    dup = frame["image_id"][frame["image_id"].duplicated()]
    if len(dup):
        raise PipelineError(f"{path}: image id {dup.iloc[0]} is listed more than once")
    if frame.empty:
        raise PipelineError(f"{path}: attribute file lists no images")
    return frame


def read_identities(root: Path) -> pd.DataFrame | None:
    path = Path(root) / IDENTITY_FILE
    if not path.is_file():
        return None
    return pd.read_csv(path, sep=r"\s+", header=None, names=["image_id", "identity"], dtype={"identity": int})


def check_images_exist(root: Path, image_ids) -> None:
    folder = Path(root) / IMAGE_DIR
    for image_id in image_ids:
        if not (folder / image_id).is_file():
            raise PipelineError(f"{folder / image_id}: image listed in {ATTR_FILE} but not found")


class Preset:
    """Resize, optional horizontal flip, ImageNet normalisation (torchvision reference style)."""

    def __init__(self, image_size: int):
        self.size = (image_size, image_size)

    def __call__(self, img: Image.Image, flip: bool = False) -> torch.Tensor:
        img = img.convert("RGB").resize(self.size, Image.BILINEAR)
        if flip:
            img = TF.hflip(img)
        return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


def epoch_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The flips of one training epoch: one coin per sample, from (seed, epoch) alone."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.rand(n, generator=g) < 0.5


class FaceDataset(Dataset):
    """Images of a split; ``train=True`` flips each sample by :func:`epoch_flips` of the epoch set."""

    def __init__(self, root: Path, frame: pd.DataFrame, image_size: int, train: bool = False, seed: int = 0):
        self.folder = Path(root) / IMAGE_DIR
        self.ids = list(frame["image_id"])
        self.labels = torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)
        self.preset = Preset(image_size)
        self.train = train
        self.seed = seed
        self.flips = torch.zeros(len(self.ids), dtype=torch.bool)

    def set_epoch(self, epoch: int) -> None:
        if self.train:
            self.flips = epoch_flips(len(self.ids), self.seed, epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int):
        path = self.folder / self.ids[idx]
        try:
            with Image.open(path) as img:
                x = self.preset(img, flip=bool(self.flips[idx]))
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{path}: cannot decode image ({exc})") from None
        return x, self.labels[idx]


def make_loader(ds: FaceDataset, batch_size: int, num_workers: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A loader whose order depends on ``seed`` alone (when shuffled)."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())


def read_split(split_dir: Path, name: str) -> pd.DataFrame:
    path = Path(split_dir) / f"{name}.csv"
    if not path.is_file():
        raise PipelineError(f"{path}: split file not found (run the split stage first)")
    return pd.read_csv(path, dtype={"image_id": str, "label": int})
