"""The README's team set-up, for real: one ``mlflow server --app-name basic-auth`` (MLflow's
logins, the repo's ``mlflow-auth.ini``) with a PostgreSQL backend store and artifacts in a folder
of their own (the "shared storage"), and ``dvc repro`` / a queued ``dvc exp run`` pointed at it
with MLFLOW_TRACKING_URI and a user's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
Anonymous requests are refused; a wrong password stops the first stage that talks to MLflow at its
preflight, in one line; runs, metrics, the registered model and its ``champion`` alias end up in
PostgreSQL, checkpoints in the artifact folder, nothing in the projects' own stores.

Needs a PostgreSQL server: set MLFLOW_TEST_POSTGRES_URI to a URI whose role may create databases
(CI: ``export MLFLOW_TEST_POSTGRES_URI="$(.ci/postgres.sh)"``). Each run makes a database of its
own (``mlflow_test_<random>``) and drops it afterwards, so reruns never collide."""
import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.config import REPO
from helpers.projects import (
    env,
    new_project,
    sh,
    stages_run,
    start_mlflow_server,
    stop_group,
    wait_for_queue,
)

from pipeline.core.config import load_params

POSTGRES_URI = os.environ.get("MLFLOW_TEST_POSTGRES_URI", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs(bool(POSTGRES_URI), reason="MLFLOW_TEST_POSTGRES_URI is not set (a PostgreSQL URI "
                       "whose role may CREATE DATABASE; CI: export MLFLOW_TEST_POSTGRES_URI=\"$(.ci/postgres.sh)\")"),
]
VARIANT = "head_only-lr1e-3"
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


ADMIN_PASSWORD = "admin-password-0123"  # MLflow 3.17 wants 12+ characters
USERS = {"alice": "alice-password-0123", "bob": "bob-password-0123"}
WRONG = "not-alices-password-987"


def start_server(backend: str, artifacts: Path, log: Path, cwd: Path):
    """``mlflow server --app-name basic-auth`` as the README starts it, on a free loopback port, in
    a session of its own; its users live in ``cwd/basic_auth.db``. Returns (process, uri)."""
    return start_mlflow_server(backend, artifacts, log, "--app-name", "basic-auth", cwd=cwd,
                               MLFLOW_AUTH_CONFIG_PATH=str(REPO / "mlflow-auth.ini"),
                               MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
                               MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key")


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


def login(user: str, password: str | None = None) -> dict:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or USERS[user]}


