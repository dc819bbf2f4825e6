"""Predict the gender of face images with the champion model (or a model you name).

Usage::

    .venv/bin/python -m pipeline predict face.jpg more/faces/       # models:/gender-vgg16-<data.source>@champion
    .venv/bin/python -m pipeline predict --json faces/ > predictions.jsonl
    .venv/bin/python -m pipeline predict --model models/last_block-lr1e-4/best.pt faces/
    .venv/bin/python -m pipeline predict --params other/params.yaml --batch-size 16 --device cuda faces/

Output, one line per image, in the order given (a folder's images sorted by name)::

    faces/000001.jpg<TAB>female<TAB>0.9731
    faces/000002.jpg<TAB>male<TAB>0.8812

The label is ``male`` when P(male) > 0.5, else ``female``; the number is the probability of
**that label** (P(male) for ``male``, 1 - P(male) for ``female``, so never below 0.5), with 4
decimals. ``--json`` prints JSON Lines instead: one object per image and line,
``{"path": ..., "label": ..., "probability": P(label), "p_male": P(male)}``, full precision.

Model: by default ``models:/<registered model>@<select.alias>`` from the MLflow store of
``--params``, the registered model of the data set it names (``base.mlflow.registered_model``;
``auto``: ``gender-vgg16-<data.source>``). Before the first prediction it says on stderr, once,
which model answers: ``predict: answering with gender-vgg16-celeba v1 @champion (data set
celeba; validation accuracy 0.9533 95 % CI [0.907, 0.977] on 150 images)``. The store is
``base.mlflow.tracking_uri`` (``MLFLOW_TRACKING_URI`` overrides it; a server's login comes from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``). That
champion is self-contained: no ``model.weights`` file or torch cache is needed.
``--model`` takes instead an MLflow model folder (the one that holds ``MLmodel``), a
trainable-only checkpoint of this pipeline (``models/<variant>/best.pt``; read with
``torch.load(weights_only=True)``) or a ``models:/`` / ``runs:/`` URI of that store.

Inputs: image files (any format Pillow reads) and folders, which stand for the ``.jpg``,
``.jpeg`` and ``.png`` files directly in them (any case; subfolders are not searched). The
model takes each file's bytes and preprocesses them itself (:mod:`pipeline.tracking.served_model`: the
evaluation transforms at the model's image size, as ``mlflow models serve`` does). An input
that is missing or not a readable image gets one line ``error: <path>: <reason>`` on stderr; the
other images are still predicted, and the exit status is then 1 (0 when every image was
predicted).

The model runs on the CPU unless ``--device`` says otherwise (``cuda``, ``cuda:N``, ``auto``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.core.cli import PipelineError, one_line
from pipeline.core.config import load_params
from pipeline.core.schema import DEVICES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MODEL_URI_SCHEMES = ("models:/", "runs:/")


# --- inputs ------------------------------------------------------------------------------

def expand(inputs: list[str]) -> list[tuple[str, str | None]]:
    """``(path, problem)`` per image to predict, in order: a folder gives its image files sorted
    by name; ``problem`` is ``None`` or why the input cannot be used (missing, empty folder ...)."""
    out: list[tuple[str, str | None]] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            try:
                files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                               key=lambda p: p.name)
            except OSError as exc:
                out.append((arg, f"cannot list folder ({exc.strerror})"))
                continue
            if not files:
                out.append((arg, f"no {', '.join(IMAGE_SUFFIXES)} files in this folder"))
            out.extend((str(p), None) for p in files)
        elif path.exists() or path.is_symlink():
            out.append((arg, None))  # a file: image_problem() tells later whether it is an image
        else:
            out.append((arg, "not found"))
    return out


def read_image(path: str | Path) -> bytes:
    """The bytes of one image file; :class:`PipelineError` with the reason it is not usable."""
    from pipeline.data.images import image_problem

    problem = image_problem(Path(path))  # missing, empty, not an image, cut short ...
    if problem is not None:
        raise PipelineError(problem)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read ({exc.strerror})") from None


# --- the model ---------------------------------------------------------------------------

def _store_missing(uri: str) -> bool:
    """A local SQLite store whose file does not exist (MLflow would create an empty one)."""
    from pipeline.core.config import sqlite_path

    db = sqlite_path(uri)
    return db is not None and not db.exists()


def _unwrap(uri: str, what: str):
    """Load a pyfunc model and return the :class:`pipeline.tracking.served_model.GenderClassifier` inside."""
    import mlflow

    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
        classifier = pyfunc.unwrap_python_model()
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"{what}: cannot load the model ({one_line(exc.message)})") from None
    if not callable(getattr(classifier, "preprocess", None)) or not hasattr(classifier, "net"):
        raise PipelineError(f"{what}: not a model of this pipeline ({type(classifier).__name__})")
    return classifier


def registry_classifier(params_path: str, uri: str | None = None):
    """The model ``models:/<registered_model>@<alias>`` (or ``uri``) of the params' MLflow store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.core.store import check_reachable
    from pipeline.tracking import runs

    params = load_params(params_path)
    config = params.mlflow_config()
    store = config.uri
    check_reachable(store)  # a dead server or a refused login (MLFLOW_TRACKING_USERNAME/PASSWORD): one line
    name, alias = config.registered_model, params.get("select.alias")
    hint = "(run `dvc repro` to train, select and register one)"
    if _store_missing(store):
        what = f"no model {name}@{alias}" if uri is None else uri
        raise PipelineError(f"{what}: the MLflow store {store} does not exist {hint}")
    if uri is None:
        client = MlflowClient(store)
        try:
            client.get_model_version_by_alias(name, alias)
        except mlflow.exceptions.MlflowException as exc:
            try:  # which is missing: the registered model or its alias?
                aliases = client.get_registered_model(name).aliases or {}
                why = f"registered model '{name}' has no alias '{alias}'"
            except mlflow.exceptions.MlflowException as exc2:
                if exc2.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise PipelineError(f"MLflow store {store}: {one_line(exc2.message)}") from None
                aliases, why = {}, f"no registered model '{name}'"
            if alias in aliases:  # neither: another problem of the store
                raise PipelineError(f"MLflow store {store}: {one_line(exc.message)}") from None
            raise PipelineError(f"no model {name}@{alias} in the MLflow store {store}: {why} {hint}") from None
        uri = f"models:/{name}@{alias}"
    runs.use_store(store)
    return _unwrap(uri, uri), describe_version(MlflowClient(store), uri)


