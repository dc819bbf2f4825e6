"""The real ``dvc repro`` on a shrunken config in a temporary copy of the project, and what
follows it: re-runs, a DVC remote and a fresh clone, MLflow's UI and ``dvc plots`` in a browser."""
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.config import REPO
from helpers.projects import (
    UP_TO_DATE,
    changed_stages,
    copy_project,
    env,
    free_port,
    new_project,
    sh,
    stages_run,
    stop_group,
)
from mlflow.tracking import MlflowClient

from pipeline.core.config import load_params
from pipeline.data.celeba import IMAGE_DIR
from pipeline.data.dataset import CLASS_NAMES

pytestmark = pytest.mark.slow
# Two of the default's four variants, one per strategy: each scenario below needs two (one edited
# or removed, one left alone), and a train stage costs ~25 s of start-up on a 2-core CPU. 200
# images at the default's 64x64: small enough, and the models learn (val_acc 0.5 and 0.9 on 20
# images), so a longer experiment does better than the repro and a shorter one does not.
VARIANTS = {"head_only-lr1e-3": {"strategy": "head_only", "lr": 0.001},
            "last_block-lr1e-4": {"strategy": "last_block", "lr": 0.0001}}
SHRUNK = {"data.synthetic.images": 200, "data.image_size": 64, "train.epochs": 2, "train.variants": VARIANTS}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One `dvc repro`, shared by the tests below; a test that changes the project works on
    its own copy (:func:`own_copy`), so each test passes alone and in any order."""
    root = new_project(tmp_path_factory.mktemp("project"), SHRUNK)
    proc = sh(["dvc", "repro"], root)
    yield root, proc.stdout + proc.stderr


@pytest.fixture
def own_copy(project, tmp_path):
    """A copy of the repro'd project for a test that edits it or re-runs stages."""
    return copy_project(project[0], tmp_path / "copy")


def test_repro_runs_every_stage_once(project):
    _, out = project
    assert stages_run(out) == ["generate", "split", *[f"train@{v}" for v in VARIANTS], "select", "evaluate"]
    # the repo's own grid is the original experiment's: {head only, conv5 + head} x lr {1e-3, 1e-4}
    grid = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["variants"]
    assert sorted((v["strategy"], v["lr"]) for v in grid.values()) == \
        [("head_only", 0.0001), ("head_only", 0.001), ("last_block", 0.0001), ("last_block", 0.001)]


def test_the_log_is_the_stages_own_lines_one_per_epoch(project):
    """A stage prints its own lines, not the libraries' (no schema hints, progress bars or database
    INFO lines), and a training stage one line per epoch in the original experiment's format."""
    _, out = project
    assert [line for line in out.splitlines() if re.search(r"warning|INFO|Downloading|it/s", line, re.I)] == []
    epochs = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == len(VARIANTS) * SHRUNK["train.epochs"], out
    for line in epochs:
        assert re.fullmatch(r"Epoch [12]/2 \| Train Loss \d\.\d{4}, Acc \d\.\d{4} \| Val Loss \d\.\d{4}, "
                            r"Acc \d\.\d{4} \| \d+\.\d s", line), line


def test_mlflow_holds_a_run_per_variant_with_every_epoch_and_artifacts(project):
    root, _ = project
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert sorted(r.info.run_name for r in runs) == sorted(yaml.safe_load((root / "params.yaml").read_text())
                                                           ["train"]["variants"])
    for run in runs:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
        paths = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert paths == {"checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"}
        assert {a.path for a in client.list_artifacts(run.info.run_id, "confusion_matrix")} == \
            {"confusion_matrix/val.json", "confusion_matrix/val.png"}
        assert json.loads((root / "runs" / f"{run.info.run_name}.json").read_text())["run_id"] == run.info.run_id
        contexts = {t.value: di.dataset for di in run.inputs.dataset_inputs for t in di.tags}
        assert sorted(contexts) == ["training", "validation"]
        assert (contexts["training"].name, contexts["validation"].name) == ("synthetic-train", "synthetic-val")
    digests = {di.dataset.digest for run in runs for di in run.inputs.dataset_inputs}
    assert len(digests) == 2  # every variant trained on the same two splits


