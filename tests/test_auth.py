"""Nobody gets in without a login: the team server with MLflow's basic-auth app (``mlflow server
--app-name basic-auth``, the repo's ``mlflow-auth.ini``), on 127.0.0.1. An anonymous request is
refused; ``dvc repro`` with a user's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD lands; a
wrong password stops the first stage that talks to MLflow (train) at its preflight, in one line
that does not echo the password, before anything is logged."""
import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from helpers.config import REPO
from helpers.projects import new_project, sh, stages_run, start_mlflow_server, stop_group

VARIANT = "head_only-lr1e-3"
CONFIG = {"train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}
ADMIN_PASSWORD = "admin-password-0123"  # MLflow 3.17 wants 12+ characters
USER, PASSWORD = "alice", "alice-password-0123"
WRONG = "not-alices-password-987"


def request(uri: str, path: str, user: str | None = None, password: str | None = None, body: dict | None = None):
    """``(status, parsed JSON or text)`` of a GET (or a POST of ``body``) with basic auth, if given."""
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(uri + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture
def fake_server():
    """A tiny HTTP server on 127.0.0.1 that wants ``bob:right-password-123`` on /api/ (401
    otherwise) and answers /health to anyone, like MLflow's basic-auth app; yields its URI."""
    import http.server
    import threading

    good = "Basic " + base64.b64encode(b"bob:right-password-123").decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" or self.headers.get("Authorization") == good
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_preflight_tells_a_missing_or_refused_login(fake_server, monkeypatch):
    from pipeline.cli import PipelineError
    from pipeline.store import check_reachable

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(PipelineError, match=r"wants a login \(HTTP 401\): set MLFLOW_TRACKING_USERNAME"):
        check_reachable(fake_server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-456")
    with pytest.raises(PipelineError) as refused:
        check_reachable(fake_server)
    assert str(refused.value) == (f"MLflow tracking server {fake_server} refused the login of user 'bob' (HTTP 401): "
                                  "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "right-password-123")
    check_reachable(fake_server)  # the right login passes


@pytest.mark.slow
def test_login_required_user_lands_wrong_password_stops_at_once(tmp_path):
    root = new_project(tmp_path / "p", CONFIG)
    server_dir = tmp_path / "server"  # the auth store (sqlite:///basic_auth.db) lands in the server's cwd
    server_dir.mkdir()
    log = tmp_path / "server.log"
    server, uri = start_mlflow_server(f"sqlite:///{server_dir / 'mlflow.db'}", server_dir / "artifacts", log,
                                      "--app-name", "basic-auth", cwd=server_dir,
                                      MLFLOW_AUTH_CONFIG_PATH=str(REPO / "mlflow-auth.ini"),
                                      MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
                                      MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key")
    try:
        search = "/api/2.0/mlflow/experiments/search?max_results=10"
        status, _ = request(uri, search)
        assert status == 401  # anonymous: refused
        status, body = request(uri, "/api/2.0/mlflow/users/create", "admin", ADMIN_PASSWORD,
                               {"username": USER, "password": PASSWORD})
        assert status == 200, body
        assert (server_dir / "basic_auth.db").is_file()
        assert request(uri, search, USER, WRONG)[0] == 401

        # a wrong password: generate and split run (no MLflow), train@ stops at its preflight, nothing is logged
        started = time.monotonic()
        bad = sh(["dvc", "repro"], root, check=False, MLFLOW_TRACKING_URI=uri,
                 MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=WRONG)
        print(f"\ndvc repro with a wrong password failed after {time.monotonic() - started:.1f} s")
        assert bad.returncode != 0
        assert WRONG not in bad.stdout + bad.stderr
        errors = [line for line in (bad.stdout + bad.stderr).splitlines() if line.startswith("error: MLflow")]
        assert errors == [f"error: MLflow tracking server {uri} refused the login of user '{USER}' (HTTP 401): "
                          "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"], bad.stdout + bad.stderr
        assert "Traceback" not in bad.stdout + bad.stderr
        assert stages_run(bad.stdout) == ["generate", "split", f"train@{VARIANT}"]
        assert not (root / "runs" / f"{VARIANT}.json").exists()
        status, body = request(uri, search, "admin", ADMIN_PASSWORD)
        assert status == 200 and [e["name"] for e in body["experiments"]] == ["Default"], body

        # the user's own credentials: the whole pipeline lands on the server
        sh(["dvc", "repro"], root, MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME=USER,
           MLFLOW_TRACKING_PASSWORD=PASSWORD)
        status, body = request(uri, "/api/2.0/mlflow/runs/search", USER, PASSWORD,
                               {"experiment_ids": [e["experiment_id"] for e in request(
                                   uri, search, USER, PASSWORD)[1]["experiments"]]})
        assert status == 200, body
        runs = {r["info"]["run_name"]: r["info"]["status"] for r in body["runs"]}
        assert runs == {VARIANT: "FINISHED", "evaluate": "FINISHED"}, runs
        status, body = request(uri, "/api/2.0/mlflow/registered-models/alias?name=celeba-gender-vgg16"
                                    "&alias=champion", USER, PASSWORD)
        assert status == 200 and body["model_version"]["version"] == "1", body
        assert request(uri, "/api/2.0/mlflow/registered-models/alias?name=celeba-gender-vgg16&alias=champion")[0] == 401
    except BaseException:
        print(f"--- mlflow server log (tail) ---\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        stop_group(server)
