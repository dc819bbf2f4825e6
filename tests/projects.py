"""Temporary copies of the project (git + DVC initialised) for tests that run the real CLI."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, write_params

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


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def new_project(root: Path, overrides: dict | None = None) -> Path:
    """Copy the project's code and dvc.yaml to ``root``, write shrunken params, git+dvc init, commit."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, root / name)
    write_params(root, overrides)
    sh("git init -q && dvc init -q", root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # dvc.yaml's plot template
    sh("git add -A && git commit -qm init", root)
    return root
