"""``make push`` / ``make pull``: ``dvc push`` / ``dvc pull`` to the default DVC remote, with
checks first and one-line errors.

Usage::

    python -m pipeline remote push      # after dvc repro and git commit: the outputs to the remote
    python -m pipeline remote pull      # on another clone: the outputs of its dvc.lock from the remote

DVC's own failures span several lines (a warning, the error, a support link) and a pull from a
remote that lacks the data prints "Everything is up to date." before failing. Here every failure
is one line ``error: ...`` naming the remote and its URL, exit status 1, and a pull checks the
remote (``dvc status --cloud``) before it writes anything: a remote that is unreachable or lacks
any output of ``dvc.lock`` fails with nothing pulled. A local-folder remote (a mounted share)
must exist: DVC would otherwise create the folder on this machine's disk when the share is not
mounted.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

from pipeline.core.cli import PipelineError

URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def dvc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise PipelineError("dvc: command not found (source .venv/bin/activate, or make setup)") from None


def dvc_error(proc: subprocess.CompletedProcess) -> str:
    """DVC's error lines as one line, without its 'unexpected error' prefix and support link."""
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines()]
    errors = [ln[len("ERROR:"):].strip() for ln in lines if ln.startswith("ERROR:")]
    text = " ".join(errors) or next((ln for ln in lines if ln and "dvc.org/support" not in ln), "")
    text = re.sub(r"^unexpected error - ", "", text)
    return text or f"exit status {proc.returncode}"


def default_remote(cwd: Path | None = None) -> tuple[str, str]:
    """The default remote's name and URL; a local folder must exist."""
    proc = dvc("remote", "default", cwd=cwd)
    name = proc.stdout.strip()
    if proc.returncode != 0 or not name:
        raise PipelineError("no default DVC remote (add one: dvc remote add -d <name> <url>; see README, "
                            "'Sharing results: a DVC remote')")
    proc = dvc("config", f"remote.{name}.url", cwd=cwd)
    url = proc.stdout.strip()
    if proc.returncode != 0 or not url:
        raise PipelineError(f"DVC remote '{name}' has no url ({dvc_error(proc)})")
    if not URL_SCHEME.match(url) or url.startswith("file://"):
        folder = Path(url[len("file://"):] if url.startswith("file://") else url)
        if not folder.is_absolute():  # DVC reads a relative url against .dvc/
            folder = (Path(cwd or ".") / ".dvc" / folder).resolve()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "not found"
            raise PipelineError(f"DVC remote '{name}': {folder} {what} (is the share mounted?)")
    return name, url


def push(cwd: Path | None = None) -> None:
    name, url = default_remote(cwd)
    proc = dvc("push", cwd=cwd)
    if proc.returncode != 0:
        raise PipelineError(f"dvc push to remote '{name}' ({url}) failed: {dvc_error(proc)}")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"pushed to '{name}' ({url})")


def pull(cwd: Path | None = None) -> None:
    name, url = default_remote(cwd)
    proc = dvc("status", "--cloud", "--json", cwd=cwd)
    if proc.returncode != 0:
        raise PipelineError(f"DVC remote '{name}' ({url}) is unreachable: {dvc_error(proc)}")
    try:
        status = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        raise PipelineError(f"dvc status --cloud: unreadable answer ({proc.stdout.strip()[:200]})") from None
    # a file in neither cache is "missing" in the JSON; a folder whose listing (.dir) is in neither
    # shows up only in DVC's warning, by hash
    missing = sorted(path for path, state in status.items() if state == "missing")
    missing += [f"md5 {m.group(1)}" for m in re.finditer(r"md5: (\S+)", proc.stderr)]
    if missing:
        raise PipelineError(f"DVC remote '{name}' ({url}) lacks outputs that dvc.lock names, e.g. {missing[0]} "
                            "(dvc push them from the clone that ran dvc repro); nothing pulled")
    proc = dvc("pull", cwd=cwd)
    if proc.returncode != 0:
        raise PipelineError(f"dvc pull from remote '{name}' ({url}) failed: {dvc_error(proc)}")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"pulled from '{name}' ({url})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("push", "pull"))
    args = parser.parse_args(argv)
    {"push": push, "pull": pull}[args.action]()
