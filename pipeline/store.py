"""Which MLflow store a stage uses, and whether a tracking server answers: light enough
(no torch, no MLflow) to run before a stage's heavy imports, so a bad params file or a dead
server fails in well under a second (:func:`preflight`)."""
from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request

from pipeline.config import Params, PipelineError, load_params, run_main


def store_uri(params: Params) -> str:
    """``base.mlflow.tracking_uri`` with a relative SQLite path made absolute against
    :meth:`Params.shared_root` (so a queued ``dvc exp run`` writes to the repo's store)."""
    uri = str(params.get("base.mlflow.tracking_uri"))
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(params.shared_root() / uri[len(prefix):])
    return uri


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` if set (a tracking server, say), else :func:`store_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or store_uri(params)


def check_reachable(uri: str, timeout: float = 2.0) -> None:
    """A tracking server must answer ``/health`` now, not after an hour of training."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (behind auth or a proxy, perhaps): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                            "(make mlflow-server) or unset MLFLOW_TRACKING_URI") from None


def preflight(argv: list[str] | None = None) -> None:
    """Load ``--params`` and check its tracking server; on a problem print one line, exit 1.
    Stage modules call it first thing when run as scripts."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    args, _ = parser.parse_known_args(argv)

    def check() -> None:
        check_reachable(tracking_uri(load_params(args.params)))

    run_main(check)
