"""Temporary copies of the project (git + DVC initialised) for tests that run the real CLI."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from helpers.config import REPO, write_params

PROJECT_FILES = ("pipeline", "dvc.yaml", "requirements.txt", ".gitignore", ".dvcignore")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_COMMITTER_NAME": "test",
                "GIT_AUTHOR_EMAIL": "test@localhost", "GIT_COMMITTER_EMAIL": "test@localhost"}


def env(**extra) -> dict:
    """The test's environment with the venv first on PATH, no progress bars and no user store."""
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    base.update(GIT_IDENTITY, TQDM_DISABLE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    base.update({k: v for k, v in extra.items() if v is not None})
    return base


def sh(cmd, cwd, check=True, timeout=900, **extra_env):
    proc = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True,
                          shell=isinstance(cmd, str), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


UP_TO_DATE = "Data and pipelines are up to date."  # what `dvc status` prints for a clean project


def changed_stages(root: Path) -> set[str]:
    """The stages ``dvc status`` finds out of date in ``root``."""
    import json

    return set(json.loads(sh(["dvc", "status", "--json"], root).stdout))

def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def new_project(root: Path, overrides: dict | None = None, shrink: bool = True) -> Path:
    """Copy the project's code and dvc.yaml to ``root``, write shrunken params (``shrink=False``:
    the repo's params.yaml as it is), git+dvc init, commit."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, root / name)
    if shrink:
        write_params(root, overrides)
    else:
        assert not overrides, "shrink=False takes the repo's params.yaml as it is"
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
    sh("git init -q && dvc init -q", root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # dvc.yaml's plot templates, the page
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")  # plots.html_template: the offline page
    sh("git add -A && git commit -qm init", root)
    return root


def copy_project(src: Path, dst: Path) -> Path:
    """An independent copy of a project that ran ``dvc repro`` (git, DVC cache, outputs, MLflow
    store): cheaper than a second repro, for a test that changes things.

    The SQLite store holds absolute paths (each experiment's artifact root, each run's artifact
    URI, each model version's source): left alone, the copy's new runs would write their
    artifacts into ``src``. Every text cell of every table that names ``src`` is rewritten to
    name ``dst``; none may still name ``src`` afterwards."""
    shutil.copytree(src, dst, symlinks=True)
    old, new = str(src), str(dst)
    db = sqlite3.connect(dst / "mlflow.db")
    try:
        cells = [(table, column) for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                 for column in [c[1] for c in db.execute(f'PRAGMA table_info("{table}")')]]
        for table, column in cells:
            db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                       f"WHERE typeof(\"{column}\") = 'text' AND instr(\"{column}\", ?) > 0", (old, new, old))
        db.commit()
        for table, column in cells:
            left = db.execute(f"SELECT count(*) FROM \"{table}\" WHERE typeof(\"{column}\") = 'text' "
                              f'AND instr("{column}", ?) > 0', (old,)).fetchone()[0]
            assert not left, f"{dst / 'mlflow.db'}: {table}.{column} still names {old}"
    finally:
        db.close()
    return dst


def wait_for_queue(root: Path, experiments: int, timeout: float = 600, **extra_env) -> str:
    """Wait until ``dvc queue status`` in ``root`` shows nothing queued or running, then stop the
    queue's workers; assert ``experiments`` succeeded. Returns the last status table."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], root, **extra_env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    sh(["dvc", "queue", "stop", "--kill"], root, check=False, **extra_env)
    assert status.count("Success") == experiments, status
    return status


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """End a server started with ``start_new_session=True`` and every process of its group
    (mlflow -> uvicorn -> workers): SIGTERM, then SIGKILL for whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return


def start_mlflow_server(backend: str, artifacts: Path, log: Path, *args: str, cwd: Path | None = None,
                        timeout: float = 180, **extra_env):
    """``mlflow server`` on a free loopback port, in a session of its own, once ``/health`` answers;
    returns ``(process, uri)``. ``args``: more options (``--app-name basic-auth``)."""
    import time
    import urllib.request

    port = free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", *args],
            cwd=cwd, env=env(**extra_env), start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout  # a first start creates MLflow's tables
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return server, uri
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_group(server)
                raise AssertionError(f"mlflow server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)


def default_repro(tmp_path_factory) -> Path:
    """The repo's own ``dvc repro`` (its params.yaml, a fresh MLflow store), made once per test
    session and shared by the test processes (pytest-xdist workers) through a lock: the modules
    that only read it use it as it is; a test that changes it works on :func:`copy_project`."""
    import fcntl
    import json

    base = tmp_path_factory.getbasetemp()  # under xdist, each worker's is in the session's folder
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, done = shared / "default-repro", shared / "default-repro.done"
    with open(shared / "default-repro.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            new_project(root, shrink=False)
            proc = sh(["dvc", "repro"], root, timeout=1800)
            done.write_text(json.dumps({"log": proc.stdout + proc.stderr}))
    return root
