"""params.yaml validation: a bad knob fails before any work, naming the key."""
import os

import pytest

from pipeline.core.cli import PipelineError
from pipeline.core.config import load_params, tracking_uri, write_project


@pytest.mark.parametrize("overrides,message", [
    ({"train.variants": {"v": {"strategy": "head_only", "lr": -0.1}}}, "train.variants.v.lr must be a positive number"),
    ({"train.variants": {"v": {"strategy": "head_only", "lr": 0}}}, "train.variants.v.lr must be a positive number"),
    ({"train.variants": {"v": {"strategy": "everything", "lr": 0.1}}}, "train.variants.v.strategy must be one of"),
    ({"train.variants": {"head-lr0.1": {"strategy": "head_only", "lr": 0.1}}}, "name 'head-lr0.1' may hold only"),
    ({"train.epochs": 0}, "train.epochs must be an integer >= 1"),
    ({"data.image_size": 16}, "data.image_size must be an integer >= 32"),
    ({"split.fractions": {"train": 0.8, "val": 0.1, "test": 0.2}}, "split.fractions must sum to 1"),
    ({"data.source": "imagenet"}, "data.source must be 'synthetic' or 'celeba'"),
    ({"train.reuse_frozen": "yes"}, "train.reuse_frozen must be true or false"),
    ({"train.frozen_dropout": 1}, "train.frozen_dropout must be true or false"),
    ({"train.amp": "fp16"}, "train.amp must be one of auto, none, bf16, got 'fp16'"),
    ({"train.num_workers": "all"}, "train.num_workers must be auto or an integer >= 0, got 'all'"),
    ({"train.frozen_features": "disk"}, "train.frozen_features must be one of auto, cache, recompute, got 'disk'"),
    ({"train.cache_budget_gb": 0}, "train.cache_budget_gb must be a positive number, got 0"),
    ({"train.cache_budget_gb": "50GB"}, "train.cache_budget_gb must be a positive number, got '50GB'"),
])
def test_bad_values_name_the_key(make_params, overrides, message):
    with pytest.raises(PipelineError, match=message):
        make_params(overrides)


