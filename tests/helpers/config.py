"""The repo, the real CelebA sample, and the shrunken copy of the project's params.yaml that
tests run with."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CELEBA_SAMPLE = (REPO.parent / "shared" / "celeba-sample").resolve()

# Small enough for a 2-core CPU: 32x32 images (VGG-16's smallest), a few dozen images, 1 epoch.
TINY = {
    "data.image_size": 32,
    "data.synthetic.images": 60,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.device": "cpu",
}


def set_dotted(raw: dict, dotted: str, value) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def write_params(folder: Path, overrides: dict | None = None) -> Path:
    """The repo's params.yaml with ``overrides`` (dotted keys) applied, written to ``folder``."""
    raw = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    for key, value in {**TINY, **(overrides or {})}.items():
        set_dotted(raw, key, value)
    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def in_ci() -> bool:
    """CI sets CI=true (as GitHub Actions, GitLab CI and `.ci/run` do)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
