"""The frozen front of VGG-16 that the feature cache stores: which layer a strategy trains from,
the layers before it (:func:`prefix_for`, :func:`forward_layers`) and the network after it
(:class:`Tail`)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.core.cli import PipelineError
from pipeline.core.config import TrainConfig
from pipeline.training.model import LAST_BLOCK, FoldedFC6

LAYERS = ("pool4", "pool5", "fc7")  # in network order
POOL4_END = LAST_BLOCK[0]  # features[:24] ends with pool4


def layer_for(strategy: str, frozen_dropout: bool = True) -> str:
    """The deepest frozen layer a strategy can train from."""
    if strategy == "last_block":
        return "pool4"
    return "pool5" if frozen_dropout else "fc7"


def layer_shape(layer: str, image_size: int) -> tuple[int, ...]:
    if layer == "pool4":
        return (512, image_size // 16, image_size // 16)
    if layer == "pool5":
        return (512, image_size // 32, image_size // 32)
    return (4096,)


def needed_layers(cfg: TrainConfig) -> list[str]:
    """Layers the configured variants train from (the first stage builds them all at once)."""
    wanted = {layer_for(strategy, cfg.frozen_dropout) for strategy in cfg.strategies}
    return [layer for layer in LAYERS if layer in wanted]


class Tail(nn.Module):
    """The part of ``model`` after a cached layer. It shares the model's parameters, so the
    model's checkpoints and pyfunc export work unchanged."""

    def __init__(self, model: nn.Module, layer: str, image_size: int):
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(layer)
        fc6 = model.classifier[0]
        if fc6.weight.requires_grad:
            raise PipelineError("frozen-prefix reuse needs fc6 frozen")
        self.block = model.features[POOL4_END:] if layer == "pool4" else nn.Identity()
        s = image_size // 32
        if layer == "fc7":
            self.fc6 = nn.Identity()
            self.rest = model.classifier[6:]
        else:
            # Fold only where no gradient flows through fc6 (head_only). Under last_block the
            # fold's rounding (~1e-7) reaches conv5's gradients, and Adam's normalised steps
            # amplify it to ~1e-4 in the loss within an epoch; unfolded, the loss is bitwise
            # the plain loop's.
            fold = layer == "pool5" and s < 7
            self.fc6 = FoldedFC6(model.avgpool, fc6, s) if fold else nn.Sequential(model.avgpool, nn.Flatten(1), fc6)
            self.rest = model.classifier[1:]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.rest(self.fc6(self.block(z)))


@torch.no_grad()
def forward_layers(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    z = model.features[:POOL4_END](x)
    out["pool4"] = z
    if "pool5" in layers or "fc7" in layers:
        z = model.features[POOL4_END:](z)
        out["pool5"] = z
    if "fc7" in layers:
        out["fc7"] = model.classifier[:6](torch.flatten(model.avgpool(z), 1))
    return {k: v for k, v in out.items() if k in layers}


def prefix_for(model: nn.Module, layer: str) -> nn.Module:
    """The frozen layers before ``layer`` (what the cache stores), in eval mode: no dropout."""
    from pipeline.training.prefix import POOL4_END

    if layer == "pool4":
        prefix = model.features[:POOL4_END]
    elif layer == "pool5":
        prefix = model.features
    else:
        prefix = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), model.classifier[:6])
    return prefix.eval()
