"""What a training stage trains from, in one call (:func:`training_data`): the network for the
variant and its batch sources, from cached frozen features, from the frozen prefix recomputed on
resident images, or (``train.reuse_frozen: false``) from the decoded images through the whole
network; caches beyond ``train.cache_budget_gb`` are trimmed on the way.

The data path runs one way: sources -> features -> decoded images -> cache, with device
placement and the frozen prefix below them."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.core.cli import PipelineError
from pipeline.core.config import TrainConfig
from pipeline.data.dataset import read_split
from pipeline.training.batches import FeatureBatches, ImageBatches, RecomputeBatches
from pipeline.training.cache import budget_bytes, enforce_budget, entry_lock
from pipeline.training.decoded import ensure_images, images_digest
from pipeline.training.device import Placer
from pipeline.training.features import (
    cache_bytes,
    ensure_cache,
    feature_dtype,
    feature_files,
)
from pipeline.training.prefix import Tail, layer_for, prefix_for


def frozen_mode(cfg: TrainConfig, placer: Placer, feature_bytes: int, image_bytes: int, log=print) -> str:
    """``train.frozen_features``: ``cache`` (train from cached frozen features) or ``recompute``
    (run the frozen prefix on resident images every step). ``auto`` recomputes only when the
    features would not fit on the device but the images would; the choice is logged."""
    mode = cfg.frozen_features
    if mode == "auto":
        recompute = not placer.fits_device(feature_bytes) and placer.fits_device(image_bytes)
        mode = "recompute" if recompute else "cache"
        why = (f"features ({feature_bytes / 2**30:.2f} GB) do not fit on {placer.device}, the decoded images "
               f"({image_bytes / 2**30:.2f} GB) do" if recompute else
               "the device holds the features" if placer.fits_device(feature_bytes) else
               f"no CUDA device holds the images ({placer.device})" if placer.device.type != "cuda" else
               "the images do not fit on the device either")
        log(f"frozen prefix: {mode} (train.frozen_features: auto; {why})")
    else:
        log(f"frozen prefix: {mode} (train.frozen_features: {mode})")
    return mode


def feature_sources(cache: dict, layer: str, labels: dict[str, torch.Tensor], placer: Placer) -> dict:
    """``{split: FeatureBatches}`` over one cached layer (:func:`pipeline.ensure_cache`),
    placed where it fits; a layer whose rows do not match its split is refused."""

    out = {}
    with entry_lock(Path(cache["dir"]).parent, cache["key"], shared=True):
        for s, split_labels in labels.items():
            path = feature_files(cache["dir"], layer)[s]
            store = placer.place(path, f"{layer} features of {s}", cache["view_dtype"])
            if store.shape[1] != len(split_labels):
                raise PipelineError(f"{path}: holds {store.shape[1]} rows, split has {len(split_labels)}")
            out[s] = FeatureBatches(store, split_labels, placer.device, cache["view_dtype"])
    return out


def training_data(cfg: TrainConfig, model: nn.Module, strategy: str, device: torch.device, amp: str,
                  workers: int, channels_last: bool, log=print) -> dict:
    """The network to train and its batch sources for one variant, data resident where it fits.

    ``train.reuse_frozen: false``: the whole model on decoded images. Else the
    :class:`pipeline.Tail` after the cached layer, on cached features (``cache``) or on
    the prefix recomputed from resident images (``recompute``), see :func:`frozen_mode`.
    Returns ``{"net", "train", "val", "layer", "mode", "cache", "images"}``; caches beyond
    ``train.cache_budget_gb`` are trimmed on the way.
    """

    size = cfg.image_size
    frames = {s: read_split(cfg.split_dir, s) for s in ("train", "val")}
    labels = {s: torch.tensor(f["label"].to_numpy(), dtype=torch.float32) for s, f in frames.items()}
    root = cfg.feature_cache
    placer = Placer(device, log)
    digest = images_digest(cfg, frames)
    out = {"layer": "none", "mode": "plain", "cache": None, "images": None}

    def image_sources():
        images = ensure_images(cfg, frames, workers, log, digest)
        out["images"] = images
        with entry_lock(root, images["key"], shared=True):
            return {s: ImageBatches(placer.place(images["files"][s], f"decoded {s} images"), labels[s], device)
                    for s in frames}

    if cfg.reuse_frozen:
        layer = layer_for(strategy, cfg.frozen_dropout)
        n_train, n_val = len(frames["train"]), len(frames["val"])
        dtype, view_dtype = feature_dtype(amp)
        mode = frozen_mode(cfg, placer, cache_bytes([layer], size, n_train, n_val, dtype.itemsize),
                           3 * size * size * (n_train + n_val), log)
        out.update(layer=layer, mode=mode, net=Tail(model, layer, size).to(device))
        if mode == "cache":
            out["cache"] = ensure_cache(cfg, model, device, log, workers=workers, digest=digest)
            out.update(feature_sources(out["cache"], layer, labels, placer))
        else:
            prefix = prefix_for(model, layer)
            out.update({s: RecomputeBatches(src, prefix, amp, channels_last) for s, src in image_sources().items()})
    else:
        out.update(net=model, **image_sources())
    in_use = {e["key"] for e in (out["cache"], out["images"]) if e}
    enforce_budget(root, budget_bytes(cfg), keep=in_use, log=log)
    return out
