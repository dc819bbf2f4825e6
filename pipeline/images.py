"""Checks that a listed image file is there, complete and decodable: a one-line message, never a
traceback deep in training. No torch: the split stage runs them before any model exists."""
from __future__ import annotations

import stat
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline.celeba import detect_layout
from pipeline.cli import PipelineError

TAIL_BYTES = 4096  # the end of a file read to see whether it was cut short
JPEG_END = b"\xff\xd9"  # EOI marker
PNG_END = b"IEND\xaeB`\x82"  # IEND chunk type and its CRC


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
    """What is wrong with one image file, or ``None`` if it is usable.

    Cheap for the usual file: ``stat``, the header (format, size, mode) and the last bytes.
    A JPEG must end with its end-of-image marker, a PNG with its IEND chunk; a file that does
    not (or another format) is decoded in full, which settles it: data after the end marker
    is fine, a file cut short is not.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    fmt = None
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, st.st_size - TAIL_BYTES))
            tail = fh.read()
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. a corrupt EXIF block: harmless here
                with Image.open(fh) as img:
                    fmt, (w, h) = img.format, img.size
                    if w < 1 or h < 1:
                        return f"{fmt} image of {w}x{h} pixels"
                    if _complete(fmt, tail):
                        return None
                    img.load()
    except UnidentifiedImageError:
        return f"not an image file Pillow can read ({st.st_size} bytes of unknown format)"
    except Image.DecompressionBombError as exc:
        return f"image too large to decode ({exc})"
    except PermissionError as exc:
        return f"cannot read ({exc.strerror})"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on a damaged file
        return _decode_problem(exc, fmt)
    return None


def _decode_problem(exc: Exception, fmt: str | None = None) -> str:
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return f"{fmt + ' ' if fmt else ''}file is truncated ({exc})"
    return f"cannot decode image ({type(exc).__name__}: {exc})"


def check_images(root: Path, image_ids, listed_in: str | None = None) -> int:
    """Check that every image of ``image_ids`` exists in the folder's image directory (see
    :func:`detect_layout`) and that its file is a whole, readable image (see
    :func:`image_problem`); raise one :class:`PipelineError` naming the first bad one (and how
    many more there are). Returns the number of images checked. ``listed_in``: what the
    message says listed them (default: the attribute file's name)."""
    layout = detect_layout(root)
    folder = layout.image_dir
    listed_in = listed_in or layout.attr_file.name
    if not folder.is_dir():
        raise PipelineError(f"{folder}: image folder not found (the images listed in {listed_in} belong there)")
    first, bad, n = None, 0, 0
    for image_id in image_ids:
        n += 1
        problem = image_problem(folder / image_id)
        if problem is not None:
            bad += 1
            if first is None:
                first = (image_id, problem)
    if first is not None:
        image_id, problem = first
        if problem == "not found":
            problem = f"listed in {listed_in} but not found"
        more = f" (and {bad - 1} more bad image{'s' if bad > 2 else ''})" if bad > 1 else ""
        raise PipelineError(f"{folder / image_id}: {problem}{more}")
    return n
