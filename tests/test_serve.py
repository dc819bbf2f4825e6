"""The REAL ``mlflow models serve`` of the registered champion gives pipeline.predict's numbers."""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from projects import free_port, stop_group
from champion_project import build, cli_env, make_faces, preprocess
from pipeline import tracking
from pipeline.predict import load_classifier, predict_batches

pytestmark = pytest.mark.slow
PING_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return build(tmp_path_factory)


def wait_for_ping(proc, url: str, log: Path) -> float:
    """Seconds until ``GET /ping`` answers 200; fails early if the server exits."""
    started = time.monotonic()
    while time.monotonic() - started < PING_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f"no /ping answer within {PING_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_served_champion_matches_predict(project, tmp_path):
    name, alias = project.get("base.mlflow.registered_model"), project.get("select.alias")
    images = make_faces(project, tmp_path / "faces")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{name}@{alias}",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = cli_env(MLFLOW_TRACKING_URI=tracking.tracking_uri(project))
    with open(log, "w") as out:  # cwd: outside the repo, the model brings its own code
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        ping_s = wait_for_ping(proc, url, log)
        print(f"\nmlflow models serve: /ping answered after {ping_s:.1f} s")
        x = preprocess(images, 32)
        body = json.dumps({"inputs": x.tolist()}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            served = json.loads(resp.read())["predictions"]
    finally:
        stop_group(proc)
    # pipeline.predict on the same image files, with the same registry model
    classifier, _ = load_classifier(None, str(project.root / "params.yaml"))
    errors = []
    predicted = dict(predict_batches(classifier, [(str(p), None) for p in images], 32,
                                     lambda path, reason: errors.append((path, reason))))
    assert not errors
    assert len(served) == len(images)
    assert served == pytest.approx([predicted[str(p)] for p in images], abs=1e-5)
