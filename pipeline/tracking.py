"""MLflow set-up shared by the stages: tracking URI, experiment, tags, figures."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np

from pipeline.config import Params

TAG_VARIANT = "variant"
TAG_STAGE = "stage"
TAG_COMMIT = "git_commit"
TAG_MODEL_URI = "model_uri"


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``base.mlflow.tracking_uri`` with a relative
    SQLite path made absolute against the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = str(params.get("base.mlflow.tracking_uri"))
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(params.root / uri[len(prefix):])
    return uri


def setup(params: Params) -> str:
    """Point MLflow at the store and the experiment; return the experiment id."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    name = params.get("base.mlflow.experiment")
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    location = None  # a tracking server decides where its artifacts go
    if uri.startswith(("sqlite:", "file:")):
        location = f"{params.path('base.mlflow.artifact_root').as_uri()}/{name}"
    exp_id = mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return f"{commit}-dirty" if dirty and commit != "unknown" else commit


def confusion_figure(cm: np.ndarray, class_names, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def log_confusion(cm: np.ndarray, class_names, prefix: str, title: str, save_png: Path | None = None) -> None:
    """Log a confusion matrix as ``<prefix>.json`` and ``<prefix>.png`` artifacts; with
    ``save_png``, also write the same figure there (atomically)."""
    import matplotlib.pyplot as plt

    from pipeline.config import atomic_write

    mlflow.log_dict({"labels": list(class_names), "matrix": cm.tolist()}, f"{prefix}.json")
    fig = confusion_figure(cm, class_names, title)
    mlflow.log_figure(fig, f"{prefix}.png")
    if save_png is not None:
        atomic_write(save_png, lambda t: fig.savefig(t, format="png", dpi=100))
    plt.close(fig)



if __name__ == "__main__":  # print the resolved tracking URI (`make mlflow-ui` reads it)
    from pipeline.config import load_params, run_main

    run_main(lambda: print(tracking_uri(load_params())))
