"""Frozen-prefix reuse: the cached path gives the plain loop's numbers, and the cache is keyed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import frozen, split, train
from pipeline.config import PipelineError
from pipeline.data import Preset, detect_layout, read_split
from pipeline.model import build_model, set_strategy

VARIANTS = {"head": {"strategy": "head_only", "lr": 0.001}, "block": {"strategy": "last_block", "lr": 0.0001}}


@pytest.mark.parametrize("size", [32, 64, 96, 160])
def test_folded_fc6_equals_avgpool_then_fc6(size):
    model = build_model("none", seed=3)
    s = size // 32
    z = torch.relu(torch.randn(4, 512, s, s))
    with torch.no_grad():
        plain = model.classifier[0](torch.flatten(model.avgpool(z), 1))
        folded = frozen.FoldedFC6(model.avgpool, model.classifier[0], s)(z)
    assert folded.shape == plain.shape == (4, 4096)
    assert torch.allclose(folded, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


@pytest.mark.parametrize("layer", frozen.LAYERS)
def test_tail_on_cached_layer_equals_whole_network(layer):
    model = build_model("none", seed=5).eval()
    set_strategy(model, "last_block" if layer == "pool4" else "head_only")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        z = frozen._forward_layers(model, x, [layer])[layer]
        assert tuple(z.shape[1:]) == frozen.layer_shape(layer, 64)
        out = frozen.Tail(model, layer, 64).eval()(z)
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
    split.split(params)
    model = build_model("none", seed=42)
    first = frozen.ensure_cache(params, model, torch.device("cpu"), log=lambda m: None)
    assert first["built"] == ["pool4", "pool5"] and first["layers"] == ["pool4", "pool5"]
    files = sorted(first["dir"].glob("*.npy"))
    assert [f.name for f in files] == ["pool4.train.npy", "pool4.val.npy", "pool5.train.npy", "pool5.val.npy"]
    header = 128  # npy header bytes per file
    assert sum(f.stat().st_size for f in files) == first["bytes"] + header * len(files)

    train_ids = read_split(params.path("split.dir"), "train")["image_id"]
    pool4 = np.load(first["dir"] / "pool4.train.npy", mmap_mode="r")
    assert pool4.shape == (2, len(train_ids), 512, 2, 2)
    from pipeline.data import FaceDataset

    ds = FaceDataset(params.dataset_root(), read_split(params.path("split.dir"), "train"), 32)
    ds.flips[:] = True  # orientation 1 of a sample is the flipped image
    with torch.no_grad():
        ref = frozen._forward_layers(model.eval(), ds[3][0].unsqueeze(0), ["pool4"])["pool4"][0]
    assert torch.allclose(torch.from_numpy(np.array(pool4[1, 3])), ref, atol=1e-5)

    again = frozen.ensure_cache(params, model, torch.device("cpu"), log=lambda m: None)
    assert again["built"] == [] and again["dir"] == first["dir"]

    image = detect_layout(params.dataset_root()).image_dir / train_ids.iloc[0]
    Image.new("RGB", (178, 218), (10, 20, 30)).save(image)  # same id, other pixels
    changed = frozen.ensure_cache(params, model, torch.device("cpu"), log=lambda m: None)
    assert changed["dir"] != first["dir"] and changed["built"] == ["pool4", "pool5"]


def test_cache_that_does_not_fit_fails_before_writing(make_params, monkeypatch):
    params = make_params({"train.variants": VARIANTS})
    split.split(params)
    monkeypatch.setattr(frozen.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(PipelineError, match=r"train.feature_cache: .* needs .* GB, only .* free"):
        frozen.ensure_cache(params, build_model("none", seed=42), torch.device("cpu"), log=lambda m: None)
    assert not list(params.path("train.feature_cache").glob("*/*.npy"))


def test_bf16_autocast_runs_and_is_logged(make_params):
    import mlflow

    params = make_params({"train.amp": "bf16", "train.variants": {"head": VARIANTS["head"]}})
    split.split(params)
    result = train.train(params, "head")
    assert np.isfinite(result["history"][0]["val_loss"])
    run = mlflow.get_run(result["run_id"])
    assert run.data.params["amp"] == "bf16" and run.data.params["cached_layer"] == "pool5"
    assert run.data.metrics["epoch_seconds"] > 0
