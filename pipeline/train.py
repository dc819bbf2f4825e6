"""Stage ``train@<variant>``: fine-tune one VGG-16 variant, tracked in MLflow.

Usage::

    python -m pipeline.train --variant head_only-lr1e-3           # as dvc.yaml runs it
    python -m pipeline.train --variant last_block-lr1e-4 --params other.yaml

Per epoch it logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (``step=epoch``,
epochs count from 1) and a checkpoint ``checkpoints/epoch_NNN.pt``; at the end
``best_val_acc``, ``best_epoch``, ``best_val_loss``, the validation confusion matrix of the
best epoch and a pyfunc model (:mod:`pipeline.serving`) built from the best checkpoint.
Local outputs: ``<train.models_dir>/<variant>/{best.pt,run.json}``,
``<train.metrics_dir>/<variant>.json`` and ``<train.history_dir>/<variant>.csv``.

All randomness of an epoch (shuffle order, flips, dropout) derives from ``(seed, epoch)``,
so two runs on the same CPU give identical metrics.
"""
from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports below: a bad params.yaml or an unreachable
    from pipeline.store import preflight  # tracking server fails in well under a second

    preflight()

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix

from pipeline import frozen, resident, tracking
from pipeline.config import Params, atomic_write, load_params, run_main, write_json
from pipeline.data import CLASS_NAMES, FaceDataset, epoch_flips, read_split
from pipeline.engine import evaluate_batches, progress, resolve_device, train_epoch
from pipeline.model import build_model, save_checkpoint, set_strategy, trainable_state

RESUME_DIR = "resume"  # in <train.models_dir>/<variant>/ while a run is unfinished
RESUME_FILE = "state.pt"
TAG_RESUMED = "resumed_after_epoch"
MODEL_REQUIREMENTS = ("torch", "torchvision", "mlflow", "numpy", "pandas", "pyyaml", "scikit-learn")


def resolved_weights(params: Params) -> str:
    """``model.weights`` with a relative path made absolute (checkpoints outlive the cwd)."""
    weights = str(params.get("model.weights"))
    return weights if weights in ("none", "imagenet") else str(params.path("model.weights"))


def model_requirements(root: Path) -> list[str]:
    req = root / "requirements.txt"
    lines = req.read_text().splitlines() if req.is_file() else []
    return [ln.strip() for ln in lines if ln.split("==")[0].strip().lower() in MODEL_REQUIREMENTS]


