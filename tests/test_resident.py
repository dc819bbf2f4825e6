"""Data resident on the device (pipeline/training/): the same inputs, order and metrics as
the DataLoader path, caches within their budget, and the device check's core on the CPU."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from helpers.loops import evaluate, train_one_epoch
from torch import nn

from pipeline.data.dataset import FaceDataset, epoch_flips, make_loader, read_split
from pipeline.data.synthetic import generate_from_params
from pipeline.stages import split
from pipeline.tools import bench, devcheck
from pipeline.training import batches, cache, decoded, device, features, sources
from pipeline.training.engine import evaluate_batches, progress, train_epoch

CPU = torch.device("cpu")
def quiet(message):
    pass


def test_decoded_images_are_facedatasets_tensors_bitwise(make_params):
    """uint8 cache -> flip and normalisation on whole batches == FaceDataset's PIL path, bit for bit."""
    params = make_params()
    generate_from_params(params)
    split.split(params)
    frames = {s: read_split(params.path("split.dir"), s) for s in ("train", "val")}
    images = decoded.ensure_images(params.train_config(), frames, 0, quiet)
    assert images["built"] and images["dir"].name.startswith(decoded.IMAGE_PREFIX)
    pixels = np.load(images["files"]["train"])
    assert pixels.dtype == np.uint8 and pixels.shape == (len(frames["train"]), 3, 32, 32)
    ds = FaceDataset(params.dataset_root(), frames["train"], 32, train=True, seed=7)
    ds.set_epoch(3)
    assert 0 < int(ds.flips.sum()) < len(ds)  # both orientations are compared
    source = batches.ImageBatches(device.Placer(CPU, quiet).place(images["files"]["train"], "t"), ds.labels, CPU)
    idx = torch.randperm(len(ds))[:24]
    x, y = source.batch(idx, ds.flips[idx])
    ref = torch.stack([ds[int(i)][0] for i in idx])
    assert x.dtype == ref.dtype == torch.float32 and torch.equal(x, ref)
    assert torch.equal(y, ds.labels[idx])
    again = decoded.ensure_images(params.train_config(), frames, 0, quiet)
    assert not again["built"] and again["dir"] == images["dir"]


@pytest.mark.parametrize("n,seed", [(80, 42001), (1200, 42003), (17, 5)])
def test_epoch_order_is_the_training_loops_shuffle(n, seed):
    """The order train_one_epoch saw from make_loader (through engine.progress), without a loader."""
    walked = torch.cat([batch for batch in progress(make_loader(list(range(n)), 16, 0, shuffle=True, seed=seed),
                                                      "t")])
    assert torch.equal(batches.epoch_order(n, seed), walked)


class _Features(torch.utils.data.Dataset):
    def __init__(self, array, labels, flips):
        self.array, self.labels, self.flips = array, labels, flips

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.array[int(self.flips[i]), i])), self.labels[i]


def _epoch_as_before(net, loader, optimizer):
    """The training loop as it was before the device-side sums: one .item() per step."""
    net.train()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in progress(loader, "train"):
        logits = net(x).squeeze(1).float()
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(y)).backward()
        optimizer.step()
        total_loss += loss.item()
        correct += ((logits > 0).float() == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / seen, "acc": correct / seen}


