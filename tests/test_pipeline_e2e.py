"""The real ``dvc repro`` on a shrunken config in a temporary copy of the project."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, write_params

pytestmark = pytest.mark.slow
PROJECT_FILES = ("pipeline", "dvc.yaml", "requirements.txt", ".gitignore")


def sh(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        src = REPO / name
        (shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, root / name))
    write_params(root, {"data.synthetic.images": 80, "train.epochs": 2})
    with pytest.MonkeyPatch.context() as mp:
        for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
            mp.setenv(var, "test")
        for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
            mp.setenv(var, "test@localhost")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TQDM_DISABLE", "1")
        sh("git init -q && dvc init -q && git add -A && git commit -qm init", root)
        proc = sh(["dvc", "repro"], root)
        yield root, proc.stdout


def test_repro_runs_every_stage_once(project):
    _, out = project
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    variants = list(params["train"]["variants"])
    assert len(variants) == 4
    assert stages_run(out) == ["split", *[f"train@{v}" for v in variants], "select", "evaluate"]


def test_mlflow_holds_four_runs_with_every_epoch_and_artifacts(project):
    root, _ = project
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert sorted(r.info.run_name for r in runs) == sorted(yaml.safe_load((root / "params.yaml").read_text())
                                                           ["train"]["variants"])
    for run in runs:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
        paths = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert paths == {"checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"}
        assert {a.path for a in client.list_artifacts(run.info.run_id, "confusion_matrix")} == \
            {"confusion_matrix/val.json", "confusion_matrix/val.png"}
        assert json.loads((root / "models" / run.info.run_name / "run.json").read_text())["run_id"] == run.info.run_id


def test_best_json_is_the_argmax_from_mlflow_and_registered(project):
    root, _ = project
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    expected = min(runs, key=lambda r: (-r.data.metrics["best_val_acc"], r.data.metrics["best_val_loss"],
                                        r.info.run_name))
    best = json.loads((root / "models" / "best.json").read_text())
    assert best["run_id"] == expected.info.run_id and best["variant"] == expected.info.run_name
    assert best["best_val_acc"] == expected.data.metrics["best_val_acc"]
    version = client.get_model_version_by_alias("celeba-gender-vgg16", "champion")
    assert int(version.version) == best["version"] and version.run_id == best["run_id"]


def test_evaluate_accuracy_matches_confusion_csv_and_mlflow(project):
    root, _ = project
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    cm = pd.read_csv(root / "metrics" / "confusion_matrix.csv")
    assert list(cm.columns) == ["actual", "predicted"] and len(cm) == metrics["n_test"]
    assert set(cm["actual"]) <= {"female", "male"}
    assert metrics["accuracy"] == pytest.approx((cm["actual"] == cm["predicted"]).mean())
    for cls in ("female", "male", "macro"):
        assert set(metrics[cls]) == {"precision", "recall", "f1"}
    assert (root / "metrics" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    (run,) = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    best = json.loads((root / "models" / "best.json").read_text())
    assert run.data.tags["mlflow.parentRunId"] == best["run_id"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"classification_report.json", "confusion_matrix"}


def test_exp_show_has_params_and_metrics(project):
    root, _ = project
    rows = json.loads(sh(["dvc", "exp", "show", "--json"], root).stdout)
    assert rows[0]["rev"] == "workspace"
    data = rows[0]["data"]
    params = data["params"]["params.yaml"]["data"]["train"]["variants"]
    assert params["last_block-lr1e-4"] == {"strategy": "last_block", "lr": 0.0001}
    metrics = data["metrics"]
    for v in params:
        assert "best_val_acc" in metrics[f"metrics/train/{v}.json"]["data"]
    assert "accuracy" in metrics["metrics/evaluate.json"]["data"]


def test_second_repro_changes_nothing_and_one_lr_edit_reruns_narrowly(project):
    root, _ = project
    assert stages_run(sh(["dvc", "repro"], root).stdout) == []
    params_file = root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["train"]["variants"]["head_only-lr1e-3"]["lr"] = 0.002
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stages_run(sh(["dvc", "repro"], root).stdout) == ["train@head_only-lr1e-3", "select", "evaluate"]


def test_code_only_change_retrains_and_moves_the_champion_to_the_new_runs(project):
    """Deterministic training reproduces the same metrics; select must still take the new runs."""
    root, _ = project
    before = json.loads((root / "models" / "best.json").read_text())
    metrics_before = (root / "metrics" / "evaluate.json").read_text()
    with open(root / "pipeline" / "serving.py", "a") as f:
        f.write("\n# a code change that leaves every number as it was\n")
    ran = stages_run(sh(["dvc", "repro"], root).stdout)
    assert sorted(ran[:4]) == sorted(f"train@{c['variant']}" for c in before["candidates"])
    assert ran[4:] == ["select", "evaluate"]
    after = json.loads((root / "models" / "best.json").read_text())
    assert after["variant"] == before["variant"] and after["best_val_acc"] == before["best_val_acc"]
    assert after["run_id"] != before["run_id"] and after["version"] == before["version"] + 1
    assert (root / "metrics" / "evaluate.json").read_text() == metrics_before