def test_best_json_is_the_argmax_from_mlflow_and_registered(project):
    root, _ = project
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    expected = min(runs, key=lambda r: (-r.data.metrics["best_val_acc"], r.data.metrics["best_val_loss"],
                                        r.info.run_name))
    best = json.loads((root / "models" / "best.json").read_text())
    assert best["run_id"] == expected.info.run_id and best["variant"] == expected.info.run_name
    assert best["best_val_acc"] == expected.data.metrics["best_val_acc"]
    version = client.get_model_version_by_alias("gender-vgg16-synthetic", "champion")
    assert int(version.version) == best["version"] and version.run_id == best["run_id"]


def test_evaluate_accuracy_matches_confusion_csv_and_mlflow(project):
    root, _ = project
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    cm = pd.read_csv(root / "metrics" / "confusion_matrix.csv")
    assert list(cm.columns) == ["actual", "predicted"] and len(cm) == metrics["n_test"]
    assert set(cm["actual"]) <= {"female", "male"}
    assert metrics["accuracy"] == pytest.approx((cm["actual"] == cm["predicted"]).mean())
    # `actual` comes from the test split's labels, row for row, not from the predictions
    test = pd.read_csv(load_params(root / "params.yaml").path("split.dir") / "test.csv")
    assert cm["actual"].tolist() == [CLASS_NAMES[label] for label in test["label"]]
    assert (root / "metrics" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    (run,) = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    best = json.loads((root / "models" / "best.json").read_text())
    assert run.data.tags["mlflow.parentRunId"] == best["run_id"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert {f"test_{m}_{cls}" for m in ("precision", "recall", "f1") for cls in ("female", "male", "macro")} \
        <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"classification_report.json", "confusion_matrix"}
    (test_input,) = run.inputs.dataset_inputs  # the test split, as an MLflow dataset
    assert [(t.key, t.value) for t in test_input.tags] == [("mlflow.data.context", "test")]
    assert test_input.dataset.name == "synthetic-test"
    assert json.loads(test_input.dataset.source) == {"uri": str(root / "data" / "synthetic")}
    assert json.loads(test_input.dataset.profile)["num_rows"] == metrics["n_test"]


def test_evaluate_tells_the_whole_truth_intervals_calibration_slices_and_a_model_card(project, tmp_path):
    """evaluate.json: the interval, AUC, ECE and the worst slices (none of 30 images in a 20-image
    test split, but every interval computed); MLflow: the predictions, the reliability diagram,
    ROC and PR curves, the slice table and figure, the card, also the version's description."""
    root, _ = project
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert set(metrics) == {"accuracy", "n_test", "ci95", "roc_auc", "average_precision", "log_loss", "brier", "ece",
                            "worst_slices", "largest_gap"}
    assert metrics["n_test"] == 20 and metrics["ci95"]["low"] < metrics["accuracy"] < metrics["ci95"]["high"]
    assert metrics["worst_slices"] == {} and metrics["largest_gap"] is None  # min_slice 30 > 20 test images
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["roc_auc"] <= 1
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("celeba-gender-vgg16")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    (run,) = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    assert run.data.metrics["test_ece"] == pytest.approx(metrics["ece"], abs=1e-4)
    assert run.data.metrics["test_accuracy_low"] == pytest.approx(metrics["ci95"]["low"], abs=1e-4)
    artifacts = {a.path for folder in ("", "curves", "slices") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"test_predictions.csv", "model_card.md", "curves/reliability.png", "curves/roc.png", "curves/pr.png",
            "slices/slices.csv", "slices/slices.png"} <= artifacts, artifacts
    def artifact(path: str) -> str:
        return Path(client.download_artifacts(run.info.run_id, path, str(tmp_path))).read_text()

    predictions = pd.read_csv(io.StringIO(artifact("test_predictions.csv")), dtype={"image_id": str})
    test = pd.read_csv(root / "data" / "split" / "test.csv", dtype={"image_id": str})
    assert predictions[["image_id", "label"]].equals(test) and predictions["p_male"].between(0, 1).all()
    assert ((predictions["p_male"] > 0.5).astype(int) == predictions["label"]).mean() == metrics["accuracy"]
    table = pd.read_csv(root / "metrics" / "slices.csv")
    attributes = pd.read_csv(root / "data" / "split" / "test_attributes.csv").columns[1:]
    assert len(table) == 2 * len(attributes) == 2 * 39
    hats = table.set_index("slice").loc["Wearing_Hat=present"]  # the synthetic set draws no hats
    assert hats["n"] == 0 and pd.isna(hats["accuracy"])
    assert (table.groupby("attribute")["n"].sum() == 20).all()
    for name in ("roc", "pr", "calibration"):
        assert len(pd.read_csv(root / "metrics" / f"{name}.csv")) > 0, name
    best = json.loads((root / "models" / "best.json").read_text())
    version = client.get_model_version("gender-vgg16-synthetic", str(best["version"]))
    card = artifact("model_card.md")
    assert version.description == card == client.get_registered_model("gender-vgg16-synthetic").description
    assert card.startswith(f"# Model card: gender-vgg16-synthetic v{best['version']}")
    assert "| test | 20 |" in card and f"{best['variant']}" in card and "## Ethical considerations" in card


def test_exp_show_has_params_and_metrics(project):
    root, _ = project
    rows = json.loads(sh(["dvc", "exp", "show", "--json"], root).stdout)
    assert rows[0]["rev"] == "workspace"
    data = rows[0]["data"]
    params = data["params"]["params.yaml"]["data"]["train"]["variants"]
    assert params["last_block-lr1e-4"] == {"strategy": "last_block", "lr": 0.0001}
    metrics = data["metrics"]
    assert set(metrics) == {"metrics/select.json", "metrics/evaluate.json"}
    selected = metrics["metrics/select.json"]["data"]
    assert set(selected["best_val_acc"]) == set(params)
    assert selected["selected"] == json.loads((root / "models" / "best.json").read_text())["variant"]
    scores = metrics["metrics/evaluate.json"]["data"]
    assert {"accuracy", "ci95", "roc_auc", "ece"} <= set(scores)
    assert "worst_slices" not in scores  # no slice of 20 test images holds evaluate.min_slice (30)


def test_second_repro_changes_nothing_and_one_lr_edit_reruns_narrowly(own_copy):
    root = own_copy
    assert stages_run(sh(["dvc", "repro"], root).stdout) == []
    params_file = root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["train"]["variants"]["head_only-lr1e-3"]["lr"] = 0.002
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stages_run(sh(["dvc", "repro"], root).stdout) == ["train@head_only-lr1e-3", "select", "evaluate"]
    # a removed variant (the one just edited): select and evaluate re-run, and DVC shows no metric of it any more
    del raw["train"]["variants"]["head_only-lr1e-3"]
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stages_run(sh(["dvc", "repro"], root).stdout) == ["select", "evaluate"]
    metrics = sh(["dvc", "metrics", "show", "--json"], root).stdout
    workspace = json.loads(sh(["dvc", "exp", "show", "--json"], root).stdout)[0]  # the committed row still has it
    assert workspace["rev"] == "workspace"
    assert "head_only-lr1e-3" not in metrics + json.dumps(workspace["data"]["metrics"]), metrics
    assert "last_block-lr1e-4" in metrics, metrics


def test_code_only_change_retrains_to_identical_metrics_and_keeps_the_champion(own_copy, project):
    """A change to code every training stage runs retrains every variant from the images (a new
    feature-cache key too) into new MLflow runs: the metrics come out byte for byte as they were
    (training is deterministic), select takes the new runs and registers them as the challenger,
    and the champion stays, since the new model gets exactly the same validation images right."""
    root = own_copy
    original_artifacts = sorted((project[0] / "mlartifacts").rglob("*"))
    before = json.loads((root / "models" / "best.json").read_text())
    files = sorted(p.relative_to(root) for p in (root / "metrics").rglob("*") if p.is_file())
    assert len(files) == 2 + 2 + 2 + 7  # per variant: summary, history; curves, select.json; evaluate: 7 files
    metrics_before = {rel: (root / rel).read_bytes() for rel in files}
    with open(root / "pipeline" / "tracking" / "served_model.py", "a") as f:
        f.write("\n# a code change that leaves every number as it was\n")
    ran = stages_run(sh(["dvc", "repro"], root).stdout)
    assert sorted(ran[:-2]) == sorted(f"train@{v}" for v in VARIANTS) == \
        sorted(f"train@{c['variant']}" for c in before["candidates"])
    assert ran[-2:] == ["select", "evaluate"]
    after = json.loads((root / "models" / "best.json").read_text())
    assert after["variant"] == before["variant"] and after["best_val_acc"] == before["best_val_acc"]
    assert after["run_id"] != before["run_id"] and after["version"] == before["version"] + 1
    assert (after["champion"], after["promoted"]) == (before["version"], False)  # a tie keeps the champion
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert int(client.get_model_version_by_alias("gender-vgg16-synthetic", "champion").version) == before["version"]
    assert int(client.get_model_version_by_alias("gender-vgg16-synthetic", "challenger").version) == after["version"]
    assert sorted(p.relative_to(root) for p in (root / "metrics").rglob("*") if p.is_file()) == files
    promotion = ("promoted", "decision", "champion", "challenger", "vs_champion")
    for rel in files:
        if rel.name == "select.json":  # the models' numbers as they were; the registry moved on
            old, new = (json.loads(b) for b in (metrics_before[rel], (root / rel).read_bytes()))
            assert {k: v for k, v in new.items() if k not in promotion} == \
                {k: v for k, v in old.items() if k not in promotion}
            assert (new["decision"], new["vs_champion"]["only_champion"], new["vs_champion"]["only_challenger"]) == \
                ("not_better", 0, 0)
        else:
            assert (root / rel).read_bytes() == metrics_before[rel], rel
    assert sorted((project[0] / "mlartifacts").rglob("*")) == original_artifacts  # the copy wrote its own


def aliases(root: Path) -> tuple[int, int]:
    """(champion, challenger) versions of the registered model in ``root``'s store."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return tuple(int(client.get_model_version_by_alias("gender-vgg16-synthetic", a).version)
                 for a in ("champion", "challenger"))


def test_experiments_move_the_challenger_and_only_a_better_model_becomes_champion(own_copy):
    """After the repro (champion v1, trained 2 epochs): a 1-epoch experiment is registered as the
    challenger and leaves the champion alone (it gets no more of the same validation images
    right); a 4-epoch one, which gets more of them right, becomes champion. The numbers are the
    same on every machine (train.reproducible), so the outcome is too."""
    root = own_copy
    assert aliases(root) == (1, 1)
    out = sh(["dvc", "exp", "run", "-S", "train.epochs=1"], root).stdout
    sel = json.loads((root / "metrics" / "select.json").read_text())
    assert aliases(root) == (1, 2) and (sel["promoted"], sel["decision"], sel["champion"]) == (False, "not_better", 1)
    vs = sel["vs_champion"]
    assert vs["challenger_acc"] <= vs["champion_acc"] and vs["only_challenger"] <= vs["only_champion"], vs
    assert re.search(r"select: gender-vgg16-synthetic v2 @challenger; champion v1 kept: v2 gets \d+ of \d+ "
                     r"validation images right, v1 \d+", out), out

    out = sh(["dvc", "exp", "run", "-S", "train.epochs=4"], root).stdout
    sel = json.loads((root / "metrics" / "select.json").read_text())
    assert aliases(root) == (3, 3) and (sel["promoted"], sel["decision"], sel["champion"]) == (True, "better", 3), out
    vs = sel["vs_champion"]
    assert vs["challenger_acc"] > vs["champion_acc"] and vs["only_challenger"] > vs["only_champion"], vs
    assert "v3 promoted: v3 gets" in out
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version("gender-vgg16-synthetic", "3")
    assert (version.tags["promoted"], version.tags["decision"], version.tags["champion_before"]) == ("True", "better", "1")
    # each run says which DVC experiment it belongs to, in a tag (to group the runs table by) and its name
    name = re.search(r"Reproducing experiment '([^']+)'", out).group(1)
    exp_id = client.get_experiment_by_name("celeba-gender-vgg16").experiment_id
    runs = client.search_runs([exp_id], f"tags.dvc_experiment = '{name}'")
    assert sorted(r.data.tags["stage"] for r in runs) == ["evaluate", "select", "train", "train"]
    assert all(r.info.run_name.endswith(f" [{name}]") and r.data.tags["git_commit"] for r in runs)


def test_only_split_depends_on_the_data_folder(own_copy):
    """``data.root`` is a dependency of split alone (DVC walks it once per ``dvc status``): one
    image replaced (same name, other pixels) puts split out of date (and generate, whose output
    the generated set is); the stages that read images follow through split's manifest
    (tests/test_mistakes.py runs that repro on a CelebA folder)."""
    root = own_copy
    assert changed_stages(root) == set()
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    data_root = str(Path("data") / "synthetic")
    assert [s for s, spec in lock.items() if any(d["path"] == data_root for d in spec.get("deps", []))] == ["split"]
    victim, other = sorted((root / "data" / "synthetic" / IMAGE_DIR).glob("*.jpg"))[:2]
    victim.unlink()  # never write through: the workspace file may share the DVC cache's bytes
    victim.write_bytes(other.read_bytes())
    assert changed_stages(root) == {"generate", "split"}


# --- Through a DVC remote: push, a fresh `git clone` pulls, is up to date, runs nothing and
# predicts what the first clone does; the feature cache and resume state stay out; a bad remote
# fails in one line (pipeline/tools/remote.py) ----------------------------------------------------------

REMOTE_VARIANT = "head_only-lr1e-3"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def remote_objects(remote: Path) -> set[str]:
    """The md5 of every object in a DVC 3 local remote (files/md5/ab/cdef...)."""
    return {p.parent.name + p.name for p in (remote / "files" / "md5").glob("*/*")}


def predict(project: Path, images: list[Path]) -> str:
    return sh([sys.executable, "-m", "pipeline", "predict", "--json", "--model",
               f"models/{REMOTE_VARIANT}/best.pt", *map(str, images)], project).stdout


@pytest.fixture(scope="module")
def pushed(project, tmp_path_factory):
    """A copy of the repro'd project, committed and pushed to a local-folder remote."""
    first = copy_project(project[0], tmp_path_factory.mktemp("remote") / "first")
    remote = first.parent / "store"
    remote.mkdir()
    sh(["dvc", "remote", "add", "-d", "store", str(remote)], first)
    sh("git add -A && git commit -qm 'repro'", first)
    out = sh([sys.executable, "-m", "pipeline", "remote", "push"], first).stdout
    assert out.strip(), "push says what it did"
    return first, remote


def test_a_fresh_clone_pulls_everything_and_runs_nothing(pushed, tmp_path):
    first, remote = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    assert not (clone / "models").exists() and not (clone / "data").exists()
    started = time.monotonic()
    sh([sys.executable, "-m", "pipeline", "remote", "pull"], clone)
    pulled = time.monotonic() - started
    assert sh(["dvc", "status"], clone).stdout.strip() == UP_TO_DATE
    assert stages_run(sh(["dvc", "repro"], clone).stdout) == []
    total = time.monotonic() - started
    print(f"pull {pulled:.1f} s, pull + repro that runs nothing {total:.1f} s")  # a figure, not a test

    # the champion's pointer and every model travelled, byte for byte
    for rel in ("models/best.json", *(f"models/{v}/best.pt" for v in VARIANTS), *(f"runs/{v}.json" for v in VARIANTS)):
        assert md5(clone / rel) == md5(first / rel), rel
    images = sorted((clone / "data" / "synthetic" / IMAGE_DIR).glob("*.jpg"))[:5]
    assert len(images) == 5
    ours = predict(first, [first / p.relative_to(clone) for p in images])
    theirs = predict(clone, images)
    ours, theirs = ([json.loads(line)["p_male"] for line in out.splitlines()] for out in (ours, theirs))
    assert len(ours) == 5 and ours == theirs

    # what must not travel: the feature cache, resume state
    assert (first / "data" / "features").is_dir() and not (clone / "data" / "features").exists()
    features = {md5(p) for p in (first / "data" / "features").rglob("*") if p.is_file()}
    assert features and not features & remote_objects(remote)
    assert not list(clone.glob("models/*/resume"))
    assert md5(first / "models" / "best.json") in remote_objects(remote)


def test_pull_from_a_remote_that_lacks_the_data_fails_in_one_line(pushed, tmp_path):
    first, _ = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    empty = tmp_path / "empty-store"
    empty.mkdir()
    sh(["dvc", "remote", "modify", "--local", "store", "url", str(empty)], clone)
    proc = sh([sys.executable, "-m", "pipeline", "remote", "pull"], clone, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: DVC remote 'store' ({empty}) lacks ") and proc.stderr.count("\n") == 1
    assert "nothing pulled" in proc.stderr
    print(proc.stderr)  # for the record
    assert not (clone / "models").exists() and not (clone / "data").exists()


@pytest.mark.parametrize("where", ["missing", "under-a-file"])
def test_an_unreachable_remote_fails_in_one_line(pushed, tmp_path, where):
    first, _ = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    (tmp_path / "a-file").write_text("")
    url = tmp_path / ("not-mounted" if where == "missing" else "a-file/store")
    sh(["dvc", "remote", "modify", "--local", "store", "url", str(url)], clone)
    for action in ("pull", "push"):
        proc = sh([sys.executable, "-m", "pipeline", "remote", action], clone, check=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and str(url) in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"error: DVC remote 'store': {url} ")
    assert not url.exists() and not (clone / "models").exists()


def test_a_remote_dvc_cannot_reach_fails_in_one_line(pushed, tmp_path):
    """An S3 remote without DVC's s3 extra: DVC's own error, several lines, comes out as one."""
    first, _ = pushed
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    sh(["dvc", "remote", "modify", "--local", "store", "url", "s3://no-such-bucket/celeba"], clone)
    proc = sh([sys.executable, "-m", "pipeline", "remote", "pull"], clone, check=False)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: DVC remote 'store' (s3://no-such-bucket/celeba) is unreachable: ")
    assert "dvc.org/support" not in proc.stderr
    assert not (clone / "models").exists() and not (clone / "data").exists()


# --- In a browser: MLflow's UI and the HTML of `dvc plots show`, in Debian's headless Chromium ----
# No Python browser driver: Chromium's own command line dumps the DOM after the page's scripts ran
# (--dump-dom) and saves a screenshot (--screenshot). .ci/run installs the `chromium` package.

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  # without these Chromium keeps calling Google, which a closed network refuses
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000", "--hide-scrollbars")


OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"  # no host name resolves: no CDN, no network at all


def _browse(url: str, png: Path, tmp: Path, ready=lambda dom: True, *flags: str) -> str:
    """``url``'s DOM after its scripts ran, and a 1400x1000 screenshot of it saved as ``png``.

    --virtual-time-budget lets timers and fetches run for that much virtual time before the dump
    (a few real seconds); if ``ready(dom)`` is still false, once more with a longer budget."""
    for budget_ms in (20_000, 60_000):
        profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp)  # a new, empty profile
        proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}",
                               f"--virtual-time-budget={budget_ms}", "--dump-dom", f"--screenshot={png}", url],
                              capture_output=True, text=True, timeout=600)  # a bound on a hang: with
        # the suite's other workers busy, Chromium took over 120 s for a 20 s virtual budget once
        assert proc.returncode == 0, f"chromium failed on {url}:\n{proc.stderr[-3000:]}"
        if ready(proc.stdout):
            break
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", png
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (1400, 1000), png
    assert len(data) > 15_000, f"{png}: {len(data)} bytes, a blank page?"  # blank: about 7 KB
    return proc.stdout


