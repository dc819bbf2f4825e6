"""Selection from MLflow's tracked metrics, ties included."""
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.cli import PipelineError
from pipeline.stages.select import candidates_from_mlflow, choose


def cand(variant, acc, loss):
    return {"variant": variant, "best_val_acc": acc, "best_val_loss": loss}


def test_highest_accuracy_wins():
    assert choose([cand("a", 0.8, 0.1), cand("b", 0.9, 0.5), cand("c", 0.85, 0.2)])["variant"] == "b"


def test_tie_goes_to_lower_val_loss_then_name():
    assert choose([cand("a", 0.9, 0.4), cand("b", 0.9, 0.3)])["variant"] == "b"
    assert choose([cand("z", 0.9, 0.3), cand("m", 0.9, 0.3), cand("q", 0.8, 0.1)])["variant"] == "m"
    with pytest.raises(PipelineError):
        choose([])


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("t")
    return MlflowClient(uri)


def log_run(name, history, best_acc, best_loss, finish=True):
    run = mlflow.start_run(run_name=name)
    for step, acc in enumerate(history, start=1):
        mlflow.log_metric("val_acc", acc, step=step)
    mlflow.log_metrics({"best_val_acc": best_acc, "best_val_loss": best_loss, "best_epoch": 1})
    mlflow.set_tag("model_uri", f"models:/m-{name}")
    mlflow.end_run("FINISHED" if finish else "FAILED")
    return run.info.run_id


def test_candidates_come_from_mlflow(store):
    ids = {"a": log_run("a", [0.7, 0.9], 0.9, 0.30), "b": log_run("b", [0.9, 0.8], 0.9, 0.25),
           "c": log_run("c", [0.95, 0.5], 0.95, 0.9)}
    cands = candidates_from_mlflow(store, ids)
    assert [(c["variant"], c["best_val_acc"], c["best_val_loss"]) for c in cands] == \
        [("a", 0.9, 0.30), ("b", 0.9, 0.25), ("c", 0.95, 0.9)]
    best = choose(cands)
    assert best["variant"] == "c" and best["run_id"] == ids["c"] and best["model_uri"] == "models:/m-c"
    # the same selection as MLflow's own ordering on best_val_acc, then loss
    top = store.search_runs([store.get_experiment_by_name("t").experiment_id],
                            order_by=["metrics.best_val_acc DESC", "metrics.best_val_loss ASC"], max_results=1)
    assert top[0].info.run_id == best["run_id"]


def test_unknown_or_failed_run_is_a_clear_error(store):
    with pytest.raises(PipelineError, match="run 0123 of variant 'a' is not in the MLflow store"):
        candidates_from_mlflow(store, {"a": "0123"})
    failed = log_run("f", [0.5], 0.5, 0.7, finish=False)
    with pytest.raises(PipelineError, match="did not finish"):
        candidates_from_mlflow(store, {"f": failed})


ECHO_MODEL = '''
import mlflow


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str]) -> list[str]:
        return model_input


mlflow.models.set_model(Echo())
'''


