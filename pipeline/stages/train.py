"""Stage ``train@<variant>``: fine-tune one VGG-16 variant, tracked in MLflow.

Usage::

    python -m pipeline train --variant head_only-lr1e-3           # as dvc.yaml runs it
    python -m pipeline train --variant last_block-lr1e-4 --params other.yaml

Per epoch it logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (``step=epoch``,
epochs count from 1) and a checkpoint ``checkpoints/epoch_NNN.pt``; at the end
``best_val_acc``, ``best_epoch``, ``best_val_loss``, the validation confusion matrix of the
best epoch and a pyfunc model (:mod:`pipeline.tracking.served_model`) built from the best checkpoint.
Local outputs: ``<train.runs_dir>/<variant>.json`` (the run id and model URI: what ``select``
reads), ``<train.models_dir>/<variant>/best.pt``, ``<train.metrics_dir>/<variant>.json`` and
``<train.history_dir>/<variant>.csv``.

All randomness of an epoch (shuffle order, flips, dropout) derives from ``(seed, epoch)``,
so two runs on the same CPU give identical metrics. A killed run resumes from its last
completed epoch (:mod:`pipeline.training.resume`).

The stage in parts: :func:`build` (data, model, optimizer, frozen-feature cache), :func:`fit` (the
epoch loop, with a callback for what follows each epoch), :class:`EpochEnd` (checkpoint, best
epoch, resume state, MLflow), :func:`write_outputs`; :func:`train` wires them, and
:mod:`pipeline.tracking.runs` holds what is logged.
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
import torch

from pipeline.core import numerics
from pipeline.core.config import Params, TrainConfig, load_params
from pipeline.core.files import atomic_write, write_json
from pipeline.data import manifest
from pipeline.data.dataset import read_split
from pipeline.tracking import runs, train_log
from pipeline.training import batches, resume, sources
from pipeline.training.device import placement, resolve_workers
from pipeline.training.engine import evaluate_batches, train_epoch
from pipeline.training.model import save_checkpoint, trainable_model, trainable_state


@dataclass
class Run:
    """One variant's training, as :func:`build` sets it up."""
    variant: str
    spec: dict  # train.variants.<variant>: strategy, lr
    cfg: TrainConfig  # seed, epochs, batch size, frozen dropout ...
    device: torch.device
    loop: dict  # amp, channels_last: how engine runs a batch
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: dict  # sources.training_data: net, train, val, cache, layer, mode
    frames: dict  # the train and val splits
    settings: dict  # what MLflow records as the run's params
    work: Path  # the resume folder


def build(params: Params, variant: str) -> Run:
    """The data, the model with the variant's trainable layers, its optimizer and the frozen-feature
    cache (or the plain loop's resident images)."""
    cfg, spec = params.train_config(), params.variant(variant)
    device, amp, channels_last = placement(cfg)
    if device.type != "cpu":
        print(gpu_note(device, amp), flush=True)
    frames = {name: read_split(cfg.split_dir, name) for name in ("train", "val")}
    for frame in frames.values():  # every listed image still the one split checked, before any work
        manifest.verify(params.dataset_root(), frame, cfg.split_dir, cfg.feature_cache)
    runs.setup(params.mlflow_config())  # a bad tracking URI fails here, before any work
    model, trainable, optimizer = trainable_model(cfg.weights, cfg.seed, spec["strategy"], spec["lr"], device,
                                                  channels_last, cfg.root)
    workers = resolve_workers(cfg.num_workers)
    data = sources.training_data(cfg, model, spec["strategy"], device, amp, workers, channels_last)
    settings = {
        "variant": variant, "strategy": spec["strategy"], "lr": spec["lr"], "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "image_size": cfg.image_size, "weights": params.get("model.weights"),
        "seed": cfg.seed, "data_source": cfg.data_source,
        "n_train": len(frames["train"]), "n_val": len(frames["val"]), "optimizer": "Adam",
        "loss": "BCEWithLogitsLoss", "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "trainable_layers": ",".join(sorted({n.rsplit(".", 1)[0] for n in trainable})),
        "reuse_frozen": cfg.reuse_frozen, "frozen_dropout": cfg.frozen_dropout,
        **{f"cpu_{k}": v for k, v in numerics.describe().items()},
        "amp": amp, "device": device.type, "channels_last": channels_last, "cached_layer": data["layer"],
        "frozen_features": data["mode"]}
    return Run(variant, spec, cfg, device, {"amp": amp, "channels_last": channels_last}, model, optimizer, data, frames, settings,
               params.path("train.models_dir") / variant / resume.RESUME_DIR)


