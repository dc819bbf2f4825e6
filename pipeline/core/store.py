"""Which MLflow store a stage uses, and whether a tracking server answers and takes our login:
light enough (no torch, no MLflow) to run before a stage's heavy imports, so a bad params file, a
dead server or a refused login fails in well under a second (:func:`preflight`)."""
from __future__ import annotations

import argparse
import base64
import gc
import os
import urllib.error
import urllib.request

from pipeline.core.cli import PipelineError, run_main
from pipeline.core.config import Params, load_params, tracking_uri

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # MLflow's own client reads them too
LOGIN_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"  # cheap, and behind a server's login
LOGIN_TIMEOUT_S = 30.0  # checking a password is slow by design (PBKDF2): ~0.1 s idle, seconds when busy


def _auth_header() -> dict[str, str]:
    """HTTP basic auth from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (none if unset)."""
    user, password = (os.environ.get(k) for k in CREDENTIALS)
    if not user and not password:
        return {}
    token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """A tracking server must answer now, not after an hour of training: ``/health``, then an API
    call with the login of MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which a server
    with ``--app-name basic-auth`` refuses (401) for a wrong or missing one. The message names
    the user, never the password."""
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    for path, headers, wait in (("/health", {}, timeout), (LOGIN_PROBE, _auth_header(), LOGIN_TIMEOUT_S)):
        try:
            urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=wait).close()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                user = os.environ.get(CREDENTIALS[0])
                if user:
                    why = (f"refused the login of user '{user}' (HTTP 401): check MLFLOW_TRACKING_USERNAME "
                           "and MLFLOW_TRACKING_PASSWORD")
                else:
                    why = "wants a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                raise PipelineError(f"MLflow tracking server {uri} {why}") from None
            # any other answer (403, 404 behind a proxy ...): it is there; MLflow reports the rest
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PipelineError(f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                                "(make mlflow-server) or unset MLFLOW_TRACKING_URI") from None


def preflight(argv: list[str] | None = None) -> Params:
    """Load ``--params`` and check its tracking server; on a problem print one line, exit 1.
    ``python -m pipeline <stage>`` calls it first for train, select and evaluate. Then the
    cyclic GC is off while the stage imports torch, torchvision and MLflow (~20 % of a stage's
    start); :func:`pipeline.core.cli.run_main` turns it back on. Returns the params."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    args, _ = parser.parse_known_args(argv)
    loaded: list[Params] = []

    def check() -> None:
        loaded.append(load_params(args.params))
        check_reachable(tracking_uri(loaded[0]))

    run_main(check)
    gc.disable()
    return loaded[0]
