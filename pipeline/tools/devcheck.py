"""The device check: the training core at CelebA30k scale on one GPU, against its ceilings.

Usage (on a machine with torch, torchvision, numpy, pandas, pillow, pyyaml, tqdm; no MLflow,
no DVC needed)::

    python -m pipeline devcheck --workdir /tmp/devcheck --json $OUT/devcheck.json
    python -m pipeline devcheck --images 60 --distinct 30 --size 32 --batch 16 --epochs 1   # tiny, CPU

It generates ``--distinct`` synthetic faces (:mod:`pipeline.data.synthetic`) and replicates them
under new image ids to ``--images`` files (hard links: each id is still decoded on its own),
splits them 80/10/10 (:func:`pipeline.stages.split.split`), then runs the seed experiment's grid --
the four variants of ``params.yaml`` for ``--epochs`` epochs -- through the train stage's core
(:func:`pipeline.training.sources.training_data`, :func:`pipeline.training.engine.train_epoch` and
:func:`~pipeline.training.engine.evaluate_batches`: decode, cache build, epochs; no MLflow, no
checkpoints), one variant after the other in this process, the caches starting empty. Then one
epoch of the plain loop (``last_block``, every image through the whole network) and the
ceilings of :func:`pipeline.tools.bench.ceilings`. It prints a table (per phase images/s, ceiling,
ratio), the grid's seconds, and, last, one JSON line (also written to ``--json``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from pipeline.core.config import load_params, write_project
from pipeline.core.files import write_json

REPO = Path(__file__).resolve().parents[2]


def make_dataset(folder: Path, images: int, distinct: int, seed: int) -> None:
    """``images`` CelebA-layout files: ``distinct`` synthetic faces, replicated under new ids."""
    from pipeline.data import synthetic
    from pipeline.tools.scale import mirror

    base = folder.with_name(folder.name + "-base")
    synthetic.generate(base, min(distinct, images), 0.05, seed)
    mirror(base, folder, images)


def write_params(workdir: Path, args) -> Path:
    raw = load_params(REPO / "params.yaml").resolved()
    raw["data"].update(source="celeba", root=str(workdir / "celeba"), image_size=args.size, limit=None)
    raw["split"].update(dir=str(workdir / "split"), group_by="none")
    raw["train"].update(epochs=args.epochs, batch_size=args.batch, device=args.device, amp=args.amp,
                        num_workers=args.workers, feature_cache=str(workdir / "cache"),
                        models_dir=str(workdir / "models"), frozen_features=args.frozen_features)
    return write_project(workdir, raw)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(params, name: str, epochs: int, log=print, reuse: bool | None = None) -> dict:
    """One variant through the train stage's core; seconds of each part (process start excluded)."""
    import dataclasses

    from pipeline.training import batches, sources
    from pipeline.training.device import placement, resolve_workers
    from pipeline.training.engine import evaluate_batches, train_epoch
    from pipeline.training.model import trainable_model
    started = time.perf_counter()
    spec, cfg = params.variant(name), params.train_config()
    if reuse is not None:
        cfg = dataclasses.replace(cfg, reuse_frozen=reuse)
    seed, batch = cfg.seed, cfg.batch_size
    device, amp, channels_last = placement(cfg)
    model, _, optimizer = trainable_model(cfg.weights, seed, spec["strategy"], spec["lr"], device, channels_last,
                                          cfg.root)
    data = sources.training_data(cfg, model, spec["strategy"], device, amp, resolve_workers(cfg.num_workers),
                                  channels_last, log)
    _sync(device)
    prepared = time.perf_counter()
    n = data["train"].n
    loop = {"amp": amp, "channels_last": channels_last}
    train_s, eval_s, history = [], [], []
    for epoch in range(1, epochs + 1):
        order, flips = batches.epoch_plan(n, seed, epoch)
        t0 = time.perf_counter()
        tr = train_epoch(data["net"], data["train"], order, flips, batch, optimizer, device, frozen_dropout=cfg.frozen_dropout, **loop)
        t1 = time.perf_counter()  # train_epoch returns after its one transfer: the device is done
        va = evaluate_batches(data["net"], data["val"], batch, device, **loop)
        t2 = time.perf_counter()
        train_s.append(t1 - t0)
        eval_s.append(t2 - t1)
        history.append({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "val_loss": va["loss"], "val_acc": va["acc"]})
    cache, images = data["cache"], data["images"]
    return {"variant": name, "strategy": spec["strategy"], "mode": data["mode"], "layer": data["layer"],
            "seconds": time.perf_counter() - started, "prepare_seconds": prepared - started,
            "extract_seconds": cache["extract_seconds"] if cache else 0.0,
            "decode_seconds": images["decode_seconds"] if images else 0.0,
            "train_seconds": train_s, "eval_seconds": eval_s, "n_train": n, "n_val": data["val"].n,
            "history": history, "amp": amp, "device": str(device)}


