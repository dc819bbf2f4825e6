"""Champion and challenger (pipeline/tracking/promote.py) on a real MLflow registry (SQLite): what each
``select.promote`` rule decides, a champion of another split, and two selects at once."""
import threading
import time

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.cli import PipelineError
from pipeline.tracking import promote, runs

NAME, ALIAS = "m", "champion"
IMAGES = [f"{i:06d}.jpg" for i in range(1, 11)]


def right(n: int) -> pd.Series:
    """The first ``n`` of the 10 validation images right: nested, so more is strictly better."""
    return pd.Series([i < n for i in range(len(IMAGES))], index=IMAGES)


@pytest.fixture
def registry(tmp_path):
    """``version(digest)``: a new version of model m whose run logged a validation split of that
    digest (None: no dataset at all)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs.use_store(uri)
    mlflow.set_experiment("t")
    client = MlflowClient(uri)
    client.create_registered_model(NAME)

    def version(digest: str | None) -> str:
        with mlflow.start_run() as run:
            if digest is not None:
                frame = pd.DataFrame({"image_id": IMAGES, "label": [1] * len(IMAGES)})
                mlflow.log_input(mlflow.data.from_pandas(frame, name="val", digest=digest), context="validation")
        return str(client.create_model_version(NAME, source=str(tmp_path / "model"), run_id=run.info.run_id).version)

    return client, version, tmp_path / "select.lock"


def run(client, lock, challenger, scores, rule="better", digest="d1", alpha=0.05):
    return promote.promote(client, NAME, ALIAS, challenger, digest, rule, alpha, lambda v: scores[str(v)], lock)


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, ALIAS).version)


def test_the_first_version_becomes_champion_and_every_one_is_the_challenger(registry):
    client, version, lock = registry
    v1 = version("d1")
    d = run(client, lock, v1, {})
    assert (d["promoted"], d["decision"], d["champion_before"], d["champion"]) == (True, "first", None, 1)
    assert champion(client) == v1 == str(client.get_model_version_by_alias(NAME, promote.CHALLENGER).version)


@pytest.mark.parametrize("rule,champ,chall,promoted,decision", [
    ("better", 6, 7, True, "better"),
    ("better", 7, 7, False, "not_better"),  # a tie keeps the champion
    ("better", 8, 7, False, "not_better"),
    ("significant", 6, 7, False, "not_significant"),  # 1 image: p = 1
    ("significant", 0, 10, True, "better"),  # 10 of 10 disagreements: p = 0.002
    ("always", 8, 7, True, "always"),
])
def test_the_rule_decides_on_the_same_validation_images(registry, rule, champ, chall, promoted, decision):
    client, version, lock = registry
    v1 = version("d1")
    run(client, lock, v1, {})
    v2 = version("d1")
    d = run(client, lock, v2, {v1: right(champ), v2: right(chall)}, rule=rule)
    assert (d["promoted"], d["decision"]) == (promoted, decision)
    assert (d["champion_right"], d["challenger_right"], d["n"]) == (champ, chall, 10)
    assert d["only_challenger"] == max(chall - champ, 0) and d["only_champion"] == max(champ - chall, 0)
    assert champion(client) == (v2 if promoted else v1)
    assert str(client.get_model_version_by_alias(NAME, promote.CHALLENGER).version) == v2
    assert d["champion"] == int(champion(client))
    assert promote.explain(d, rule, 0.05).startswith(f"v{v2} promoted" if promoted else f"champion v{v1} kept")


@pytest.mark.parametrize("rule", ["better", "always"])
def test_a_champion_of_another_split_is_not_comparable(registry, rule):
    client, version, lock = registry
    v1 = version("other-seed")
    run(client, lock, v1, {}, digest="other-seed")
    v2 = version("d1")
    scored = []
    d = promote.promote(client, NAME, ALIAS, v2, "d1", rule, 0.05, lambda v: scored.append(v) or right(10), lock)
    assert scored == []  # neither model is scored: the numbers would compare different images
    assert d["champion_digest"] == "other-seed" and d["digest"] == "d1"
    if rule == "always":
        assert (d["promoted"], d["decision"], champion(client)) == (True, "always", v2)
    else:
        assert (d["promoted"], d["decision"], champion(client)) == (False, "not_comparable", v1)
        assert "validated on another split" in promote.explain(d, rule, 0.05)


@pytest.mark.parametrize("first", ["worse", "better"])
def test_two_selects_at_once_end_with_the_better_one_as_champion(registry, first):
    """v1 is a weak champion; v2 (7 right) and v3 (9 right) are both better than it and select at
    the same moment. Whichever reads the champion first holds the lock while it scores, so the
    other compares with the new champion, not with v1: v3 ends as champion in either order."""
    client, version, lock = registry
    v1 = version("d1")
    run(client, lock, v1, {})
    v2, v3 = version("d1"), version("d1")
    scores = {v1: right(5), v2: right(7), v3: right(9)}
    order = [v2, v3] if first == "worse" else [v3, v2]
    started = threading.Event()

    def slow(v):
        started.set()
        time.sleep(0.5)  # the other select starts meanwhile
        return scores[str(v)]

    results = {}
    threads = [threading.Thread(target=lambda: results.setdefault(order[0], promote.promote(
                   client, NAME, ALIAS, order[0], "d1", "better", 0.05, slow, lock))),
               threading.Thread(target=lambda: results.setdefault(order[1], run(client, lock, order[1], scores)))]
    threads[0].start()
    started.wait(10)
    threads[1].start()
    for t in threads:
        t.join(30)
    assert champion(client) == v3, results
    assert results[order[1]]["champion_before"] == int(order[0])  # it waited for the first one


def test_a_champion_that_cannot_be_loaded_is_replaced(registry):
    client, version, lock = registry
    v1 = version("d1")
    run(client, lock, v1, {})
    v2 = version("d1")

    def score(v):
        if str(v) == v1:
            raise PipelineError(f"models:/m/{v1} cannot be loaded: artifacts gone")
        return right(3)

    d = promote.promote(client, NAME, ALIAS, v2, "d1", "better", 0.05, score, lock)
    assert (d["promoted"], d["decision"], champion(client)) == (True, "unloadable", v2)
    assert "cannot be loaded (models:/m/1 cannot be loaded: artifacts gone)" in promote.explain(d, "better", 0.05)
