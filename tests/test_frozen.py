"""Frozen-prefix reuse: the cached path gives the plain loop's numbers, and the cache is keyed."""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core import deps
from pipeline.core.cli import PipelineError
from pipeline.data.celeba import detect_layout
from pipeline.data.dataset import Preset, read_split
from pipeline.data.synthetic import generate_from_params
from pipeline.stages import split, train
from pipeline.training import features, prefix
from pipeline.training.model import LAST_BLOCK, FoldedFC6, build_model, set_strategy

VARIANTS = {"head": {"strategy": "head_only", "lr": 0.001}, "block": {"strategy": "last_block", "lr": 0.0001}}


@pytest.mark.parametrize("size", [32, 64, 96, 160])
def test_folded_fc6_equals_avgpool_then_fc6(size):
    model = build_model("none", seed=3)
    s = size // 32
    z = torch.relu(torch.randn(4, 512, s, s))
    with torch.no_grad():
        plain = model.classifier[0](torch.flatten(model.avgpool(z), 1))
        folded = FoldedFC6(model.avgpool, model.classifier[0], s)(z)
    assert folded.shape == plain.shape == (4, 4096)
    assert torch.allclose(folded, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


@pytest.mark.parametrize("layer", prefix.LAYERS)
def test_tail_on_cached_layer_equals_whole_network(layer):
    model = build_model("none", seed=5).eval()
    set_strategy(model, "last_block" if layer == "pool4" else "head_only")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        z = prefix.forward_layers(model, x, [layer])[layer]
        assert tuple(z.shape[1:]) == prefix.layer_shape(layer, 64)
        out = prefix.Tail(model, layer, 64).eval()(z)
        ref = model(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_flipping_the_tensor_equals_flipping_the_image():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8))
    preset = Preset(64)
    assert torch.equal(torch.flip(preset(img), dims=[-1]), preset(img, flip=True))


@pytest.mark.parametrize("frozen_dropout", [True, False], ids=["frozen-dropout-on", "frozen-dropout-off"])
def test_reuse_gives_the_plain_loops_metrics(make_params, tmp_path, frozen_dropout):
    """Same config, 2 epochs, both paths: identical val_acc history, losses within 1e-5."""
    variants = VARIANTS if frozen_dropout else {"head": VARIANTS["head"]}
    base = {"train.epochs": 2, "data.synthetic.images": 100, "train.variants": variants,
            "train.frozen_dropout": frozen_dropout}
    plain = make_params({**base, "train.reuse_frozen": False})
    generate_from_params(plain)
    split.split(plain)
    reuse = make_params({**base, "train.reuse_frozen": True})
    for name in variants:
        a = train.train(plain, name)
        b = train.train(reuse, name)
        assert b["timing"]["extract_seconds"] > 0 or name != next(iter(variants))  # the first variant builds the cache
        assert [r["val_acc"] for r in a["history"]] == [r["val_acc"] for r in b["history"]]
        assert [r["train_acc"] for r in a["history"]] == [r["train_acc"] for r in b["history"]]
        for ra, rb in zip(a["history"], b["history"]):
            for key in ("train_loss", "val_loss"):
                assert rb[key] == pytest.approx(ra[key], abs=1e-5), (name, ra["epoch"], key)
    layers = {p.name.split(".")[0] for p in (tmp_path / "data" / "features").glob("[0-9a-f]*/*.npy")}
    assert layers == ({"pool4", "pool5"} if frozen_dropout else {"fc7"})


