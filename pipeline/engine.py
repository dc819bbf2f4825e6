"""The training and evaluation loops (torchvision ``references/classification`` style).

``net`` is the whole VGG-16 (the plain loop) or a :class:`pipeline.frozen.Tail` fed with
cached frozen features; the loops are the same. On CUDA: pinned host memory with
non-blocking copies, optional bf16 autocast (``train.amp``) and ``channels_last``.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline.config import PipelineError


def progress(iterable, desc: str, leave: bool = False):
    """A tqdm bar on a terminal; nothing in CI logs or pipes (``disable=None``)."""
    return tqdm(iterable, desc=desc, leave=leave, mininterval=2.0, disable=None)


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` takes CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """bf16 autocast for ``amp == 'bf16'`` (CUDA, or CPU with bf16 support); else nothing."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def set_train_mode(net: nn.Module, frozen_dropout: bool = True) -> None:
    """``train()``; with ``frozen_dropout=False`` the dropout after the frozen fc6/fc7 is off."""
    net.train()
    if not frozen_dropout:
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.eval()


def train_one_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, desc: str = "train", amp: str = "none",
                    channels_last: bool = False, frozen_dropout: bool = True) -> dict:
    """One pass over ``loader``; frozen dropout stays active unless ``frozen_dropout=False``."""
    set_train_mode(net, frozen_dropout)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in progress(loader, desc):
        x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = net(x).squeeze(1)
        logits = logits.float()
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(y)).backward()
        optimizer.step()
        total_loss += loss.item()
        correct += ((logits > 0).float() == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / seen, "acc": correct / seen}


@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval",
             amp: str = "none", channels_last: bool = False) -> dict:
    """Loss, accuracy, and per-sample labels / predictions / probabilities."""
    net.eval()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total_loss, labels, probs = 0.0, [], []
    for x, y in progress(loader, desc):
        with autocast(device, amp):
            logits = net(to_device(x, device, channels_last)).squeeze(1)
        logits = logits.float()
        total_loss += loss_fn(logits, y.to(device)).item()
        labels.append(y.numpy())
        probs.append(torch.sigmoid(logits).cpu().numpy())
    labels_arr = np.concatenate(labels).astype(int)
    probs_arr = np.concatenate(probs)
    preds = (probs_arr > 0.5).astype(int)
    return {"loss": total_loss / len(labels_arr), "acc": float((preds == labels_arr).mean()),
            "labels": labels_arr, "preds": preds, "probs": probs_arr}