def test_indexed_loops_give_the_dataloader_loops_numbers_exactly():
    """Same batches, same dropout masks, losses summed in float64 on the device: identical floats."""
    rng = np.random.default_rng(0)
    n, seed, epoch = 400, 3, 2  # 50 batches: a float32 loss sum would round differently
    array = rng.standard_normal((2, n, 8, 2, 2)).astype(np.float32)
    labels = torch.tensor(rng.integers(0, 2, n), dtype=torch.float32)

    def net():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(1), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        return model, torch.optim.Adam(model.parameters(), lr=0.01)

    flips = epoch_flips(n, seed, epoch)
    results = []
    for indexed in (None, False, True):
        model, opt = net()
        torch.manual_seed(seed * 1000 + epoch)
        if indexed is None:
            loader = make_loader(_Features(array, labels, flips), 8, 0, shuffle=True, seed=seed * 1000 + epoch)
            before = _epoch_as_before(model, loader, opt)
            continue
        if indexed:
            train = batches.FeatureBatches(torch.from_numpy(array), labels, CPU)
            tr = train_epoch(model, train, batches.epoch_order(n, seed * 1000 + epoch), flips, 8, opt, CPU)
            va = evaluate_batches(model, batches.FeatureBatches(torch.from_numpy(array[:1]), labels, CPU), 8, CPU)
        else:
            loader = make_loader(_Features(array, labels, flips), 8, 0, shuffle=True, seed=seed * 1000 + epoch)
            tr = train_one_epoch(model, loader, opt, CPU)
            val = make_loader(_Features(array, labels, torch.zeros(n, dtype=torch.bool)), 8, 0, shuffle=False)
            va = evaluate(model, val, CPU)
        results.append((tr, va))
    (tr_a, va_a), (tr_b, va_b) = results
    assert before == tr_a == tr_b
    assert va_a["loss"] == va_b["loss"] and va_a["acc"] == va_b["acc"]
    assert np.array_equal(va_a["probs"], va_b["probs"]) and np.array_equal(va_a["labels"], va_b["labels"])


def _entry(root, name, nbytes, used):
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "x.npy").write_bytes(b"\0" * nbytes)
    cache.touch(entry)
    os.utime(entry / cache.LAST_USED, (used, used))
    return entry


def test_cache_budget_removes_least_recently_used_entries_and_logs_them(tmp_path):
    root = tmp_path / "features"
    now = time.time()
    old = _entry(root, "aaaa", 4000, now - 300)
    in_use = _entry(root, "images-bbbb", 4000, now - 400)  # the oldest, but in use: kept
    middle = _entry(root, "cccc", 4000, now - 200)
    new = _entry(root, "dddd", 4000, now - 100)
    busy = _entry(root, "eeee", 4000, now - 350)  # another stage holds its lock: skipped
    logged = []
    with cache.entry_lock(root, "eeee", shared=True):
        pid = os.fork()
        if pid == 0:  # the lock must be held by another process: flock is per open file
            os._exit(0 if cache.enforce_budget(root, 12500, keep={"images-bbbb"}, log=logged.append)
                     == ["aaaa", "cccc"] else 3)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not old.exists() and not middle.exists()
    assert in_use.exists() and new.exists() and busy.exists()
    removed = cache.enforce_budget(root, 8500, keep={"images-bbbb"}, log=logged.append)
    assert removed == ["eeee"] and not busy.exists() and new.exists()
    assert len(logged) == 1 and "removed" in logged[0] and "eeee" in logged[0] and "cache_budget_gb" in logged[0]
    assert cache.enforce_budget(root, 1 << 30, log=logged.append) == []


def test_train_stage_trims_the_cache_to_its_budget(make_params):
    """A tiny budget: the stage's own entries stay, an older unused one goes."""
    params = make_params({"train.cache_budget_gb": 1e-6, "train.variants": {"h": {"strategy": "head_only",
                                                                                   "lr": 0.001}}})
    generate_from_params(params)
    split.split(params)
    stale = _entry(params.path("train.feature_cache"), "0123456789abcdef0123", 5000, time.time() - 3600)
    from pipeline.training.model import build_model, set_strategy

    model = build_model("none", 42)
    set_strategy(model, "head_only")
    log = []
    data = sources.training_data(params.train_config(), model, "head_only", CPU, "none", 0, False, log.append)
    assert not stale.exists() and data["cache"]["dir"].exists()
    assert any(line.startswith("cache budget: removed") and stale.name in line for line in log)
    assert any(line.startswith("frozen prefix: cache") for line in log)


class _FakeCuda:
    def __init__(self, free, total):
        self.free, self.total = free, total

    def __call__(self, device=None):
        return self.free, self.total


