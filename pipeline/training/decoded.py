"""Images decoded once: each split's images resized to the training size into a uint8
``(N, 3, S, S)`` cache entry ``images-<key>/``, keyed by the image size, the images' contents (from
the split's manifest), the code and Pillow's version; flip and ImageNet normalisation then run on
whole batches where the network runs (:func:`normalise`), bitwise
:class:`pipeline.data.dataset.FaceDataset`'s tensor."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np
import pandas as pd
import torch

from pipeline.core.cli import PipelineError
from pipeline.core.config import TrainConfig
from pipeline.core.files import write_json
from pipeline.data.dataset import IMAGENET_MEAN, IMAGENET_STD, FaceDataset, make_loader
from pipeline.training.cache import entry_lock, sweep, touch

IMAGE_FORMAT = 1
IMAGE_PREFIX = "images-"  # image entries under train.feature_cache; feature entries are bare keys


def images_digest(cfg: TrainConfig, frames: dict[str, pd.DataFrame]) -> str:
    """A digest of the splits' image ids and bytes (what every cached value is computed from),
    from the hashes the split stage recorded (:mod:`pipeline.data.manifest`): no image is read."""
    from pipeline.data import manifest

    return manifest.digest(manifest.load(cfg.split_dir), frames)


def image_key(cfg: TrainConfig, frames: dict[str, pd.DataFrame], digest: str | None = None) -> tuple[str, dict]:
    from PIL import __version__ as pillow

    from pipeline.core.deps import code_digest

    parts = {"format": IMAGE_FORMAT, "image_size": cfg.image_size,
             "images": digest or images_digest(cfg, frames),
             "code": code_digest("train"), "pillow": pillow}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=10).hexdigest(), parts


class _Pixels:
    """A split's images as uint8 CHW tensors (the decode pass's dataset)."""

    def __init__(self, ds: FaceDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx: int):
        return self.ds.pixels(idx)


def ensure_images(cfg: TrainConfig, frames: dict[str, pd.DataFrame], workers: int, log=print,
                  digest: str | None = None) -> dict:
    """Decode each image of ``frames`` once into ``images-<key>/<split>.npy`` (uint8, N x 3 x S x S).

    Returns ``{"dir", "key", "files", "built", "decode_seconds", "bytes"}``.
    """
    size = cfg.image_size
    key, parts = image_key(cfg, frames, digest)
    root = cfg.feature_cache
    name = IMAGE_PREFIX + key
    entry = root / name
    files = {split: entry / f"{split}.npy" for split in frames}
    total = sum(3 * size * size * len(f) for f in frames.values())
    result = {"dir": entry, "key": name, "files": files, "built": False, "decode_seconds": 0.0, "bytes": total}
    with entry_lock(root, name):
        entry.mkdir(parents=True, exist_ok=True)
        sweep(entry, log)
        if all(p.is_file() for p in files.values()):
            log(f"image cache: reusing {total / 2**20:.1f} MB of decoded {size}x{size} images in {entry}")
            touch(entry)
            return result
        free = shutil.disk_usage(entry).free
        if total > 0.95 * free:
            raise PipelineError(f"train.feature_cache: {entry} needs {total / 2**30:.2f} GB for the decoded "
                                f"images, only {free / 2**30:.2f} GB free")
        log(f"image cache: decoding {sum(map(len, frames.values()))} images once to {size}x{size} uint8 "
            f"({total / 2**20:.1f} MB, {workers} workers) in {entry}")
        write_json(entry / "key.json", parts)
        started = time.perf_counter()
        tmps = []
        try:
            for split, frame in frames.items():
                tmp = files[split].with_suffix(f".tmp{os.getpid()}.npy")
                tmps.append((tmp, files[split]))
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(frame), 3, size, size))
                ds = FaceDataset(cfg.data_root, frame, size)
                start = 0
                for batch in make_loader(_Pixels(ds), 256, workers, shuffle=False):
                    out[start:start + len(batch)] = batch.numpy()
                    start += len(batch)
                out.flush()
                del out
            for tmp, final in tmps:
                os.replace(tmp, final)
        finally:
            for tmp, _ in tmps:
                tmp.unlink(missing_ok=True)
        touch(entry)
        result["built"] = True
        result["decode_seconds"] = time.perf_counter() - started
        log(f"image cache: decoded in {result['decode_seconds']:.1f} s "
            f"({sum(map(len, frames.values())) / result['decode_seconds']:.0f} images/s)")
    return result


def normalise(pixels: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` -> float32, flipped where ``flips``, ImageNet-normalised: the same
    float operations as ``TF.normalize(TF.to_tensor(img))``, so bitwise FaceDataset's tensor."""
    if flips is not None:
        pixels = torch.where(flips.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    x = pixels.to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)
