"""The training and evaluation loops (torchvision ``references/classification`` style).

``net`` is the whole VGG-16 (the plain loop) or a :class:`pipeline.training.prefix.Tail` fed with
cached frozen features; the loops are the same. On CUDA: pinned host memory with
non-blocking copies, optional bf16 autocast (``train.amp``) and ``channels_last``.

:func:`train_epoch` and :func:`evaluate_batches` are the same loops over batches gathered by
index from data already resident (:mod:`pipeline.training.sources`): the training stage's path. No loop
here syncs with the host per step: loss sums (float64, as Python's float sums were) and correct
counts stay on the device and come back once per epoch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.core import numerics
from pipeline.data.dataset import THRESHOLD
from pipeline.training.device import autocast

LOGIT_THRESHOLD = math.log(THRESHOLD / (1 - THRESHOLD))  # sigmoid(z) > THRESHOLD <=> z > this (0.0)


def progress(iterable, desc: str, leave: bool = False):
    """A tqdm bar on a terminal; nothing in CI logs or pipes (``disable=None``)."""
    return tqdm(iterable, desc=desc, leave=leave, mininterval=2.0, disable=None)


def set_train_mode(net: nn.Module, frozen_dropout: bool = True) -> None:
    """``train()``; with ``frozen_dropout=False`` the dropout after the frozen fc6/fc7 is off."""
    net.train()
    if not frozen_dropout:
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.eval()


class Sums:
    """Loss sum (float64, like the Python float it replaces) and correct count, on the device."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach().double()
        self.correct += ((logits.detach() > LOGIT_THRESHOLD).float() == y).sum()
        self.seen += len(y)

    def result(self) -> dict:
        loss, correct = self.loss.item(), int(self.correct.item())  # the epoch's one transfer
        return {"loss": loss / self.seen, "acc": correct / self.seen}


def train_step(net, x, y, optimizer, device, amp, sums: Sums) -> None:
    with autocast(device, amp):
        logits = net(x).squeeze(1)
    logits = logits.float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    numerics.backward(loss / len(y))
    optimizer.step()
    sums.add(loss, logits, y)


def _batches(n: int, batch_size: int, order: torch.Tensor | None, device: torch.device):
    """Index tensors of the batches of one pass (``order``: a permutation, else 0..n-1), on ``device``."""
    idx = (torch.arange(n) if order is None else order).to(device)
    return idx.split(batch_size)


def train_epoch(net: nn.Module, source, order: torch.Tensor, flips: torch.Tensor, batch_size: int,
                optimizer: torch.optim.Optimizer, device: torch.device, desc: str = "train", amp: str = "none",
                channels_last: bool = False, frozen_dropout: bool = True) -> dict:
    """One training pass over ``source`` (:mod:`pipeline.training.sources` batches) in ``order``,
    sample ``i`` flipped where ``flips[i]``: ``tests/helpers/loops.train_one_epoch`` without a DataLoader."""
    set_train_mode(net, frozen_dropout)
    sums = Sums(device)
    flips = flips.to(source.index_device)  # order and flips: one copy per epoch to where the data is
    for idx in progress(_batches(source.n, batch_size, order, source.index_device), desc):
        x, y = source.batch(idx, flips[idx])
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(net, x, y, optimizer, device, amp, sums)
    return sums.result()


@torch.no_grad()
def evaluate_batches(net: nn.Module, source, batch_size: int, device: torch.device, desc: str = "eval",
                     amp: str = "none", channels_last: bool = False) -> dict:
    """:func:`evaluate` over ``source`` in its order, unflipped, one transfer at the end."""
    net.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    probs = []
    for idx in progress(_batches(source.n, batch_size, None, source.index_device), desc):
        x, y = source.batch(idx, None)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = net(x).squeeze(1)
        logits = logits.float()
        total += nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum").double()
        probs.append(torch.sigmoid(logits))
    labels_arr = source.labels.cpu().numpy().astype(int)
    return eval_result(total.item(), labels_arr, torch.cat(probs).cpu().numpy())


def eval_result(total_loss: float, labels_arr: np.ndarray, probs_arr: np.ndarray) -> dict:
    preds = (probs_arr > THRESHOLD).astype(int)
    return {"loss": total_loss / len(labels_arr), "acc": float((preds == labels_arr).mean()),
            "labels": labels_arr, "preds": preds, "probs": probs_arr}


