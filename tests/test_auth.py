"""The preflight's login check (``pipeline.core.store.check_reachable``) against a tiny server that wants
a login, like MLflow's basic-auth app: a missing login, a refused one and the right one. The real
team server with logins (``mlflow server --app-name basic-auth``, PostgreSQL store) runs in
tests/test_postgres.py."""
import base64

import pytest


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
    from pipeline.core.cli import PipelineError
    from pipeline.core.store import check_reachable

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
