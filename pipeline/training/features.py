"""Frozen-prefix reuse: compute VGG-16's frozen layers once per image, not once per epoch.

Both strategies freeze the front of VGG-16, whose ``features`` have no batch norm and no
dropout; random horizontal flip is the only augmentation. So the frozen prefix maps a
training image to one of exactly two tensors (flipped or not), and a validation image to
one. :func:`ensure_cache` computes them once, from the decoded-image cache
(:func:`pipeline.training.decoded.ensure_images`), into ``.npy`` files under
``train.feature_cache`` (float32; bf16 under ``train.amp: bf16``); the training sources put them
on the device when they fit, and every epoch of every variant that shares the prefix then
trains the :class:`pipeline.training.prefix.Tail` on them. The result is the plain loop's result
(same samples, same flips, same dropout masks), up to float rounding.

Cached layers (:func:`pipeline.training.prefix.layer_for`):

* ``pool4`` -- output of ``features[:24]``: ``last_block`` trains conv5 + head from it.
* ``pool5`` -- output of ``features``: ``head_only`` trains from it; the frozen fc6/fc7 run
  every step because their dropout is active in training, as in the seed experiment.
* ``fc7``   -- output of fc7 + ReLU in eval mode: only with ``train.frozen_dropout: false``,
  an inexact option (it switches the frozen dropout off) that makes ``head_only`` a
  logistic regression on cached vectors.

A cache entry is keyed by everything its values depend on: the base weights (seed, or the
weight file's hash), image size, the images' contents, the code that reads and runs them, the
torch version, device type, autocast mode and CPU kernels (:mod:`pipeline.core.numerics`). Stale
entries are never reused; the least recently used ones go when the folder outgrows
``train.cache_budget_gb`` (:func:`pipeline.training.cache.enforce_budget`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.core.cli import PipelineError
from pipeline.core.config import TrainConfig
from pipeline.core.deps import code_digest
from pipeline.core.files import hash_file, write_json
from pipeline.data.dataset import read_split
from pipeline.training.cache import entry_lock, sweep, touch
from pipeline.training.decoded import ensure_images, images_digest, normalise
from pipeline.training.device import (
    Placer,
    autocast,
    index_device,
    resolve_amp,
    resolve_workers,
    take,
    to_device,
)
from pipeline.training.engine import progress
from pipeline.training.prefix import forward_layers, layer_shape, needed_layers

FORMAT = 1


def weights_id(cfg: TrainConfig) -> str:
    """The base weights as the cache key sees them: the seed of the random init, or the bytes of
    the weights file (not its path: the same file in another checkout is the same key)."""
    if cfg.weights == "none":
        return f"none:seed={cfg.seed}"
    from pipeline.core.weights import imagenet_weights_file

    path = imagenet_weights_file() if cfg.weights == "imagenet" else Path(cfg.weights)
    if not path.is_file():
        return f"missing:{path}"  # build_model reports it
    h = hashlib.blake2b(digest_size=16)
    hash_file(h, path)
    return f"{'imagenet' if cfg.weights == 'imagenet' else 'file'}:{h.hexdigest()}"


def cache_key(cfg: TrainConfig, frames: dict[str, pd.DataFrame], device: torch.device,
              digest: str | None = None) -> tuple[str, dict]:
    """A digest of everything the cached values depend on, and its readable parts. ``digest``:
    :func:`pipeline.training.decoded.images_digest` of ``frames``, when the caller has it already."""
    from pipeline.core import numerics

    images = digest or images_digest(cfg, frames)
    kernels = numerics.describe()
    if kernels["reproducible"]:
        kernels.pop("threads")  # the same values whatever the thread count
    parts = {"format": FORMAT, "weights": weights_id(cfg), "image_size": cfg.image_size,
             "images": images, "code": code_digest("train"), "torch": torch.__version__,
             "device": device.type, "amp": resolve_amp(cfg.amp, device), "kernels": kernels}
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=10).hexdigest()
    return digest, parts


def cache_bytes(layers, image_size: int, n_train: int, n_val: int, itemsize: int = 4) -> int:
    """Bytes (float32: ``itemsize`` 4; bf16: 2): training images twice (both orientations),
    validation once."""
    return sum(itemsize * int(np.prod(layer_shape(layer, image_size))) * (2 * n_train + n_val) for layer in layers)


def feature_dtype(amp: str) -> tuple[np.dtype, torch.dtype | None]:
    """How features are stored: float32, or under bf16 autocast bf16 (the values autocast made
    anyway, half the bytes), kept in the ``.npy`` as int16 bit patterns (numpy has no bf16).
    Returns the numpy dtype and the torch dtype to view it as (None: as is)."""
    return (np.dtype(np.int16), torch.bfloat16) if amp == "bf16" else (np.dtype(np.float32), None)


def feature_files(entry: Path, layer: str) -> dict[str, Path]:
    return {split: entry / f"{layer}.{split}.npy" for split in ("train", "val")}


def _extract(model, pixels, orientations, layers, arrays, device, batch_size, amp, channels_last, desc) -> None:
    """Run the frozen layers on decoded images (``pixels``: uint8 rows, resident or mapped) in
    order, batch by batch; a training batch goes through with its flipped copy appended."""

    n_all = len(pixels)
    store_dtype = next(iter(arrays.values())).dtype if arrays else np.float32
    start = 0
    for idx in progress(torch.arange(n_all, device=index_device(pixels)).split(batch_size), desc):
        n = len(idx)
        x = normalise(take(pixels, idx, device))
        x = to_device(x, device, channels_last)
        if orientations == 2:  # the flip of a normalised tensor equals the flip of the image
            x = torch.cat([x, torch.flip(x, dims=[-1])])
        with autocast(device, amp):
            feats = forward_layers(model, x, layers)
        for layer, value in feats.items():
            if store_dtype == np.int16:
                value = value.to(torch.bfloat16).cpu().view(torch.int16).numpy()
            else:
                value = value.float().cpu().numpy()
            for o in range(orientations):
                arrays[layer][o, start:start + n] = value[o * n:(o + 1) * n]
        start += n


def ensure_cache(cfg: TrainConfig, model: nn.Module, device: torch.device, log=print, workers: int | None = None,
                 digest: str | None = None) -> dict:
    """Build the missing cached layers for this config (under a lock); return where they are.

    The images come from the decoded-image cache (:func:`pipeline.ensure_images`,
    built first if missing, with ``workers`` decode processes; default ``train.num_workers``).
    Returns ``{"dir", "layers", "bytes", "built", "extract_seconds", "key", "dtype", "view_dtype"}``.
    """
    frames = {s: read_split(cfg.split_dir, s) for s in ("train", "val")}
    layers = needed_layers(cfg)
    digest = digest or images_digest(cfg, frames)
    key, parts = cache_key(cfg, frames, device, digest)
    dtype, view_dtype = feature_dtype(parts["amp"])
    root = cfg.feature_cache
    entry = root / key
    counts = len(frames["train"]), len(frames["val"])
    total = cache_bytes(layers, cfg.image_size, *counts, dtype.itemsize)
    result = {"dir": entry, "layers": layers, "bytes": total, "built": [], "extract_seconds": 0.0, "key": key,
              "dtype": dtype, "view_dtype": view_dtype}
    with entry_lock(root, key):  # a concurrent stage waits, then reuses
        entry.mkdir(parents=True, exist_ok=True)
        sweep(entry, log)
        missing = [layer for layer in layers if not all(p.is_file() for p in feature_files(entry, layer).values())]
        if not missing:
            log(f"feature cache: reusing {'+'.join(layers)} ({total / 2**20:.1f} MB) in {entry}")
            touch(entry)
            return result
        _check_space(entry, cache_bytes(missing, cfg.image_size, *counts, dtype.itemsize), missing, counts, log)
        write_json(entry / "key.json", parts)
        started = time.perf_counter()
        workers = resolve_workers(cfg.num_workers) if workers is None else workers
        images = ensure_images(cfg, frames, workers, log, digest)
        _build(cfg, model, device, parts["amp"], dtype, entry, missing, images, counts, log)
        touch(entry)
        result["built"] = missing
        result["extract_seconds"] = time.perf_counter() - started
        log(f"feature cache: built in {result['extract_seconds']:.1f} s (decoding included)")
    return result


def _check_space(entry: Path, need: int, missing: list[str], counts: tuple[int, int], log) -> None:
    free = shutil.disk_usage(entry).free
    log(f"feature cache: building {'+'.join(missing)} for {counts[0]} training images x 2 orientations "
        f"+ {counts[1]} validation images: {need / 2**20:.1f} MB in {entry} ({free / 2**30:.1f} GB free; "
        "train.reuse_frozen: false turns the cache off)")
    if need > 0.95 * free:
        raise PipelineError(f"train.feature_cache: {entry} needs {need / 2**30:.2f} GB, only "
                            f"{free / 2**30:.2f} GB free (free space, move it, or set train.reuse_frozen: false)")


def _build(cfg: TrainConfig, model: nn.Module, device: torch.device, amp: str, dtype: np.dtype, entry: Path,
           missing: list[str], images: dict, counts: tuple[int, int], log) -> None:
    """Write the ``missing`` layers of both splits, each to a temporary file renamed when all are
    done: a killed build leaves no half-written layer behind."""
    placer = Placer(device, log)
    was_training = model.training
    model.eval()
    arrays, tmp_paths = {}, []
    try:
        for (split, orientations), n in zip((("train", 2), ("val", 1)), counts):
            for layer in missing:
                tmp = feature_files(entry, layer)[split].with_suffix(f".tmp{os.getpid()}.npy")
                tmp_paths.append((tmp, feature_files(entry, layer)[split]))
                arrays[layer] = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=dtype, shape=(orientations, n, *layer_shape(layer, cfg.image_size)))
            with entry_lock(cfg.feature_cache, images["key"], shared=True):
                pixels = placer.place(images["files"][split], f"decoded {split} images")
            _extract(model, pixels, orientations, missing, arrays, device, cfg.batch_size, amp,
                     cfg.channels_last, f"features {split}")
            del pixels
            for arr in arrays.values():
                arr.flush()
            arrays.clear()
        for tmp, final in tmp_paths:
            os.replace(tmp, final)
    finally:
        arrays.clear()
        for tmp, _ in tmp_paths:
            tmp.unlink(missing_ok=True)
        model.train(was_training)
