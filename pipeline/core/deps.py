"""The code each DVC stage runs: the ``pipeline/`` deps that dvc.yaml lists for it, files and
package folders.

dvc.yaml is the one list. The resume fingerprint and the cache keys hash the files it names for
the ``train`` stage (a folder: every ``.py`` file in it), so a module that DVC re-runs a stage for
also invalidates what was computed by it, and the lists cannot drift apart;
``tests/test_stages.py`` fails when a module that a stage imports is not under its deps.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parents[1]
DVC_YAML = PACKAGE.parent / "dvc.yaml"


def code_files(stage: str) -> list[Path]:
    """The modules of this package under the deps dvc.yaml lists for ``stage`` (``train``: every
    ``train@``); every module of the package where no dvc.yaml sits beside it (a copy of the
    package on its own, as a logged model carries it)."""
    if not DVC_YAML.is_file():
        return sorted(PACKAGE.rglob("*.py"))
    spec = yaml.safe_load(DVC_YAML.read_text())["stages"][stage]
    deps = spec.get("do", spec).get("deps", [])
    prefix = f"{PACKAGE.name}/"
    files: list[Path] = []
    for dep in deps:
        if not (isinstance(dep, str) and dep.startswith(prefix)):
            continue
        path = PACKAGE.parent / dep
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if dep.endswith(".py") else []
    return files


def code_digest(stage: str) -> str:
    """A digest of :func:`code_files` (paths inside the package, and bytes): what a cached value
    was computed by."""
    h = hashlib.blake2b(digest_size=16)
    for path in code_files(stage):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