SHARED_CONFIG = {"train.epochs": 1, "train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}}
LOAD_CHAMPION = """
import base64, json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
image = open(sys.argv[2], "rb").read()
print(json.dumps([float(p) for p in model.predict(pd.DataFrame({"image": [image]}))["p_male"]]))
"""


def test_two_machines_share_one_server_and_a_third_folder_loads_the_champion(tmp_path, postgres_db, monkeypatch):
    """The README's team set-up, as its lines run it: one ``mlflow server --app-name basic-auth``
    over PostgreSQL whose ``--artifacts-destination`` is a folder of its own. Anonymous requests
    get 401. In two other folders (two machines), alice first runs ``dvc repro`` with a wrong
    password (generate and split run, ``train@`` stops at its preflight in one line that does not
    echo the password, nothing is logged), then with hers; bob queues an experiment of his own
    seed and starts the queue (``dvc exp run --queue -S ... && dvc queue start -j 1``). Runs,
    metrics, the registry and the ``champion`` alias end up in PostgreSQL's own tables, every
    artifact in the shared folder, nothing in either project. Bob's model, validated on another
    split (his seed), is registered as the challenger and leaves alice's champion alone. A process
    in a fourth, empty folder, after both are gone, logs in, loads ``models:/<name>@champion``
    (alice's) and predicts what alice's checkpoint does."""
    import shutil

    import psycopg2
    from mlflow.tracking import MlflowClient

    from pipeline.core.config import load_params
    from pipeline.data.celeba import detect_layout
    from pipeline.tools.predict import predict_batches
    from pipeline.tracking.served_model import GenderClassifier

    shared = tmp_path / "shared-artifacts"
    log = tmp_path / "server.log"
    server_dir = tmp_path / "server"  # basic_auth.db (mlflow-auth.ini: sqlite:///basic_auth.db) lands here
    server_dir.mkdir()
    server, uri = start_server(store_uri(postgres_db), shared, log, server_dir)
    clones = {name: new_project(tmp_path / name, SHARED_CONFIG) for name in ("alice", "bob")}
    raw = yaml.safe_load((clones["alice"] / "params.yaml").read_text())
    experiment, name = raw["base"]["mlflow"]["experiment"], load_params(clones["alice"] / "params.yaml").registered_model()
    alias = raw["select"]["alias"]
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    try:
        assert request(uri, search)[0] == 401  # anonymous: refused
        for user, password in USERS.items():  # the admin makes the team's users, as the README does
            status, body = request(uri, "/api/2.0/mlflow/users/create", "admin", ADMIN_PASSWORD,
                                   {"username": user, "password": password})
            assert status == 200, body
        assert (server_dir / "basic_auth.db").is_file()
        assert request(uri, search, "alice", WRONG)[0] == 401

        # a wrong password: generate and split run (no MLflow), train@ stops at its preflight, nothing is logged
        bad = sh(["dvc", "repro"], clones["alice"], check=False, MLFLOW_TRACKING_URI=uri, **login("alice", WRONG))
        said = bad.stdout + bad.stderr
        assert bad.returncode != 0 and WRONG not in said and "Traceback" not in said
        assert [line for line in said.splitlines() if line.startswith("error: MLflow")] == [
            f"error: MLflow tracking server {uri} refused the login of user 'alice' (HTTP 401): "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"], said
        assert stages_run(bad.stdout) == ["generate", "split", f"train@{VARIANT}"]
        assert not (clones["alice"] / "runs" / f"{VARIANT}.json").exists()
        status, body = request(uri, search, "admin", ADMIN_PASSWORD)
        assert status == 200 and [e["name"] for e in body["experiments"]] == ["Default"], body

        good = sh(["dvc", "repro"], clones["alice"], MLFLOW_TRACKING_URI=uri, **login("alice"))
        assert stages_run(good.stdout) == [f"train@{VARIANT}", "select", "evaluate"]
        for var, value in login("alice").items():  # this process's client logs in as alice too
            monkeypatch.setenv(var, value)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        assert exp is not None, f"no experiment {experiment!r} on the server"
        (train,) = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
        assert train.info.status == "FINISHED" and train.data.tags["variant"] == VARIANT
        assert [m.step for m in client.get_metric_history(train.info.run_id, "val_acc")] == [1]
        assert {a.path for a in client.list_artifacts(train.info.run_id, "checkpoints")} == {"checkpoints/epoch_001.pt"}
        assert client.get_model_version_by_alias(name, alias).run_id == train.info.run_id
        (evaluate,) = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
        assert evaluate.info.status == "FINISHED" and evaluate.data.tags["variant"] == VARIANT
        assert request(uri, f"/api/2.0/mlflow/registered-models/alias?name={name}&alias={alias}")[0] == 401

        bob = clones["bob"]
        bobs = {"MLFLOW_TRACKING_URI": uri, **login("bob")}
        sh(["dvc", "exp", "run", "--queue", "--name", "bob-seed-7", "-S", "base.seed=7"], bob, **bobs)
        sh(["dvc", "queue", "start", "-j", "1"], bob, **bobs)
        wait_for_queue(bob, experiments=1, **bobs)
        sh(["dvc", "exp", "apply", "bob-seed-7"], bob)  # its params, runs/ and models/ into bob's workspace
        assert yaml.safe_load((bob / "params.yaml").read_text())["base"]["seed"] == 7
        run_ids = {who: json.loads((root / "runs" / f"{VARIANT}.json").read_text())["run_id"]
                   for who, root in clones.items()}
        assert run_ids["alice"] == train.info.run_id != run_ids["bob"]
        versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        assert [v.run_id for v in versions] == [run_ids["alice"], run_ids["bob"]]
        # bob's seed made another split: his model cannot be compared with alice's, which stays champion
        assert client.get_model_version_by_alias(name, alias).version == versions[0].version
        assert client.get_model_version_by_alias(name, "challenger").version == versions[1].version
        assert versions[1].tags["decision"] == "not_comparable" and versions[1].tags["promoted"] == "False"

        # what alice's own checkpoint (float32, its base rebuilt from model.weights) says of one of bob's images
        params = load_params(bob / "params.yaml")
        test_id = pd.read_csv(params.path("split.dir") / "test.csv", dtype={"image_id": str})["image_id"][0]
        reader = tmp_path / "reader"  # a folder of its own: no params, no code, no store, no torch cache
        (reader / "torch-home").mkdir(parents=True)
        image = reader / "face.jpg"
        shutil.copy(detect_layout(params.dataset_root()).image_dir / test_id, image)
        ckpt = GenderClassifier.from_checkpoint(clones["alice"] / "models" / VARIANT / "best.pt")
        ((_, expected),) = predict_batches(ckpt, [(str(image), None)], 1, lambda *a: pytest.fail(str(a)))
        for root in clones.values():
            assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()
            assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))
            shutil.rmtree(root)  # the reader cannot reach either project

        proc = subprocess.run([sys.executable, "-c", LOAD_CHAMPION, f"models:/{name}@{alias}", str(image)],
                              cwd=reader, env=env(MLFLOW_TRACKING_URI=uri, TORCH_HOME=str(reader / "torch-home")),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (p_male,) = json.loads(proc.stdout.splitlines()[-1])
        assert p_male == pytest.approx(expected, abs=1e-3)  # the champion is stored in float16
        assert sorted(p.name for p in (reader / "torch-home").rglob("*")) == []
    except BaseException:
        print(f"--- mlflow server log (tail) ---\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        stop_group(server)
    # every artifact lives in the shared folder: both runs' checkpoints, the champion's whole network
    for run_id in run_ids.values():
        assert [p.name for p in shared.rglob("*.pt") if run_id in p.parts and "checkpoints" in p.parts] == \
            ["epoch_001.pt"]
    assert len(list(shared.rglob("network.pt"))) == 2  # one champion per select

    # ...and the store is PostgreSQL itself, not a fallback: MLflow's own tables there hold them.
    with psycopg2.connect(postgres_db, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid, status FROM runs")
        runs = dict(cur.fetchall())
        assert {runs.get(r) for r in (*run_ids.values(), evaluate.info.run_id)} == {"FINISHED"}, runs
        cur.execute("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_acc' ORDER BY step",
                    (run_ids["bob"],))
        assert [step for (step,) in cur.fetchall()] == [1]
        cur.execute("SELECT v.run_id FROM registered_model_aliases a JOIN model_versions v "
                    "ON v.name = a.name AND v.version = a.version WHERE a.name = %s AND a.alias = %s",
                    (name, alias))
        assert cur.fetchall() == [(run_ids["alice"],)]
    conn.close()
