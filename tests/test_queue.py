"""Queued experiments run in parallel (``dvc queue start -j 2``) land in the store the user
browses: the default SQLite store (relative path, resolved against the repo DVC copied) and a
real ``mlflow server`` on 127.0.0.1. No run is lost or duplicated."""
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers.config import REPO
from helpers.projects import env, free_port, new_project, sh, stop_group

pytestmark = pytest.mark.slow
VARIANT = "head_only-lr1e-3"
CONFIG = {"data.synthetic.images": 60, "train.epochs": 2,
          "train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}
LRS = (0.002, 0.003)


def run_queue(root: Path, **extra_env) -> None:
    for lr in LRS:
        sh(["dvc", "exp", "run", "--queue", "-S", f"train.variants.{VARIANT}.lr={lr}"], root, **extra_env)
    sh(["dvc", "queue", "start", "-j", "2"], root, **extra_env)
    wait_for_queue(root, **extra_env)


def wait_for_queue(root: Path, **extra_env) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], root, **extra_env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    sh(["dvc", "queue", "stop", "--kill"], root, check=False, **extra_env)
    assert status.count("Success") == 2, status


def check_store(uri: str, lrs=LRS) -> None:
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
    versions = client.search_model_versions("name = 'celeba-gender-vgg16'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)


README_SECTIONS = ("### Parallel experiments and a tracking server", "## Comparing experiments with DVC")


def readme_lines(section: str) -> list[str]:
    """The ``dvc exp`` / ``dvc queue`` lines of the first bash block under ``section`` in README.md,
    as written there (comments included: a user pastes them so)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(section):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith(("dvc exp ", "dvc queue "))]


def as_a_user(root: Path, line: str, **extra_env) -> subprocess.CompletedProcess:
    """``line`` pasted into a new shell in ``root`` after the README's ``source .venv/bin/activate``:
    a bare PATH (no venv on it), no PYTHONPATH, the project's .venv."""
    user_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": env()["HOME"], "TQDM_DISABLE": "1",
                **{k: v for k, v in env().items() if k.startswith("GIT_")}, **extra_env}
    proc = subprocess.run(["bash", "-c", f"source .venv/bin/activate\n{line}"], cwd=root, env=user_env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{line} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_readmes_experiment_lines_run_as_written(tmp_path):
    """The README's queue block (two queued lr values, ``dvc queue start -j 2``), then its
    comparison block (``dvc exp show ...``, ``dvc exp run -S ...``), taken from README.md and
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
    wait_for_queue(root)
    check_store(f"sqlite:///{root / 'mlflow.db'}", lrs)
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # nothing left in the copies
    (run_line,) = [line for line in compare if line.startswith("dvc exp run")]
    as_a_user(root, run_line)  # first, so that the table below holds its result too
    lr = float(re.search(r"lr=([0-9.e-]+)", run_line).group(1))
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["variants"][VARIANT]["lr"] == lr
    assert json.loads((root / "runs" / f"{VARIANT}.json").read_text())["run_id"]
    assert json.loads((root / "metrics" / "evaluate.json").read_text())["n_test"] > 0
    (show_line,) = [line for line in compare if line.startswith("dvc exp show")]
    shown = as_a_user(root, show_line).stdout
    for value in (*lrs, lr):
        assert str(value) in shown, (value, shown)


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