def _fake_cuda(monkeypatch, free_gb, cached_gb=0):
    """An 80 GB GPU with ``free_gb`` free, plus ``cached_gb`` held by torch's allocator but unused."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", _FakeCuda(free_gb << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: (cached_gb + 1) << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)


def test_memory_torch_holds_unused_counts_as_free(monkeypatch):
    _fake_cuda(monkeypatch, 4, cached_gb=30)  # an earlier variant's features, freed but still reserved
    assert device.Placer(torch.device("cuda"), quiet).choose(20 << 30) == "device"


@pytest.mark.parametrize("free_gb,host_gb,size_gb,where", [
    (40, 100, 10, "device"), (12, 100, 10, "pinned"), (12, 15, 10, "mmap")])
def test_placer_chooses_device_then_pinned_then_mmap(monkeypatch, free_gb, host_gb, size_gb, where):
    _fake_cuda(monkeypatch, free_gb)
    monkeypatch.setattr(device, "host_available", lambda: host_gb << 30)
    assert device.Placer(torch.device("cuda"), quiet).choose(size_gb << 30) == where
    assert device.Placer(CPU, quiet).choose(size_gb << 30) == ("mmap" if where == "mmap" else "memory")


@pytest.mark.parametrize("setting,free_gb,expected", [
    ("auto", 40, "cache"), ("auto", 20, "recompute"), ("auto", 4, "cache"), ("cache", 20, "cache"),
    ("recompute", 40, "recompute")])
def test_frozen_prefix_recomputes_when_only_the_images_fit(make_params, monkeypatch, setting, free_gb, expected):
    """Features 24 GB, images 4.5 GB (CelebA30k at 224): auto picks recompute on a 20 GB-free GPU."""
    params = make_params({"train.frozen_features": setting})
    _fake_cuda(monkeypatch, free_gb)
    log = []
    placer = device.Placer(torch.device("cuda"), log.append)
    assert sources.frozen_mode(params.train_config(), placer, 24 << 30, int(4.5 * 2**30), log.append) == expected
    assert log[0].startswith(f"frozen prefix: {expected} (train.frozen_features: {setting}")
    assert sources.frozen_mode(make_params({"train.frozen_features": "auto"}).train_config(), device.Placer(CPU, quiet),
                                24 << 30, 1, quiet) == "cache"  # the CPU reads its cache


def test_recomputed_prefix_trains_like_the_cache(make_params):
    """frozen_features: recompute (no feature cache) gives the cached path's numbers."""
    base = {"train.variants": {"h": {"strategy": "head_only", "lr": 0.001}}, "data.synthetic.images": 40}
    cache = make_params(base)
    generate_from_params(cache)
    split.split(cache)
    a = devcheck.run_variant(cache, "h", 1, quiet)
    recompute = make_params({**base, "train.frozen_features": "recompute"})
    b = devcheck.run_variant(recompute, "h", 1, quiet)
    assert (a["mode"], b["mode"]) == ("cache", "recompute")
    assert [r["val_acc"] for r in a["history"]] == [r["val_acc"] for r in b["history"]]
    for ra, rb in zip(a["history"], b["history"]):
        for key in ("train_loss", "val_loss"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-5)


def test_bf16_features_are_stored_in_half_the_bytes(make_params):
    params = make_params({"train.amp": "bf16", "data.synthetic.images": 40,
                          "train.variants": {"h": {"strategy": "head_only", "lr": 0.001}}})
    generate_from_params(params)
    split.split(params)
    from pipeline.training.model import build_model

    cache = features.ensure_cache(params.train_config(), build_model("none", 42), CPU, quiet, workers=0)
    stored = np.load(features.feature_files(cache["dir"], "pool5")["train"])
    n_val = len(read_split(params.path("split.dir"), "val"))
    assert stored.dtype == np.int16 and cache["view_dtype"] == torch.bfloat16
    assert cache["bytes"] == features.cache_bytes(["pool5"], 32, stored.shape[1], n_val, 2)
    assert cache["bytes"] == stored.nbytes + 2 * 512 * n_val  # half of float32's
    values = torch.from_numpy(stored).view(torch.bfloat16)
    assert torch.isfinite(values.float()).all() and values.float().abs().sum() > 0


def test_amp_and_workers_resolve_on_the_machine(monkeypatch):
    assert device.resolve_amp("auto", CPU) == "none"
    assert device.resolve_amp("bf16", CPU) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device.resolve_amp("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device.resolve_amp("auto", torch.device("cuda")) == "none"
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert device.resolve_workers("auto") == 3 and device.resolve_workers(5) == 5
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0})
    assert device.resolve_workers("auto") == 0