def test_select_stage_ranks_by_mlflow_not_local_json_and_registers(make_params, tmp_path):
    import json

    from pipeline.core import config
    from pipeline.core.files import write_json
    from pipeline.stages.select import last_line, select
    from pipeline.tracking import runs
    from pipeline.tracking.runs import log_predictions
    from pipeline.tracking.train_log import log_pyfunc
    from pipeline.training.model import build_model, save_checkpoint

    variants = {"a": {"strategy": "head_only", "lr": 0.1}, "b": {"strategy": "head_only", "lr": 0.2},
                "c": {"strategy": "last_block", "lr": 0.3}}
    params = make_params({"train.variants": variants})
    split_dir = params.path("split.dir")
    split_dir.mkdir(parents=True)
    images = [f"{i:06d}.jpg" for i in range(10)]
    (split_dir / "val.csv").write_text("image_id,label\n" + "".join(f"{i},{n % 2}\n" for n, i in enumerate(images)))
    runs.setup(params.mlflow_config())
    code = tmp_path / "echo_model.py"
    code.write_text(ECHO_MODEL)
    # in MLflow: a and b tie on best_val_acc, b has the lower loss; c is worse. Each run's
    # validation predictions say the same: the images each one gets wrong
    tracked = {"a": (0.9, 0.30, [1]), "b": (0.9, 0.25, [0]), "c": (0.7, 0.10, [0, 1, 2])}
    ckpt = tmp_path / "best.pt"  # the winner's model is a real (trainable-only) one: select loads it
    save_checkpoint(ckpt, build_model("none", 42), image_size=32, weights="none", seed=42)
    for name, (acc, loss, wrong) in tracked.items():
        with mlflow.start_run(run_name=name) as run:
            mlflow.log_metrics({"best_val_acc": acc, "best_val_loss": loss, "best_epoch": 2})
            labels = [n % 2 for n in range(10)]
            log_predictions(images, labels, [abs(y - (n in wrong)) * 0.8 + 0.1 for n, y in enumerate(labels)],
                            runs.VAL_PREDICTIONS)
            model_uri = log_pyfunc(ckpt, params.get("data.image_size"), params.root) if name == "b" else \
                mlflow.pyfunc.log_model(name="model", python_model=str(code)).model_uri
            mlflow.set_tag("model_uri", model_uri)
        write_json(params.run_file(name), {"run_id": run.info.run_id})
        # the local metrics say the opposite: select must not read them
        write_json(params.path("train.metrics_dir") / f"{name}.json", {"best_val_acc": 1 - acc, "best_val_loss": loss})
    lines = []
    result = select(params, log=lines.append)
    best = json.loads(params.path("select.output").read_text())
    assert best["variant"] == result["variant"] == "b"
    assert best["best_val_acc"] == 0.9 and best["best_val_loss"] == 0.25
    assert [c["variant"] for c in best["candidates"]] == ["a", "b", "c"]
    client = MlflowClient(config.tracking_uri(params))
    version = client.get_model_version_by_alias("gender-vgg16-synthetic", "champion")
    assert version.run_id == best["run_id"] and int(version.version) == best["version"] == 1
    # what is registered is the champion select logged to b's run, not b's trainable-only model
    assert version.source == best["champion_uri"] != best["model_uri"]
    assert mlflow.models.get_model_info(version.source).name == "champion"
    # how sure: each candidate's interval from its predictions; b against the runner-up a
    metrics = json.loads(params.path("select.metrics").read_text())
    assert metrics["selected"] == "b" and metrics["best_val_acc"] == {"a": 0.9, "b": 0.9, "c": 0.7}
    assert metrics["ci95"]["c"] == {"low": pytest.approx(0.3968, abs=1e-4), "high": pytest.approx(0.8922, abs=1e-4)}
    assert metrics["runner_up_p"] == 1.0  # one image each where the other is wrong
    assert (metrics["promoted"], metrics["decision"], metrics["champion"], metrics["challenger"]) == (True, "first", 1, 1)
    assert any("b over a: right where the other is wrong on 1 vs 1 images, exact McNemar p = 1, within noise" in line
               for line in lines), lines
    (run,) = client.search_runs([client.get_run(version.run_id).info.experiment_id], "tags.stage = 'select'")
    assert run.data.tags["mlflow.parentRunId"] == best["run_id"] and run.data.params["runner_up"] == "a"
    assert run.data.metrics["val_acc_low_c"] == pytest.approx(0.3968, abs=1e-4)
    # a second selection registers a new version, the challenger; the champion's run logged no
    # validation split, so the two cannot be compared and the champion stays
    again = select(params, log=lines.append)
    assert again["version"] == 2 and again["champion"] == 1 and not again["promoted"]
    assert int(client.get_model_version_by_alias("gender-vgg16-synthetic", "champion").version) == 1
    assert int(client.get_model_version_by_alias("gender-vgg16-synthetic", "challenger").version) == 2
    tags = client.get_model_version("gender-vgg16-synthetic", "2").tags
    assert tags["decision"] == "not_comparable"
    # what predict says of a version: its data set and validation score, as select saw them
    assert (tags["data_source"], tags["val_acc"], tags["val_acc_ci95"], tags["n_val"]) == \
        ("synthetic", "0.9000", "[0.596, 0.982]", "10")
    assert last_line(result) == (f"select: b (best_val_acc=0.9000, run {best['run_id']}) -> gender-vgg16-synthetic v1; "
                                 "@champion is v1")
    assert last_line(again).endswith("-> gender-vgg16-synthetic v2; @champion is v1; to make this pick @champion "
                                     "anyway: dvc exp run -S select.promote=always (re-runs select and evaluate only)")
