"""What a ``train@`` run logs to MLflow: its settings and the split, each epoch's metrics,
confusion matrix and checkpoint, the best epoch's validation predictions, and the model."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from pipeline.core.config import TrainConfig
from pipeline.data.dataset import SPLIT_SUMMARY
from pipeline.tracking.runs import (
    TAG_MODEL_URI,
    TAG_VARIANT,
    VAL_PREDICTIONS,
    log_predictions,
    log_split_input,
    run_tags,
)


def confusion_figure(cm: np.ndarray, class_names, title: str):
    """scikit-learn's confusion-matrix plot: actual classes by row, predicted by column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay(cm, display_labels=list(class_names)).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def log_confusion(cm: np.ndarray, class_names, prefix: str, title: str, save_png: Path | None = None) -> None:
    """Log a confusion matrix as ``<prefix>.json`` and ``<prefix>.png`` artifacts; with
    ``save_png``, also write the same figure there (atomically)."""
    import matplotlib.pyplot as plt

    from pipeline.core.files import atomic_write

    mlflow.log_dict({"labels": list(class_names), "matrix": cm.tolist()}, f"{prefix}.json")
    fig = confusion_figure(cm, class_names, title)
    mlflow.log_figure(fig, f"{prefix}.png")
    if save_png is not None:
        atomic_write(save_png, lambda t: fig.savefig(t, format="png", dpi=100))
    plt.close(fig)


def log_train_start(cfg: TrainConfig, variant: str, settings: dict, frames: dict) -> None:
    """Tags, the run's settings as params, the split (``split.json``, class counts) and the train
    and validation splits as dataset inputs."""
    mlflow.set_tags({TAG_VARIANT: variant, **run_tags("train", cfg.root)})
    mlflow.log_params(settings)
    log_split(cfg.split_dir)
    for split, context in (("train", "training"), ("val", "validation")):
        log_split_input(frames[split], split, cfg.data_source, cfg.data_root, context)


def log_split(split_dir: Path) -> None:
    """The split a run trained on: ``split.json`` as an artifact, its class counts (and, for an
    identity split, the identities per split and their overlap) as metrics."""
    import json

    path = split_dir / SPLIT_SUMMARY
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    mlflow.log_dict(summary, SPLIT_SUMMARY)
    mlflow.log_param("split_group_by", summary.get("group_by", "none"))
    counts = {f"split_{name}_{k}": v for name in ("train", "val", "test")
              for k, v in summary.get(name, {}).items() if isinstance(v, (int, float))}
    if "identity_overlap" in summary:
        counts["split_identity_overlap"] = summary["identity_overlap"]
    mlflow.log_metrics(counts, step=0)


def log_epoch_metrics(row: dict, seconds: float) -> None:
    mlflow.log_metrics({**{k: v for k, v in row.items() if k != "epoch"}, "epoch_seconds": seconds},
                       step=row["epoch"])


def log_epoch(row: dict, seconds: float, ckpt: Path) -> None:
    """One epoch: its metrics at ``step=epoch`` and its checkpoint under ``checkpoints/``."""
    log_epoch_metrics(row, seconds)
    mlflow.log_artifact(str(ckpt), "checkpoints")


def log_missing_epochs(run_id: str, history: list[dict], epoch_seconds: list[float], checkpoint) -> None:
    """Log the epochs a killed run finished but had not (fully) logged yet; ``checkpoint(epoch)``
    is the path of an epoch's checkpoint."""
    client = mlflow.tracking.MlflowClient()
    logged = {m.step for m in client.get_metric_history(run_id, "val_acc")}
    ckpts = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoints")}
    for row, seconds in zip(history, epoch_seconds):
        ckpt = checkpoint(row["epoch"])
        if row["epoch"] not in logged:
            log_epoch_metrics(row, seconds)
        if ckpt.name not in ckpts and ckpt.is_file():
            mlflow.log_artifact(str(ckpt), "checkpoints")


def log_train_end(cfg: TrainConfig, variant: str, best: dict, val_frame) -> str:
    """The best epoch's metrics, validation predictions (:data:`VAL_PREDICTIONS`) and confusion
    matrix, and the run's model (built from the best checkpoint); returns the model's URI, also
    set as the tag ``model_uri``."""
    from sklearn.metrics import confusion_matrix

    from pipeline.data.dataset import CLASS_NAMES

    mlflow.log_metrics({"best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
                        "best_val_loss": best["val_loss"]}, step=cfg.epochs)
    log_predictions(val_frame["image_id"], best["labels"], best["probs"], VAL_PREDICTIONS)
    cm = confusion_matrix(best["labels"], best["preds"], labels=[0, 1])
    log_confusion(cm, CLASS_NAMES, "confusion_matrix/val", f"{variant}: validation, epoch {best['epoch']}")
    model_uri = log_pyfunc(best["ckpt"], cfg.image_size, cfg.root)
    mlflow.set_tag(TAG_MODEL_URI, model_uri)
    return model_uri


def log_pyfunc(checkpoint: Path, image_size: int, root: Path) -> str:
    """Log this run's model (:mod:`pipeline.tracking.mlflow_model`, defined from code) with the trainable-only
    checkpoint; it takes raw images (:mod:`pipeline.tracking.served_model`). The registry's champion, with the
    whole network, is logged by ``select``."""
    from pipeline.tracking import served_model as serving

    return serving.log("model", {"checkpoint": checkpoint}, image_size, root)
