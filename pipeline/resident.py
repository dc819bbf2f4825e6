"""Data resident where the network runs: images decoded once, batches gathered by index.

The slow part of a GPU epoch was never the GPU: it waited on per-sample ``__getitem__``,
collation, JPEG decoding every epoch and a host round trip every step. This module removes
them, without changing a single number of the CPU default:

* **Images decoded once.** :func:`ensure_images` decodes and resizes each image of a split once
  (:meth:`pipeline.data.Preset.pixels`: the same PIL bilinear resize as :class:`FaceDataset`) into
  a uint8 ``(N, 3, S, S)`` ``.npy`` file, a cache entry ``images-<key>/`` beside the feature
  cache's entries, keyed by the image size, the images' bytes and the code. Flip and ImageNet
  normalisation (:func:`normalise`) then run on whole batches on the device; the result is
  bitwise :class:`FaceDataset`'s tensor.
* **Where the data lives.** :class:`Placer` puts an array on the device when it fits (free
  device memory minus a headroom), else in pinned host memory (CUDA) or RAM (CPU) when that
  fits, else leaves it memory-mapped; every choice is logged.
* **Batches by index.** :func:`epoch_order` is :func:`pipeline.data.make_loader`'s seeded
  shuffle, computed without a DataLoader; :class:`ImageBatches`, :class:`FeatureBatches` and
  :class:`RecomputeBatches` gather a batch with one ``index_select``: no per-sample Python.
* **Caches within a budget.** :func:`enforce_budget` removes the least recently used entries
  under ``train.feature_cache`` beyond ``train.cache_budget_gb``, and logs each removal.

Nothing here imports MLflow: the device check (``pipeline/devcheck.py``) runs it on a
machine that has only torch.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.cli import PipelineError
from pipeline.config import TrainConfig
from pipeline.files import write_json
from pipeline.data import FaceDataset, IMAGENET_MEAN, IMAGENET_STD, make_loader

IMAGE_FORMAT = 1
IMAGE_PREFIX = "images-"  # image entries under train.feature_cache; feature entries are bare keys
LAST_USED = "last_used"  # touched in an entry each time it is used: the LRU clock
HEADROOM_BYTES = 2 << 30  # device memory kept free for activations, gradients and the allocator
HEADROOM_FRACTION = 0.10  # ... or this share of the device, whichever is larger
HOST_FRACTION = 0.5  # at most this share of the host's available memory is made resident
LOADER_ITERATORS = 2  # see epoch_order


# --- knobs that resolve on the machine -------------------------------------------------

def resolve_workers(value) -> int:
    """``train.num_workers``: ``auto`` is one worker per usable core for the one decode pass
    (0, decoding in the main process, on a one-core machine)."""
    if value == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return cores if cores > 1 else 0
    return int(value)


def resolve_amp(value, device: torch.device) -> str:
    """``train.amp``: ``auto`` is bf16 on a CUDA device that supports it, else none."""
    if value != "auto":
        return str(value)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "none"


def placement(cfg: TrainConfig) -> tuple[torch.device, str, bool]:
    """Where and how the training core runs: the device ``train.device`` names, the autocast mode
    ``train.amp`` comes to on it, and whether to use channels_last (CUDA only)."""
    from pipeline.engine import resolve_device

    device = resolve_device(cfg.device)
    return device, resolve_amp(cfg.amp, device), cfg.channels_last and device.type == "cuda"


# --- images decoded once --------------------------------------------------------------

def hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def images_digest(cfg: TrainConfig, frames: dict[str, pd.DataFrame]) -> str:
    """A digest of the splits' image ids and bytes (what every cached value is computed from),
    from the hashes the split stage recorded (:mod:`pipeline.manifest`): no image is read."""
    from pipeline import manifest

    return manifest.digest(manifest.load(cfg.split_dir), frames)


def image_key(cfg: TrainConfig, frames: dict[str, pd.DataFrame], digest: str | None = None) -> tuple[str, dict]:
    from PIL import __version__ as pillow

    from pipeline.stages import code_digest

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


@contextlib.contextmanager
def entry_lock(root: Path, key: str, shared: bool = False):
    """The lock of a cache entry: exclusive to build or remove it, shared to open it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


