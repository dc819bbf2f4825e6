"""The training and evaluation loops (torchvision ``references/classification`` style)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline.config import PipelineError


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` takes CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, desc: str = "train") -> dict:
    """One pass over ``loader``; frozen dropout stays active (``model.train()``)."""
    model.train()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, mininterval=2.0):
        x, y = x.to(device), y.to(device)
        logits = model(x).squeeze(1)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(y)).backward()
        optimizer.step()
        total_loss += loss.item()
        correct += ((logits > 0).float() == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / seen, "acc": correct / seen}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval") -> dict:
    """Loss, accuracy, and per-sample labels / predictions / probabilities."""
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total_loss, labels, probs = 0.0, [], []
    for x, y in tqdm(loader, desc=desc, leave=False, mininterval=2.0):
        logits = model(x.to(device)).squeeze(1)
        total_loss += loss_fn(logits, y.to(device)).item()
        labels.append(y.numpy())
        probs.append(torch.sigmoid(logits).cpu().numpy())
    labels_arr = np.concatenate(labels).astype(int)
    probs_arr = np.concatenate(probs)
    preds = (probs_arr > 0.5).astype(int)
    return {"loss": total_loss / len(labels_arr), "acc": float((preds == labels_arr).mean()),
            "labels": labels_arr, "preds": preds, "probs": probs_arr}
