"""What the split stage knows of every image it checked, so the later stages need not read them again.

``split`` checks and hashes every listed image once, on every core (:func:`pipeline.data.images.scan`),
and writes ``manifest.csv`` into ``split.dir``: ``image_id, label, split, size, blake2b``. That is
the only path from the data folder to the stages after it: train, select and evaluate depend on
``split.dir``, not on ``data.root``, so DVC walks the data folder once per ``dvc status``, and a
changed label or image still re-runs split, whose new manifest then re-runs everything that
reads images.

A later stage trusts the manifest with one ``stat`` per image (:func:`verify`): the size must be
the manifest's, and the modification time one this machine has seen with the manifest's hash (a
small local record under ``train.feature_cache``, written by split and kept up to date), else the
file is hashed again; a file that changed under the pipeline fails in one line. The images'
digest that the caches are keyed by comes from the manifest too (:func:`digest`), not from their
bytes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.cli import PipelineError
from pipeline.core.files import atomic_write
from pipeline.data.celeba import detect_layout

MANIFEST = "manifest.csv"  # in split.dir
COLUMNS = ("image_id", "label", "split", "size", "blake2b")
SEEN = "seen"  # under train.feature_cache: the modification times known to go with a manifest's hashes


def write(split_dir: Path, parts: dict[str, pd.DataFrame], scanned: pd.DataFrame) -> pd.DataFrame:
    """``manifest.csv`` of the splits (``parts``: name -> ``image_id, label``), from the scan of
    their images; returns it."""
    rows = pd.concat([part.assign(split=name) for name, part in parts.items()], ignore_index=True)
    table = rows.merge(scanned, on="image_id", how="left", validate="one_to_one")
    manifest = table[list(COLUMNS)]
    atomic_write(Path(split_dir) / MANIFEST, lambda t: manifest.to_csv(t, index=False))
    return manifest


_loaded: dict = {}  # one read of a manifest per process: train verifies two splits and keys its caches
_positions: list = []  # [(loaded manifest, {image_id: row})]: it holds the table, so no other one is taken for it


def load(split_dir: Path) -> pd.DataFrame:
    """The manifest, indexed by image id; a one-line error when split has not written one."""
    path = Path(split_dir) / MANIFEST
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the split stage again)") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _loaded:
        table = pd.read_csv(path, dtype={"image_id": str, "blake2b": str, "split": str})
        if list(table.columns) != list(COLUMNS):
            raise PipelineError(f"{path}: expected the columns {','.join(COLUMNS)} (run the split stage again)")
        _loaded.clear()
        _loaded[key] = table.set_index("image_id")
    return _loaded[key]


def _rows(manifest: pd.DataFrame, image_ids: list[str], what: str, split_dir: Path) -> np.ndarray:
    """Positions of ``image_ids`` in the manifest; a one-line error for one it does not list."""
    if _positions and _positions[0][0] is manifest:
        where = _positions[0][1]
    else:  # built once per loaded manifest: a dict beats pandas' indexer on string ids
        where = {image_id: k for k, image_id in enumerate(manifest.index.tolist())}
        if any(manifest is table for table in _loaded.values()):
            _positions[:] = [(manifest, where)]
    try:
        return np.fromiter((where[i] for i in image_ids), dtype=np.int64, count=len(image_ids))
    except KeyError as exc:
        raise PipelineError(f"{Path(split_dir) / MANIFEST}: does not list {exc.args[0]} of {what} "
                            "(run the split stage again)") from None


def digest(manifest: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> str:
    """A digest of the splits' image ids and contents, from the manifest's hashes."""
    h = hashlib.blake2b(digest_size=16)
    hashes = np.asarray(manifest["blake2b"].tolist(), dtype=object)
    for name, frame in frames.items():
        ids = frame["image_id"].tolist()
        h.update(name.encode())
        pos = _rows(manifest, ids, name, Path("."))
        h.update("\n".join(f"{i} {v}" for i, v in zip(ids, hashes[pos])).encode())
    return h.hexdigest()


def _seen_file(cache: Path, root: Path, split_dir: Path) -> Path:
    key = hashlib.blake2b(f"{Path(root).resolve()}\0{Path(split_dir).resolve()}".encode(), digest_size=10)
    return Path(cache) / SEEN / f"{key.hexdigest()}.npz"


def remember(cache: Path, root: Path, split_dir: Path, scanned: pd.DataFrame) -> None:
    """Record the modification times that go with the scanned hashes (split calls it)."""
    _save_seen(_seen_file(cache, root, split_dir), scanned["image_id"], scanned["blake2b"], scanned["mtime_ns"])


def _save_seen(path: Path, ids, hashes, mtimes) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            np.savez(out, ids=np.asarray(ids, dtype=str), hashes=np.asarray(hashes, dtype=str),
                     mtimes=np.asarray(mtimes, dtype=np.int64))

    atomic_write(path, save)


def _load_seen(path: Path) -> pd.DataFrame:
    """``hash, mtime_ns`` by image id, as this machine last saw the files (empty when unknown)."""
    try:
        with np.load(path) as saved:
            return pd.DataFrame({"hash": saved["hashes"], "mtime_ns": saved["mtimes"]}, index=pd.Index(saved["ids"]))
    except (OSError, ValueError, KeyError):
        return pd.DataFrame({"hash": pd.Series(dtype=str), "mtime_ns": pd.Series(dtype=np.int64)})


def verify(root: Path, frame: pd.DataFrame, split_dir: Path, cache: Path, log=print) -> pd.DataFrame:
    """Check that every image of ``frame`` is the file the split stage checked: present, of the
    manifest's size, and of its content (by modification time when this machine has seen the
    file so, else by hashing it again). Returns the manifest rows of ``frame``; a file that changed
    since the split is a one-line error naming it and why."""
    from pipeline.data.images import image_problem, scan

    manifest = load(split_dir)
    listed_in = frame.attrs.get("source", str(Path(split_dir) / MANIFEST))
    ids = frame["image_id"].tolist()
    pos = _rows(manifest, ids, listed_in, split_dir)
    sizes = manifest["size"].to_numpy()[pos]
    hashes = np.asarray(manifest["blake2b"].tolist(), dtype=object)[pos]
    folder = str(detect_layout(root).image_dir)
    seen_file = _seen_file(cache, root, split_dir)
    seen = _load_seen(seen_file)
    seen_at = dict(zip(seen.index.tolist(), zip(seen["hash"].tolist(), seen["mtime_ns"].tolist())))
    known = np.fromiter((m if h == want else -1 for (h, m), want in
                         zip((seen_at.get(i, ("", -1)) for i in ids), hashes)), dtype=np.int64, count=len(ids))
    size_now, mtime_now = np.empty(len(ids), dtype=np.int64), np.empty(len(ids), dtype=np.int64)
    for k, image_id in enumerate(ids):
        try:
            st = os.stat(f"{folder}/{image_id}")
        except FileNotFoundError:
            raise PipelineError(f"{folder}/{image_id}: listed in {listed_in} but not found (it was there when the "
                                "split stage ran; run dvc repro)") from None
        size_now[k], mtime_now[k] = st.st_size, st.st_mtime_ns
    wrong_size = np.flatnonzero(size_now != sizes)
    if len(wrong_size):
        path = Path(folder) / ids[wrong_size[0]]
        _changed(path, image_problem(path))
    unsure = np.flatnonzero(mtime_now != known)
    if len(unsure):
        log(f"data: hashing {len(unsure)} of {len(ids)} images again (modified since the split stage saw them)")
        again = scan(root, [ids[k] for k in unsure], listed_in=listed_in)
        changed = np.flatnonzero(again["blake2b"].to_numpy() != hashes[unsure])
        if len(changed):
            _changed(Path(folder) / ids[unsure[changed[0]]], None)
        merged = pd.concat([seen[~seen.index.isin(again["image_id"])],
                            pd.DataFrame({"hash": again["blake2b"].to_numpy(), "mtime_ns": again["mtime_ns"].to_numpy()},
                                         index=pd.Index(again["image_id"]))])
        _save_seen(seen_file, merged.index, merged["hash"], merged["mtime_ns"])
    return manifest.iloc[pos]


def _changed(path: Path, problem: str | None) -> None:
    what = problem or "other bytes than the split stage checked"
    raise PipelineError(f"{path}: {what} (changed since the split stage ran; run dvc repro)")
