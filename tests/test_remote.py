"""A DVC remote: repro, push to a local-folder remote, clone afresh, pull: the clone is up to date,
runs nothing, and predicts what the first one does; the feature cache and resume state stay out."""
import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

from pipeline.celeba import IMAGE_DIR
from helpers.projects import new_project, sh, stages_run

pytestmark = pytest.mark.slow
VARIANT = "head_only-lr1e-3"
CONFIG = {"train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}
UP_TO_DATE = "Data and pipelines are up to date."


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def remote_objects(remote: Path) -> set[str]:
    """The md5 of every object in a DVC 3 local remote (files/md5/ab/cdef...)."""
    return {p.parent.name + p.name for p in (remote / "files" / "md5").glob("*/*")}


def predict(project: Path, images: list[Path]) -> str:
    return sh([sys.executable, "-m", "pipeline.predict", "--json", "--model",
               f"models/{VARIANT}/best.pt", *map(str, images)], project).stdout


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A repro'd project, committed and pushed to a local-folder remote."""
    tmp = tmp_path_factory.mktemp("remote")
    first = new_project(tmp / "first", CONFIG)
    sh(["dvc", "repro"], first)
    remote = tmp / "store"
    remote.mkdir()
    sh(["dvc", "remote", "add", "-d", "store", str(remote)], first)
    sh("git add -A && git commit -qm 'repro'", first)
    out = sh([sys.executable, "-m", "pipeline.remote", "push"], first).stdout
    assert out.strip(), "push says what it did"
    return first, remote


def test_a_fresh_clone_pulls_everything_and_runs_nothing(pushed, tmp_path):
    first, remote = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    assert not (clone / "models").exists() and not (clone / "data").exists()
    started = time.monotonic()
    sh([sys.executable, "-m", "pipeline.remote", "pull"], clone)
    pulled = time.monotonic() - started
    assert sh(["dvc", "status"], clone).stdout.strip() == UP_TO_DATE
    assert stages_run(sh(["dvc", "repro"], clone).stdout) == []
    total = time.monotonic() - started
    print(f"pull {pulled:.1f} s, pull + repro that runs nothing {total:.1f} s")  # a figure, not a test

    # the champion's pointer and every model travelled, byte for byte
    for rel in ("models/best.json", f"models/{VARIANT}/best.pt", f"runs/{VARIANT}.json"):
        assert md5(clone / rel) == md5(first / rel), rel
    images = sorted((clone / "data" / "synthetic" / IMAGE_DIR).glob("*.jpg"))[:5]
    assert len(images) == 5
    ours = predict(first, [first / p.relative_to(clone) for p in images])
    theirs = predict(clone, images)
    ours, theirs = ([json.loads(line)["p_male"] for line in out.splitlines()] for out in (ours, theirs))
    assert len(ours) == 5 and ours == theirs

    # what must not travel: the feature cache, resume state
    assert (first / "data" / "features").is_dir() and not (clone / "data" / "features").exists()
    features = {md5(p) for p in (first / "data" / "features").rglob("*") if p.is_file()}
    assert features and not features & remote_objects(remote)
    assert not list(clone.glob("models/*/resume"))
    assert md5(first / "models" / "best.json") in remote_objects(remote)


def test_pull_from_a_remote_that_lacks_the_data_fails_in_one_line(pushed, tmp_path):
    first, _ = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    empty = tmp_path / "empty-store"
    empty.mkdir()
    sh(["dvc", "remote", "modify", "--local", "store", "url", str(empty)], clone)
    proc = sh([sys.executable, "-m", "pipeline.remote", "pull"], clone, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: DVC remote 'store' ({empty}) lacks ") and proc.stderr.count("\n") == 1
    assert "nothing pulled" in proc.stderr
    print(proc.stderr)  # for the record
    assert not (clone / "models").exists() and not (clone / "data").exists()


@pytest.mark.parametrize("where", ["missing", "under-a-file"])
def test_an_unreachable_remote_fails_in_one_line(pushed, tmp_path, where):
    first, _ = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    (tmp_path / "a-file").write_text("")
    url = tmp_path / ("not-mounted" if where == "missing" else "a-file/store")
    sh(["dvc", "remote", "modify", "--local", "store", "url", str(url)], clone)
    for action in ("pull", "push"):
        proc = sh([sys.executable, "-m", "pipeline.remote", action], clone, check=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and str(url) in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"error: DVC remote 'store': {url} ")
    assert not url.exists() and not (clone / "models").exists()


def test_a_remote_dvc_cannot_reach_fails_in_one_line(pushed, tmp_path):
    """An S3 remote without DVC's s3 extra: DVC's own error, several lines, comes out as one."""
    first, _ = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    sh(["dvc", "remote", "modify", "--local", "store", "url", "s3://no-such-bucket/celeba"], clone)
    proc = sh([sys.executable, "-m", "pipeline.remote", "pull"], clone, check=False)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: DVC remote 'store' (s3://no-such-bucket/celeba) is unreachable: ")
    assert "dvc.org/support" not in proc.stderr
    assert not (clone / "models").exists() and not (clone / "data").exists()
