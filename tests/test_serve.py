"""The REAL ``mlflow models serve`` of the registered champion: self-contained (no base weights file,
an empty torch cache, an empty working folder), fed JPEG/PNG bytes, answering like pipeline.predict."""
import base64
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.champion_project import VARIANT, build, cli_env, make_faces
from helpers.projects import free_port, stop_group
from PIL import Image

from pipeline.core import config
from pipeline.tools.predict import load_classifier, predict_batches
from pipeline.tracking.served_model import GenderClassifier

pytestmark = pytest.mark.slow
PING_TIMEOUT_S = 120
HALF = 1e-3  # the champion is stored in float16 (select.champion_dtype), the checkpoint's base is float32


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


def post(url: str, payload: dict, expect: int = 200):
    """``POST /invocations``: the predictions (a record of label and p_male per row), or with
    ``expect`` another status, the error body."""
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            assert expect == 200, f"expected HTTP {expect}, got 200"
            return json.loads(resp.read())["predictions"]
    except urllib.error.HTTPError as exc:
        if exc.code != expect:
            pytest.fail(f"POST /invocations: HTTP {exc.code}: {exc.read()[:2000]!r}")
        return json.loads(exc.read())


def test_served_champion_is_self_contained_and_matches_predict(project, tmp_path):
    name, alias = project.registered_model(), project.get("select.alias")
    images = make_faces(project, tmp_path / "faces")  # a.jpg, b.jpg, c.JPG (JPEG) and d.png
    on_files = [(str(p), None) for p in images]
    errors = []
    # pipeline.predict on the image files, with the registry's champion (what the server loads)
    classifier, _ = load_classifier(None, str(project.root / "params.yaml"))
    predicted = dict(predict_batches(classifier, on_files, 32, lambda path, why: errors.append((path, why))))
    # ...and with the trainable-only checkpoint, whose base is rebuilt from the weights file (float32)
    best_pt = project.path("train.models_dir") / VARIANT / "best.pt"
    by_checkpoint = dict(predict_batches(GenderClassifier.from_checkpoint(best_pt), on_files, 32,
                                         lambda path, why: errors.append((path, why))))
    assert not errors

    weights = project.path("model.weights")
    assert weights.is_file() and weights.stat().st_size > 500e6  # a whole VGG-16 state dict
    hidden = weights.with_name(weights.name + ".hidden")
    empty, torch_home = tmp_path / "empty", tmp_path / "empty-torch-home"
    empty.mkdir()
    torch_home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{name}@{alias}",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = cli_env(MLFLOW_TRACKING_URI=config.store_uri(project), TORCH_HOME=str(torch_home))
    weights.rename(hidden)  # the base weights are nowhere to be read
    try:
        with open(log, "w") as out:  # cwd: an empty folder outside the repo, the model brings its code
            proc = subprocess.Popen(cmd, cwd=empty, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            ping_s = wait_for_ping(proc, url, log)
            print(f"\nmlflow models serve: /ping answered after {ping_s:.1f} s")
            b64 = [base64.b64encode(p.read_bytes()).decode("ascii") for p in images]
            records = post(url, {"dataframe_split": {"columns": ["image"], "data": [[b] for b in b64]}})
            served_inputs = [r["p_male"] for r in post(url, {"inputs": {"image": b64}})]
            garbage = base64.b64encode(b"this is text, not an image: " * 4).decode("ascii")
            bad = post(url, {"dataframe_split": {"columns": ["image"], "data": [[b64[0]], [garbage]]}}, expect=400)
            tiny = io.BytesIO()
            Image.new("RGB", (1, 1)).save(tiny, format="PNG")
            small = post(url, {"inputs": {"image": [base64.b64encode(tiny.getvalue()).decode("ascii")]}}, expect=400)
            after = post(url, {"inputs": {"image": b64[:1]}})  # the server is still up
        finally:
            stop_group(proc)
    finally:
        hidden.rename(weights)
    assert list(empty.iterdir()) == [] and list(torch_home.rglob("*")) == []  # nothing read or cached there
    assert all(set(r) == {"label", "p_male"} and r["label"] == int(r["p_male"] > 0.5) for r in records), records
    served = [r["p_male"] for r in records]
    # the same image alone: a batch of 1 may run other kernels than a batch of 4 (float32 rounding)
    assert len(served) == len(images) and after[0]["p_male"] == pytest.approx(served[0], abs=1e-6)
    for body, reason in ((bad, "input row 1: not an image file Pillow can read"),
                         (small, "input row 0: a 1x1 image is smaller than the model's minimum of 32x32 pixels")):
        assert body["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in body, body
        assert body["message"].splitlines()[-1].endswith(reason), body["message"][-500:]
        assert "Traceback" not in json.dumps(body)
    assert served == pytest.approx([predicted[str(p)] for p in images], abs=1e-5)  # the same champion
    assert served_inputs == pytest.approx(served, abs=1e-7)
    assert served == pytest.approx([by_checkpoint[str(p)] for p in images], abs=HALF)
