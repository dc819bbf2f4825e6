"""A train stage killed (SIGKILL) mid-epoch resumes from its last completed epoch on the next
``dvc repro``: same MLflow run, each epoch logged once, the uninterrupted run's exact metrics."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from helpers.projects import env, new_project, sh, stages_run
from mlflow.tracking import MlflowClient

from pipeline.core import deps
from pipeline.data.synthetic import generate_from_params
from pipeline.stages import split, train
from pipeline.tracking.train_log import log_missing_epochs
from pipeline.training import resume
from pipeline.training.resume import (
    RESUME_DIR,
    RESUME_FILE,
    TAG_RESUMED,
    epoch_checkpoint,
)

VARIANT = "last_block-lr1e-4"
STAGE = f"train@{VARIANT}"
CONFIG = {"data.synthetic.images": 100, "train.epochs": 3,
          "train.variants": {VARIANT: {"strategy": "last_block", "lr": 0.0001}}}
PAUSE = Path(__file__).parent / "helpers" / "pause_after_epoch"  # its sitecustomize.py


def read_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def kill_after_first_epoch(root, tmp_path) -> dict:
    """Start the stage (forced); it pauses once epoch 1 is saved and logged (PAUSE's
    sitecustomize); then SIGKILL dvc and its children. No timing window: the stage waits."""
    state_file = root / "models" / VARIANT / RESUME_DIR / RESUME_FILE
    marker = tmp_path / "paused-after-epoch-1"
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", STAGE], cwd=root, start_new_session=True,
                            env=env(PYTHONPATH=str(PAUSE), PAUSE_AFTER_EPOCH="1", PAUSE_MARKER=str(marker)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a generous bound on a hang, not a measured window
        while not marker.exists():
            assert proc.poll() is None, f"the stage exited ({proc.returncode}) before pausing after epoch 1"
            assert time.monotonic() < deadline, "the stage did not reach the end of epoch 1 in 600 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return read_state(state_file)


@pytest.mark.slow
def test_killed_stage_resumes_and_matches_an_uninterrupted_run(tmp_path):
    """The real thing, with the default frozen-prefix reuse: ``dvc repro`` of the stage, SIGKILL
    after epoch 1, ``dvc repro`` again. (The plain loop: the in-process test below.)"""
    reuse_frozen = True
    root = new_project(tmp_path / "project", {**CONFIG, "train.reuse_frozen": reuse_frozen})
    sh(["dvc", "repro", STAGE], root)  # the uninterrupted reference
    metrics_file = root / "metrics" / "train" / f"{VARIANT}.json"
    history_file = root / "metrics" / "history" / f"{VARIANT}.csv"
    reference = metrics_file.read_text(), history_file.read_text()
    work = root / "models" / VARIANT / RESUME_DIR
    assert not work.exists(), "a finished stage leaves no resume state"

    state = kill_after_first_epoch(root, tmp_path)
    assert state["epoch"] == 1 and work.is_dir()
    killed_run = state["run_id"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert client.get_run(killed_run).info.status == "RUNNING"  # killed, not ended
    assert [m.step for m in client.get_metric_history(killed_run, "val_acc")] == [1]  # the epoch logged

    out = sh(["dvc", "repro", STAGE], root).stdout
    assert stages_run(out) == [STAGE]
    assert f"resuming MLflow run {killed_run} after epoch 1 of 3" in out
    assert (metrics_file.read_text(), history_file.read_text()) == reference
    assert json.loads((root / "runs" / f"{VARIANT}.json").read_text())["run_id"] == killed_run
    assert not work.exists()

    run = client.get_run(killed_run)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_RESUMED] == "1"
    assert run.data.params["reuse_frozen"] == str(reuse_frozen)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(killed_run, key)] == [1, 2, 3], key
    assert {a.path for a in client.list_artifacts(killed_run, "checkpoints")} == \
        {f"checkpoints/epoch_00{e}.pt" for e in (1, 2, 3)}


class Killed(Exception):
    """Stands for a SIGKILL in the middle of epoch 2 (in-process: the resume state of epoch 1 stays)."""


def test_the_plain_loop_killed_after_epoch_1_resumes_to_the_uninterrupted_runs_numbers(make_params, monkeypatch,
                                                                                       capsys):
    """``train.reuse_frozen: false`` (images through the whole network each epoch), in-process:
    the run dies right after saving epoch 1's resume state; the next run resumes it and ends with
    the uninterrupted run's metrics and history, byte for byte. (SIGKILL through ``dvc repro``,
    with the default reuse: test_killed_stage_resumes_and_matches_an_uninterrupted_run.)"""
    params = make_params({**CONFIG, "data.synthetic.images": 60, "train.reuse_frozen": False})
    generate_from_params(params)
    split.split(params)
    outputs = [params.path("train.metrics_dir") / f"{VARIANT}.json", params.path("train.history_dir") / f"{VARIANT}.csv"]
    reference = train.train(params, VARIANT)
    expected = [p.read_bytes() for p in outputs]
    real_save = resume.save

    def save_then_die(work, state):
        real_save(work, state)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(resume, "save", save_then_die)
        with pytest.raises(Killed):
            train.train(params, VARIANT)
    killed = read_state(params.path("train.models_dir") / VARIANT / RESUME_DIR / RESUME_FILE)
    assert killed["epoch"] == 1 and killed["run_id"] != reference["run_id"]
    capsys.readouterr()
    resumed = train.train(params, VARIANT)
    assert f"resuming MLflow run {killed['run_id']} after epoch 1 of 3" in capsys.readouterr().out
    assert resumed["run_id"] == killed["run_id"]
    assert [p.read_bytes() for p in outputs] == expected
    assert [m.step for m in MlflowClient().get_metric_history(killed["run_id"], "val_acc")] == [1, 2, 3]


def test_a_resume_state_made_with_other_settings_data_or_code_is_ignored(make_params, tmp_path, monkeypatch,
                                                                        capsys):
    """A run dies in epoch 2 and leaves epoch 1's resume state. The next run resumes it only if
    the lr, the split's data and the code are as they were; else it says so and starts over: a
    new MLflow run from epoch 1. (Each next run is stopped at its first save: where it started is
    all this checks; test_killed_stage_resumes_... runs a resume to the end.)"""
    variant = "head_only-lr1e-3"
    base = {"train.epochs": 2, "train.variants": {variant: {"strategy": "head_only", "lr": 0.001}}}
    params = make_params(base)
    generate_from_params(params)
    split.split(params)
    real_save = resume.save
    saved = []

    def save_then_die(work, state):  # a SIGKILL right after the save, in-process
        if state["epoch"] == 2 or saved:
            raise Killed
        saved.append(state)
        real_save(work, state)

    monkeypatch.setattr(resume, "save", save_then_die)
    with pytest.raises(Killed):
        train.train(params, variant)
    work = params.path("train.models_dir") / variant / RESUME_DIR
    killed = read_state(work / RESUME_FILE)
    assert killed["epoch"] == 1
    backup = shutil.copytree(work, tmp_path / "resume-backup")
    ignored = f"{work / RESUME_FILE}: made with other settings, data or code; training from scratch"
    train_csv = params.path("split.dir") / "train.csv"
    original_csv = train_csv.read_bytes()

    for change in ("nothing", "lr", "data", "code"):
        shutil.rmtree(work)
        shutil.copytree(backup, work)
        capsys.readouterr()
        saved.clear()
        with monkeypatch.context() as patch:
            run_params = params
            if change == "lr":
                run_params = make_params({**base, "train.variants": {variant: {"strategy": "head_only", "lr": 0.002}}})
            elif change == "data":  # one training image fewer
                train_csv.write_text("".join(train_csv.read_text().splitlines(keepends=True)[:-1]))
            elif change == "code":  # the same project with engine.py edited (the resume digest reads it)
                project = tmp_path / "project-code"
                shutil.copytree(deps.PACKAGE, project / deps.PACKAGE.name)
                shutil.copy(deps.DVC_YAML, project / "dvc.yaml")
                with open(project / deps.PACKAGE.name / "training" / "engine.py", "a") as f:
                    f.write("\n# edited\n")
                patch.setattr(deps, "PACKAGE", project / deps.PACKAGE.name)
                patch.setattr(deps, "DVC_YAML", project / "dvc.yaml")
            patch.setattr(resume, "save", lambda w, state: (saved.append(state), (_ for _ in ()).throw(Killed)))
            with pytest.raises(Killed):
                train.train(run_params, variant)
        out = capsys.readouterr().out
        (first,) = saved
        if change == "nothing":  # the control: the same state is resumed
            assert ignored not in out and f"resuming MLflow run {killed['run_id']} after epoch 1 of 2" in out, out
            assert (first["epoch"], first["run_id"]) == (2, killed["run_id"])
        else:
            assert ignored in out and "resuming" not in out, (change, out)
            assert first["epoch"] == 1 and first["run_id"] != killed["run_id"], change
            assert [m.step for m in MlflowClient().get_metric_history(first["run_id"], "val_acc")] == [], change
        train_csv.write_bytes(original_csv)
        make_params(base)


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
        log_missing_epochs(run.info.run_id, history, [1.0, 1.0], lambda epoch: epoch_checkpoint(work, epoch))
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")] == \
        pytest.approx([0.9, 0.45])
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")) == \
        ["checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"]
