"""Fixtures and hooks only; what tests import lives in the package ``tests/helpers``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core import numerics

# The stages' kernels (train.reproducible: true) in the tests' own process too, so that a test
# that trains in-process sees the numbers of `python -m pipeline` on any x86-64 CI machine.
numerics.configure(True)

from helpers.config import CELEBA_SAMPLE, in_ci, write_params  # noqa: E402

from pipeline.core.config import load_params  # noqa: E402


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


def pytest_collection_modifyitems(config, items):
    """Modules holding a slow test first, each module's tests in file order: ``make test`` runs
    the modules on parallel workers (pytest-xdist, ``--dist loadfile``), and a long module that
    starts last is the whole run's tail while the short ones fill the gaps."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable


def pytest_report_header(config):
    return (f"celeba-sample: {CELEBA_SAMPLE if CELEBA_SAMPLE.is_dir() else 'absent'}; cpus: {os.cpu_count()}; "
            f"CI: {'yes (a test that needs what is missing fails)' if in_ci() else 'no'}")
