"""``python -m pipeline predict``: the registry's champion (or a checkpoint) on image files."""
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.champion_project import VARIANT, build, make_faces, preprocess, run_predict
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from mlflow.types import DataType
from PIL import Image

from pipeline.core import config
from pipeline.core.cli import PipelineError
from pipeline.tools.predict import expand, load_classifier
from pipeline.tracking import runs

SIZE = 32  # helpers.config.TINY's data.image_size
ROUNDING = 5e-5 + 1e-6  # the text output has 4 decimals
HALF = 1e-3  # the champion's weights are float16 (select.champion_dtype); a checkpoint's are float32


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return build(tmp_path_factory)


@pytest.fixture(scope="module")
def champion(project):
    """``(uri, pyfunc model)``: the registry's champion as MLflow itself loads it."""
    uri = f"models:/{project.registered_model()}@{project.get('select.alias')}"
    runs.use_store(config.store_uri(project))  # the project's own store, whatever the environment holds
    return uri, mlflow.pyfunc.load_model(uri)


@pytest.fixture(scope="module")
def faces(project, tmp_path_factory):
    """``(folder, image paths in name order, P(male) of each by the pyfunc model)``."""
    folder = tmp_path_factory.mktemp("faces")
    return folder, make_faces(project, folder)


def pyfunc_p_male(champion, images) -> np.ndarray:
    """P(male) by the registered pyfunc model, fed the image files' bytes (as a server is)."""
    frame = pd.DataFrame({"image": [p.read_bytes() for p in images]})
    return champion[1].predict(frame)["p_male"].to_numpy(dtype=np.float64)


