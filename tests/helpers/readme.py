"""The README's commands as a user pastes them: taken from README.md, run in a new shell after
``source .venv/bin/activate``."""
from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.config import REPO
from helpers.projects import env


def readme_block(section: str) -> str:
    """The first bash block under ``section`` (a heading line) in README.md, as written there."""
    text = (REPO / "README.md").read_text()
    return text[text.index(section):].split("```bash\n", 1)[1].split("```", 1)[0]


def readme_lines(section: str) -> list[str]:
    """The ``dvc exp`` / ``dvc queue`` commands of that block, continuation lines joined
    (comments included: a user pastes them so)."""
    block = readme_block(section).replace("\\\n", " ")
    return [line for line in block.splitlines() if line.startswith(("dvc exp ", "dvc queue "))]


def as_a_user(root: Path, line: str, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    """``line`` pasted into a new shell in ``root`` after the README's ``source .venv/bin/activate``:
    a bare PATH (no venv on it), no PYTHONPATH, the project's .venv."""
    user_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": env()["HOME"], "TQDM_DISABLE": "1",
                **{k: v for k, v in env().items() if k.startswith("GIT_")}, **extra_env}
    proc = subprocess.run(["bash", "-c", f"source .venv/bin/activate\n{line}"], cwd=root, env=user_env,
                          capture_output=True, text=True, timeout=1800)
    if check:
        assert proc.returncode == 0, f"{line} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc
