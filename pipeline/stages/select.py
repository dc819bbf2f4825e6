"""Stage ``select``: pick the best variant from MLflow's tracked metrics, say how sure the pick is,
register it as the challenger, and promote it to champion only if it beats the champion.

Usage::

    python -m pipeline select [--params params.yaml]

Reads the run id each ``train@<variant>`` stage wrote (``<train.runs_dir>/<variant>.json``),
asks MLflow (not the local JSON) for each run's ``best_val_acc`` and ``best_val_loss``, and
picks the highest ``best_val_acc``; ties go to the lower validation loss at the best epoch,
then to the variant name. How sure: from each run's validation predictions
(``val_predictions.csv``), each candidate's accuracy with its 95 % Wilson interval and the exact
McNemar p-value of the pick against the runner-up (:mod:`pipeline.evaluation.compare`); at
``p >= select.alpha`` the log says the pick is within noise.

Then it logs the pick's whole network to its run as the model ``champion``
(:func:`pipeline.tracking.served_model.save_network`, in ``select.champion_dtype``: self-contained, it takes
raw images), registers it under ``base.mlflow.registered_model`` with alias ``challenger``, and
promotes it to ``select.alias`` (``champion``) by ``select.promote`` (:mod:`pipeline.tracking.promote`).
An MLflow run ``select`` (a child of the picked run) and the new version's tags hold the
comparison and the decision. Writes ``select.output`` (the picked run and the version evaluate
scores), ``select.metrics`` (what ``dvc exp show`` compares, rewritten from the variants of
params.yaml, so a removed variant leaves nothing behind) and ``select.curves`` (every variant's
per-epoch metrics from MLflow, for ``dvc plots``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.core.cli import PipelineError, one_line
from pipeline.core.config import Params, load_params
from pipeline.core.files import atomic_write, write_json
from pipeline.data.dataset import THRESHOLD, read_split
from pipeline.evaluation import compare
from pipeline.tracking import promote, runs


def rank(candidates: list[dict]) -> list[dict]:
    """Best first: highest ``best_val_acc``, then lowest ``best_val_loss``, then variant name."""
    if not candidates:
        raise PipelineError("select: no candidate runs")
    return sorted(candidates, key=lambda c: (-c["best_val_acc"], c["best_val_loss"], c["variant"]))


def choose(candidates: list[dict]) -> dict:
    return rank(candidates)[0]


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
                    "model_uri": run.data.tags.get(runs.TAG_MODEL_URI)})
    return out


def validation_correct(client: MlflowClient, candidate: dict) -> pd.Series:
    """Per validation image, whether the candidate's best epoch got it right (its run's
    ``val_predictions.csv``)."""
    try:
        text = mlflow.artifacts.load_text(f"runs:/{candidate['run_id']}/{runs.VAL_PREDICTIONS}")
    except mlflow.exceptions.MlflowException:
        raise PipelineError(f"select: run {candidate['run_id']} of variant '{candidate['variant']}' has no "
                            f"{runs.VAL_PREDICTIONS} (run its train@ stage again)") from None
    return compare.correct(pd.read_csv(io.StringIO(text), dtype={"image_id": str}), THRESHOLD)


def uncertainty(client: MlflowClient, ranked: list[dict]) -> dict:
    """Each candidate's validation accuracy with its Wilson interval (added to it), and the exact
    McNemar test of the pick against the runner-up (None with one candidate)."""
    right = {c["variant"]: validation_correct(client, c) for c in ranked}
    for c in ranked:
        r = right[c["variant"]]
        c["n_val"], c["val_right"] = len(r), int(r.sum())
        c["ci95"] = compare.wilson(c["val_right"], c["n_val"])
    if len(ranked) < 2:
        return {"runner_up": None}
    best, second = ranked[:2]
    test = compare.mcnemar(*compare.aligned(right[best["variant"]], right[second["variant"]], "select"))
    return {"runner_up": second["variant"], "only_selected": test["only_a"], "only_runner_up": test["only_b"],
            "p_value": test["p_value"]}


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
    from pipeline.tracking import served_model as serving

    try:
        classifier = mlflow.pyfunc.load_model(best["model_uri"]).unwrap_python_model()
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"select: cannot load the model {best['model_uri']} of variant "
                            f"'{best['variant']}' ({one_line(exc.message)})") from None
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=best["run_id"]):
        network = Path(tmp) / "network.pt"
        serving.save_network(network, classifier.net, classifier.image_size,
                             str(params.get("select.champion_dtype")))
        return serving.log("champion", {"network": network}, classifier.image_size, params.root)


def scorer(params: Params, name: str, val: pd.DataFrame):
    """``score(version)``: a registered version's per-image correctness on the validation split
    (:func:`pipeline.tracking.served_model.score_split`; the images checked once, before the
    first model runs)."""
    from pipeline.tracking import served_model as serving

    checked: list = []

    def score(version) -> pd.Series:
        probs = serving.score_split(params, f"models:/{name}/{version}", val, verify=not checked)
        checked.append(version)
        return compare.correct(pd.DataFrame({"image_id": val["image_id"], "label": val["label"], "p_male": probs}),
                               THRESHOLD)

    return score


def log_select_run(root: Path, best: dict, ranked: list[dict], pick: dict, decision: dict, rule: str,
                   alpha: float) -> None:
    """The comparison and the decision as an MLflow run ``select``, a child of the picked run."""
    with mlflow.start_run(run_name=runs.run_name("select")):
        mlflow.set_tags({**runs.run_tags("select", root), runs.TAG_VARIANT: best["variant"],
                         "mlflow.parentRunId": best["run_id"], "decision": decision["decision"]})
        mlflow.log_params({"promote": rule, "alpha": alpha, "selected": best["variant"],
                           "runner_up": pick["runner_up"], "challenger_version": decision["challenger"],
                           "champion_before": decision["champion_before"]})
        metrics = {"promoted": float(decision["promoted"]), "champion_version": decision["champion"]}
        for c in ranked:
            metrics.update({f"val_acc_{c['variant']}": c["best_val_acc"], f"val_acc_low_{c['variant']}": c["ci95"][0],
                            f"val_acc_high_{c['variant']}": c["ci95"][1]})
        if pick["runner_up"]:
            metrics.update(runner_up_p_value=pick["p_value"], only_selected=pick["only_selected"],
                           only_runner_up=pick["only_runner_up"])
        if "n" in decision:
            metrics.update({k: decision[k] for k in ("champion_right", "challenger_right", "only_champion",
                                                     "only_challenger")}, promotion_p_value=decision["p_value"],
                           champion_val_acc=decision["champion_right"] / decision["n"],
                           challenger_val_acc=decision["challenger_right"] / decision["n"])
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"candidates": [{k: c[k] for k in ("variant", "run_id", "best_val_acc", "ci95", "n_val")}
                                        for c in ranked], "pick": pick, "promotion": decision}, "selection.json")


def select_metrics(ranked: list[dict], pick: dict, decision: dict, split_method: str) -> dict:
    """``select.metrics``: what ``dvc exp show`` compares across experiments."""
    by_name = sorted(ranked, key=lambda c: c["variant"])
    out = {"selected": ranked[0]["variant"], "split_method": split_method,
           "best_val_acc": {c["variant"]: c["best_val_acc"] for c in by_name},
           "ci95": {c["variant"]: {"low": round(c["ci95"][0], 4), "high": round(c["ci95"][1], 4)} for c in by_name},
           "runner_up_p": pick.get("p_value"), "promoted": decision["promoted"], "decision": decision["decision"],
           "champion": decision["champion"], "challenger": decision["challenger"]}
    if "n" in decision:
        out["vs_champion"] = {"champion_acc": decision["champion_right"] / decision["n"],
                              "challenger_acc": decision["challenger_right"] / decision["n"],
                              "only_champion": decision["only_champion"],
                              "only_challenger": decision["only_challenger"], "p": decision["p_value"]}
    return out


def select(params: Params, log=print) -> dict:
    store = params.mlflow_config()
    runs.setup(store)
    client = MlflowClient()
    run_ids = train_run_ids(params)
    ranked = rank(candidates_from_mlflow(client, run_ids))
    best = ranked[0]
    pick = uncertainty(client, ranked)
    report_pick(ranked, pick, params.get("select.alpha"), log)
    curves = learning_curves(client, run_ids)
    name, alias = store.registered_model, params.get("select.alias")
    rule, alpha = params.get("select.promote"), params.get("select.alpha")
    champion_uri = log_champion(params, best)
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow's "Successfully registered" lines: ours follow
        version = mlflow.register_model(champion_uri, name,
                                        tags={"variant": best["variant"], "run_id": best["run_id"]}).version
    val = read_split(params.path("split.dir"), "val")
    decision = promote.promote(client, name, alias, version, runs.split_digest(val), rule, alpha,
                               scorer(params, name, val), promote.lock_path(store.uri, params.shared_root()))
    low, high = best["ci95"]
    for key, value in {"data_source": params.get("data.source"), "val_acc": f"{best['best_val_acc']:.4f}",
                       "val_acc_ci95": f"[{low:.3f}, {high:.3f}]", "n_val": best["n_val"],
                       "promoted": decision["promoted"], "decision": decision["decision"],
                       "champion_before": decision["champion_before"],
                       **{k: decision[k] for k in ("champion_right", "challenger_right", "only_champion",
                                                   "only_challenger", "p_value", "n") if k in decision}}.items():
        client.set_model_version_tag(name, version, key, str(value))
    explained = promote.explain(decision, rule, alpha)
    log(f"select: {name} v{version} @{promote.CHALLENGER}; {explained}")
    log_select_run(params.root, best, ranked, pick, decision, rule, alpha)
    result = {**best, "champion_uri": champion_uri, "registered_model": name, "version": int(version),
              "alias": alias, "champion": decision["champion"], "promoted": decision["promoted"],
              "candidates": sorted(ranked, key=lambda c: c["variant"]), "pick": pick, "decision": decision,
              "decision_text": explained}
    write_json(params.path("select.metrics"), select_metrics(ranked, pick, decision, params.get("split.method")))
    atomic_write(params.path("select.curves"), lambda t: curves.to_csv(t, index=False, float_format="%.6f"))
    write_json(params.path("select.output"), result)
    return result


def report_pick(ranked: list[dict], pick: dict, alpha: float, log) -> None:
    """Each candidate's validation accuracy and interval, then how sure the pick is, in words."""
    width = max(len(c["variant"]) for c in ranked)
    for c in ranked:
        log(f"select: {c['variant']:<{width}}  val_acc {c['best_val_acc']:.4f}  95 % CI "
            f"[{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]  ({c['val_right']} of {c['n_val']} images)")
    best = ranked[0]["variant"]
    if pick["runner_up"] is None:
        log(f"select: {best}, the only candidate")
        return
    p = pick["p_value"]
    verdict = (f"a real difference at select.alpha {alpha:g}" if p < alpha else
               f"within noise (p >= {alpha:g}): on these images the runner-up could as well be the better one")
    log(f"select: {best} over {pick['runner_up']}: right where the other is wrong on {pick['only_selected']} vs "
        f"{pick['only_runner_up']} images, exact McNemar p = {p:.3g}, {verdict}")


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    print(last_line(select(load_params(args.params))))


def last_line(r: dict) -> str:
    """What select ends with: the pick, its version, the champion, and when the pick did not
    become champion, the one setting that promotes it anyway."""
    anyway = "" if r["promoted"] else (f"; to make this pick @{r['alias']} anyway: dvc exp run -S select.promote=always "
                                       "(re-runs select and evaluate only)")
    return (f"select: {r['variant']} (best_val_acc={r['best_val_acc']:.4f}, run {r['run_id']}) "
            f"-> {r['registered_model']} v{r['version']}; @{r['alias']} is v{r['champion']}{anyway}")
