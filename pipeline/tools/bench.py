"""Benchmark: the plain loop against frozen-prefix reuse, on the project's own config.

Usage::

    make bench                                   # = python -m pipeline bench
    python -m pipeline bench --params params.yaml --workdir /tmp/bench --epochs 2

It copies ``params.yaml`` into a scratch folder (its own MLflow store, split, cache and
models: nothing of the project's is touched), runs ``split`` once, then the four
``train@`` variants as separate processes in three modes: ``plain`` (``train.reuse_frozen:
false``), ``reuse`` (``true``, the default) and ``native`` (reuse with ``train.reproducible:
false``: this CPU's fastest kernels instead of the ones that repeat on every machine). It
prints a table (seconds per epoch of each strategy in each mode, feature extraction time, cache
size, grid wall time, peak RSS per process) and, as its last line, one JSON object with
``head_only_ratio``, ``last_block_ratio`` (plain / reuse seconds per epoch),
``reproducible_cost_<strategy>`` and ``reproducible_cost_extract`` (reuse / native seconds),
``peak_rss_mb`` and ``gpu`` (the CUDA device's name, or null). Figures, not assertions:
nothing here passes or fails.

On CUDA it also measures, in the same run, each phase's **ceiling**: the same network, batch
and dtype on synthetic inputs already on the device (:func:`ceilings`), and prints per phase
images/s, the ceiling and their ratio; the JSON gains ``<phase>_ratio_to_ceiling`` for the
phases ``plain_<strategy>`` (whole network), ``extract`` (the cache build, decoding included)
and ``reuse_<strategy>`` (the layers after the cache). A phase's images/s counts an epoch's
training and validation images over its seconds; its ceiling mixes the measured training-step
and evaluation rates in the same proportion.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.core.config import load_params, write_project

MODES = {"plain": {"reuse_frozen": False}, "reuse": {"reuse_frozen": True},
         "native": {"reuse_frozen": True, "reproducible": False}}  # train.* of each mode
CEILING_STEPS, CEILING_WARMUP = 20, 3


# --- ceilings: the network alone, inputs already on the device ------------------------------

def _rate(step, images_per_step: int, device, steps: int, warmup: int) -> float:
    """Images/s of ``step()`` repeated, after ``warmup`` untimed calls."""
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images_per_step * steps / (time.perf_counter() - started)


def ceilings(weights: str, seed: int, image_size: int, batch: int, amp: str, device, strategies,
             frozen_dropout: bool = True, channels_last: bool = False, steps: int = CEILING_STEPS,
             warmup: int = CEILING_WARMUP) -> dict:
    """Images/s of each phase's network on synthetic inputs already on ``device`` (any device;
    tiny sizes on the CPU in the tests): ``{phase: {"train": ips, "eval": ips}}`` for
    ``plain_<s>`` and ``reuse_<s>``, ``{"extract": {"forward": ips}}`` for the cache build."""
    import torch

    from pipeline.training import features, prefix
    from pipeline.training.device import autocast
    from pipeline.training.engine import Sums, train_step
    from pipeline.training.model import build_model, set_strategy

    out: dict = {}
    fmt = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    y = (torch.arange(batch, device=device) % 2).float()
    for strategy in strategies:
        layer = prefix.layer_for(strategy, frozen_dropout)
        model = build_model(weights, seed)
        set_strategy(model, strategy)
        model.to(device).to(memory_format=fmt)
        feat_dtype = features.feature_dtype(amp)[1] or torch.float32
        inputs = {f"plain_{strategy}": (model, torch.randn(batch, 3, image_size, image_size, device=device)
                                        .contiguous(memory_format=fmt)),
                  f"reuse_{strategy}": (prefix.Tail(model, layer, image_size).to(device),
                                        torch.randn(batch, *prefix.layer_shape(layer, image_size), device=device)
                                        .relu().to(feat_dtype))}
        for phase, (net, x) in inputs.items():
            optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
            sums = Sums(device)

            def one_step(net=net, x=x, optimizer=optimizer, sums=sums):
                net.train()
                train_step(net, x, y, optimizer, device, amp, sums)

            @torch.no_grad()
            def eval_step(net=net, x=x):
                net.eval()
                with autocast(device, amp):
                    net(x)

            out[phase] = {"train": _rate(one_step, batch, device, steps, warmup),
                          "eval": _rate(eval_step, batch, device, steps, warmup)}
    model = build_model(weights, seed).to(device).to(memory_format=fmt).eval()
    layers = sorted({prefix.layer_for(s, frozen_dropout) for s in strategies}, key=prefix.LAYERS.index)
    x = torch.randn(2 * batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)

    @torch.no_grad()
    def extract_step():
        with autocast(device, amp):
            prefix.forward_layers(model, x, layers)

    out["extract"] = {"forward": _rate(extract_step, 2 * batch, device, steps, warmup)}
    return out


def epoch_ceiling(ceiling: dict, n_train: int, n_val: int) -> float:
    """Images/s of an epoch (``n_train`` training steps' images, ``n_val`` evaluated) at the ceiling."""
    return (n_train + n_val) / (n_train / ceiling["train"] + n_val / ceiling["eval"])


def run_process(args: list[str], env: dict) -> tuple[float, float]:
    """Run a child to completion; return (wall seconds, its own peak RSS in MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[2:])} failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
    return wall, usage.ru_maxrss / 1024  # KB on Linux


def write_mode_params(src: Path, folder: Path, split_dir: Path, train: dict, epochs: int | None) -> Path:
    params = load_params(src)
    raw = params.resolved()
    raw["base"]["mlflow"]["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    raw["split"]["dir"] = str(split_dir)
    # the generated set goes next to the split (workdir/synthetic), real CelebA stays where it is
    raw["data"]["synthetic"]["dir"] = str(split_dir.parent / "synthetic")
    raw["data"]["root"] = str(split_dir.parent / "synthetic" if params.get("data.source") == "synthetic"
                              else params.path("data.root"))
    raw["train"].update(train)
    if epochs:
        raw["train"]["epochs"] = epochs
    raw["model"]["weights"] = params.weights()
    return write_project(folder, raw)


def run_metrics(params_path: Path, variant: str) -> dict:
    from mlflow.tracking import MlflowClient

    params = load_params(params_path)
    run_id = json.loads(params.run_file(variant).read_text())["run_id"]
    client = MlflowClient(str(params.get("base.mlflow.tracking_uri")))
    hist = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in ("epoch_seconds", "val_loss", "val_acc", "extract_seconds", "feature_cache_mb")}
    return hist


def bench(params_file: Path, workdir: Path, epochs: int | None) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("MLFLOW_TRACKING_URI", None)
    py = [sys.executable, "-m"]
    split_dir = workdir / "split"
    variants = load_params(params_file).variants()
    first = write_mode_params(params_file, workdir / "plain", split_dir, MODES["plain"], epochs)
    if load_params(params_file).get("data.source") == "synthetic":
        run_process(py + ["pipeline", "generate", "--params", str(first)], env)
    split_wall, _ = run_process(py + ["pipeline", "split", "--params", str(first)], env)
    results: dict = {"split_seconds": split_wall}
    for mode, train in MODES.items():
        path = write_mode_params(params_file, workdir / mode, split_dir, train, epochs)
        per_variant = {}
        for name, spec in variants.items():
            wall, rss = run_process(py + ["pipeline", "train", "--variant", name, "--params", str(path)], env)
            m = run_metrics(path, name)
            per_variant[name] = {"strategy": spec["strategy"], "wall": wall, "rss_mb": rss, **m}
            print(f"  {mode:6s} {name:20s} {wall:6.1f} s wall, {sum(m['epoch_seconds']) / len(m['epoch_seconds']):6.2f}"
                  f" s/epoch, peak RSS {rss:5.0f} MB", file=sys.stderr, flush=True)
        results[mode] = per_variant
    results.update(gpu_ceilings(first, split_dir))
    return results


def gpu_ceilings(params_path: Path, split_dir: Path) -> dict:
    """``{"gpu": name or None}``, and on CUDA the split sizes and :func:`ceilings` of the config."""
    import torch

    from pipeline.training.device import placement

    cfg = load_params(params_path).train_config()
    device, amp, channels_last = placement(cfg)
    if device.type != "cuda":
        return {"gpu": None}
    print("  ceilings: the same networks on synthetic inputs already on the GPU ...", file=sys.stderr, flush=True)
    sizes = {s: sum(1 for _ in open(split_dir / f"{s}.csv")) - 1 for s in ("train", "val")}
    c = ceilings(cfg.weights, cfg.seed, cfg.image_size, cfg.batch_size, amp, device, sorted(set(cfg.strategies)),
                 cfg.frozen_dropout, channels_last)
    return {"gpu": torch.cuda.get_device_name(device), "sizes": sizes, "ceilings": c}


def summarise(results: dict) -> tuple[list[str], dict]:
    strategies = sorted({v["strategy"] for v in results["plain"].values()})

    def per_epoch(mode, strategy):
        secs = [s for v in results[mode].values() if v["strategy"] == strategy for s in v["epoch_seconds"]]
        return sum(secs) / len(secs)

    extract = {mode: sum(sum(v["extract_seconds"]) for v in results[mode].values()) for mode in ("reuse", "native")}
    cache_mb = max(max(v["feature_cache_mb"] or [0]) for v in results["reuse"].values())
    grid = {mode: sum(v["wall"] for v in results[mode].values()) for mode in MODES}
    rss = {mode: max(v["rss_mb"] for v in results[mode].values()) for mode in MODES}
    drift = max(abs(a - b) for name in results["plain"]
                for a, b in zip(results["plain"][name]["val_loss"], results["reuse"][name]["val_loss"]))
    same_acc = all(results["plain"][n]["val_acc"] == results["reuse"][n]["val_acc"] for n in results["plain"])
    # plain / reuse: what frozen-prefix reuse saves; reuse / native: what the reproducible kernels cost
    lines = [f"{'':26s}{'plain':>10s}{'reuse':>10s}{'ratio':>8s}{'native':>10s}{'cost':>8s}"]
    ratios = {}
    for strategy in strategies:
        a, b, c = (per_epoch(mode, strategy) for mode in MODES)
        ratios.update({f"{strategy}_ratio": round(a / b, 2), f"reproducible_cost_{strategy}": round(b / c, 2)})
        lines.append(f"{strategy + ' s/epoch':26s}{a:10.2f}{b:10.2f}{a / b:7.1f}x{c:10.2f}{b / c:7.1f}x")
    cost = extract["reuse"] / extract["native"] if extract["native"] else float("nan")
    lines += [
        f"{'feature extraction s':26s}{'-':>10s}{extract['reuse']:10.1f}{'':8s}{extract['native']:10.1f}{cost:7.1f}x",
        f"{'feature cache MB':26s}{'-':>10s}{cache_mb:10.1f}",
        f"{'grid wall s (4 trains)':26s}{grid['plain']:10.1f}{grid['reuse']:10.1f}{grid['plain'] / grid['reuse']:7.1f}x"
        f"{grid['native']:10.1f}{grid['reuse'] / grid['native']:7.1f}x",
        f"{'peak RSS MB (per stage)':26s}{rss['plain']:10.0f}{rss['reuse']:10.0f}{'':8s}{rss['native']:10.0f}",
        f"{'split s':26s}{results['split_seconds']:10.1f}",
        f"max |val_loss plain - reuse| = {drift:.2e}; val_acc histories identical: {same_acc}",
        "native: train.reproducible false (this CPU's fastest kernels); cost: reuse / native",
    ]
    summary = {**ratios, "reproducible_cost_extract": round(cost, 2), "peak_rss_mb": round(max(rss.values())),
               "extract_seconds": round(extract["reuse"], 1), "cache_mb": round(cache_mb, 1),
               "grid_seconds_plain": round(grid["plain"], 1), "grid_seconds_reuse": round(grid["reuse"], 1),
               "grid_seconds_native": round(grid["native"], 1), "max_val_loss_diff": drift,
               "val_acc_identical": same_acc, "gpu": results.get("gpu")}
    if results.get("ceilings"):
        n_train, n_val = results["sizes"]["train"], results["sizes"]["val"]
        phases = {f"{mode}_{s}": ((n_train + n_val) / per_epoch(mode, s),
                                  epoch_ceiling(results["ceilings"][f"{mode}_{s}"], n_train, n_val))
                  for mode in ("plain", "reuse") for s in strategies}
        if extract["reuse"] > 0:
            phases["extract"] = ((2 * n_train + n_val) / extract["reuse"], results["ceilings"]["extract"]["forward"])
        lines += [f"GPU: {results['gpu']}; ceiling: same network, batch and dtype, synthetic inputs on the GPU",
                  f"{'phase':26s}{'images/s':>10s}{'ceiling':>10s}{'ratio':>8s}"]
        lines += ceiling_lines(phases)
        summary.update({f"{phase}_ratio_to_ceiling": round(ips / ceil, 3) for phase, (ips, ceil) in phases.items()})
    return lines, summary


def ceiling_lines(phases: dict) -> list[str]:
    """``phase  images/s  ceiling  ratio`` rows of ``{phase: (images/s, ceiling images/s)}``."""
    return [f"{phase:26s}{ips:10.0f}{ceil:10.0f}{ips / ceil:8.0%}" for phase, (ips, ceil) in phases.items()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    args = parser.parse_args(argv)
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-")).resolve()
    try:
        results = bench(Path(args.params), workdir, args.epochs)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lines, summary = summarise(results)
    print("\n".join(lines))
    print(json.dumps(summary))
