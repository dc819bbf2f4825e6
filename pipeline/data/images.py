"""Checks that a listed image file is there, complete and decodable (a one-line message, never a
traceback deep in training), and its content hash, in one read of each file, on every core
(:func:`scan`). No torch: the split stage runs them before any model exists."""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import stat
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.core.cli import PipelineError
from pipeline.data.celeba import detect_layout

TAIL_BYTES = 4096  # the end of a file read to see whether it was cut short
JPEG_END = b"\xff\xd9"  # EOI marker
PNG_END = b"IEND\xaeB`\x82"  # IEND chunk type and its CRC
PARALLEL_FROM = 2000  # images: below this a pool costs more than it saves


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
    """What is wrong with one image file, or ``None`` if it is usable (see :func:`inspect`)."""
    return inspect(path)[0]


def inspect(path: Path) -> tuple[str | None, int, int, str]:
    """``(problem or None, size, mtime_ns, blake2b of the bytes)`` of one image file, read once.

    A JPEG must end with its end-of-image marker, a PNG with its IEND chunk; a file that does not
    (or another format) is decoded in full, which settles it: data after the end marker is fine,
    a file cut short is not."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "not found", -1, -1, ""
    except OSError as exc:
        return f"cannot read ({exc.strerror})", -1, -1, ""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", st.st_size, st.st_mtime_ns, ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read ({exc.strerror})", st.st_size, st.st_mtime_ns, ""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    return _problem(data), len(data), st.st_mtime_ns, digest


SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # start-of-frame markers


def _plain_jpeg(data: bytes) -> bool:
    """Whether ``data`` is a whole baseline or progressive 8-bit JPEG by its marker segments alone:
    start of image, well-formed segments up to a frame of >= 1 x 1 pixels and a scan, and the
    end-of-image marker last. A file this walk is not sure of goes to Pillow (:func:`_problem`),
    which reports what is wrong; at 200,000 images the walk is most of the split's time saved."""
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\0").endswith(JPEG_END):
        return False
    i, n, frame = 2, len(data), False
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return False
        if marker in SOF:
            if length < 8 or data[i + 4] != 8 or data[i + 9] not in (1, 3, 4):
                return False  # not 8-bit or an unusual channel count: Pillow decides
            h, w = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            if h < 1 or w < 1 or (Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS):
                return False  # empty, or large enough for Pillow's decompression-bomb check
            frame = True
        if marker == 0xDA:  # start of scan: entropy-coded data follows, to the end marker
            return frame
        i += 2 + length
    return False


def _problem(data: bytes) -> str | None:
    if not data:
        return "empty file (0 bytes)"
    if _plain_jpeg(data):
        return None
    fmt = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a corrupt EXIF block: harmless here
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format, img.size
                if w < 1 or h < 1:
                    return f"{fmt} image of {w}x{h} pixels"
                if _complete(fmt, data[-TAIL_BYTES:]):
                    return None
                img.load()
    except UnidentifiedImageError:
        return f"not an image file Pillow can read ({len(data)} bytes of unknown format)"
    except Image.DecompressionBombError as exc:
        return f"image too large to decode ({exc})"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on a damaged file
        return decode_problem(exc, fmt)
    return None


def decode_problem(exc: Exception, fmt: str | None = None) -> str:
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return f"{fmt + ' ' if fmt else ''}file is truncated ({exc})"
    return f"cannot decode image ({type(exc).__name__}: {exc})"


def _inspect_all(paths: list[Path]) -> list[tuple[str | None, int, int, str]]:
    return [inspect(p) for p in paths]


def scan(root: Path, image_ids, listed_in: str | None = None, workers: int | None = None) -> pd.DataFrame:
    """:func:`inspect` every image of ``image_ids`` in the folder's image directory (see
    :func:`detect_layout`), on every core; raise one :class:`PipelineError` naming the first bad
    one (and how many more there are). Returns ``image_id, size, mtime_ns, blake2b`` in the order
    given. ``listed_in``: what the message says listed them (default: the attribute file's name)."""
    layout = detect_layout(root)
    folder = layout.image_dir
    listed_in = listed_in or layout.attr_file.name
    if not folder.is_dir():
        raise PipelineError(f"{folder}: image folder not found (the images listed in {listed_in} belong there)")
    ids = [str(i) for i in image_ids]
    paths = [folder / i for i in ids]
    workers = workers or cores()
    if workers > 1 and len(paths) >= PARALLEL_FROM:
        chunk = -(-len(paths) // (workers * 8))
        with multiprocessing.get_context("fork").Pool(workers, initializer=worker_signals) as pool:
            parts = pool.map(_inspect_all, [paths[i:i + chunk] for i in range(0, len(paths), chunk)])
        results = [r for part in parts for r in part]
    else:
        results = _inspect_all(paths)
    bad = [(i, r[0]) for i, r in zip(ids, results) if r[0] is not None]
    if bad:
        image_id, problem = bad[0]
        if problem == "not found":
            problem = f"listed in {listed_in} but not found"
        more = f" (and {len(bad) - 1} more bad image{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise PipelineError(f"{folder / image_id}: {problem}{more}")
    return pd.DataFrame({"image_id": ids, "size": [r[1] for r in results], "mtime_ns": [r[2] for r in results],
                         "blake2b": [r[3] for r in results]})


def worker_signals(worker_id: int | None = None) -> None:
    """A hashing pool's or a decode DataLoader's worker's signals (a DataLoader passes ``worker_id``):
    SIGTERM kills it, the default that ``Pool.terminate`` relies on (the stage's own SIGTERM handler,
    inherited through fork, made a worker run Python clean-up instead, and one hung there on a lock
    the pool held: split never ended); Ctrl-C is the stage's to handle, and it stops the workers."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_images(root: Path, image_ids, listed_in: str | None = None) -> int:
    """:func:`scan` without its table: the number of images checked."""
    return len(scan(root, image_ids, listed_in))


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
