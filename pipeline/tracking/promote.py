"""Champion and challenger: a repro's model replaces the registry's champion only when it does
better on the same validation images.

``select`` registers each repro's pick as a new version with alias ``challenger``; then
:func:`promote`, under one lock, reads the current ``champion``, checks that it was validated on
this repro's validation split (the digest train logged with the split as an MLflow dataset:
another seed, ``data.limit``, data set or ``split.group_by`` makes another split), scores both
registered models (as users get them: the same storage dtype, through their pyfunc) on those
images, and applies ``select.promote``:

* ``better`` (the default): the challenger gets more validation images right; a tie keeps the
  champion;
* ``significant``: that, and the exact McNemar p-value of the images where they disagree is
  below ``select.alpha``;
* ``always``: the challenger becomes champion (a champion on another split included).

A champion on another split is not comparable: it stays, and the decision says why; one that
cannot be loaded any more (its artifacts gone) cannot serve either, and is replaced. The lock is a
file next to a SQLite store (or in the repo's ``.dvc/tmp`` for a server), so experiments that
select at once on one machine (``dvc queue start -j 2``) end with the better one as champion in
either order; against a server shared by several machines the alias is read again just before it
is set, and the comparison redone when another select moved it in the meantime.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd

from pipeline.core.cli import PipelineError
from pipeline.evaluation.compare import aligned, mcnemar

CHALLENGER = "challenger"  # the alias of each repro's pick
ATTEMPTS = 3  # comparisons redone when another select moved the champion meanwhile


@contextlib.contextmanager
def lock(path: Path):
    """An exclusive lock on ``path`` (created if missing) for the read-compare-promote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def lock_path(uri: str, shared_root: Path) -> Path:
    from pipeline.core.config import sqlite_path

    db = sqlite_path(uri)
    return Path(f"{db}-select.lock") if db is not None else shared_root / ".dvc" / "tmp" / "select.lock"


def validation_digest(client, run_id: str) -> str | None:
    """The digest of the validation split a training run logged (None: it logged none)."""
    for dataset_input in client.get_run(run_id).inputs.dataset_inputs:
        if any(tag.key == "mlflow.data.context" and tag.value == "validation" for tag in dataset_input.tags):
            return dataset_input.dataset.digest
    return None


def current_champion(client, name: str, alias: str):
    """The model version ``alias`` points at, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def decide(rule: str, alpha: float, champion_right, challenger_right) -> dict:
    """The decision for two models' per-image correctness on the same validation images."""
    test = mcnemar(challenger_right, champion_right)  # only_a: the challenger alone is right
    n = len(champion_right)
    out = {"n": n, "champion_right": int(sum(champion_right)), "challenger_right": int(sum(challenger_right)),
           "only_champion": test["only_b"], "only_challenger": test["only_a"], "p_value": test["p_value"]}
    better = test["only_a"] > test["only_b"]
    if rule == "always":
        return {**out, "promoted": True, "decision": "always"}
    if not better:
        return {**out, "promoted": False, "decision": "not_better"}
    if rule == "significant" and test["p_value"] >= alpha:
        return {**out, "promoted": False, "decision": "not_significant"}
    return {**out, "promoted": True, "decision": "better"}


def explain(d: dict, rule: str, alpha: float) -> str:
    """The decision in words, one line."""
    new, old = f"v{d['challenger']}", f"v{d['champion_before']}"
    if d["decision"] == "first":
        return f"{new} is the first champion"
    if d["decision"] == "not_comparable":
        return (f"champion {old} kept: it was validated on another split (digest {d['champion_digest']}, this "
                f"repro's {d['digest']}: another seed, data.limit, data set or split.group_by), so the two "
                "cannot be compared (select.promote: always would replace it)")
    if d["decision"] == "unloadable":
        return f"{new} replaces {old}, which cannot be loaded ({d['why']})"
    if "n" not in d:
        return f"{new} replaces {old} (select.promote: always, the splits differ)"
    score = (f"{new} gets {d['challenger_right']} of {d['n']} validation images right, {old} "
             f"{d['champion_right']}; they disagree on {d['only_challenger']} + {d['only_champion']} images "
             f"(exact McNemar p = {d['p_value']:.3g})")
    verdict = {"better": f"{new} promoted", "always": f"{new} promoted (select.promote: always)",
               "not_better": f"champion {old} kept",
               "not_significant": f"champion {old} kept (not significant at select.alpha {alpha:g})"}
    return f"{verdict[d['decision']]}: {score}"


def promote(client, name: str, alias: str, challenger: str, digest: str, rule: str, alpha: float,
            score: Callable[[str], pd.Series], lock_file: Path) -> dict:
    """Compare ``challenger`` (a version of ``name``) with the champion and move ``alias`` if the
    rule says so; ``score(version)`` is that version's per-image correctness on this repro's
    validation split. Returns the decision (see :func:`decide`, plus ``champion_before``,
    ``champion``, ``challenger``, ``decision`` and, once compared, both digests)."""
    client.set_registered_model_alias(name, CHALLENGER, challenger)
    with lock(lock_file):
        mine = None
        for _ in range(ATTEMPTS):
            before = current_champion(client, name, alias)
            d = {"challenger": int(challenger), "champion_before": int(before.version) if before else None,
                 "digest": digest}
            if before is None:
                d.update(promoted=True, decision="first")
            else:
                d["champion_digest"] = validation_digest(client, before.run_id)
                if d["champion_digest"] != digest:
                    d.update(promoted=rule == "always", decision="always" if rule == "always" else "not_comparable")
                else:
                    mine = score(challenger) if mine is None else mine
                    try:
                        theirs = score(before.version)
                    except PipelineError as exc:  # its artifacts gone: it cannot serve either
                        d.update(promoted=True, decision="unloadable", why=str(exc))
                    else:
                        d.update(decide(rule, alpha, *aligned(theirs, mine, f"champion v{before.version}")))
            again = current_champion(client, name, alias)  # another machine's select since?
            if (again.version if again else None) == (before.version if before else None):
                break
        if d["promoted"]:
            client.set_registered_model_alias(name, alias, challenger)
    d["champion"] = d["challenger"] if d["promoted"] else d["champion_before"]
    return d