def test_missing_file_and_key(tmp_path, make_params):
    with pytest.raises(PipelineError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(PipelineError, match="missing key 'train.nope'"):
        make_params().get("train.nope")


def test_paths_resolve_against_the_params_folder(make_params, tmp_path, monkeypatch):
    params = make_params()
    assert params.path("split.dir") == tmp_path / "data" / "split"
    assert params.path("data.root") == params.path("data.synthetic.dir") == tmp_path / "data" / "synthetic"
    assert tracking_uri(params) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(params) == "http://127.0.0.1:5999"
    (tmp_path / "celeba").mkdir()
    (tmp_path / "celeba" / "list_attr_celeba.txt").write_text("")
    celeba = make_params({"data.source": "celeba", "data.root": str(tmp_path / "celeba")})
    assert celeba.dataset_root() == tmp_path / "celeba"



def test_the_wiring_comes_from_dvc_yaml_once(make_params, tmp_path):
    """Where each stage writes what the next one reads is dvc.yaml's ``vars`` (not a knob of
    params.yaml, whose every key ``dvc exp show`` lists); the params get it under the same keys,
    from the dvc.yaml beside the params file, else this checkout's. A key in both is one line."""
    import yaml
    from helpers.config import REPO

    wiring = [item for item in yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"] if isinstance(item, dict)]
    keys = [f"{section}.{key}" for item in wiring for section, values in item.items() for key in values]
    assert "split.dir" in keys and "select.output" in keys and "evaluate.slices" in keys
    knobs = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in keys:
        section, leaf = key.split(".")
        assert leaf not in knobs.get(section, {}), key  # one place
    params = make_params()  # a scratch folder without dvc.yaml: the checkout's wiring
    assert params.path("select.output") == tmp_path / "models" / "best.json"
    assert sorted(params.wiring) == sorted(keys)
    own = tmp_path / "own"
    own.mkdir()
    wiring[0]["split"]["dir"] = "elsewhere/split"  # an experiment's copy of dvc.yaml, its split moved
    (own / "dvc.yaml").write_text(yaml.safe_dump({"vars": ["params.yaml", *wiring]}))
    moved = make_params(folder=own)
    assert moved.path("split.dir") == own / "elsewhere" / "split"
    with pytest.raises(PipelineError, match=r"^params.yaml: split.dir is wiring between stages, set in dvc.yaml "
                                            r"\(vars\); remove it from params.yaml$"):
        make_params({"split.dir": "data/other"}, folder=own)
    wiring[0]["evaluate"]["roc"] = ""  # checked as the knobs are, named by its key
    (own / "dvc.yaml").write_text(yaml.safe_dump({"vars": ["params.yaml", *wiring]}))
    with pytest.raises(PipelineError, match=r"evaluate.roc must be a non-empty string, got ''"):
        make_params(folder=own)
    raw = moved.resolved()  # what the tools edit (bench, devcheck): knobs and wiring, written apart again
    raw["split"]["dir"], raw["train"]["epochs"] = "scratch/split", 7
    scratch = load_params(write_project(tmp_path / "scratch", raw))
    assert scratch.path("split.dir") == tmp_path / "scratch" / "scratch" / "split"
    assert scratch.get("train.epochs") == 7 and scratch.resolved() == raw
    assert "dir" not in yaml.safe_load((tmp_path / "scratch" / "params.yaml").read_text())["split"]


def test_the_train_config_is_read_once_typed_and_resolved(make_params, tmp_path, monkeypatch):
    """What the training core takes instead of Params: values as validated, paths absolute (the
    weights file against the params folder, the feature cache against DVC_ROOT when set)."""
    weights = tmp_path / "w" / "vgg16.pt"
    params = make_params({"model.weights": "w/vgg16.pt", "train.cache_budget_gb": 2,
                          "train.variants": {"a": {"strategy": "last_block", "lr": 0.1},
                                             "b": {"strategy": "head_only", "lr": 0.2}}})
    cfg = params.train_config()
    assert (cfg.weights, cfg.data_root, cfg.split_dir, cfg.feature_cache) == (
        str(weights), tmp_path / "data" / "synthetic", tmp_path / "data" / "split", tmp_path / "data" / "features")
    assert (cfg.seed, cfg.image_size, cfg.epochs, cfg.batch_size) == (42, 32, 1, 16)
    assert cfg.cache_budget_gb == 2.0 and isinstance(cfg.cache_budget_gb, float)
    assert (cfg.reuse_frozen, cfg.frozen_dropout, cfg.amp, cfg.device) == (True, True, "auto", "cpu")
    assert cfg.strategies == ("last_block", "head_only")
    with pytest.raises(AttributeError):
        cfg.epochs = 2  # frozen: a module below the stage cannot change what the stage read
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    (tmp_path / "repo").mkdir()
    assert params.train_config().feature_cache == tmp_path / "repo" / "data" / "features"

def test_stage_cli_prints_one_line_and_exits_1(make_params, tmp_path, capsys):
    from pipeline.core.cli import run_main
    from pipeline.stages.split import main

    path = tmp_path / "bad.yaml"
    path.write_text("data: [1, 2\n")
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: main(["--params", str(path)]))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.yaml: not valid YAML" in err and "\n" not in err


def test_a_queued_experiment_resolves_shared_state_against_the_original_repo(make_params, tmp_path, monkeypatch):
    """`dvc exp run --queue` runs in a copy under .dvc/tmp/exps and sets DVC_ROOT to the repo."""
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmp123"
    params = make_params(folder=copy)
    assert tracking_uri(params) == f"sqlite:///{copy}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking_uri(params) == f"sqlite:///{tmp_path}/repo/mlflow.db"
    assert params.shared_path("train.feature_cache") == tmp_path / "repo" / "data" / "features"
    assert params.shared_path("base.mlflow.artifact_root") == tmp_path / "repo" / "mlartifacts"
    assert params.path("split.dir") == copy / "data" / "split"  # the experiment's own outputs stay in the copy


def test_setting_up_one_store_does_not_leak_into_the_next(make_params, tmp_path):
    """MLflow 3's set_tracking_uri writes MLFLOW_TRACKING_URI; setup must not let it win later."""
    from pipeline.core import config
    from pipeline.tracking import runs

    first = make_params(folder=tmp_path / "a")
    second = make_params(folder=tmp_path / "b")
    runs.setup(first.mlflow_config())
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert config.tracking_uri(second) == f"sqlite:///{tmp_path}/b/mlflow.db"
