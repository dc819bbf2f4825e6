"""The DataLoader loops (torchvision references style) that the tests compare the training
stage's index-gathered loops with (pipeline.training.engine)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.training.device import autocast, to_device
from pipeline.training.engine import (
    Sums,
    eval_result,
    progress,
    set_train_mode,
    train_step,
)


def train_one_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, desc: str = "train", amp: str = "none",
                    channels_last: bool = False, frozen_dropout: bool = True) -> dict:
    """One pass over ``loader``; frozen dropout stays active unless ``frozen_dropout=False``."""
    set_train_mode(net, frozen_dropout)
    sums = Sums(device)
    for x, y in progress(loader, desc):
        x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
        train_step(net, x, y, optimizer, device, amp, sums)
    return sums.result()


@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval",
             amp: str = "none", channels_last: bool = False) -> dict:
    """Loss, accuracy, and per-sample labels / predictions / probabilities."""
    net.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    labels, probs = [], []
    for x, y in progress(loader, desc):
        with autocast(device, amp):
            logits = net(to_device(x, device, channels_last)).squeeze(1)
        logits = logits.float()
        total += nn.functional.binary_cross_entropy_with_logits(logits, y.to(device), reduction="sum").double()
        labels.append(y.numpy())
        probs.append(torch.sigmoid(logits))
    return eval_result(total.item(), np.concatenate(labels).astype(int), torch.cat(probs).cpu().numpy())
