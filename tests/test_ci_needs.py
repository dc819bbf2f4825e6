"""A test that needs PostgreSQL, Chromium or the real CelebA sample skips without it on a
developer's machine, and fails in CI (CI=true): shown on test_postgres.py with no server."""
import re
import subprocess
import sys

import pytest
from helpers.config import REPO
from helpers.projects import env


@pytest.mark.parametrize("ci", [None, "true"], ids=["developer", "ci"])
def test_a_missing_requirement_skips_locally_and_fails_in_ci(ci):
    environment = {k: v for k, v in env(CI=ci).items() if k != "MLFLOW_TEST_POSTGRES_URI"}
    if ci is None:
        environment.pop("CI", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_postgres.py", "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    tally = proc.stdout.strip().splitlines()[-1]  # e.g. "2 skipped in 1.2s" / "2 errors in 1.3s"
    if ci is None:
        assert proc.returncode == 0 and re.search(r"\d+ skipped", tally), out
        assert not re.search(r"passed|failed|error", tally), out
        assert "MLFLOW_TEST_POSTGRES_URI is not set" in out, out
    else:
        assert proc.returncode == 1, out
        assert re.search(r"\d+ errors?", tally) and "skipped" not in tally and "passed" not in tally, out
        assert "CI=true, and this test would be skipped: MLFLOW_TEST_POSTGRES_URI is not set" in out, out
