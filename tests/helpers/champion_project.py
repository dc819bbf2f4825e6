"""A tiny project with a registered champion, for the predict and serve tests.

split -> train (one ``head_only`` variant, 32x32, 60 synthetic images, 1 epoch) -> select, in a
temporary folder with its own SQLite store; built once per test session (both test modules share it).
The frozen base comes from a weights *file* (``model.weights: <root>/vgg16-weights.pt``, a VGG-16
state dict of its own seed, not the pipeline's seeded init), as ImageNet weights would.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.config import REPO, write_params
from pipeline.core.config import Params, load_params

VARIANT = "head_only-lr1e-3"
WEIGHTS_FILE = "vgg16-weights.pt"  # in the project folder
WEIGHTS_SEED = 1234
_BUILT: dict[str, Params] = {}


def build(tmp_path_factory) -> Params:
    """The project's params (rooted in a temporary folder), trained and selected once."""
    if "params" not in _BUILT:
        from pipeline.data.synthetic import generate_from_params
        from pipeline.stages.select import select
        from pipeline.stages.split import split
        from pipeline.stages.train import train

        root = tmp_path_factory.mktemp("champion")
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            mp.setenv("TQDM_DISABLE", "1")
            mp.setenv("TORCH_HOME", str(root / "torch-home"))
            save_vgg16_weights(root / WEIGHTS_FILE)
            params = load_params(write_params(root, {"train.variants": {VARIANT: {"strategy": "head_only",
                                                                                    "lr": 0.001}},
                                                     "model.weights": WEIGHTS_FILE}))
            generate_from_params(params)
            split(params)
            train(params, VARIANT)
            select(params)
        _BUILT["params"] = params
    return _BUILT["params"]


def save_vgg16_weights(path: Path) -> None:
    """A full VGG-16 state dict (1000-class head, as torchvision's files) of its own seed."""
    import torch
    from torchvision.models import vgg16

    from pipeline.training.model import _variance_preserving_init

    torch.manual_seed(WEIGHTS_SEED)
    net = vgg16(weights=None)
    _variance_preserving_init(net, WEIGHTS_SEED)  # signal survives the frozen fc6/fc7
    torch.save(net.state_dict(), path)


def split_images(params: Params, n: int) -> list[Path]:
    """The first ``n`` images of the test split."""
    ids = pd.read_csv(params.path("split.dir") / "test.csv", dtype={"image_id": str})["image_id"][:n]
    return [params.dataset_root() / "img_align_celeba" / i for i in ids]


def make_faces(params: Params, folder: Path) -> list[Path]:
    """A folder of 4 images (``a.jpg``, ``b.jpg``, ``c.JPG``, ``d.png``, a real PNG) and a
    ``notes.txt`` that folder expansion skips; returns the image paths, sorted by name."""
    folder.mkdir(parents=True, exist_ok=True)
    src = split_images(params, 4)
    shutil.copy(src[0], folder / "a.jpg")
    shutil.copy(src[1], folder / "b.jpg")
    shutil.copy(src[2], folder / "c.JPG")
    with Image.open(src[3]) as img:
        img.save(folder / "d.png")
    (folder / "notes.txt").write_text("not an image\n")
    return [folder / name for name in ("a.jpg", "b.jpg", "c.JPG", "d.png")]


def preprocess(paths, size: int) -> np.ndarray:
    """The evaluation transforms, stacked: float32 ``(N, 3, S, S)``."""
    from pipeline.data.dataset import Preset

    preset = Preset(size)
    tensors = []
    for path in paths:
        with Image.open(path) as img:
            tensors.append(preset(img).numpy())
    return np.stack(tensors).astype(np.float32)


def cli_env(**extra) -> dict[str, str]:
    """The environment of a CLI subprocess: no MLFLOW_TRACKING_URI unless given, no progress bars,
    the venv's bin first on PATH (``mlflow models serve`` starts ``uvicorn`` from there)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"TQDM_DISABLE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra)
    return env


def run_predict(params: Params, *args, env=None) -> subprocess.CompletedProcess:
    """``python -m pipeline predict --params <tmp params> ARGS`` from the repo root."""
    cmd = [sys.executable, "-m", "pipeline", "predict", "--params", str(params.root / "params.yaml"), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env or cli_env(), capture_output=True, text=True, timeout=300)
