"""VGG-16 surgery: base weights, which parameters train, trainable-only checkpoints."""
from pathlib import Path

import pytest
import torch
from torchvision.models import vgg16

from pipeline.core.cli import PipelineError
from pipeline.core.weights import IMAGENET_WEIGHTS_URL, imagenet_weights_file
from pipeline.training.model import (
    build_model,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    set_strategy,
)


@pytest.fixture(scope="module")
def fake_vgg_state(tmp_path_factory):
    """A state dict with VGG-16's ImageNet shapes and a recognisable value."""
    state = vgg16(weights=None).state_dict()
    state["features.0.weight"].fill_(0.25)
    path = tmp_path_factory.mktemp("weights") / "vgg16-fake.pth"
    torch.save(state, path)
    return path


def test_head_is_one_logit_and_strategies_pick_parameters():
    model = build_model("none", seed=0)
    assert model.classifier[6].out_features == 1 and model.classifier[6].in_features == 4096
    assert set_strategy(model, "head_only") == ["classifier.6.weight", "classifier.6.bias"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4097
    names = set_strategy(model, "last_block")
    assert names == [f"features.{i}.{k}" for i in (24, 26, 28) for k in ("weight", "bias")] + \
        ["classifier.6.weight", "classifier.6.bias"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3 * (512 * 512 * 9 + 512) + 4097
    with pytest.raises(PipelineError, match="unknown strategy 'all'"):
        set_strategy(model, "all")


def test_none_is_seeded_variance_preserving():
    a, b, c = build_model("none", 0), build_model("none", 0), build_model("none", 1)
    w = a.features[0].weight
    assert torch.equal(w, b.features[0].weight) and not torch.equal(w, c.features[0].weight)
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    fc6 = a.classifier[0].weight
    assert fc6.std().item() == pytest.approx((2 / 25088) ** 0.5, rel=0.05)
    assert a.classifier[0].bias.abs().sum().item() == 0

    # random frozen fc7 features keep the input's scale and depend on the input; torchvision's
    # own init (N(0, 0.01) linear layers) shrinks them twentyfold, where the signal dies
    def fc7(model):
        with torch.no_grad():
            return model.eval().classifier[:6](torch.flatten(model.avgpool(model.features(x)), 1))

    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    feats = fc7(a)
    assert 0.3 < feats.abs().mean().item() < 3
    assert (feats.std(dim=0).mean() / feats.abs().mean()).item() > 0.05
    torch.manual_seed(0)
    assert fc7(vgg16(weights=None)).abs().mean().item() < 0.1


def test_imagenet_reads_the_torch_cache(fake_vgg_state, monkeypatch, tmp_path):
    from torchvision.models import VGG16_Weights

    assert IMAGENET_WEIGHTS_URL == VGG16_Weights.IMAGENET1K_V1.url
    monkeypatch.delenv("TORCH_HOME")
    for xdg in (None, str(tmp_path / "xdg")):  # found as torch finds it, without importing torch
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert imagenet_weights_file() == Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = imagenet_weights_file()
    assert cache == Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"
    assert cache == tmp_path / "th" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(PipelineError, match=f"place it at {cache}"):
        build_model("imagenet", 0)
    cache.parent.mkdir(parents=True)
    cache.symlink_to(fake_vgg_state)
    model = build_model("imagenet", 0)
    assert torch.all(model.features[0].weight == 0.25)
    assert model.classifier[6].out_features == 1


def test_local_state_dict_path_and_its_errors(fake_vgg_state, tmp_path):
    assert torch.all(build_model(str(fake_vgg_state), 0).features[0].weight == 0.25)
    with pytest.raises(PipelineError, match="not found"):
        build_model(str(tmp_path / "nope.pt"), 0)
    state = torch.load(fake_vgg_state, weights_only=True)
    state["classifier.0.weight"] = torch.zeros(10, 10)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(PipelineError, match=r"'classifier.0.weight' has shape \(10, 10\)"):
        build_model(str(tmp_path / "bad.pt"), 0)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pt")
    with pytest.raises(PipelineError, match="lacks key"):
        build_model(str(tmp_path / "partial.pt"), 0)


@pytest.mark.parametrize("strategy,max_kb", [("head_only", 64), ("last_block", 30_000)])
def test_checkpoint_round_trip_holds_trainable_only(tmp_path, strategy, max_kb):
    model = build_model("none", 5)
    set_strategy(model, strategy)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, epoch=3, strategy=strategy)
    assert path.stat().st_size < max_kb * 1024
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and set(ckpt["trainable"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    restored = model_from_checkpoint(ckpt, "none", 5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(restored(x), model(x))
        assert not torch.allclose(build_model("none", 5).eval()(x), model(x))


class _Payload:
    """Unpickling this would run code of the file's choosing; weights_only must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_checkpoints_and_state_dicts_are_never_unpickled(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"trainable": {}, "payload": _Payload()}, evil)
    with pytest.raises(PipelineError, match="cannot read checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(PipelineError, match="cannot read model.weights"):
        build_model(str(evil), seed=0)
    assert "unpickled!" not in capsys.readouterr().out
