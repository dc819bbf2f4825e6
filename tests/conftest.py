"""Shared fixtures: a shrunken copy of the project's own params.yaml in tmp_path."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params

REPO = Path(__file__).resolve().parents[1]
CELEBA_SAMPLE = (REPO.parent / "shared" / "celeba-sample").resolve()

# Small enough for a 2-core CPU: 32x32 images (VGG-16's smallest), a few dozen images, 1 epoch.
TINY = {
    "data.image_size": 32,
    "data.synthetic.images": 60,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.device": "cpu",
}


def set_dotted(raw: dict, dotted: str, value) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def write_params(folder: Path, overrides: dict | None = None) -> Path:
    """The repo's params.yaml with ``overrides`` (dotted keys) applied, written to ``folder``."""
    raw = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    for key, value in {**TINY, **(overrides or {})}.items():
        set_dotted(raw, key, value)
    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reaches the user's MLflow store, torch cache or git identity."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var, value in (("GIT_AUTHOR_NAME", "test"), ("GIT_AUTHOR_EMAIL", "test@localhost"),
                       ("GIT_COMMITTER_NAME", "test"), ("GIT_COMMITTER_EMAIL", "test@localhost")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture
def make_params(tmp_path):
    """Factory: ``make_params(**{"train.epochs": 2})`` -> Params rooted in tmp_path."""

    def factory(overrides: dict | None = None, folder: Path | None = None):
        folder = Path(folder or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        return load_params(write_params(folder, overrides))

    return factory


def in_ci() -> bool:
    """CI sets CI=true (as GitHub Actions, GitLab CI and `.ci/run` do)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(tryfirst=True)  # before any fixture is set up (the e2e test's dvc repro)
def pytest_runtest_setup(item):
    """``@pytest.mark.needs(available, reason=...)``: a test that needs something outside the
    venv (Chromium, PostgreSQL, ../shared/celeba-sample). Without it the test skips, except in
    CI, where it fails: a green CI run means those checks ran."""
    for mark in item.iter_markers("needs"):
        available = mark.args[0] if mark.args else mark.kwargs["available"]
        if not available:
            reason = mark.kwargs["reason"]
            if in_ci():
                pytest.fail(f"CI=true, and this test would be skipped: {reason}", pytrace=False)
            pytest.skip(reason)


def pytest_report_header(config):
    return (f"celeba-sample: {CELEBA_SAMPLE if CELEBA_SAMPLE.is_dir() else 'absent'}; cpus: {os.cpu_count()}; "
            f"CI: {'yes (a test that needs what is missing fails)' if in_ci() else 'no'}")