def gpu_note(device: torch.device, amp: str) -> str:
    """The one line a run on a GPU prints: its numbers are not the committed CPU ones."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (f"train: on {name} (train.device {device}, amp {amp}): the metrics are this GPU's, not the committed "
            "CPU ones, which train.device: cpu repeats (docs/reproducibility.md)")


def fit(run: Run, first_epoch: int, on_epoch: Callable[[dict, dict, dict, float], None]) -> None:
    """The epoch loop: train one epoch, validate, hand ``(row, train, val, seconds)`` to ``on_epoch``."""
    n = len(run.frames["train"])
    cfg = run.cfg
    for epoch in range(first_epoch, cfg.epochs + 1):
        order, flips = batches.epoch_plan(n, cfg.seed, epoch)
        started = time.perf_counter()
        tr = train_epoch(run.data["net"], run.data["train"], order, flips, cfg.batch_size, run.optimizer,
                         run.device, desc=f"epoch {epoch} train", frozen_dropout=cfg.frozen_dropout, **run.loop)
        va = evaluate_batches(run.data["net"], run.data["val"], cfg.batch_size, run.device,
                              desc=f"epoch {epoch} val", **run.loop)
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
               "val_loss": va["loss"], "val_acc": va["acc"]}
        seconds = time.perf_counter() - started
        print(epoch_line(row, cfg.epochs, seconds), flush=True)
        on_epoch(row, tr, va, seconds)


def epoch_line(row: dict, epochs: int, seconds: float) -> str:
    """The original experiment's line per epoch (and its time)."""
    return (f"Epoch {row['epoch']}/{epochs} | Train Loss {row['train_loss']:.4f}, Acc {row['train_acc']:.4f} | "
            f"Val Loss {row['val_loss']:.4f}, Acc {row['val_acc']:.4f} | {seconds:.1f} s")


class EpochEnd:
    """What follows each epoch: its checkpoint, the best epoch so far, the resume state, MLflow."""

    def __init__(self, run: Run, done: resume.Progress, fingerprint: str, run_id: str, meta: dict):
        self.run, self.done, self.fingerprint, self.run_id, self.meta = run, done, fingerprint, run_id, meta

    def __call__(self, row: dict, tr: dict, va: dict, seconds: float) -> None:
        done, work = self.done, self.run.work
        done.history.append(row)
        done.epoch_seconds.append(seconds)
        ckpt = resume.epoch_checkpoint(work, row["epoch"])
        save_checkpoint(ckpt, self.run.model, epoch=row["epoch"], metrics=row, **self.meta)
        # best: highest val_acc, then lowest val_loss, then the earlier epoch
        if done.best is None or (va["acc"], -va["loss"]) > (done.best["val_acc"], -done.best["val_loss"]):
            done.best = {**row, "ckpt": ckpt, "labels": va["labels"].tolist(), "preds": va["preds"].tolist(),
                         "probs": va["probs"].tolist()}
        # the resume state first, then MLflow: an epoch in MLflow is always in the state, and
        # a resumed run logs what the killed one had not (each epoch exactly once)
        resume.save(work, {"fingerprint": self.fingerprint, "run_id": self.run_id, "epoch": row["epoch"],
                           "trainable": trainable_state(self.run.model), "optimizer": self.run.optimizer.state_dict(),
                           "rng": torch.get_rng_state(), "history": done.history,
                           "epoch_seconds": done.epoch_seconds,
                           "best": {k: v for k, v in done.best.items() if k != "ckpt"}})
        train_log.log_epoch(row, seconds, ckpt)
        for old in work.glob("epoch_*.pt"):  # logged; only the best one is needed again
            if old != done.best["ckpt"]:
                old.unlink()


