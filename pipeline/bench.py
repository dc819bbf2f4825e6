"""Benchmark: the plain loop against frozen-prefix reuse, on the project's own config.

Usage::

    make bench                                   # = python -m pipeline.bench
    python -m pipeline.bench --params params.yaml --workdir /tmp/bench --epochs 2

It copies ``params.yaml`` into a scratch folder (its own MLflow store, split, cache and
models: nothing of the project's is touched), runs ``split`` once, then the four
``train@`` variants as separate processes, first with ``train.reuse_frozen: false`` and
then ``true``. It prints a table (seconds per epoch of each strategy both ways, feature
extraction time, cache size, grid wall time, peak RSS per process) and, as its last line,
one JSON object with ``head_only_ratio``, ``last_block_ratio`` (plain / reuse seconds per
epoch) and ``peak_rss_mb``. Figures, not assertions: nothing here passes or fails.
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

import yaml

from pipeline.config import load_params, run_main

MODES = {"plain": False, "reuse": True}


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


def write_mode_params(src: Path, folder: Path, split_dir: Path, reuse: bool, epochs: int | None) -> Path:
    params = load_params(src)
    raw = params.resolved()
    raw["base"]["mlflow"]["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    raw["split"]["dir"] = str(split_dir)
    # the generated set goes next to the split (workdir/synthetic), real CelebA stays where it is
    raw["data"]["synthetic"]["dir"] = str(split_dir.parent / "synthetic")
    raw["data"]["root"] = str(split_dir.parent / "synthetic" if params.get("data.source") == "synthetic"
                              else params.path("data.root"))
    raw["train"]["reuse_frozen"] = reuse
    if epochs:
        raw["train"]["epochs"] = epochs
    if str(raw["model"]["weights"]) not in ("none", "imagenet"):
        raw["model"]["weights"] = str(params.path("model.weights"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_metrics(params_path: Path, variant: str) -> dict:
    from mlflow.tracking import MlflowClient

    params = load_params(params_path)
    run_id = json.loads((params.path("train.models_dir") / variant / "run.json").read_text())["run_id"]
    client = MlflowClient(str(params.get("base.mlflow.tracking_uri")))
    hist = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in ("epoch_seconds", "val_loss", "val_acc", "extract_seconds", "feature_cache_mb")}
    return hist


def bench(params_file: Path, workdir: Path, epochs: int | None) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MLFLOW_TRACKING_URI", None)
    py = [sys.executable, "-m"]
    split_dir = workdir / "split"
    variants = load_params(params_file).variants()
    first = write_mode_params(params_file, workdir / "plain", split_dir, False, epochs)
    if load_params(params_file).get("data.source") == "synthetic":
        run_process(py + ["pipeline.synthetic", "--params", str(first)], env)
    split_wall, _ = run_process(py + ["pipeline.split", "--params", str(first)], env)
    results: dict = {"split_seconds": split_wall}
    for mode, reuse in MODES.items():
        path = write_mode_params(params_file, workdir / mode, split_dir, reuse, epochs)
        per_variant = {}
        for name, spec in variants.items():
            wall, rss = run_process(py + ["pipeline.train", "--variant", name, "--params", str(path)], env)
            m = run_metrics(path, name)
            per_variant[name] = {"strategy": spec["strategy"], "wall": wall, "rss_mb": rss, **m}
            print(f"  {mode:5s} {name:20s} {wall:6.1f} s wall, {sum(m['epoch_seconds']) / len(m['epoch_seconds']):6.2f}"
                  f" s/epoch, peak RSS {rss:5.0f} MB", file=sys.stderr, flush=True)
        results[mode] = per_variant
    return results


def summarise(results: dict) -> tuple[list[str], dict]:
    strategies = sorted({v["strategy"] for v in results["plain"].values()})

    def per_epoch(mode, strategy):
        secs = [s for v in results[mode].values() if v["strategy"] == strategy for s in v["epoch_seconds"]]
        return sum(secs) / len(secs)

    extract = sum(sum(v["extract_seconds"]) for v in results["reuse"].values())
    cache_mb = max(max(v["feature_cache_mb"] or [0]) for v in results["reuse"].values())
    grid = {mode: sum(v["wall"] for v in results[mode].values()) for mode in MODES}
    rss = {mode: max(v["rss_mb"] for v in results[mode].values()) for mode in MODES}
    drift = max(abs(a - b) for name in results["plain"]
                for a, b in zip(results["plain"][name]["val_loss"], results["reuse"][name]["val_loss"]))
    same_acc = all(results["plain"][n]["val_acc"] == results["reuse"][n]["val_acc"] for n in results["plain"])
    lines = [f"{'':26s}{'plain':>10s}{'reuse':>10s}{'ratio':>8s}"]
    ratios = {}
    for strategy in strategies:
        a, b = per_epoch("plain", strategy), per_epoch("reuse", strategy)
        ratios[f"{strategy}_ratio"] = round(a / b, 2)
        lines.append(f"{strategy + ' s/epoch':26s}{a:10.2f}{b:10.2f}{a / b:7.1f}x")
    lines += [
        f"{'feature extraction s':26s}{'-':>10s}{extract:10.1f}",
        f"{'feature cache MB':26s}{'-':>10s}{cache_mb:10.1f}",
        f"{'grid wall s (4 trains)':26s}{grid['plain']:10.1f}{grid['reuse']:10.1f}{grid['plain'] / grid['reuse']:7.1f}x",
        f"{'peak RSS MB (per stage)':26s}{rss['plain']:10.0f}{rss['reuse']:10.0f}",
        f"{'split s':26s}{results['split_seconds']:10.1f}",
        f"max |val_loss plain - reuse| = {drift:.2e}; val_acc histories identical: {same_acc}",
    ]
    summary = {**ratios, "peak_rss_mb": round(max(rss.values())), "extract_seconds": round(extract, 1),
               "cache_mb": round(cache_mb, 1), "grid_seconds_plain": round(grid["plain"], 1),
               "grid_seconds_reuse": round(grid["reuse"], 1), "max_val_loss_diff": drift,
               "val_acc_identical": same_acc}
    return lines, summary


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


if __name__ == "__main__":
    run_main(main)
