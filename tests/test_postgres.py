"""The README's team set-up, for real: one ``mlflow server`` with a PostgreSQL backend store and
artifacts in a folder of their own (the "shared storage"), and ``dvc repro`` pointed at it with
MLFLOW_TRACKING_URI. Runs, metrics, the registered model and its ``champion`` alias end up in
PostgreSQL, checkpoints in the artifact folder, nothing in the project's own store.

Needs a PostgreSQL server: set MLFLOW_TEST_POSTGRES_URI to a URI whose role may create databases
(CI: ``export MLFLOW_TEST_POSTGRES_URI="$(.ci/postgres.sh)"``). Each run makes a database of its
own (``mlflow_test_<random>``) and drops it afterwards, so reruns never collide."""
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from projects import env, free_port, new_project, sh, stop_group

POSTGRES_URI = os.environ.get("MLFLOW_TEST_POSTGRES_URI", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs(bool(POSTGRES_URI), reason="MLFLOW_TEST_POSTGRES_URI is not set (a PostgreSQL URI "
                       "whose role may CREATE DATABASE; CI: export MLFLOW_TEST_POSTGRES_URI=\"$(.ci/postgres.sh)\")"),
]
VARIANT = "head_only-lr1e-3"
CONFIG = {"data.synthetic.images": 60, "train.epochs": 2,
          "train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}


def libpq_uri(uri: str) -> str:
    """``postgresql+<driver>://...`` -> ``postgresql://...``, which psycopg2.connect takes."""
    scheme, rest = uri.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def store_uri(uri: str) -> str:
    """The backend-store URI for MLflow (SQLAlchemy), naming psycopg2 (psycopg2-binary, pinned
    in requirements.txt): SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, which is
    not installed ("No module named 'psycopg'")."""
    return f"postgresql+psycopg2://{uri.split('://', 1)[1]}"


def with_database(uri: str, name: str) -> str:
    """``uri`` with its database (the path) replaced by ``name``."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def postgres_db():
    """A fresh, empty database on the server of MLFLOW_TEST_POSTGRES_URI; dropped afterwards."""
    import psycopg2

    name = f"mlflow_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(libpq_uri(POSTGRES_URI), connect_timeout=10)
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield with_database(libpq_uri(POSTGRES_URI), name)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def start_server(backend: str, artifacts: Path, log: Path):
    """``mlflow server`` on a free loopback port, in a session of its own; returns (process, uri)."""
    port = free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            env=env(), start_new_session=True, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # the first start creates MLflow's tables in PostgreSQL
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return server, uri
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_group(server)
                pytest.fail(f"mlflow server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)


def test_dvc_repro_against_a_tracking_server_with_a_postgresql_store(tmp_path, postgres_db):
    import psycopg2
    from mlflow.tracking import MlflowClient

    root = new_project(tmp_path / "p", CONFIG)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    experiment, model_name = raw["base"]["mlflow"]["experiment"], raw["base"]["mlflow"]["registered_model"]
    alias = raw["select"]["alias"]
    artifacts = tmp_path / "artifacts"  # the "shared storage" behind the server
    log = tmp_path / "server.log"

    server, uri = start_server(store_uri(postgres_db), artifacts, log)
    try:
        started = time.monotonic()
        sh(["dvc", "repro"], root, MLFLOW_TRACKING_URI=uri)
        print(f"dvc repro against the server: {time.monotonic() - started:.0f} s")

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        assert exp is not None, f"no experiment {experiment!r} on the server"
        (train,) = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
        assert train.info.status == "FINISHED" and train.data.tags["variant"] == VARIANT
        assert [m.step for m in client.get_metric_history(train.info.run_id, "val_acc")] == [1, 2]
        assert {a.path for a in client.list_artifacts(train.info.run_id, "checkpoints")} == \
            {"checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"}

        champion = client.get_model_version_by_alias(model_name, alias)
        assert champion.run_id == train.info.run_id

        (evaluate,) = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
        assert evaluate.info.status == "FINISHED" and evaluate.data.tags["variant"] == VARIANT
    except BaseException:
        print(f"--- mlflow server log (tail) ---\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        stop_group(server)

    # The artifacts went through the server to its destination; nothing to the project's store.
    saved = {p.name for p in artifacts.rglob("*.pt") if train.info.run_id in p.parts}
    assert {"epoch_001.pt", "epoch_002.pt"} <= saved, sorted(artifacts.rglob("*"))[:50]
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()

    # ...and the store is PostgreSQL itself, not a fallback: MLflow's own tables there hold them.
    with psycopg2.connect(postgres_db, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid, status FROM runs")
        runs = dict(cur.fetchall())
        assert runs.get(train.info.run_id) == "FINISHED" and runs.get(evaluate.info.run_id) == "FINISHED", runs
        cur.execute("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_acc' ORDER BY step",
                    (train.info.run_id,))
        assert [step for (step,) in cur.fetchall()] == [1, 2]
        cur.execute("SELECT v.run_id FROM registered_model_aliases a JOIN model_versions v "
                    "ON v.name = a.name AND v.version = a.version WHERE a.name = %s AND a.alias = %s",
                    (model_name, alias))
        assert cur.fetchall() == [(train.info.run_id,)]
    conn.close()
