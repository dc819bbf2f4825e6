"""Stage ``select``: pick the best variant from MLflow's tracked metrics, register it.

Usage::

    python -m pipeline select [--params params.yaml]

Reads the run id each ``train@<variant>`` stage wrote (``<train.runs_dir>/<variant>.json``),
asks MLflow (not the local JSON) for each run's ``best_val_acc`` and ``best_val_loss``, and
picks the highest ``best_val_acc``; ties go to the lower validation loss at the best epoch,
then to the variant name. Loads that run's (trainable-only) model, logs the whole network to the
same run as the model ``champion`` (:func:`pipeline.serving.save_network`, in
``select.champion_dtype``: self-contained, it takes raw images), registers it under
``base.mlflow.registered_model``, points alias ``select.alias`` (``champion``) at the new version,
writes ``select.output``, ``select.metrics`` (each variant's ``best_val_acc`` and the selected
variant: the training metrics DVC shows, rewritten from the variants of params.yaml, so a removed
variant leaves nothing behind) and ``select.curves`` (every variant's per-epoch metrics from MLflow,
for ``dvc plots``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.cli import PipelineError, one_line, run_main
from pipeline.config import Params, load_params
from pipeline.files import atomic_write, write_json


def choose(candidates: list[dict]) -> dict:
    """Highest ``best_val_acc``; then lowest ``best_val_loss``; then variant name."""
    if not candidates:
        raise PipelineError("select: no candidate runs")
    return min(candidates, key=lambda c: (-c["best_val_acc"], c["best_val_loss"], c["variant"]))


def candidates_from_mlflow(client: MlflowClient, run_ids: dict[str, str]) -> list[dict]:
    """One candidate per variant, with its metrics as MLflow has them."""
    out = []
    for variant, run_id in run_ids.items():
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise PipelineError(f"select: run {run_id} of variant '{variant}' is not in the MLflow store "
                                f"{mlflow.get_tracking_uri()}") from None
        metrics = run.data.metrics
        if run.info.status != "FINISHED" or "best_val_acc" not in metrics:
            raise PipelineError(f"select: run {run_id} of variant '{variant}' did not finish "
                                f"(status {run.info.status})")
        out.append({"variant": variant, "run_id": run_id, "best_val_acc": metrics["best_val_acc"],
                    "best_val_loss": metrics["best_val_loss"], "best_epoch": int(metrics["best_epoch"]),
                    "model_uri": run.data.tags.get(tracking.TAG_MODEL_URI)})
    return out


def train_run_ids(params: Params) -> dict[str, str]:
    ids = {}
    for variant in params.variants():
        path = params.run_file(variant)
        if not path.is_file():
            raise PipelineError(f"{path}: not found (run the train@{variant} stage first)")
        try:
            ids[variant] = str(json.loads(path.read_text())["run_id"])
        except (ValueError, OSError, KeyError, TypeError) as exc:
            raise PipelineError(f"{path}: no run id in it ({type(exc).__name__}: {exc}; "
                                f"run the train@{variant} stage again)") from None
    return ids


CURVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


def learning_curves(client: MlflowClient, run_ids: dict[str, str]) -> pd.DataFrame:
    """Per-epoch metrics of the compared runs, as MLflow has them: one row per variant and epoch."""
    rows: dict[tuple[str, int], dict] = {}
    for variant, run_id in run_ids.items():
        for key in CURVE_METRICS:
            for m in client.get_metric_history(run_id, key):
                rows.setdefault((variant, m.step), {"variant": variant, "epoch": m.step})[key] = m.value
    return pd.DataFrame(sorted(rows.values(), key=lambda r: (r["variant"], r["epoch"])),
                        columns=["variant", "epoch", *CURVE_METRICS])


def log_champion(params: Params, best: dict) -> str:
    """Log the whole network of ``best``'s model to its run as ``champion``; return its URI."""
    from pipeline import serving

    try:
        classifier = mlflow.pyfunc.load_model(best["model_uri"]).unwrap_python_model()
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"select: cannot load the model {best['model_uri']} of variant "
                            f"'{best['variant']}' ({one_line(exc.message)})") from None
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=best["run_id"]):
        network = Path(tmp) / "network.pt"
        serving.save_network(network, classifier.net, classifier.image_size,
                             str(params.get("select.champion_dtype")))
        info = mlflow.pyfunc.log_model(
            name="champion", python_model=str(here / "mlflow_model.py"), artifacts={"network": str(network)},
            code_paths=[str(here)], signature=serving.signature(),
            input_example=serving.example_input(classifier.image_size),
            pip_requirements=serving.model_requirements(params.root))
    return info.model_uri


def select(params: Params) -> dict:
    store = params.mlflow_config()
    tracking.setup(store)
    client = MlflowClient()
    run_ids = train_run_ids(params)
    candidates = candidates_from_mlflow(client, run_ids)
    curves = learning_curves(client, run_ids)
    best = choose(candidates)
    name = store.registered_model
    alias = params.get("select.alias")
    champion_uri = log_champion(params, best)
    version = mlflow.register_model(champion_uri, name,
                                    tags={"variant": best["variant"], "run_id": best["run_id"]}).version
    client.set_registered_model_alias(name, alias, version)
    result = {**best, "champion_uri": champion_uri, "registered_model": name, "version": int(version), "alias": alias,
              "candidates": sorted(candidates, key=lambda c: c["variant"])}
    write_json(params.path("select.metrics"), {"selected": best["variant"], "best_val_acc": {
        c["variant"]: c["best_val_acc"] for c in sorted(candidates, key=lambda c: c["variant"])}})
    atomic_write(params.path("select.curves"),
                 lambda t: curves.to_csv(t, index=False, float_format="%.6f"))
    write_json(params.path("select.output"), result)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    r = select(load_params(args.params))
    print(f"select: {r['variant']} (best_val_acc={r['best_val_acc']:.4f}, run {r['run_id']}) "
          f"-> {r['registered_model']} v{r['version']} @{r['alias']}")


if __name__ == "__main__":
    run_main(main)
