"""Queued experiments run in parallel (``dvc queue start -j 2``) land in the store the user
browses: the default SQLite store (relative path, resolved against the repo DVC copied). No run
is lost or duplicated. (A queued experiment against a tracking server: tests/test_postgres.py,
as the README's team set-up runs it.)"""
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from helpers.projects import new_project, wait_for_queue
from helpers.readme import as_a_user, readme_lines
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
VARIANT = "head_only-lr1e-3"
CONFIG = {"data.synthetic.images": 60, "train.epochs": 2,
          "train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}


def check_store(uri: str, lrs: tuple[float, ...]):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert sorted(float(r.data.params["lr"]) for r in runs) == sorted(lrs)  # each experiment once
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "val_acc"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == \
            {"checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"}
    evals = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    assert len(evals) == len(lrs)
    versions = client.search_model_versions("name = 'gender-vgg16-synthetic'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)
    return client, sorted(versions, key=lambda v: int(v.version))


def assert_the_better_one_is_champion(client, versions) -> None:
    """Two experiments selected at once: the first to take the lock became champion, the second
    was compared with it on the same validation images; the champion is the one with more right
    (a tie keeps the first)."""
    first, second = versions
    assert first.tags["decision"] == "first" and second.tags["decision"] in ("better", "not_better"), second.tags
    better = int(second.tags["challenger_right"]) > int(second.tags["champion_right"])
    expected = second if better else first
    assert client.get_model_version_by_alias("gender-vgg16-synthetic", "champion").version == expected.version
    assert client.get_model_version_by_alias("gender-vgg16-synthetic", "challenger").version == second.version


README_SECTIONS = ("### Parallel experiments and a tracking server", "## Comparing experiments with DVC")


def test_the_readmes_experiment_lines_run_as_written(tmp_path):
    """The README's queue block (two queued lr values, ``dvc queue start -j 2``), then its
    comparison block (two ``dvc exp show ...``, ``dvc exp run -S ...``), taken from README.md and
    run in a new shell with the venv activated as the README says. The queued runs land in the
    repo's SQLite store, each once; the comparison shows them."""
    queue, compare = (readme_lines(section) for section in README_SECTIONS)
    assert [line.split()[:3] for line in queue] == [["dvc", "exp", "run"]] * 2 + [["dvc", "queue", "start"]]
    assert {line.split()[:3][-1] for line in compare} == {"show", "run"}, compare
    lrs = tuple(float(re.search(r"lr=([0-9.e-]+)", line).group(1)) for line in queue[:2])
    root = new_project(tmp_path / "project", CONFIG)
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    for line in queue:
        as_a_user(root, line)
    wait_for_queue(root, experiments=len(lrs))
    assert_the_better_one_is_champion(*check_store(f"sqlite:///{root / 'mlflow.db'}", lrs))
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # nothing left in the copies
    (run_line,) = [line for line in compare if line.startswith("dvc exp run")]
    as_a_user(root, run_line)  # first, so that the table below holds its result too
    lr = float(re.search(r"lr=([0-9.e-]+)", run_line).group(1))
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["variants"][VARIANT]["lr"] == lr
    assert json.loads((root / "runs" / f"{VARIANT}.json").read_text())["run_id"]
    assert json.loads((root / "metrics" / "evaluate.json").read_text())["n_test"] > 0
    show_lines = [line for line in compare if line.startswith("dvc exp show")]
    assert len(show_lines) == 2, compare  # the scores, the lrs
    tables = [as_a_user(root, line).stdout for line in show_lines]
    for table in tables:  # the README says they fit a 200-column screen
        assert max(map(len, table.splitlines())) <= 200, table
    assert "best_val_acc" in tables[0] and "champion" in tables[0], tables[0]
    for value in (*lrs, lr):
        assert str(value) in tables[1], (value, tables[1])