def test_cache_is_built_once_sized_as_estimated_and_keyed_by_image_bytes(make_params):
    params = make_params({"train.variants": VARIANTS})
    generate_from_params(params)
    split.split(params)
    model = build_model("none", seed=42)
    first = features.ensure_cache(params.train_config(), model, torch.device("cpu"), log=lambda m: None)
    assert first["built"] == ["pool4", "pool5"] and first["layers"] == ["pool4", "pool5"]
    files = sorted(first["dir"].glob("*.npy"))
    assert [f.name for f in files] == ["pool4.train.npy", "pool4.val.npy", "pool5.train.npy", "pool5.val.npy"]
    header = 128  # npy header bytes per file
    assert sum(f.stat().st_size for f in files) == first["bytes"] + header * len(files)

    train_ids = read_split(params.path("split.dir"), "train")["image_id"]
    pool4 = np.load(first["dir"] / "pool4.train.npy", mmap_mode="r")
    assert pool4.shape == (2, len(train_ids), 512, 2, 2)
    from pipeline.data.dataset import FaceDataset

    ds = FaceDataset(params.dataset_root(), read_split(params.path("split.dir"), "train"), 32)
    ds.flips[:] = True  # orientation 1 of a sample is the flipped image
    with torch.no_grad():
        ref = prefix.forward_layers(model.eval(), ds[3][0].unsqueeze(0), ["pool4"])["pool4"][0]
    assert torch.allclose(torch.from_numpy(np.array(pool4[1, 3])), ref, atol=1e-5)

    again = features.ensure_cache(params.train_config(), model, torch.device("cpu"), log=lambda m: None)
    assert again["built"] == [] and again["dir"] == first["dir"]

    image = detect_layout(params.dataset_root()).image_dir / train_ids.iloc[0]
    Image.new("RGB", (178, 218), (10, 20, 30)).save(image)  # same id, other pixels
    split.split(params)  # as `dvc repro` does: data.root is the split stage's dep; the manifest hashes the images
    changed = features.ensure_cache(params.train_config(), model, torch.device("cpu"), log=lambda m: None)
    assert changed["dir"] != first["dir"] and changed["built"] == ["pool4", "pool5"]


def test_cache_that_does_not_fit_fails_before_writing(make_params, monkeypatch):
    params = make_params({"train.variants": VARIANTS})
    generate_from_params(params)
    split.split(params)
    monkeypatch.setattr(features.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(PipelineError, match=r"train.feature_cache: .* needs .* GB, only .* free"):
        features.ensure_cache(params.train_config(), build_model("none", seed=42), torch.device("cpu"), log=lambda m: None)
    assert not list(params.path("train.feature_cache").glob("*/*.npy"))


def test_bf16_autocast_runs_and_is_logged(make_params):
    import mlflow

    # 24 images: bf16 is emulated on this CPU, the slowest part of the unit tests at 60
    params = make_params({"train.amp": "bf16", "data.synthetic.images": 24, "train.variants": {"head": VARIANTS["head"]}})
    generate_from_params(params)
    split.split(params)
    result = train.train(params, "head")
    assert np.isfinite(result["history"][0]["val_loss"])
    run = mlflow.get_run(result["run_id"])
    assert run.data.params["amp"] == "bf16" and run.data.params["cached_layer"] == "pool5"
    assert run.data.metrics["epoch_seconds"] > 0


# --- the cache key covers every input it claims to -------------------------------------

def _key(params, device: str = "cpu") -> str:
    frames = {s: read_split(params.path("split.dir"), s) for s in ("train", "val")}
    return features.cache_key(params.train_config(), frames, torch.device(device))[0]


KEY_INPUTS = ["weights-file-bytes", "image-size", "amp", "device-type", "torch-version",
              *(f"code-{path.relative_to(deps.PACKAGE)}" for path in deps.code_files("train"))]


@pytest.mark.parametrize("change", KEY_INPUTS)
def test_cache_key_changes_with_each_input_it_covers(change, make_params, tmp_path, monkeypatch):
    """Each input the module docstring names gives a new entry; an unrelated knob (a variant's
    lr) does not. (Image bytes: test_cache_is_built_once_sized_as_estimated_and_keyed_by_image_bytes.)"""
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"\x01" * 64)  # weights_id hashes the bytes; build_model is not called
    base = {"model.weights": str(weights), "train.variants": VARIANTS}
    params = make_params(base)
    generate_from_params(params)
    split.split(params)
    before = _key(params)
    lr_only = make_params({**base, "train.variants": {"head": {"strategy": "head_only", "lr": 0.5}}})
    assert _key(lr_only) == before  # deterministic, and blind to what the cache does not depend on
    device = "cpu"
    if change == "weights-file-bytes":
        weights.write_bytes(b"\x02" * 64)  # same path, other bytes
    elif change == "image-size":
        params = make_params({**base, "data.image_size": 64})
    elif change == "amp":
        params = make_params({**base, "train.amp": "bf16"})
    elif change == "device-type":
        device = "cuda"  # cache_key only reads device.type: no GPU needed
    elif change == "torch-version":
        monkeypatch.setattr(torch, "__version__", f"{torch.__version__}.other")
    else:  # a copy of the package and dvc.yaml with one of the train stage's code files edited
        name = change.removeprefix("code-")
        project = tmp_path / "project"
        shutil.copytree(deps.PACKAGE, project / deps.PACKAGE.name)
        shutil.copy(deps.DVC_YAML, project / "dvc.yaml")
        with open(project / deps.PACKAGE.name / name, "a") as f:
            f.write("\n# edited\n")
        monkeypatch.setattr(deps, "PACKAGE", project / deps.PACKAGE.name)
        monkeypatch.setattr(deps, "DVC_YAML", project / "dvc.yaml")
    assert _key(params, device) != before, change


