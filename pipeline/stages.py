"""The code each DVC stage runs: the ``pipeline/*.py`` deps that dvc.yaml lists for it.

dvc.yaml is the one list. The resume fingerprint and the cache keys hash the files it names for
the ``train`` stage, so a module that DVC re-runs a stage for also invalidates what was computed
by it, and the lists cannot drift apart; ``tests/test_stages.py`` fails when a module that a
stage imports is missing from its deps.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parent
DVC_YAML = PACKAGE.parent / "dvc.yaml"


def code_files(stage: str) -> list[Path]:
    """The modules of this package that dvc.yaml lists as deps of ``stage`` (``train``: every
    ``train@``); every module of the package where no dvc.yaml sits beside it (a copy of the
    package on its own, as a logged model carries it)."""
    if not DVC_YAML.is_file():
        return sorted(PACKAGE.glob("*.py"))
    spec = yaml.safe_load(DVC_YAML.read_text())["stages"][stage]
    deps = spec.get("do", spec).get("deps", [])
    prefix = f"{PACKAGE.name}/"
    return [PACKAGE.parent / d for d in deps if isinstance(d, str) and d.startswith(prefix) and d.endswith(".py")]


def code_digest(stage: str) -> str:
    """A digest of :func:`code_files` (names and bytes): what a cached value was computed by."""
    h = hashlib.blake2b(digest_size=16)
    for path in code_files(stage):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