def describe_version(client, uri: str) -> str:
    """What a ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` URI answers with, in words:
    name, version, data set and validation accuracy (the tags select put on the version)."""
    import mlflow

    ref = uri[len("models:/"):] if uri.startswith("models:/") else ""
    name, at, key = ref.partition("@")  # models:/<name>@<alias>
    if not at:
        name, _, key = ref.rpartition("/")  # models:/<name>/<version>
    try:
        version = client.get_model_version_by_alias(name, key) if at else client.get_model_version(name, key)
    except (ValueError, mlflow.exceptions.MlflowException):
        return uri
    tags, alias = version.tags, f" @{key}" if at else ""
    score = (f"; validation accuracy {tags['val_acc']} 95 % CI {tags['val_acc_ci95']} on {tags['n_val']} images"
             if {"val_acc", "val_acc_ci95", "n_val"} <= set(tags) else "")
    return f"{name} v{version.version}{alias} (data set {tags.get('data_source', 'unknown')}{score})"


def load_classifier(model: str | None, params_path: str = "params.yaml"):
    """``(classifier, description)``: the registry's champion, or ``--model``."""
    if model is None or model.startswith(MODEL_URI_SCHEMES):
        return registry_classifier(params_path, model)
    path = Path(model)
    if path.is_file() and path.name == "MLmodel":
        path = path.parent
    if path.is_dir():
        if not (path / "MLmodel").is_file():
            raise PipelineError(f"{model}: not an MLflow model folder (no MLmodel file in it)")
        return _unwrap(str(path), model), model
    if path.is_file():
        from pipeline.tracking.served_model import GenderClassifier

        return GenderClassifier.from_checkpoint(path), model
    raise PipelineError(f"{model}: model not found (give an MLflow model folder, a checkpoint such as "
                        "models/<variant>/best.pt, or a models:/ URI)")