TMP_GLOB = "*.tmp*.npy"  # what a build writes before renaming: <name>.tmp<pid>.npy


def sweep(entry: Path, log=print) -> None:
    """Remove what a killed build left in ``entry`` (SIGKILL runs no clean-up): called under the
    entry's exclusive lock, which its builder held until it died, so no live build owns them."""
    left = sorted(entry.glob(TMP_GLOB)) if entry.is_dir() else []
    for path in left:
        path.unlink(missing_ok=True)
    if left:
        log(f"cache: removed {len(left)} temporary files of an interrupted build in {entry} "
            f"({', '.join(p.name for p in left[:3])}{' ...' if len(left) > 3 else ''})")


def touch(entry: Path) -> None:
    """Mark an entry as used now (the LRU order of :func:`enforce_budget`)."""
    (entry / LAST_USED).touch()


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


# --- where the data lives --------------------------------------------------------------

def host_available() -> int:
    """Bytes of host memory available (``MemAvailable``), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Placer:
    """Chooses, array by array, where data lives: ``device`` (CUDA memory, when it fits with
    headroom), ``pinned`` (page-locked host memory, CUDA only) or ``memory`` (RAM, on the CPU),
    else ``mmap`` (read from the file, as before). It counts what it placed already."""

    def __init__(self, device: torch.device, log=print):
        self.device, self.log = device, log
        self.on_device = 0
        self.on_host = 0

    def device_room(self) -> int:
        if self.device.type != "cuda":
            return 0
        free, total = torch.cuda.mem_get_info(self.device)
        # memory torch's allocator holds but no tensor uses (an earlier variant's data) is free too
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + cached - max(HEADROOM_BYTES, HEADROOM_FRACTION * total))

    def fits_device(self, nbytes: int) -> bool:
        return self.device.type == "cuda" and nbytes <= self.device_room()

    def choose(self, nbytes: int) -> str:
        if self.fits_device(nbytes):
            return "device"
        if nbytes + self.on_host <= HOST_FRACTION * host_available():
            return "pinned" if self.device.type == "cuda" else "memory"
        return "mmap"

    def place(self, path: Path, what: str, view_dtype: torch.dtype | None = None) -> torch.Tensor | np.ndarray:
        """The array in ``path`` where it fits best (a tensor, or the memory map itself)."""
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        where = self.choose(array.nbytes)
        self.log(f"data: {what} ({array.nbytes / 2**20:.1f} MB) -> {where}"
                 + {"device": f" ({self.device})", "pinned": " (page-locked host memory)",
                    "memory": " (host memory)", "mmap": f" (memory-mapped {path})"}[where])
        if where == "mmap":
            return array
        with warnings.catch_warnings():  # read-only map: every path below copies it before use
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
        if view_dtype is not None:
            tensor = tensor.view(view_dtype)
        if where == "device":
            self.on_device += array.nbytes
            return tensor.to(self.device)
        self.on_host += array.nbytes
        return tensor.pin_memory() if where == "pinned" else tensor.clone()


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the host through pinned memory, without waiting."""
    if t.device == device:
        return t
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _take(store, idx: torch.Tensor, device: torch.device, view_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows ``idx`` of ``store`` (a tensor anywhere, or a memory map) as a tensor on ``device``.
    ``idx`` lives where the store does (see ``index_device``): no transfer to gather."""
    if isinstance(store, np.ndarray):
        rows = torch.from_numpy(store[idx.numpy()])
        if view_dtype is not None:
            rows = rows.view(view_dtype)
    else:
        rows = store.index_select(0, idx)
    return _to(rows, device)


def _index_device(store) -> torch.device:
    return store.device if isinstance(store, torch.Tensor) else torch.device("cpu")


# --- batches by index ------------------------------------------------------------------

def epoch_order(n: int, seed: int) -> torch.Tensor:
    """The sample order of one training epoch as the loop before this module walked it:
    ``progress(make_loader(ds, b, w, shuffle=True, seed=seed))``. Each iterator of that
    DataLoader draws one number (its workers' base seed) from the seeded generator before its
    RandomSampler draws the permutation, and two iterators were made: ``tqdm.auto``'s wrapper
    calls ``iter()`` once when it is created, the loop once more. (tests/test_resident.py
    checks this against the loader itself.)"""
    g = torch.Generator().manual_seed(seed)
    for _ in range(LOADER_ITERATORS):
        torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g)


class ImageBatches:
    """Batches of normalised images from resident uint8 pixels; training sets flip by the
    epoch's :func:`pipeline.data.epoch_flips`."""

    def __init__(self, pixels, labels: torch.Tensor, device: torch.device):
        self.pixels, self.device = pixels, device
        self.index_device = _index_device(pixels)  # where batch() wants its index tensors
        self.labels = labels.to(self.index_device)
        self.n = len(labels)

    def batch(self, idx: torch.Tensor, flips: torch.Tensor | None):
        """``idx``, ``flips``: on :attr:`index_device`; the batch comes back on :attr:`device`."""
        x = _take(self.pixels, idx, self.device)
        if flips is not None:
            flips = _to(flips, self.device)
        return normalise(x, flips), _to(self.labels[idx], self.device)


class FeatureBatches:
    """Batches of cached frozen features: ``array`` is ``(orientations, N, ...)``; orientation 1
    of a training sample is its flipped image."""

    def __init__(self, features, labels: torch.Tensor, device: torch.device, view_dtype=None):
        self.device, self.view_dtype = device, view_dtype
        self.index_device = _index_device(features)
        self.labels = labels.to(self.index_device)
        self.n = len(labels)
        # (O, N, ...) -> (O * N, ...): orientation o of sample i is row o * N + i
        self.rows = features.reshape(-1, *features.shape[2:])

    def batch(self, idx: torch.Tensor, flips: torch.Tensor | None):
        rows = idx if flips is None else idx + flips.to(idx.dtype) * self.n
        return _take(self.rows, rows, self.device, self.view_dtype), _to(self.labels[idx], self.device)


class RecomputeBatches:
    """The frozen prefix run on resident images every step (when its cached output would not
    fit on the device but the images do): same values as the cache, no disk read."""

    def __init__(self, images: ImageBatches, prefix: nn.Module, amp: str, channels_last: bool):
        self.images, self.prefix, self.amp, self.channels_last = images, prefix, amp, channels_last
        self.device, self.index_device, self.labels, self.n = images.device, images.index_device, images.labels, images.n

    @torch.no_grad()
    def batch(self, idx: torch.Tensor, flips: torch.Tensor | None):
        from pipeline.engine import autocast

        x, y = self.images.batch(idx, flips)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            return self.prefix(x), y


def prefix_for(model: nn.Module, layer: str) -> nn.Module:
    """The frozen layers before ``layer`` (what the cache stores), in eval mode: no dropout."""
    from pipeline.frozen import POOL4_END

    if layer == "pool4":
        prefix = model.features[:POOL4_END]
    elif layer == "pool5":
        prefix = model.features
    else:
        prefix = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), model.classifier[:6])
    return prefix.eval()