@contextmanager
def _mlflow_ui(root: Path, log: Path):
    """`mlflow ui` on 127.0.0.1 over the project's store, in its own session; yields its base URL.
    The whole process group (the server's workers too) is killed on the way out."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                                 f"sqlite:///{root / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=root, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"mlflow ui exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow ui not healthy after 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield base
    finally:
        stop_group(proc, timeout=15)


@pytest.mark.needs(CHROMIUM is not None, reason="Debian's chromium is not installed (.ci/run installs it "
                                             "with apt-get when it can)")
def test_browser_mlflow_ui_lists_the_runs_and_dvc_plots_holds_the_charts(project, tmp_path):
    """MLflow's UI opens the experiment on its runs and lists the variants' runs and `evaluate`; the
    model page shows the champion's card; `dvc plots show` draws every chart with no network at
    all. Screenshots: mlflow_experiment.png, mlflow_runs.png, mlflow_evaluate_run.png,
    mlflow_model.png, dvc_plots.png in tmp_path."""
    root, _ = project
    variants = list(yaml.safe_load((root / "params.yaml").read_text())["train"]["variants"])
    assert variants == list(VARIANTS)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("celeba-gender-vgg16").experiment_id
    n_runs = len(client.search_runs([exp_id], max_results=1000))
    # the latest repro's runs (earlier tests may have re-run stages): runs/*.json, and the
    # evaluate run under the champion
    trained = {json.loads((root / "runs" / f"{v}.json").read_text())["run_id"]: v for v in variants}
    best = json.loads((root / "models" / "best.json").read_text())
    (evaluate,) = client.search_runs(
        [exp_id], f"tags.stage = 'evaluate' and tags.`mlflow.parentRunId` = '{best['run_id']}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    expected = {**trained, evaluate.info.run_id: "evaluate"}

    with _mlflow_ui(root, tmp_path / "mlflow-ui.log") as base:
        # the experiment's page that `make mlflow-ui` prints: its runs table, not the GenAI overview
        page = sh([sys.executable, "-m", "pipeline", "store", "--what", "runs-page"], root).stdout.strip()
        assert page == f"/#/experiments/{exp_id}?workflowType=machine_learning"
        dom = _browse(base + page, tmp_path / "mlflow_experiment.png", tmp_path, lambda d: all(r in d for r in trained))
        assert all(f"#/experiments/{exp_id}/runs/{r}" in dom for r in trained) and "matching runs" in dom
        # Ordered by start time (the default) the table nests `evaluate` under its parent run,
        # collapsed; ordered by anything else it lists every run flat: best validation accuracy first.
        order = urllib.parse.quote("metrics.`best_val_acc`")
        dom = _browse(f"{base}/#/experiments/{exp_id}/runs?orderByKey={order}&orderByAsc=false",
                      tmp_path / "mlflow_runs.png", tmp_path, ready=lambda d: all(r in d for r in expected))
        # each run's name is a link to its own page
        links = dict(re.findall(rf'href="#/experiments/{exp_id}/runs/([0-9a-f]{{32}})"[^>]*>\s*<span[^>]*>([^<]+)</span>',
                                dom))
        assert {run_id: links.get(run_id) for run_id in expected} == expected, links
        assert re.search(rf"<strong>{n_runs}</strong>\s*matching runs", dom), "run count missing"

        dom = _browse(f"{base}/#/experiments/{exp_id}/runs/{evaluate.info.run_id}",
                      tmp_path / "mlflow_evaluate_run.png", tmp_path, ready=lambda d: "test_accuracy" in d)
        assert 'data-testid="runs-header">evaluate<' in dom and "test_accuracy" in dom
        assert re.search(rf'data-testid="key-value-Parent run".{{0,400}}?'
                         rf'href="#/experiments/{exp_id}/runs/{best["run_id"]}">{re.escape(best["variant"])}</a>', dom, re.S)

        # the registered model's page: its description is the champion's model card
        title = f"Model card: gender-vgg16-synthetic v{best['version']}"
        dom = _browse(f"{base}/#/models/gender-vgg16-synthetic", tmp_path / "mlflow_model.png", tmp_path,
                      lambda d: title in d)
        assert title in dom and "Intended use" in dom and "Ethical considerations" in dom

    # `dvc plots show` (the template .dvc/plots/variant_curves.json came with the project)
    out = tmp_path / "plots"
    sh(["dvc", "plots", "show", "-o", str(out)], root)
    page = (out / "index.html").read_text()
    specs = {div: json.loads(spec) for div, spec in re.findall(
        r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (\{.*?\});\s*vegaEmbed', page, re.S)}
    assert set(specs) == {"val_acc", "val_loss", "metrics_confusion_matrix_csv", "roc", "precision_recall",
                          "reliability", "slices"}
    assert "cdn.jsdelivr.net" not in page  # the libraries come inline (.dvc/plots/offline.html)
    with open(root / "metrics" / "curves.csv", newline="") as f:
        curves = sorted(tuple(row.items()) for row in csv.DictReader(f))
    assert {dict(row)["variant"] for row in curves} == set(variants)
    for metric in ("val_acc", "val_loss"):
        encoding = specs[metric]["encoding"]
        assert (encoding["x"]["field"], encoding["y"]["field"], encoding["color"]["field"]) == \
            ("epoch", metric, "variant")
        keys = [k for k, _ in curves[0]]
        assert sorted(tuple((k, v[k]) for k in keys) for v in specs[metric]["data"]["values"]) == curves
    with open(root / "metrics" / "confusion_matrix.csv", newline="") as f:
        cells = Counter((row["actual"], row["predicted"]) for row in csv.DictReader(f))
    assert Counter((v["actual"], v["predicted"])
                   for v in specs["metrics_confusion_matrix_csv"]["data"]["values"]) == cells
    assert '<img src="static/workspace_metrics_confusion_matrix.png">' in page
    assert (out / "static" / "workspace_metrics_confusion_matrix.png").read_bytes() == \
        (root / "metrics" / "confusion_matrix.png").read_bytes()
    for name, column in (("roc", "tpr"), ("precision_recall", "precision"), ("reliability", "fraction_male")):
        assert len(specs[name]["data"]["values"]) > 0 and column in specs[name]["data"]["values"][0], name
    # Offline, with no host name resolving: each chart is drawn (vega-embed puts a canvas in its div)
    drawn = lambda d: all(re.search(rf'<div id="{div}" class="vega-embed[^"]*">.{{0,300}}<canvas', d) for div in specs)
    dom = _browse((out / "index.html").as_uri(), tmp_path / "dvc_plots.png", tmp_path, drawn, OFFLINE)
    assert drawn(dom), [div for div in specs if not re.search(rf'<div id="{div}" class="vega-embed', dom)]
    assert 'src="static/workspace_metrics_confusion_matrix.png"' in dom
