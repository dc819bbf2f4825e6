"""Queued experiments run in parallel (``dvc queue start -j 2``) land in the store the user
browses: the default SQLite store (relative path, resolved against the repo DVC copied) and a
real ``mlflow server`` on 127.0.0.1. No run is lost or duplicated."""
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from projects import env, free_port, new_project, sh, stop_group

pytestmark = pytest.mark.slow
VARIANT = "head_only-lr1e-3"
CONFIG = {"data.synthetic.images": 60, "train.epochs": 2,
          "train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}
LRS = (0.002, 0.003)


def run_queue(root: Path, **extra_env) -> None:
    for lr in LRS:
        sh(["dvc", "exp", "run", "--queue", "-S", f"train.variants.{VARIANT}.lr={lr}"], root, **extra_env)
    sh(["dvc", "queue", "start", "-j", "2"], root, **extra_env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], root, **extra_env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    sh(["dvc", "queue", "stop", "--kill"], root, check=False, **extra_env)
    assert status.count("Success") == len(LRS), status


def check_store(uri: str) -> None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert sorted(float(r.data.params["lr"]) for r in runs) == list(LRS)  # each experiment once
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "val_acc"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == \
            {"checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"}
    evals = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    assert len(evals) == len(LRS)
    versions = client.search_model_versions("name = 'celeba-gender-vgg16'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)


def test_queued_experiments_land_in_the_repos_sqlite_store(tmp_path):
    root = new_project(tmp_path / "project", CONFIG)
    run_queue(root)
    check_store(f"sqlite:///{root / 'mlflow.db'}")
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # nothing left in the copies


def test_queued_experiments_land_in_a_tracking_server(tmp_path):
    root = new_project(tmp_path / "project", CONFIG)
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        env=env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(1)
        run_queue(root, MLFLOW_TRACKING_URI=uri)
        check_store(uri)
        assert not (root / "mlflow.db").exists()  # nothing went to the default store
    finally:
        stop_group(server)


def test_unreachable_server_fails_before_any_work(tmp_path):
    root = new_project(tmp_path / "project", CONFIG)
    sh([sys.executable, "-m", "pipeline.synthetic"], root)
    sh([sys.executable, "-m", "pipeline.split"], root)
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = sh([sys.executable, "-m", "pipeline.train", "--variant", VARIANT], root, check=False,
              MLFLOW_TRACKING_URI=uri)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow tracking server {uri} is unreachable"), proc.stderr
    assert not (root / "data" / "features").exists() and not (root / "models").exists()
    print(f"unreachable server: exit after {elapsed:.1f} s")  # a figure for the record, not a test
    assert json.loads((root / "data" / "split" / "split.json").read_text())["train"]["images"] > 0