def test_registered_model_is_the_whole_network_and_takes_raw_images(project, champion, faces):
    uri, pyfunc = champion
    runs.use_store(config.store_uri(project))  # a test of another module may have moved MLflow
    info = mlflow.models.get_model_info(uri)
    assert info.name == "champion" and info.model_uri.startswith("models:/m-")  # logged by select
    client = MlflowClient(config.store_uri(project))
    version = client.get_model_version_by_alias(project.registered_model(), "champion")
    assert version.source == info.model_uri  # the version registered from that logged model
    sig = info.signature
    assert not sig.inputs.is_tensor_spec() and not sig.outputs.is_tensor_spec()
    assert [(c.name, c.type) for c in sig.inputs.inputs] == [("image", DataType.binary)]
    assert [(c.name, c.type) for c in sig.outputs.inputs] == [("label", DataType.long), ("p_male", DataType.float)]
    local = Path(mlflow.artifacts.download_artifacts(uri))
    example = Model.load(local).load_input_example(local)
    assert list(example.columns) == ["image"] and isinstance(example["image"][0], bytes)
    p = pyfunc.predict(example)
    assert list(p.columns) == ["label", "p_male"] and len(p) == 1 and 0 < float(p["p_male"][0]) < 1
    assert p["label"][0] == int(p["p_male"][0] > 0.5)
    assert pyfunc.unwrap_python_model().image_size == SIZE
    # the champion carries every layer (avgpool folded into fc6 at 32x32), in float16
    (network,) = local.rglob("*.pt")
    assert network.name == "network.pt"
    state = torch.load(network, weights_only=True)["state"]
    assert state["features.0.weight"].dtype == torch.float16
    assert tuple(state["classifier.0.weight"].shape) == (4096, 512 * (SIZE // 32) ** 2)
    # ...while the training run's own model stays trainable-only (a checkpoint, no network)
    run_model = Path(mlflow.artifacts.download_artifacts(client.get_run(version.run_id).data.tags["model_uri"]))
    (ckpt,) = run_model.rglob("*.pt")
    assert ckpt.stat().st_size < network.stat().st_size / 1000
    # raw pixels (uint8 H x W x 3) and preprocessed tensors give the same P(male) as the bytes
    _, images = faces
    expected = pyfunc_p_male(champion, images)
    pixels = []
    for path in images:
        with Image.open(path) as img:
            pixels.append(np.asarray(img.convert("RGB")))
    assert pixels[0].dtype == np.uint8 and pixels[0].shape[2] == 3
    assert pyfunc.predict(pd.DataFrame({"image": pixels}))["p_male"].tolist() == pytest.approx(expected, abs=1e-6)
    tensors = list(preprocess(images, SIZE))
    assert pyfunc.predict(pd.DataFrame({"image": tensors}))["p_male"].tolist() == pytest.approx(expected, abs=1e-6)
    assert pyfunc.unwrap_python_model().predict(None, np.stack(pixels))["p_male"].tolist() == \
        pytest.approx(expected, abs=1e-6)


def test_a_bad_row_is_one_line_naming_it_and_the_reason(champion, faces):
    """Not an image, or too small to hold a face: MLflow's INVALID_PARAMETER_VALUE (a 400 when
    served), naming the row, instead of a confident answer or an unexpected error."""
    from mlflow.exceptions import MlflowException

    _, images = faces
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (120, 90, 80)).save(tiny, format="PNG")
    for rows, reason in (([images[0].read_bytes(), b"not an image at all"], "input row 1: not an image file"),
                         ([tiny.getvalue()], "input row 0: a 1x1 image is smaller than the model's minimum of 32x32")):
        with pytest.raises(MlflowException) as caught:
            champion[1].predict(pd.DataFrame({"image": rows}))
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
        assert caught.value.message.startswith(reason) and "\n" not in caught.value.message


def test_mlflow_evaluate_runs_on_the_champion_as_a_classifier(project, champion, faces):
    """The champion returns the label beside P(male), so MLflow's own classifier evaluation runs on
    its output (``predictions="label"``; MLflow 3.17's classifier evaluator takes a model's output
    only when it is a single column, hence the champion's frame as a static dataset)."""
    _, images = faces
    out = champion[1].predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    data = out.assign(target=[1, 0, 1, 0][:len(images)])
    runs.use_store(config.store_uri(project))
    mlflow.set_experiment("evaluate-the-champion")
    with mlflow.start_run():
        result = mlflow.models.evaluate(data=data, targets="target", predictions="label", model_type="classifier",
                                        evaluators=["default"])
    assert result.metrics["accuracy_score"] == pytest.approx((out["label"] == data["target"]).mean())
    assert result.metrics["example_count"] == len(images)
    assert "confusion_matrix" in " ".join(result.artifacts)


def answering(project) -> str:
    """What predict says first on stderr: the champion of the project's data set, with the
    validation score select tagged it with."""
    client = MlflowClient(project.mlflow_config().uri)
    name = project.mlflow_config().registered_model
    assert name == f"gender-vgg16-{project.get('data.source')}" == "gender-vgg16-synthetic"
    version = client.get_model_version_by_alias(name, "champion")
    with open(project.path("select.output")) as f:
        best = json.load(f)
    low, high = best["ci95"]
    return (f"predict: answering with {name} v{version.version} @champion (data set synthetic; validation accuracy "
            f"{best['best_val_acc']:.4f} 95 % CI [{low:.3f}, {high:.3f}] on {best['n_val']} images)")


def test_predict_prints_each_image_and_one_error_per_bad_input(project, champion, faces, tmp_path):
    folder, images = faces
    missing = tmp_path / "missing.jpg"
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image\n")
    proc = run_predict(project, folder, missing, fake)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: {missing}: not found", answering(project),  # before the model loads
                                        f"error: {fake}: not an image file Pillow can read (13 bytes of unknown format)"]
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(p) for p in images]  # sorted, .JPG and .png taken, notes.txt not
    expected = pyfunc_p_male(champion, images)
    for (_, label, prob), p_male in zip(rows, expected):
        assert label == ("male" if p_male > 0.5 else "female")
        assert len(prob.split(".")[1]) == 4
        assert float(prob) == pytest.approx(p_male if label == "male" else 1 - p_male, abs=ROUNDING)


