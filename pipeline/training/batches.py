"""Batches gathered by index from data already resident: one ``index_select`` a batch, in the
epoch's seeded order (:func:`epoch_order`, the DataLoader's shuffle without a DataLoader)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.data.dataset import epoch_flips
from pipeline.training.decoded import normalise
from pipeline.training.device import autocast, index_device, move, take

LOADER_ITERATORS = 2  # see epoch_order


def epoch_order(n: int, seed: int) -> torch.Tensor:
    """The sample order of one training epoch as the loop before this module walked it:
    ``progress(make_loader(ds, b, w, shuffle=True, seed=seed))``. Each iterator of that
    DataLoader draws one number (its workers' base seed) from the seeded generator before its
    RandomSampler draws the permutation, and two iterators were made: ``tqdm.auto``'s wrapper
    calls ``iter()`` once when it is created, the loop once more. (tests/test_resident.py
    checks this against the loader itself.)"""
    g = torch.Generator().manual_seed(seed)
    for _ in range(LOADER_ITERATORS):
        torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g)


def epoch_plan(n: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training epoch's randomness, the one place it is written: torch's global seed
    ``seed * 1000 + epoch`` (the epoch's dropout masks), then ``(order, flips)``: the loader's
    shuffle (:func:`epoch_order`) and the dataset's flips (:func:`pipeline.data.dataset.epoch_flips`)."""
    epoch_seed = seed * 1000 + epoch
    torch.manual_seed(epoch_seed)
    return epoch_order(n, epoch_seed), epoch_flips(n, seed, epoch)


class ImageBatches:
    """Batches of normalised images from resident uint8 pixels; training sets flip by the
    epoch's :func:`pipeline.data.dataset.epoch_flips`."""

    def __init__(self, pixels, labels: torch.Tensor, device: torch.device):
        self.pixels, self.device = pixels, device
        self.index_device = index_device(pixels)  # where batch() wants its index tensors
        self.labels = labels.to(self.index_device)
        self.n = len(labels)

    def batch(self, idx: torch.Tensor, flips: torch.Tensor | None):
        """``idx``, ``flips``: on :attr:`index_device`; the batch comes back on :attr:`device`."""
        x = take(self.pixels, idx, self.device)
        if flips is not None:
            flips = move(flips, self.device)
        return normalise(x, flips), move(self.labels[idx], self.device)


class FeatureBatches:
    """Batches of cached frozen features: ``array`` is ``(orientations, N, ...)``; orientation 1
    of a training sample is its flipped image."""

    def __init__(self, features, labels: torch.Tensor, device: torch.device, view_dtype=None):
        self.device, self.view_dtype = device, view_dtype
        self.index_device = index_device(features)
        self.labels = labels.to(self.index_device)
        self.n = len(labels)
        # (O, N, ...) -> (O * N, ...): orientation o of sample i is row o * N + i
        self.rows = features.reshape(-1, *features.shape[2:])

    def batch(self, idx: torch.Tensor, flips: torch.Tensor | None):
        rows = idx if flips is None else idx + flips.to(idx.dtype) * self.n
        return take(self.rows, rows, self.device, self.view_dtype), move(self.labels[idx], self.device)


class RecomputeBatches:
    """The frozen prefix run on resident images every step (when its cached output would not
    fit on the device but the images do): same values as the cache, no disk read."""

    def __init__(self, images: ImageBatches, prefix: nn.Module, amp: str, channels_last: bool):
        self.images, self.prefix, self.amp, self.channels_last = images, prefix, amp, channels_last
        self.device, self.index_device, self.labels, self.n = images.device, images.index_device, images.labels, images.n

    @torch.no_grad()
    def batch(self, idx: torch.Tensor, flips: torch.Tensor | None):

        x, y = self.images.batch(idx, flips)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            return self.prefix(x), y
