"""Labels, the ImageNet preprocessing and the dataset of a split: image files to tensors.

The folder layouts and attribute files are :mod:`pipeline.data.celeba`, the image checks
:mod:`pipeline.data.images`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.core.cli import PipelineError, one_line
from pipeline.data.celeba import detect_layout
from pipeline.data.images import decode_problem, worker_signals

CLASS_NAMES = ("female", "male")  # label 0, label 1
THRESHOLD = 0.5  # the decision: "male" when P(male) > THRESHOLD (train, evaluate, predict)
SPLIT_SUMMARY = "split.json"  # the split stage's class counts and grouping, beside the lists
TEST_ATTRIBUTES = "test_attributes.csv"  # in split.dir: the test images' attributes but Male (1 / -1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        (:func:`pipeline.training.decoded.normalise` does those on whole batches, bitwise as here)."""
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

    It trusts the split stage's checks (:func:`pipeline.data.manifest.verify` is how a stage makes
    sure the files are still those); an image that cannot be decoded fails with a one-line
    :class:`PipelineError` naming it.
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

    def set_epoch(self, epoch: int) -> None:
        if self.train:
            self.flips = epoch_flips(len(self.ids), self.seed, epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int):
        return self._read(idx, lambda img: self.preset(img, flip=bool(self.flips[idx]))), self.labels[idx]

    def pixels(self, idx: int):
        """Image ``idx`` resized, as uint8 ``(3, S, S)`` (no flip, no normalisation): what the
        image cache (:func:`pipeline.training.decoded.ensure_images`) stores."""
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
            raise PipelineError(f"{path}: {decode_problem(exc)}") from exc


def make_loader(ds, batch_size: int, num_workers: int, shuffle: bool, seed: int = 0):
    """A loader whose order depends on ``seed`` alone (when shuffled)."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=worker_signals if num_workers else None)


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
    frame.attrs["source"] = str(path)  # the file an error names when an image it lists is gone
    return frame


def read_test_attributes(split_dir: Path, image_ids) -> pd.DataFrame:
    """The attributes of ``image_ids`` (the test split, in its order) that split wrote: one column
    per attribute, 1 / -1; no column when the attribute file holds only ``Male``."""
    path = Path(split_dir) / TEST_ATTRIBUTES
    if not path.is_file():
        raise PipelineError(f"{path}: not found (run the split stage again)")
    table = pd.read_csv(path, dtype={"image_id": str}).set_index("image_id")
    missing = [i for i in image_ids if i not in table.index]
    if missing:
        raise PipelineError(f"{path}: no attributes for {missing[0]} of the test split (run the split stage again)")
    return table.loc[list(image_ids)]
