"""Where and how the training core runs: the device, autocast, channels_last, worker count, and
where each array lives (:class:`Placer`: the device, pinned host memory, RAM or a memory map),
moved and gathered without a host round trip (:func:`move`, :func:`take`)."""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.core.cli import PipelineError
from pipeline.core.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` takes CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """bf16 autocast for ``amp == 'bf16'`` (CUDA, or CPU with bf16 support); else nothing."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


HEADROOM_BYTES = 2 << 30  # device memory kept free for activations, gradients and the allocator
HEADROOM_FRACTION = 0.10  # ... or this share of the device, whichever is larger
HOST_FRACTION = 0.5  # at most this share of the host's available memory is made resident


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
    device = resolve_device(cfg.device)
    return device, resolve_amp(cfg.amp, device), cfg.channels_last and device.type == "cuda"


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


def move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the host through pinned memory, without waiting."""
    if t.device == device:
        return t
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def take(store, idx: torch.Tensor, device: torch.device, view_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows ``idx`` of ``store`` (a tensor anywhere, or a memory map) as a tensor on ``device``.
    ``idx`` lives where the store does (see ``index_device``): no transfer to gather."""
    if isinstance(store, np.ndarray):
        rows = torch.from_numpy(store[idx.numpy()])
        if view_dtype is not None:
            rows = rows.view(view_dtype)
    else:
        rows = store.index_select(0, idx)
    return move(rows, device)


def index_device(store) -> torch.device:
    return store.device if isinstance(store, torch.Tensor) else torch.device("cpu")