def test_json_checkpoint_and_model_folder_agree_with_the_pyfunc_model(project, champion, faces):
    folder, images = faces
    expected = pyfunc_p_male(champion, images)
    reg = run_predict(project, "--json", folder)
    assert reg.returncode == 0 and reg.stderr.splitlines() == [answering(project)], reg.stderr
    rows = [json.loads(line) for line in reg.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in images]
    for r, p_male in zip(rows, expected):
        assert r["p_male"] == pytest.approx(p_male, abs=1e-5)
        assert r["label"] == ("male" if r["p_male"] > 0.5 else "female")
        assert r["probability"] == pytest.approx(r["p_male"] if r["label"] == "male" else 1 - r["p_male"], abs=1e-12)
    best = project.path("train.models_dir") / VARIANT / "best.pt"
    ckpt = run_predict(project, "--json", "--model", best, "--batch-size", 3, *images)  # batches of 3 and 1
    assert ckpt.returncode == 0 and ckpt.stderr == f"predict: answering with {best}\n", ckpt.stderr
    by_ckpt = [json.loads(line) for line in ckpt.stdout.splitlines()]
    assert [r["path"] for r in by_ckpt] == [str(p) for p in images]
    assert [r["p_male"] for r in by_ckpt] == pytest.approx([r["p_male"] for r in rows], abs=HALF)
    # --model with an MLflow model folder (in-process: the same loader the CLI uses)
    local = mlflow.artifacts.download_artifacts(champion[0])
    classifier, _ = load_classifier(local)
    probs = classifier.predict_proba(torch.from_numpy(preprocess(images, classifier.image_size))).numpy()
    assert probs == pytest.approx(expected, abs=1e-5)


def test_no_champion_is_one_line_naming_model_and_alias(project, make_params, faces, tmp_path):
    _, images = faces
    params = make_params()  # a fresh project: no MLflow store yet
    proc = run_predict(params, images[0])
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: no model gender-vgg16-synthetic@champion") and "run `dvc repro`" in line
    assert not (params.root / "mlflow.db").exists()  # predict does not create an empty store
    store = {"base.mlflow.tracking_uri": f"sqlite:///{project.root / 'mlflow.db'}"}
    for key, value in (("select.alias", "nope"), ("base.mlflow.registered_model", "other")):
        make_params({**store, key: value}, folder=tmp_path / key)
        with pytest.raises(PipelineError, match=r"^no model (other@champion|gender-vgg16-synthetic@nope) in the "
                                                r"MLflow store .*run `dvc repro`"):
            load_classifier(None, str(tmp_path / key / "params.yaml"))


def test_select_and_evaluate_score_a_version_as_the_pyfunc_model_does(project, champion):
    """``score_split`` (what select compares versions by and evaluate reports on) gives the
    pyfunc model's P(male) of the split's image files; a version that cannot be loaded is one
    line naming it."""
    from pipeline.data.celeba import detect_layout
    from pipeline.data.dataset import read_split
    from pipeline.tracking.served_model import score_split

    runs.use_store(config.store_uri(project))
    test = read_split(project.path("split.dir"), "test")
    folder = detect_layout(project.dataset_root()).image_dir
    expected = pyfunc_p_male(champion, [folder / image_id for image_id in test["image_id"]])
    np.testing.assert_allclose(score_split(project, champion[0], test), expected, atol=1e-6)
    missing = f"models:/{project.registered_model()}/99"
    with pytest.raises(PipelineError, match=rf"^{missing} cannot be loaded: ") as err:
        score_split(project, missing, test, verify=False)
    assert "\n" not in str(err.value)


def test_bad_model_argument_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="model not found"):
        load_classifier(str(tmp_path / "nope.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no MLmodel file"):
        load_classifier(str(tmp_path / "empty"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(PipelineError, match="cannot read checkpoint"):
        load_classifier(str(tmp_path / "junk.pt"))
    torch.save({"trainable": {}}, tmp_path / "other.pt")
    with pytest.raises(PipelineError, match="not a checkpoint of this pipeline"):
        load_classifier(str(tmp_path / "other.pt"))


def test_expand_folders_files_and_missing(tmp_path):
    (tmp_path / "f").mkdir()
    for name in ("b.PNG", "a.jpeg", "c.txt", "d.Jpg"):
        (tmp_path / "f" / name).write_bytes(b"x")
    (tmp_path / "f" / "sub.jpg").mkdir()  # a folder named like an image is not one
    (tmp_path / "empty").mkdir()
    got = expand([str(tmp_path / "f"), str(tmp_path / "f" / "c.txt"), str(tmp_path / "x.jpg"), str(tmp_path / "empty")])
    assert got == [(str(tmp_path / "f" / "a.jpeg"), None), (str(tmp_path / "f" / "b.PNG"), None),
                   (str(tmp_path / "f" / "d.Jpg"), None), (str(tmp_path / "f" / "c.txt"), None),
                   (str(tmp_path / "x.jpg"), "not found"),
                   (str(tmp_path / "empty"), "no .jpg, .jpeg, .png files in this folder")]