def train(params: Params, variant: str) -> dict:
    """Train one variant; return its summary (also written to the metrics JSON)."""
    spec = params.variant(variant)
    seed = int(params.get("base.seed"))
    epochs = int(params.get("train.epochs"))
    batch_size = int(params.get("train.batch_size"))
    workers = resident.resolve_workers(params.get("train.num_workers"))
    size = int(params.get("data.image_size"))
    device = resolve_device(str(params.get("train.device")))
    weights = resolved_weights(params)
    split_dir = params.path("split.dir")
    root = params.dataset_root()

    reuse = bool(params.get("train.reuse_frozen"))
    frozen_dropout = bool(params.get("train.frozen_dropout"))
    amp = resident.resolve_amp(params.get("train.amp"), device)
    channels_last = bool(params.get("train.channels_last")) and device.type == "cuda"

    frames = {name: read_split(split_dir, name) for name in ("train", "val")}
    train_ds = FaceDataset(root, frames["train"], size, train=True, seed=seed)
    val_ds = FaceDataset(root, frames["val"], size)

    tracking.setup(params)  # a bad tracking URI fails here, before any work
    model = build_model(weights, seed, params.root)
    trainable = set_strategy(model, spec["strategy"])
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(spec["lr"]))
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # reuse: the layers after the frozen prefix, on its cached (or recomputed) output; else the
    # plain loop, every image through the whole network every epoch; images decoded once either way
    data = resident.training_data(params, model, spec["strategy"], device, amp, workers, channels_last)
    net, cache, layer = data["net"], data["cache"], data["layer"]
    loop = {"amp": amp, "channels_last": channels_last}

    out_dir = params.path("train.models_dir") / variant
    ckpt_meta = {"variant": variant, "strategy": spec["strategy"], "lr": float(spec["lr"]),
                 "image_size": size, "weights": weights, "seed": seed, "config": params.resolved()}
    work = out_dir / RESUME_DIR  # kept by DVC between runs (persist: true), removed when done
    fingerprint = resume_fingerprint(params, variant, device)
    state = load_resume(work, fingerprint)
    if state is None:
        shutil.rmtree(work, ignore_errors=True)
        history, best, epoch_seconds, first_epoch = [], None, [], 1
    else:
        restore_trainable(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history, epoch_seconds, first_epoch = state["history"], state["epoch_seconds"], state["epoch"] + 1
        best = {**state["best"], "ckpt": epoch_checkpoint(work, state["best"]["epoch"])}
    work.mkdir(parents=True, exist_ok=True)
    run_args = {"run_id": state["run_id"]} if state else {"run_name": variant}
    with mlflow.start_run(**run_args) as run:
        if state is None:
            mlflow.set_tags({tracking.TAG_VARIANT: variant, tracking.TAG_STAGE: "train",
                             tracking.TAG_COMMIT: tracking.git_commit(params.root)})
            mlflow.log_params({
                "variant": variant, "strategy": spec["strategy"], "lr": spec["lr"], "epochs": epochs,
                "batch_size": batch_size, "image_size": size, "weights": params.get("model.weights"),
                "seed": seed, "data_source": params.get("data.source"), "n_train": len(train_ds),
                "n_val": len(val_ds), "optimizer": "Adam", "loss": "BCEWithLogitsLoss",
                "trainable_params": n_trainable,
                "trainable_layers": ",".join(sorted({n.rsplit(".", 1)[0] for n in trainable})),
                "reuse_frozen": reuse, "frozen_dropout": frozen_dropout, "amp": amp, "device": device.type,
                "channels_last": channels_last, "cached_layer": layer, "frozen_features": data["mode"],
            })
            log_split(split_dir)
            tracking.log_split_input(params, frames["train"], "train", "training")
            tracking.log_split_input(params, frames["val"], "val", "validation")
        else:
            print(f"{variant}: resuming MLflow run {state['run_id']} after epoch {state['epoch']} of {epochs}")
            mlflow.set_tag(TAG_RESUMED, str(state["epoch"]))
            log_missing_epochs(run.info.run_id, history, epoch_seconds, work)
        if cache is not None:
            mlflow.log_metrics({"feature_cache_mb": cache["bytes"] / 2**20,
                                "extract_seconds": cache["extract_seconds"]}, step=first_epoch - 1)
        for epoch in progress(range(first_epoch, epochs + 1), variant, leave=True):
            epoch_seed = seed * 1000 + epoch
            torch.manual_seed(epoch_seed)  # dropout of this epoch
            # make_loader's shuffle of this epoch and FaceDataset's flips, as index tensors
            order = resident.epoch_order(len(train_ds), epoch_seed)
            flips = epoch_flips(len(train_ds), seed, epoch)
            started = time.perf_counter()
            tr = train_epoch(net, data["train"], order, flips, batch_size, optimizer, device,
                             desc=f"epoch {epoch} train", frozen_dropout=frozen_dropout, **loop)
            va = evaluate_batches(net, data["val"], batch_size, device, desc=f"epoch {epoch} val", **loop)
            epoch_seconds.append(time.perf_counter() - started)
            row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                   "val_loss": va["loss"], "val_acc": va["acc"]}
            history.append(row)
            ckpt = epoch_checkpoint(work, epoch)
            save_checkpoint(ckpt, model, epoch=epoch, metrics=row, **ckpt_meta)
            # best: highest val_acc, then lowest val_loss, then the earlier epoch
            if best is None or (va["acc"], -va["loss"]) > (best["val_acc"], -best["val_loss"]):
                best = {**row, "ckpt": ckpt, "labels": va["labels"].tolist(), "preds": va["preds"].tolist()}
            # the resume state first, then MLflow: an epoch in MLflow is always in the state, and
            # a resumed run logs what the killed one had not (each epoch exactly once)
            save_resume(work, {"fingerprint": fingerprint, "run_id": run.info.run_id, "epoch": epoch,
                               "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                               "rng": torch.get_rng_state(), "history": history, "epoch_seconds": epoch_seconds,
                               "best": {k: v for k, v in best.items() if k != "ckpt"}})
            log_epoch(row, epoch_seconds[-1], ckpt)
            for old in work.glob("epoch_*.pt"):  # logged; only the best one is needed again
                if old != best["ckpt"]:
                    old.unlink()
        mlflow.log_metrics({"best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
                            "best_val_loss": best["val_loss"]}, step=epochs)
        cm = confusion_matrix(best["labels"], best["preds"], labels=[0, 1])
        tracking.log_confusion(cm, CLASS_NAMES, "confusion_matrix/val",
                               f"{variant}: validation, epoch {best['epoch']}")
        model_uri = log_pyfunc(params, best["ckpt"])
        mlflow.set_tag(tracking.TAG_MODEL_URI, model_uri)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "best.pt", lambda t: t.write_bytes(best["ckpt"].read_bytes()))
        run_id, exp_id = run.info.run_id, run.info.experiment_id

    summary = {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
               **{f"final_{k}": v for k, v in history[-1].items() if k != "epoch"}}
    write_json(out_dir / "run.json", {"variant": variant, "run_id": run_id, "experiment_id": exp_id,
                                      "model_uri": model_uri})
    write_json(params.path("train.metrics_dir") / f"{variant}.json", summary)
    atomic_write(params.path("train.history_dir") / f"{variant}.csv",
                 lambda t: pd.DataFrame(history).to_csv(t, index=False, float_format="%.6f"))
    shutil.rmtree(work)  # a finished stage leaves nothing that a forced re-run would resume from
    timing = {"epoch_seconds": epoch_seconds, "extract_seconds": cache["extract_seconds"] if cache else 0.0,
              "feature_cache_mb": cache["bytes"] / 2**20 if cache else 0.0}
    return {"run_id": run_id, "history": history, "timing": timing, **summary}


