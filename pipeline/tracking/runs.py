"""MLflow plumbing every tracked stage shares: which store and experiment, a run's name and tags,
the split's dataset inputs, figures and prediction files. The stages hand it resolved settings
(:class:`pipeline.core.config.MlflowConfig`); only :func:`main`, the store printer behind
``make mlflow-ui``, reads a params file."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import subprocess
import warnings
from pathlib import Path

import mlflow

from pipeline.core.config import (
    MlflowConfig,
    load_params,
    sqlite_path,
    store_uri,
    tracking_uri,
)
from pipeline.core.store import check_reachable

# MLflow infers a schema for each logged dataset and model output, and hints each time that an
# integer column (the 0/1 ``label``) cannot hold a missing value: ours never does
warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)

TAG_VARIANT = "variant"
TAG_STAGE = "stage"
TAG_COMMIT = "git_commit"
TAG_MODEL_URI = "model_uri"
TAG_EXPERIMENT = "dvc_experiment"  # the DVC experiment a run belongs to ("" for a plain dvc repro)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs table
VAL_PREDICTIONS = "val_predictions.csv"  # a train run's best epoch on the validation split
PREDICTION_COLUMNS = ("image_id", "label", "p_male")


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialise the first touch of a SQLite store: MLflow creates and migrates its tables
    then, and two parallel stages (``dvc queue start -j 2``) would race ("Online migration
    expected to match one row"). Later writes wait on SQLite's busy timeout (MLflow: 20 s)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def use_store(uri: str) -> None:
    """Point this process's MLflow client at ``uri`` without writing it into the environment:
    MLflow 3's ``set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI``, which would then win
    over ``params.yaml`` for every later Params in this process and for every child process."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def setup(store: MlflowConfig) -> str:
    """Point MLflow at the store and the experiment (tagged as a model-development experiment,
    which MLflow 3's UI opens on its runs, not on the GenAI overview); return the experiment id."""
    uri, name = store.uri, store.experiment
    check_reachable(uri)
    use_store(uri)
    with _store_lock(uri):
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            location = None  # a tracking server decides where its artifacts go
            if uri.startswith(("sqlite:", "file:")):
                location = f"{store.artifact_root.as_uri()}/{name}"
            try:
                exp_id = mlflow.create_experiment(name, artifact_location=location)
            except mlflow.exceptions.MlflowException:  # another process (a server's client) was first
                exp = mlflow.get_experiment_by_name(name)
                if exp is None:
                    raise
        exp_id = exp.experiment_id if exp is not None else exp_id
        if exp is None or any(exp.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):
            for key, value in EXPERIMENT_KIND.items():
                mlflow.tracking.MlflowClient().set_experiment_tag(exp_id, key, value)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def split_digest(frame) -> str:
    """A digest of a split's ``image_id,label`` rows, every one of them (MLflow's own digest reads
    only the first 10,000): what tells whether two runs were scored on the same images."""
    import hashlib

    rows = frame[["image_id", "label"]].reset_index(drop=True)
    return hashlib.blake2b(rows.to_csv(index=False).encode(), digest_size=8).hexdigest()


def log_split_input(frame, split: str, data_source: str, data_root: Path, context: str) -> None:
    """Record one split as a dataset input of the active run (the MLflow UI's Datasets column):
    its ``image_id,label`` rows, named ``<data.source>-<split>``, with the folder its images come
    from (``data.root``) as source and :func:`split_digest` as digest, so it changes whenever the
    split does; the images' own hash is in ``dvc.lock``."""
    import mlflow.data

    rows = frame[["image_id", "label"]].reset_index(drop=True)
    digest = split_digest(rows)
    with warnings.catch_warnings():  # a local path matches two equal sources; 0/1 labels have no NaN
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column")
        dataset = mlflow.data.from_pandas(rows, source=str(data_root), targets="label",
                                          name=f"{data_source}-{split}", digest=digest)
    # MLflow looks the dataset up, then inserts it: two runs of one split at once (dvc queue
    # start -j 2) can both insert, and one fails on the UNIQUE constraint. A SQLite store is locked
    # for it; against a server the loser tries once more and finds the winner's row.
    with _store_lock(mlflow.get_tracking_uri()):
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException:
            mlflow.log_input(dataset, context=context)


def dvc_experiment() -> str:
    """The name of the DVC experiment this stage runs in (``dvc exp run`` sets ``DVC_EXP_NAME``),
    or "" for a plain ``dvc repro``."""
    return os.environ.get("DVC_EXP_NAME", "")


def run_name(name: str) -> str:
    """A run's name: ``name``, and the DVC experiment's in brackets when there is one."""
    return f"{name} [{dvc_experiment()}]" if dvc_experiment() else name


def run_tags(stage: str, root: Path) -> dict:
    """The tags every run of the pipeline carries, to group the runs table by: stage, git
    commit, DVC experiment."""
    return {TAG_STAGE: stage, TAG_COMMIT: git_commit(root), TAG_EXPERIMENT: dvc_experiment()}


def log_figures(figures: dict, folder: str) -> None:
    """Each matplotlib figure as ``<folder>/<name>.png``, then closed."""
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{folder}/{name}.png")
        plt.close(fig)


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return f"{commit}-dirty" if dirty and commit != "unknown" else commit


def log_predictions(image_ids, labels, probs, name: str) -> None:
    """Per-image predictions as the CSV artifact ``name``: ``image_id,label,p_male`` (P(male) as
    float32 prints it exactly, so a threshold applied to the file decides as the model did)."""
    import pandas as pd

    frame = pd.DataFrame(dict(zip(PREDICTION_COLUMNS, (list(image_ids), list(labels), list(probs)))))
    mlflow.log_text(frame.to_csv(index=False, float_format="%.9g"), name)


def main(argv=None) -> None:
    """Print the store that ``make mlflow-ui`` / ``make mlflow-server`` serve."""
    parser = argparse.ArgumentParser(description="Print the MLflow store of params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--what", choices=("uri", "store", "artifacts", "runs-page", "champion"), default="uri",
                        help="uri: what the stages use (MLFLOW_TRACKING_URI first); store: the backend "
                             "store of params.yaml; artifacts: its artifact folder; runs-page: the UI's page "
                             "of the experiment's runs (path and query after the server's address); champion: "
                             "models:/<registered model of the data set>@<select.alias>")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print({"uri": lambda: tracking_uri(params), "store": lambda: store_uri(params),
           "artifacts": lambda: str(params.mlflow_config().artifact_root),
           "champion": lambda: f"models:/{params.registered_model()}@{params.get('select.alias')}",
           "runs-page": lambda: runs_page(params.mlflow_config())}[args.what]())


def runs_page(store: MlflowConfig) -> str:
    """``/#/experiments/<id>?workflowType=machine_learning``: the experiment's runs table. MLflow
    3.17's UI reads the experiment kind tag (:data:`EXPERIMENT_KIND`) only with its workflow
    navigation off, which this build always has on: the view follows its GenAI / Model training
    switch, set by this query (and remembered by the browser once clicked)."""
    use_store(store.uri)
    exp = mlflow.get_experiment_by_name(store.experiment)
    return f"/#/experiments/{exp.experiment_id}?workflowType=machine_learning" if exp else "/"
