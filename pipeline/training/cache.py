"""The entries under ``train.feature_cache`` (decoded images, frozen features): their locks, their
least-recently-used clock, what a killed build left in them, and the budget that trims them."""
from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from pathlib import Path

from pipeline.core.config import TrainConfig

LAST_USED = "last_used"  # touched in an entry each time it is used: the LRU clock
TMP_GLOB = "*.tmp*.npy"  # what a build writes before renaming: <name>.tmp<pid>.npy


@contextlib.contextmanager
def entry_lock(root: Path, key: str, shared: bool = False):
    """The lock of a cache entry: exclusive to build or remove it, shared to open it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


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