# --- the frozen fc6/fc7 dropout (the seed experiment's model.train()) -------------------

@pytest.fixture(scope="module")
def vgg():
    """One seeded VGG-16 for the tests below (each takes a deep copy: building one takes seconds)."""
    return build_model("none", seed=7)


@pytest.mark.parametrize("reuse", [False, True], ids=["whole-network", "cached-pool5-tail"])
@pytest.mark.parametrize("frozen_dropout", [True, False], ids=["frozen-dropout-on", "frozen-dropout-off"])
def test_frozen_dropout_makes_training_passes_differ_only_when_on(frozen_dropout, reuse, vgg):
    """head_only: everything before the head is frozen and the only random layers are the
    dropouts after fc6 and fc7. In training mode two passes of one batch differ with
    frozen_dropout on, and are equal with it off; in eval mode they are always equal."""
    from pipeline.training.engine import set_train_mode

    model = copy.deepcopy(vgg)
    set_strategy(model, "head_only")
    x = torch.randn(4, 3, 32, 32)
    net, inputs = model, x
    if reuse:
        net = prefix.Tail(model, "pool5", 32)
        with torch.no_grad():
            inputs = prefix.forward_layers(model.eval(), x, ["pool5"])["pool5"]
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [model.classifier[2], model.classifier[5]]  # after fc6 and fc7, both frozen
    set_train_mode(net, frozen_dropout)
    assert [m.training for m in dropouts] == [frozen_dropout] * 2
    torch.manual_seed(0)
    with torch.no_grad():
        first, second = net(inputs), net(inputs)
    assert torch.equal(first, second) is not frozen_dropout
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(inputs), net(inputs))


@pytest.mark.parametrize("strategy", ["head_only", "last_block"])
def test_an_epoch_changes_the_trainable_weights_and_no_frozen_one(strategy, vgg):
    from helpers.loops import train_one_epoch
    from torch.utils.data import DataLoader, TensorDataset

    model = copy.deepcopy(vgg)
    set_strategy(model, strategy)
    trainable = {"classifier.6.weight", "classifier.6.bias"}  # the new head; last_block adds conv5
    trainable |= {f"features.{i}.{k}" for i in LAST_BLOCK for k in ("weight", "bias")} if strategy == "last_block" else set()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 2, (16,), generator=g).float())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train_one_epoch(model, DataLoader(data, batch_size=8), optimizer, torch.device("cpu"), frozen_dropout=True)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable, sorted(changed ^ trainable)