def log_split(split_dir: Path) -> None:
    """The split this run trained on: ``split.json`` as an artifact, its class counts (and, for
    an identity split, the identities per split and their overlap) as metrics."""
    path = split_dir / "split.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    mlflow.log_dict(summary, "split.json")
    mlflow.log_param("split_group_by", summary.get("group_by", "none"))
    counts = {f"split_{name}_{k}": v for name in ("train", "val", "test")
              for k, v in summary.get(name, {}).items() if isinstance(v, (int, float))}
    if "identity_overlap" in summary:
        counts["split_identity_overlap"] = summary["identity_overlap"]
    mlflow.log_metrics(counts, step=0)


def resume_fingerprint(params: Params, variant: str, device: torch.device) -> str:
    """What a resume state must have been made with: this variant's settings, the data, the code."""
    cfg = params.resolved()
    cfg["train"]["variants"] = {variant: params.variant(variant)}
    for key in ("models_dir", "metrics_dir", "history_dir", "feature_cache", "num_workers", "cache_budget_gb"):
        cfg["train"].pop(key, None)  # where things go and how fast; not what is computed
    h = hashlib.blake2b(json.dumps({k: cfg[k] for k in ("data", "split", "model", "train")}, sort_keys=True,
                                   default=str).encode(), digest_size=16)
    h.update(f"{params.get('base.seed')}|{device.type}|{torch.__version__}".encode())
    for name in ("train", "val"):
        h.update((params.path("split.dir") / f"{name}.csv").read_bytes())
    h.update(frozen.code_digest(("train.py", "engine.py", "frozen.py", "model.py", "data.py", "resident.py")).encode())
    return h.hexdigest()


def load_resume(work: Path, fingerprint: str) -> dict | None:
    """The state a killed run left, if it was made with this config; else None."""
    path = work / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable state is discarded, not trusted
        print(f"{path}: unreadable resume state, training from scratch")
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"{path}: made with other settings, data or code; training from scratch")
        return None
    best = epoch_checkpoint(work, state["best"]["epoch"])
    if not best.is_file():
        print(f"{best}: missing; training from scratch")
        return None
    return state


def save_resume(work: Path, state: dict) -> None:
    atomic_write(work / RESUME_FILE, lambda t: torch.save(state, t))


def restore_trainable(model: torch.nn.Module, trainable: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)


def epoch_checkpoint(work: Path, epoch: int) -> Path:
    return work / f"epoch_{epoch:03d}.pt"


def log_epoch_metrics(row: dict, seconds: float) -> None:
    mlflow.log_metrics({**{k: v for k, v in row.items() if k != "epoch"}, "epoch_seconds": seconds},
                       step=row["epoch"])


def log_epoch(row: dict, seconds: float, ckpt: Path) -> None:
    log_epoch_metrics(row, seconds)
    mlflow.log_artifact(str(ckpt), "checkpoints")


def log_missing_epochs(run_id: str, history: list[dict], epoch_seconds: list[float], work: Path) -> None:
    """Log the epochs a killed run finished but had not (fully) logged yet."""
    client = mlflow.tracking.MlflowClient()
    logged = {m.step for m in client.get_metric_history(run_id, "val_acc")}
    ckpts = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoints")}
    for row, seconds in zip(history, epoch_seconds):
        ckpt = epoch_checkpoint(work, row["epoch"])
        if row["epoch"] not in logged:
            log_epoch_metrics(row, seconds)
        if ckpt.name not in ckpts and ckpt.is_file():
            mlflow.log_artifact(str(ckpt), "checkpoints")


def log_pyfunc(params: Params, checkpoint: Path) -> str:
    """Log this run's model (:mod:`pipeline.mlflow_model`, defined from code) with the trainable-only
    checkpoint; it takes raw images (:mod:`pipeline.serving`). The registry's champion, with the
    whole network, is logged by ``select``."""
    from pipeline import serving

    here = Path(__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(here / "mlflow_model.py"), artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(here)], signature=serving.signature(),
        input_example=serving.example_input(int(params.get("data.image_size"))),
        pip_requirements=model_requirements(params.root),
    )
    return info.model_uri


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="a key of train.variants in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = train(params, args.variant)
    print(f"{args.variant}: best_val_acc={summary['best_val_acc']:.4f} at epoch {summary['best_epoch']} "
          f"(run {summary['run_id']})")


if __name__ == "__main__":
    run_main(main)