# --- caches within a budget -----------------------------------------------------------

def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _last_used(entry: Path) -> float:
    marker = entry / LAST_USED
    return marker.stat().st_mtime if marker.exists() else entry.stat().st_mtime


def enforce_budget(root: Path, budget_bytes: int, keep=(), log=print) -> list[str]:
    """Remove the least recently used entries under ``root`` until the rest fit ``budget_bytes``.

    ``keep``: entry names in use now, never removed; an entry another process holds (its lock
    taken) is skipped. Returns the removed names; each removal is logged.
    """
    if not root.is_dir():
        return []
    entries = sorted((p for p in root.iterdir() if p.is_dir()), key=_last_used)
    sizes = {p.name: _size(p) for p in entries}
    total = sum(sizes.values())
    removed = []
    for entry in entries:
        if total <= budget_bytes:
            break
        if entry.name in keep:
            continue
        with open(root / f"{entry.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by another stage
            used = _last_used(entry)
            shutil.rmtree(entry, ignore_errors=True)
        (root / f"{entry.name}.lock").unlink(missing_ok=True)
        total -= sizes[entry.name]
        removed.append(entry.name)
        log(f"cache budget: removed {entry} ({sizes[entry.name] / 2**20:.1f} MB, last used "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(used))}; "
            f"train.cache_budget_gb: {budget_bytes / 2**30:g})")
    if total > budget_bytes:
        log(f"cache budget: {root} holds {total / 2**30:.2f} GB, over train.cache_budget_gb "
            f"({budget_bytes / 2**30:g}) with only entries in use left")
    return removed