def train(params: Params, variant: str) -> dict:
    """Train one variant; return its summary (also written to the metrics JSON)."""
    run = build(params, variant)
    config = params.resolved()  # the checkpoints' copy of the whole config; the resume key hashes it
    fingerprint = resume.fingerprint(config, variant, run.cfg.split_dir, run.device)
    done = resume.start(run.work, fingerprint, run.model, run.optimizer)
    meta = {"variant": variant, "strategy": run.spec["strategy"], "lr": run.spec["lr"],
            "image_size": run.cfg.image_size, "weights": run.cfg.weights, "seed": run.cfg.seed,
            "config": config}
    cache = run.data["cache"]
    with mlflow.start_run(**({"run_id": done.run_id} if done.run_id else {"run_name": runs.run_name(variant)})) \
            as active:
        if done.run_id is None:
            train_log.log_train_start(run.cfg, variant, run.settings, run.frames)
        else:
            print(f"{variant}: resuming MLflow run {done.run_id} after epoch {len(done.history)} of {run.cfg.epochs}")
            mlflow.set_tag(resume.TAG_RESUMED, str(len(done.history)))
            train_log.log_missing_epochs(done.run_id, done.history, done.epoch_seconds,
                                        lambda epoch: resume.epoch_checkpoint(run.work, epoch))
        if cache is not None:
            mlflow.log_metrics({"feature_cache_mb": cache["bytes"] / 2**20,
                                "extract_seconds": cache["extract_seconds"]}, step=done.first_epoch - 1)
        fit(run, done.first_epoch, EpochEnd(run, done, fingerprint, active.info.run_id, meta))
        model_uri = train_log.log_train_end(run.cfg, variant, done.best, run.frames["val"])
        record = {"variant": variant, "run_id": active.info.run_id, "experiment_id": active.info.experiment_id,
                  "model_uri": model_uri}
    summary = write_outputs(params, variant, done, record)
    timing = {"epoch_seconds": done.epoch_seconds, "extract_seconds": cache["extract_seconds"] if cache else 0.0,
              "feature_cache_mb": cache["bytes"] / 2**20 if cache else 0.0}
    return {"run_id": record["run_id"], "history": done.history, "timing": timing, **summary}


def write_outputs(params: Params, variant: str, done: resume.Progress, record: dict) -> dict:
    """The stage's local outputs (the best checkpoint, the run record for select, the summary
    metrics, the history); then the resume folder goes. Returns the summary."""
    best = done.best
    out_dir = params.path("train.models_dir") / variant
    atomic_write(out_dir / "best.pt", lambda t: t.write_bytes(best["ckpt"].read_bytes()))
    summary = {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
               **{f"final_{k}": v for k, v in done.history[-1].items() if k != "epoch"}}
    write_json(params.run_file(variant), record)
    write_json(params.path("train.metrics_dir") / f"{variant}.json", summary)
    atomic_write(params.path("train.history_dir") / f"{variant}.csv",
                 lambda t: pd.DataFrame(done.history).to_csv(t, index=False, float_format="%.6f"))
    shutil.rmtree(out_dir / resume.RESUME_DIR)  # a finished stage leaves nothing a forced re-run would resume from
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="a key of train.variants in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = train(params, args.variant)
    print(f"{args.variant}: best_val_acc={summary['best_val_acc']:.4f} at epoch {summary['best_epoch']} "
          f"(run {summary['run_id']})")
