"""Where the base weights come from: torchvision's ImageNet file in the torch cache, found as torch
finds it but without importing torch, so that split can check it before any long work."""
from __future__ import annotations

import os
from pathlib import Path

# torchvision's VGG16_Weights.IMAGENET1K_V1 (tests/test_model.py checks they agree); nothing downloads it
IMAGENET_WEIGHTS_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def imagenet_weights_file() -> Path:
    """Where ``model.weights: imagenet`` is read from: ``<torch hub>/checkpoints/vgg16-397923af.pth``,
    the hub folder found as ``torch.hub.get_dir()`` finds it (``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``), without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints" / IMAGENET_WEIGHTS_URL.rsplit("/", 1)[-1]


def missing_weights(path: Path, imagenet: bool) -> str:
    """The one line for a missing base-weights file: for ImageNet, where to put it and where it
    comes from."""
    if imagenet:
        return (f"model.weights=imagenet: {path.name} is not in the torch cache; place it at {path} "
                f"(from {IMAGENET_WEIGHTS_URL}; nothing is downloaded)")
    return f"model.weights: {path} not found (use imagenet, none or a state-dict file)"