# --- prediction --------------------------------------------------------------------------

def predict_batches(classifier, items, batch_size: int, on_error):
    """Yield ``(path, P(male))`` for every usable image of ``items`` (``(path, problem)`` pairs,
    see :func:`expand`), ``batch_size`` images at a time; ``on_error(path, reason)`` for the rest.
    The model decodes and preprocesses each file's bytes (:meth:`GenderClassifier.preprocess`)."""
    import torch

    paths, tensors = [], []

    def flush():
        probs = classifier.predict_proba(torch.stack(tensors)).tolist()
        batch = list(zip(paths, probs))
        paths.clear()
        tensors.clear()
        return batch

    for path, problem in items:
        if problem is None:
            try:
                tensors.append(classifier.preprocess(read_image(path)))
                paths.append(path)
            except (PipelineError, ValueError) as exc:
                problem = str(exc)
        if problem is not None:
            on_error(path, problem)
        if len(tensors) >= batch_size:
            yield from flush()
    if tensors:
        yield from flush()


def label_of(p_male: float) -> tuple[str, float]:
    """``(label, P(label))``: male when P(male) > the decision threshold."""
    from pipeline.data.dataset import THRESHOLD

    return ("male", p_male) if p_male > THRESHOLD else ("female", 1.0 - p_male)


def format_line(path: str, p_male: float, as_json: bool) -> str:
    label, prob = label_of(p_male)
    if as_json:
        return json.dumps({"path": path, "label": label, "probability": prob, "p_male": p_male})
    return f"{path}\t{label}\t{prob:.4f}"


def predict(args) -> int:
    """Print the predictions; return the number of inputs that failed."""
    failed = 0

    def on_error(path: str, reason: str) -> None:
        nonlocal failed
        failed += 1
        print(f"error: {path}: {one_line(reason)}", file=sys.stderr, flush=True)

    items = expand(args.inputs)
    for path, problem in items:  # missing inputs first: no need to wait for the model
        if problem is not None:
            on_error(path, problem)
    todo = [(path, None) for path, problem in items if problem is None]
    if not todo:
        return failed
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    classifier, what = load_classifier(args.model, args.params)
    print(f"predict: answering with {what}", file=sys.stderr, flush=True)
    from pipeline.training.device import resolve_device

    classifier.net.to(resolve_device(args.device))
    for path, p_male in predict_batches(classifier, todo, args.batch_size, on_error):
        print(format_line(path, p_male, args.json), flush=True)
    return failed


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline predict", description=__doc__.splitlines()[0],
                                     epilog="Prints path<TAB>label<TAB>P(label); see the module docstring.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--params", default="params.yaml",
                        help="the project's params file: MLflow store, registered model, alias (default: %(default)s)")
    parser.add_argument("--model", help="an MLflow model folder, a checkpoint (models/<variant>/best.pt) "
                                        "or a models:/ URI, instead of the registry's champion")
    parser.add_argument("--json", action="store_true",
                        help="JSON Lines: one {path, label, probability, p_male} object per image")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = parser.parse_args(argv)
    if DEVICES.fullmatch(args.device) is None:
        parser.error(f"argument --device: expected cpu, cuda, cuda:N, mps or auto, got {args.device!r}")
    try:
        failed = predict(args)
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    if failed:
        sys.exit(1)
