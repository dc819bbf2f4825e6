"""The train core on a shrunken config: what lands in MLflow and on disk."""
import json

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.core import config
from pipeline.data.synthetic import generate_from_params
from pipeline.stages.split import split
from pipeline.stages.train import train


@pytest.fixture
def tiny(make_params):
    params = make_params({"train.epochs": 2})
    generate_from_params(params)
    split(params)
    return params


def test_train_logs_epochs_checkpoints_and_outputs(tiny):
    summary = train(tiny, "head_only-lr1e-3")
    client = MlflowClient(config.tracking_uri(tiny))
    assert config.tracking_uri(tiny) == f"sqlite:///{tiny.root / 'mlflow.db'}"
    run = client.get_run(summary["run_id"])
    assert run.info.run_name == "head_only-lr1e-3" and run.info.status == "FINISHED"
    assert run.data.tags["variant"] == "head_only-lr1e-3" and run.data.tags["stage"] == "train"
    assert "git_commit" in run.data.tags and run.data.tags["model_uri"].startswith("models:/")
    assert run.data.params["strategy"] == "head_only" and float(run.data.params["lr"]) == 0.001
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2]
    val_acc = [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert run.data.metrics["best_val_acc"] == max(val_acc) == summary["best_val_acc"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"}
    cm = {a.path for a in client.list_artifacts(run.info.run_id, "confusion_matrix")}
    assert cm == {"confusion_matrix/val.json", "confusion_matrix/val.png"}
    matrix = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="confusion_matrix/val.json", tracking_uri=config.tracking_uri(tiny))).read())
    n_val = int(run.data.params["n_val"])
    assert sum(map(sum, matrix["matrix"])) == n_val
    split = json.loads((tiny.path("split.dir") / "split.json").read_text())
    assert run.data.metrics["split_val_images"] == split["val"]["images"] == n_val
    assert run.data.metrics["split_train_male"] == split["train"]["male"]
    assert run.data.params["split_group_by"] == split["group_by"]
    assert "split.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (tiny.path("train.models_dir") / "head_only-lr1e-3" / "resume").exists()
    # local outputs
    out = tiny.path("train.models_dir") / "head_only-lr1e-3"
    record = json.loads(tiny.run_file("head_only-lr1e-3").read_text())
    assert record["run_id"] == run.info.run_id and record["model_uri"] == run.data.tags["model_uri"]
    assert tiny.run_file("head_only-lr1e-3").parent == tiny.path("train.runs_dir")
    assert sorted(p.name for p in out.iterdir()) == ["best.pt"]
    assert (out / "best.pt").stat().st_size < 64 * 1024
    metrics = json.loads((tiny.path("train.metrics_dir") / "head_only-lr1e-3.json").read_text())
    assert metrics["best_val_acc"] == summary["best_val_acc"] and metrics["best_epoch"] in (1, 2)
    hist = pd.read_csv(tiny.path("train.history_dir") / "head_only-lr1e-3.csv")
    assert list(hist.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert list(hist["epoch"]) == [1, 2] and list(hist["val_acc"]) == pytest.approx(val_acc, abs=1e-6)


@pytest.mark.parametrize("variant", ["head_only-lr1e-3", "last_block-lr1e-3"])
def test_the_variant_strategy_decides_what_trains(tiny, variant):
    """The stage hands the variant's strategy to the model: best.pt (trainable-only) holds exactly
    the head (and conv5 for last_block), each moved from the seeded base, the frozen-feature cache
    holds the layer before them, and MLflow records it."""
    from pipeline.training.model import LAST_BLOCK, build_model, load_checkpoint

    params = tiny
    run = MlflowClient(config.tracking_uri(params)).get_run(train(params, variant)["run_id"])
    layers = ["classifier.6", *([f"features.{i}" for i in LAST_BLOCK] if variant.startswith("last_block") else [])]
    trained = load_checkpoint(params.path("train.models_dir") / variant / "best.pt")["trainable"]
    assert set(trained) == {f"{layer}.{k}" for layer in layers for k in ("weight", "bias")}
    base = build_model("none", params.get("base.seed")).state_dict()
    assert all(not torch.equal(trained[f"{layer}.weight"], base[f"{layer}.weight"]) for layer in layers)
    assert run.data.params["trainable_layers"] == ",".join(sorted(layers))
    assert int(run.data.params["trainable_params"]) == sum(t.numel() for t in trained.values())
    # with frozen dropout on (the default) head_only trains from pool5: fc6/fc7 run each epoch
    assert run.data.params["cached_layer"] == ("pool4" if variant.startswith("last_block") else "pool5")


def test_two_runs_give_identical_metrics(tiny):
    a = train(tiny, "last_block-lr1e-4")
    hist_a = (tiny.path("train.history_dir") / "last_block-lr1e-4.csv").read_text()
    b = train(tiny, "last_block-lr1e-4")
    hist_b = (tiny.path("train.history_dir") / "last_block-lr1e-4.csv").read_text()
    assert a["run_id"] != b["run_id"]
    assert hist_a == hist_b
    assert {k: v for k, v in a.items() if k not in ("run_id", "timing")} == \
        {k: v for k, v in b.items() if k not in ("run_id", "timing")}


def dataset_inputs(client: MlflowClient, run_id: str) -> dict:
    """context -> (name, digest, source) of a run's MLflow dataset inputs."""
    out = {}
    for di in client.get_run(run_id).inputs.dataset_inputs:
        (context,) = [t.value for t in di.tags if t.key == "mlflow.data.context"]
        out[context] = (di.dataset.name, di.dataset.digest, json.loads(di.dataset.source))
    return out


def test_train_logs_its_splits_as_mlflow_datasets_whose_digest_follows_the_split(tiny):
    variant = "head_only-lr1e-3"
    client = MlflowClient(config.tracking_uri(tiny))
    first = dataset_inputs(client, train(tiny, variant)["run_id"])
    assert set(first) == {"training", "validation"}
    assert first["training"][0] == "synthetic-train" and first["validation"][0] == "synthetic-val"
    assert first["training"][2] == {"uri": str(tiny.path("data.root"))}  # the source names the data
    assert first["training"][1] != first["validation"][1]

    # the same images, one label flipped in the training split: a new digest for it, the same for val
    path = tiny.path("split.dir") / "train.csv"
    rows = path.read_text().splitlines()
    image, label = rows[1].split(",")
    rows[1] = f"{image},{1 - int(label)}"
    path.write_text("\n".join(rows) + "\n")
    second = dataset_inputs(client, train(tiny, variant)["run_id"])
    assert second["training"][1] != first["training"][1]
    assert second["validation"] == first["validation"]


SPLITS = 10
LOG_SPLITS = """
import pathlib, sys, time
import mlflow, pandas as pd
from pipeline.core import config
from pipeline.tracking import runs
from pipeline.core.config import load_params
params_file, barrier, me, n, splits = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:])
params = load_params(params_file)
runs.setup(params.mlflow_config())
frames = [pd.DataFrame({"image_id": [f"{i:06d}.jpg" for i in range(40)], "label": [(i + k) % 2 for i in range(40)]})
          for k in range(splits)]
with mlflow.start_run(run_name=me):
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < n:  # everybody starts logging at the same moment
        time.sleep(0.001)
    for k, frame in enumerate(frames):  # the same splits in the same order: a collision each
        runs.log_split_input(frame, f"train{k}", "synthetic", params.path("data.root"), f"training{k}")
"""


def test_parallel_runs_log_the_same_splits_once_each(make_params, tmp_path):
    """``dvc queue start -j 2`` trains two experiments of one split at once. MLflow looks a
    dataset up and then inserts it, so two runs logging it together both insert and one died on
    the store's UNIQUE constraint (seen: the README's queue lines, one experiment failed). Four
    processes here log the same ten splits through one SQLite store at the same moment (without
    the fix, 5 of 6 runs of this test failed): each run gets every input, the store holds each
    dataset once."""
    import subprocess
    import sys

    params = make_params()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", LOG_SPLITS, str(params.root / "params.yaml"), str(barrier),
                               f"run{i}", str(n), str(SPLITS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    results = list(zip((p.returncode for p in procs), errors))
    assert [code for code, _ in results] == [0] * n, [err.strip().splitlines()[-1:] for _, err in results]
    client = MlflowClient(config.tracking_uri(params))
    runs = client.search_runs([client.get_experiment_by_name(params.get("base.mlflow.experiment")).experiment_id])
    assert len(runs) == n
    digests = {(di.dataset.name, di.dataset.digest) for run in runs for di in run.inputs.dataset_inputs}
    assert len(digests) == SPLITS and all(len(run.inputs.dataset_inputs) == SPLITS for run in runs)


def test_a_gpu_run_says_first_that_its_numbers_are_not_the_committed_cpu_ones(monkeypatch):
    from pipeline.stages.train import gpu_note

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert gpu_note(torch.device("cuda:0"), "bf16") == (
        "train: on NVIDIA H100 80GB HBM3 (train.device cuda:0, amp bf16): the metrics are this GPU's, not the "
        "committed CPU ones, which train.device: cpu repeats (docs/reproducibility.md)")