def check(args) -> dict:
    """Build the data set, run the grid and the plain loop, measure the ceilings; print the table."""
    import torch

    from pipeline.tools.bench import ceilings
    from pipeline.training.device import placement

    log = (lambda m: print(m, file=sys.stderr, flush=True))
    params = prepare(args, log)
    cfg = params.train_config()
    device, amp, _ = placement(cfg)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    log(f"devcheck: device {device} ({gpu or 'no GPU'}), amp {amp}, torch {torch.__version__}")
    grid = []
    for name in (args.variants.split(",") if args.variants else params.variants()):
        r = run_variant(params, name, args.epochs, log)
        grid.append(r)
        log(f"devcheck: {name}: {r['seconds']:.1f} s ({r['mode']}; prepare {r['prepare_seconds']:.1f} s, "
            f"epochs {sum(r['train_seconds']) + sum(r['eval_seconds']):.1f} s)")
    last_block = [n for n, v in params.variants().items() if v["strategy"] == "last_block"]
    plain = run_variant(params, last_block[0], args.plain_epochs, log, reuse=False) \
        if args.plain_epochs and last_block else None
    strategies = sorted({r["strategy"] for r in grid})
    ceil = ceilings(cfg.weights, cfg.seed, args.size, args.batch, grid[0]["amp"], device, strategies,
                    cfg.frozen_dropout, cfg.channels_last, steps=args.ceiling_steps)
    phases = measured_phases(grid, plain, ceil, strategies)
    print("\n".join(report_lines(args, grid, plain, phases, device, gpu)))
    return {"gpu": gpu, "device": str(device), "torch": torch.__version__, "images": args.images,
            "image_size": args.size, "batch": args.batch, "amp": grid[0]["amp"], "epochs": args.epochs,
            "grid_seconds": round(sum(r["seconds"] for r in grid), 2),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if gpu else None,
            **{f"{p}_images_per_s": round(a, 1) for p, (a, _) in phases.items()},
            **{f"{p}_ceiling": round(c, 1) for p, (_, c) in phases.items()},
            **{f"{p}_ratio_to_ceiling": round(a / c, 3) for p, (a, c) in phases.items()},
            "variants": [{k: r[k] for k in ("variant", "mode", "seconds", "prepare_seconds", "extract_seconds",
                                            "decode_seconds", "train_seconds", "eval_seconds", "history")}
                         for r in grid]}


def prepare(args, log):
    """A fresh ``--workdir`` with the data set, its params and its split; returns the params."""
    from pipeline.stages.split import split

    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t = time.perf_counter()
    make_dataset(workdir / "celeba", args.images, args.distinct, args.seed)
    log(f"devcheck: {args.images} images ({args.distinct} distinct) in {time.perf_counter() - t:.1f} s")
    params = load_params(write_params(workdir, args))
    split(params, log=log)
    return params


def epoch_rate(r: dict) -> float:
    """Images per second of a run's epochs after the first (steady state; all, with one epoch)."""
    secs = [a + b for a, b in zip(r["train_seconds"], r["eval_seconds"])]
    secs = secs[1:] or secs
    return (r["n_train"] + r["n_val"]) * len(secs) / sum(secs)


def measured_phases(grid: list[dict], plain: dict | None, ceil: dict, strategies: list[str]) -> dict:
    """``{phase: (images/s measured, ceiling)}``: the plain loop, the cache build, each strategy."""
    from pipeline.tools.bench import epoch_ceiling

    n_train, n_val = grid[0]["n_train"], grid[0]["n_val"]
    phases = {}
    if plain is not None:
        phases["plain_last_block"] = (epoch_rate(plain), epoch_ceiling(ceil["plain_last_block"], n_train, n_val))
    builders = [r for r in grid if r["extract_seconds"] > 0]
    if builders:
        phases["extract"] = ((2 * n_train + n_val) / builders[0]["extract_seconds"], ceil["extract"]["forward"])
    for s in strategies:
        runs = [r for r in grid if r["strategy"] == s]
        cached = runs[0]["mode"] == "cache"
        phases[f"reuse_{s}" if cached else f"recompute_{s}"] = (
            sum(map(epoch_rate, runs)) / len(runs),
            epoch_ceiling(ceil[f"reuse_{s}"] if cached else ceil[f"plain_{s}"], n_train, n_val))
    return phases


def report_lines(args, grid: list[dict], plain: dict | None, phases: dict, device, gpu: str | None) -> list[str]:
    """The printed table: images/s, ceiling and ratio per phase, then the grid's seconds."""
    from pipeline.tools.bench import ceiling_lines

    lines = [f"devcheck: {args.images} images at {args.size}x{args.size}, batch {args.batch}, {grid[0]['amp']}, "
             f"{grid[0]['n_train']} train + {grid[0]['n_val']} val, {args.epochs} epochs; "
             f"device {device} ({gpu or 'no GPU'})",
             f"{'phase':26s}{'images/s':>10s}{'ceiling':>10s}{'ratio':>8s}", *ceiling_lines(phases),
             f"seed grid ({len(grid)} variants x {args.epochs} epochs, decode and cache build included): "
             f"{sum(r['seconds'] for r in grid):.1f} s",
             *(f"  {r['variant']:20s}{r['seconds']:8.1f} s  {r['mode']}" for r in grid)]
    if plain is not None:
        lines.append(f"  plain last_block x {args.plain_epochs}: {plain['seconds']:.1f} s")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/devcheck", help="scratch folder (emptied first)")
    parser.add_argument("--images", type=int, default=27000)
    parser.add_argument("--distinct", type=int, default=600, help="distinct synthetic faces generated")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--plain-epochs", type=int, default=2, help="epochs of the plain last_block loop (0: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--frozen-features", default="auto")
    parser.add_argument("--ceiling-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", help="comma-separated subset of train.variants (default: all four)")
    parser.add_argument("--json", help="also write the JSON summary here")
    args = parser.parse_args(argv)
    if args.workers != "auto":
        args.workers = int(args.workers)
    summary = check(args)
    if args.json:
        write_json(Path(args.json), summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "variants"}))