def budget_bytes(cfg: TrainConfig) -> int:
    return int(cfg.cache_budget_gb * 2**30)


# --- the training stage's data, in one call ----------------------------------------------

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
    """``{split: FeatureBatches}`` over one cached layer (:func:`pipeline.frozen.ensure_cache`),
    placed where it fits; a layer whose rows do not match its split is refused."""
    from pipeline import frozen

    out = {}
    with entry_lock(Path(cache["dir"]).parent, cache["key"], shared=True):
        for s, split_labels in labels.items():
            path = frozen._files(cache["dir"], layer)[s]
            store = placer.place(path, f"{layer} features of {s}", cache["view_dtype"])
            if store.shape[1] != len(split_labels):
                raise PipelineError(f"{path}: holds {store.shape[1]} rows, split has {len(split_labels)}")
            out[s] = FeatureBatches(store, split_labels, placer.device, cache["view_dtype"])
    return out


def training_data(cfg: TrainConfig, model: nn.Module, strategy: str, device: torch.device, amp: str,
                  workers: int, channels_last: bool, log=print) -> dict:
    """The network to train and its batch sources for one variant, data resident where it fits.

    ``train.reuse_frozen: false``: the whole model on decoded images. Else the
    :class:`pipeline.frozen.Tail` after the cached layer, on cached features (``cache``) or on
    the prefix recomputed from resident images (``recompute``), see :func:`frozen_mode`.
    Returns ``{"net", "train", "val", "layer", "mode", "cache", "images"}``; caches beyond
    ``train.cache_budget_gb`` are trimmed on the way.
    """
    from pipeline import frozen
    from pipeline.data import read_split

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
        layer = frozen.layer_for(strategy, cfg.frozen_dropout)
        n_train, n_val = len(frames["train"]), len(frames["val"])
        dtype, view_dtype = frozen.feature_dtype(amp)
        mode = frozen_mode(cfg, placer, frozen.cache_bytes([layer], size, n_train, n_val, dtype.itemsize),
                           3 * size * size * (n_train + n_val), log)
        out.update(layer=layer, mode=mode, net=frozen.Tail(model, layer, size).to(device))
        if mode == "cache":
            out["cache"] = frozen.ensure_cache(cfg, model, device, log, workers=workers, digest=digest)
            out.update(feature_sources(out["cache"], layer, labels, placer))
        else:
            prefix = prefix_for(model, layer)
            out.update({s: RecomputeBatches(src, prefix, amp, channels_last) for s, src in image_sources().items()})
    else:
        out.update(net=model, **image_sources())
    in_use = {e["key"] for e in (out["cache"], out["images"]) if e}
    enforce_budget(root, budget_bytes(cfg), keep=in_use, log=log)
    return out