def test_bench_reports_ratios_to_the_ceiling_on_cuda_and_keeps_its_keys_on_the_cpu():
    def run(strategy, secs, val_loss, extract=0.0):
        return {"strategy": strategy, "wall": 10.0, "rss_mb": 100.0, "epoch_seconds": secs, "val_loss": val_loss,
                "val_acc": [0.5] * len(secs), "extract_seconds": [extract] if extract else [],
                "feature_cache_mb": [50.0] if extract else []}

    results = {"split_seconds": 1.0,
               "plain": {"h": run("head_only", [2.0, 2.0], [0.7, 0.6]), "b": run("last_block", [4.0], [0.7])},
               "reuse": {"h": run("head_only", [0.5, 0.5], [0.7, 0.6], 5.0), "b": run("last_block", [1.0], [0.7])},
               "native": {"h": run("head_only", [0.25, 0.25], [0.7, 0.6], 2.0), "b": run("last_block", [0.8], [0.7])},
               "gpu": None}
    lines, cpu = bench.summarise(results)
    assert cpu["gpu"] is None and not [k for k in cpu if k.endswith("_ratio_to_ceiling")]
    assert cpu["head_only_ratio"] == 4.0 and cpu["last_block_ratio"] == 4.0
    assert (cpu["reproducible_cost_head_only"], cpu["reproducible_cost_last_block"]) == (2.0, 1.25)
    assert cpu["reproducible_cost_extract"] == 2.5
    ceiling = {"train": 100.0, "eval": 400.0}
    results.update(gpu="NVIDIA H200", sizes={"train": 80, "val": 20},
                   ceilings={"plain_head_only": ceiling, "plain_last_block": ceiling, "reuse_head_only": ceiling,
                             "reuse_last_block": ceiling, "extract": {"forward": 360.0}})
    lines, gpu = bench.summarise(results)
    assert gpu["gpu"] == "NVIDIA H200"
    at_ceiling = bench.epoch_ceiling(ceiling, 80, 20)
    assert at_ceiling == pytest.approx(100 / (80 / 100 + 20 / 400))
    assert gpu["plain_head_only_ratio_to_ceiling"] == round(100 / 2.0 / at_ceiling, 3)
    assert gpu["reuse_last_block_ratio_to_ceiling"] == round(100 / 1.0 / at_ceiling, 3)
    assert gpu["extract_ratio_to_ceiling"] == round(180 / 5.0 / 360.0, 3)
    assert any(line.startswith("reuse_head_only") and line.rstrip().endswith("%") for line in lines)
    assert json.loads(json.dumps(gpu)) == gpu


def test_devcheck_runs_the_core_and_the_ceilings_on_the_cpu(tmp_path):
    """The GPU script, tiny: dataset -> caches -> epochs -> ceilings, a table and a JSON summary."""
    out = tmp_path / "devcheck.json"
    devcheck.main(["--workdir", str(tmp_path / "dc"), "--images", "50", "--distinct", "20", "--size", "32",
                   "--batch", "16", "--epochs", "2", "--plain-epochs", "0", "--ceiling-steps", "1",
                   "--variants", "head_only-lr1e-3", "--json", str(out)])
    summary = json.loads(out.read_text())
    assert summary["gpu"] is None and summary["device"] == "cpu" and summary["amp"] == "none"
    assert summary["images"] == 50 and len(summary["variants"]) == 1
    run = summary["variants"][0]
    assert run["mode"] == "cache" and run["extract_seconds"] > 0 and len(run["history"]) == 2
    assert all(np.isfinite(r["val_loss"]) for r in run["history"])
    for phase in ("extract", "reuse_head_only"):
        assert summary[f"{phase}_images_per_s"] > 0 and summary[f"{phase}_ceiling"] > 0
        assert summary[f"{phase}_ratio_to_ceiling"] == pytest.approx(
            summary[f"{phase}_images_per_s"] / summary[f"{phase}_ceiling"], rel=0.05, abs=0.002)
    ids = sorted(p.name for p in (tmp_path / "dc" / "celeba" / "img_align_celeba").iterdir())
    assert len(ids) == 50 and ids[0] == "000001.jpg"
