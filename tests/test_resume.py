"""A train stage killed (SIGKILL) mid-epoch resumes from its last completed epoch on the next
``dvc repro``: same MLflow run, each epoch logged once, the uninterrupted run's exact metrics."""
import json
import os
import signal
import subprocess
import time

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.train import RESUME_DIR, RESUME_FILE, TAG_RESUMED, log_missing_epochs
from projects import env, new_project, sh, stages_run

VARIANT = "last_block-lr1e-4"
STAGE = f"train@{VARIANT}"
CONFIG = {  # plain loop, so an epoch lasts long enough (about a second) to be killed in
    "data.synthetic.images": 150, "train.epochs": 3, "train.reuse_frozen": False,
    "train.variants": {VARIANT: {"strategy": "last_block", "lr": 0.0001}},
}


def read_state(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - being replaced right now
        return None


def kill_after_first_epoch(root) -> dict:
    """Start the stage (forced), SIGKILL dvc and its children once epoch 1 is saved."""
    state_file = root / "models" / VARIANT / RESUME_DIR / RESUME_FILE
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", STAGE], cwd=root, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = read_state(state_file) if state_file.is_file() else None
            if state is not None and state["epoch"] >= 1:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return state
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the stage finished or timed out before a resume state appeared")


@pytest.mark.slow
def test_killed_stage_resumes_and_matches_an_uninterrupted_run(tmp_path):
    root = new_project(tmp_path / "project", CONFIG)
    sh(["dvc", "repro", STAGE], root)  # the uninterrupted reference
    metrics_file = root / "metrics" / "train" / f"{VARIANT}.json"
    history_file = root / "metrics" / "history" / f"{VARIANT}.csv"
    reference = metrics_file.read_text(), history_file.read_text()
    work = root / "models" / VARIANT / RESUME_DIR
    assert not work.exists(), "a finished stage leaves no resume state"

    state = kill_after_first_epoch(root)
    assert 1 <= state["epoch"] < 3 and work.is_dir()
    killed_run = state["run_id"]

    out = sh(["dvc", "repro", STAGE], root).stdout
    assert stages_run(out) == [STAGE]
    assert f"resuming MLflow run {killed_run} after epoch {state['epoch']} of 3" in out
    assert (metrics_file.read_text(), history_file.read_text()) == reference
    assert json.loads((root / "models" / VARIANT / "run.json").read_text())["run_id"] == killed_run
    assert not work.exists()

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(killed_run)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_RESUMED] == str(state["epoch"])
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(killed_run, key)] == [1, 2, 3], key
    assert {a.path for a in client.list_artifacts(killed_run, "checkpoints")} == \
        {f"checkpoints/epoch_00{e}.pt" for e in (1, 2, 3)}

    forced = sh(["dvc", "repro", "-f", "-s", STAGE], root).stdout  # from scratch: nothing to resume
    assert "resuming" not in forced
    assert json.loads((root / "models" / VARIANT / "run.json").read_text())["run_id"] != killed_run
    assert (metrics_file.read_text(), history_file.read_text()) == reference


def test_resume_logs_only_the_epochs_mlflow_lacks(tmp_path):
    """Killed between saving the state and logging: the missing epoch is logged, none twice."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("resume")
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": 0.9 / e, "val_acc": 0.6}
               for e in (1, 2)]
    work = tmp_path / "work"
    work.mkdir()
    for e in (1, 2):
        torch.save({"epoch": e}, work / f"epoch_00{e}.pt")
    with mlflow.start_run() as run:
        mlflow.log_metrics({k: v for k, v in history[0].items() if k != "epoch"}, step=1)
        mlflow.log_artifact(str(work / "epoch_001.pt"), "checkpoints")
        log_missing_epochs(run.info.run_id, history, [1.0, 1.0], work)
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")] == \
        pytest.approx([0.9, 0.45])
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")) == \
        ["checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"]
