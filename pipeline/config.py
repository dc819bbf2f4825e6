"""Loading ``params.yaml``: the one place for paths and knobs.

Every stage calls :func:`load_params`; paths in the file are relative to the folder
that holds it (the project root), and :class:`Params` resolves them.
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

STRATEGIES = ("head_only", "last_block")


class PipelineError(Exception):
    """An error the user can fix; stages print it as one line and exit non-zero."""


class Params:
    """The parsed params file plus the project root its relative paths refer to."""

    def __init__(self, raw: dict, root: Path):
        self.raw = raw
        self.root = Path(root).resolve()

    def get(self, dotted: str) -> Any:
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PipelineError(f"params.yaml: missing key '{dotted}'")
            node = node[part]
        return node

    def path(self, dotted: str) -> Path:
        """A path-valued key, resolved against the project root."""
        p = Path(os.path.expanduser(str(self.get(dotted))))
        return p if p.is_absolute() else self.root / p

    def variants(self) -> dict[str, dict]:
        return self.get("train.variants")

    def variant(self, name: str) -> dict:
        variants = self.variants()
        if name not in variants:
            raise PipelineError(
                f"params.yaml: unknown variant '{name}' (train.variants has: {', '.join(variants)})"
            )
        return variants[name]

    def dataset_root(self) -> Path:
        """Folder in CelebA layout that the reader uses: real CelebA or the generated set."""
        if self.get("data.source") == "celeba":
            return self.path("data.root")
        return self.path("split.dir") / "synthetic"

    def resolved(self) -> dict:
        """A plain copy of the whole config, for checkpoints and MLflow."""
        return copy.deepcopy(self.raw)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise PipelineError(f"params.yaml: {msg}")


def validate(p: Params) -> None:
    """Cheap checks of the knobs, so a bad value fails before any work is done."""
    source = p.get("data.source")
    _check(source in ("synthetic", "celeba"), f"data.source must be 'synthetic' or 'celeba', got {source!r}")
    size = p.get("data.image_size")
    _check(isinstance(size, int) and size >= 32,
           f"data.image_size must be an integer >= 32 (VGG-16 halves it five times), got {size!r}")
    fr = p.get("split.fractions")
    _check(isinstance(fr, dict) and set(fr) == {"train", "val", "test"},
           "split.fractions must have exactly the keys train, val, test")
    _check(all(isinstance(v, (int, float)) and v > 0 for v in fr.values()),
           "split.fractions values must be positive numbers")
    _check(abs(sum(fr.values()) - 1.0) < 1e-6, f"split.fractions must sum to 1, got {sum(fr.values()):g}")
    epochs = p.get("train.epochs")
    _check(isinstance(epochs, int) and epochs >= 1, f"train.epochs must be an integer >= 1, got {epochs!r}")
    bs = p.get("train.batch_size")
    _check(isinstance(bs, int) and bs >= 1, f"train.batch_size must be an integer >= 1, got {bs!r}")
    variants = p.variants()
    _check(isinstance(variants, dict) and len(variants) >= 1, "train.variants must be a non-empty mapping")
    for name, v in variants.items():
        _check(re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) is not None,
               f"train.variants: name '{name}' may hold only letters, digits, '_' and '-' "
               "(DVC reads train.variants.<name> as a key path, so a dot breaks it)")
        _check(isinstance(v, dict), f"train.variants.{name} must be a mapping with strategy and lr")
        _check(v.get("strategy") in STRATEGIES,
               f"train.variants.{name}.strategy must be one of {', '.join(STRATEGIES)}, got {v.get('strategy')!r}")
        lr = v.get("lr")
        _check(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0,
               f"train.variants.{name}.lr must be a positive number, got {lr!r}")


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping at top level")
    params = Params(raw, path.resolve().parent)
    validate(params)
    return params


# --- atomic output helpers ----------------------------------------------------------

def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda t: t.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def run_main(fn: Callable[[], Any]) -> None:
    """Run a stage's main(): user errors become one line on stderr and exit code 1."""
    try:
        fn()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
