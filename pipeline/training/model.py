"""VGG-16 surgery, freezing strategies and trainable-only checkpoints.

``model.weights`` decides the frozen base:

* ``imagenet``: torchvision's ``VGG16_Weights.IMAGENET1K_V1``, read from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``); nothing is downloaded.
* a path: a local VGG-16 state dict (``torch.load(..., weights_only=True)``).
* ``none``: a seeded, variance-preserving random init (Kaiming normal, fan-in, zero bias on
  every conv and linear layer). torchvision's own init (N(0, 0.01) linear layers) lets the
  signal die in frozen random fc6/fc7, so every variant would sit at the majority class.

The last layer is always replaced by ``Linear(4096, 1)`` (one logit: male). Frozen dropout
layers (fc6, fc7) stay active in training, as in the experiment this reproduces
(``model.train()``); evaluation runs in ``eval()`` mode.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16

from pipeline.core.cli import PipelineError
from pipeline.core.weights import imagenet_weights_file, missing_weights

# conv5_1, conv5_2, conv5_3 in vgg16().features
LAST_BLOCK = (24, 26, 28)


def _variance_preserving_init(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
            nn.init.zeros_(m.bias)


def _load_state_dict(model: nn.Module, path: Path, what: str) -> None:
    """Load a VGG-16 state dict; the first key (in the model's order) that is missing, not a
    tensor or of the wrong shape is reported, naming the file, the key and the shapes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise PipelineError(f"{path}: cannot read {what} ({type(exc).__name__}; expected a state dict "
                            "saved by torch.save(model.state_dict(), path))") from None
    if not isinstance(state, dict):
        raise PipelineError(f"{path}: {what} is not a state dict (it holds a {type(state).__name__})")
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            hint = ""
            if any(str(k).endswith("." + key) for k in state):
                hint = "; its keys carry a prefix such as 'module.'"
            elif "state_dict" in state or "model" in state:
                hint = "; it looks like a checkpoint that wraps the state dict"
            raise PipelineError(f"{path}: {what} lacks key '{key}' (not a VGG-16 state dict{hint})")
        if not isinstance(state[key], torch.Tensor):
            raise PipelineError(f"{path}: {what} key '{key}' is a {type(state[key]).__name__}, not a tensor")
        if tuple(state[key].shape) != tuple(value.shape):
            raise PipelineError(f"{path}: {what} key '{key}' has shape {tuple(state[key].shape)}, "
                                f"expected {tuple(value.shape)}")
    model.load_state_dict({k: state[k] for k in expected})


def build_model(weights: str, seed: int, root: Path | None = None) -> nn.Module:
    """VGG-16 with the chosen base weights and a fresh, seeded ``Linear(4096, 1)`` head."""
    with torch.device("meta"):  # a skeleton: torchvision's init would be overwritten below (~3 s)
        model = vgg16(weights=None)
    model = model.to_empty(device="cpu")
    if weights == "none":
        _variance_preserving_init(model, seed)
    elif weights == "imagenet":
        cache = imagenet_weights_file()
        if not cache.is_file():
            raise PipelineError(missing_weights(cache, imagenet=True))
        _load_state_dict(model, cache, "ImageNet weights")
    else:
        path = Path(weights).expanduser()
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        if not path.is_file():
            raise PipelineError(missing_weights(path, imagenet=False))
        _load_state_dict(model, path, "model.weights")
    head = nn.Linear(4096, 1)
    g = torch.Generator().manual_seed(seed + 1)
    nn.init.normal_(head.weight, 0.0, 0.01, generator=g)
    nn.init.zeros_(head.bias)
    model.classifier[6] = head
    return model


def set_strategy(model: nn.Module, strategy: str) -> list[str]:
    """Freeze everything but the head (and conv5 for ``last_block``); return trainable names."""
    for p in model.parameters():
        p.requires_grad_(False)
    modules = [model.classifier[6]]
    if strategy == "last_block":
        modules += [model.features[i] for i in LAST_BLOCK]
    elif strategy != "head_only":
        raise PipelineError(f"unknown strategy '{strategy}' (head_only or last_block)")
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_model(weights: str, seed: int, strategy: str, lr: float, device: torch.device,
                    channels_last: bool = False, root: Path | None = None):
    """``(model, trainable names, optimizer)``: the variant's network on ``device`` (channels_last
    there when asked) and Adam over its trainable layers, what train@ and the device check start from."""
    model = build_model(weights, seed, root)
    trainable = set_strategy(model, strategy)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, trainable, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model: nn.Module, **extra) -> None:
    """Trainable parameters only (the frozen base is rebuilt from ``model.weights``). Saved
    through a buffer: a file's zip archive would carry its temporary name, and the same weights
    are to give the same bytes."""
    import io

    from pipeline.core.files import atomic_write

    buffer = io.BytesIO()
    torch.save({"trainable": trainable_state(model), **extra}, buffer)
    atomic_write(Path(path), lambda t: t.write_bytes(buffer.getvalue()))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"{path}: cannot read checkpoint ({type(exc).__name__})") from None


def model_from_checkpoint(ckpt: dict, weights: str, seed: int, root: Path | None = None) -> nn.Module:
    """Rebuild the base, apply the checkpoint's trainable parameters, return it in eval mode."""
    model = build_model(weights, seed, root)
    state = model.state_dict()
    for name, value in ckpt["trainable"].items():
        if name not in state or state[name].shape != value.shape:
            raise PipelineError(f"checkpoint parameter '{name}' does not fit VGG-16 with a 1-logit head")
        state[name] = value
    model.load_state_dict(state)
    return model.eval()


class FoldedFC6(nn.Module):
    """``fc6(flatten(avgpool(z)))`` as one linear map of ``flatten(z)`` (fc6 frozen).

    ``AdaptiveAvgPool2d((7, 7))`` of an ``s x s`` map (s < 7) is ``pooled = A @ z`` per
    channel, with ``A`` of shape (49, s*s); fc6's weight (4096, 512*49) times ``A`` per
    channel gives a (4096, 512*s*s) weight, computed once in float64.
    """

    def __init__(self, avgpool: nn.AdaptiveAvgPool2d, fc6: nn.Linear, s: int):
        super().__init__()
        basis = torch.eye(s * s, dtype=torch.float64).view(s * s, 1, s, s)
        a = avgpool(basis).reshape(s * s, -1).T  # (49, s*s)
        w = fc6.weight.detach().double().view(fc6.out_features, 512, a.shape[0])
        self.register_buffer("weight", torch.einsum("ocq,qp->ocp", w, a).reshape(fc6.out_features, -1).float())
        self.register_buffer("bias", fc6.bias.detach().clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.flatten(z, 1), self.weight, self.bias)
