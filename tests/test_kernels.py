"""One batch through VGG-16, layer by layer, forward and backward, against digests committed from
another machine (tests/data/kernel_digests.json): where ``train.reproducible: true`` computes other
bits on this processor, the first layer that differs names the kernel (oneDNN's forward
convolutions, ATen's pooling and activations, MKL's matrix products in the classifier, the
convolutions' gradients). The committed digests were made on an AMD EPYC (Zen 4) and match what
an Intel Xeon (Sapphire Rapids) computes: the same train stage wrote the same metrics on both
(docs/reproducibility.md).

    python tests/test_kernels.py --write    # after a deliberate change of kernels or torch
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import numerics
from pipeline.core.cli import PipelineError

if __name__ == "__main__":
    numerics.configure(True)  # before torch loads; under pytest, conftest does it

import torch  # noqa: E402
from torch import nn  # noqa: E402

from pipeline.training.model import build_model, set_strategy  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "kernel_digests.json"
BATCH, SIZE, SEED = 4, 64, 42  # the default's 64x64 images and base.seed


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def layer_digests() -> dict[str, str]:
    """Forward: each layer's output of a seeded batch; backward (conv5 + head trained, as
    ``last_block``): each trainable parameter's gradient and the input gradient of conv5_1."""
    model = build_model("none", SEED)
    set_strategy(model, "last_block")
    model.eval()  # no dropout masks: only the kernels decide the bits
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED))
    out: dict[str, str] = {"input": digest(x)}
    h = x
    for i, layer in enumerate(model.features):
        if i == 24:
            h = h.detach().requires_grad_(True)
            into_block5 = h
        h = layer(h)
        out[f"features.{i}.{type(layer).__name__}"] = digest(h)
    h = torch.flatten(model.avgpool(h), 1)
    out["avgpool"] = digest(h)
    for i, layer in enumerate(model.classifier):
        h = layer(h)
        out[f"classifier.{i}.{type(layer).__name__}"] = digest(h)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    numerics.backward(nn.functional.binary_cross_entropy_with_logits(h.squeeze(1), y))
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad {name}"] = digest(p.grad)
    out["grad input of features.24"] = digest(into_block5.grad)
    return out


def test_one_batch_layer_by_layer_computes_the_committed_bits():
    assert numerics.describe()["reproducible"], "conftest configures the reproducible kernels"
    expected = json.loads(REFERENCE.read_text())["digests"]
    got = layer_digests()
    assert list(got) == list(expected)
    differ = [name for name in expected if got[name] != expected[name]]
    assert not differ, (f"on this {numerics.cpu_vendor()} CPU ({numerics.describe()}) the first layer "
                        f"that differs is {differ[0]}; all that differ: {differ}")


def test_mkl_runs_its_avx2_branch_here_and_would_not_on_amd_without_the_shim():
    """MKL reports the branch it runs. With the shim (loaded by conftest's configure) it is
    AVX2,STRICT on any vendor; without it, MKL keeps it on Intel only and runs AUTO elsewhere."""
    assert numerics.mkl_branch() == "AVX2,STRICT"
    plain = subprocess.run(  # the environment configure() sets, without the shim
        [sys.executable, "-c", "from pipeline.core import numerics as n; import os; os.environ.update(n.REPRODUCIBLE_ENV); "
         "import torch; print(n.mkl_branch())"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]).stdout.split()[-1]
    assert plain == ("AVX2,STRICT" if numerics.cpu_vendor() == "GenuineIntel" else "AUTO,STRICT")


def test_a_stage_whose_mkl_runs_another_branch_stops_in_one_line(tmp_path):
    """What a torch release that loses the shim's hold on MKL would look like: the stage refuses
    to train with other kernels, in one line, before any work."""
    from helpers.config import write_params

    write_params(tmp_path)
    code = ("from pipeline.core import numerics; numerics.MKL_BRANCH = 'AVX512,STRICT'; "
            "from pipeline.__main__ import main; main(['train', '--variant', 'head_only-lr1e-3'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: train.reproducible: MKL runs its AVX2,STRICT branch on this {numerics.cpu_vendor()} CPU, not "
        "AVX512,STRICT, so the numbers would not repeat elsewhere (set train.reproducible: false for this CPU's "
        "own kernels)"]
    assert not (tmp_path / "runs").exists()


def test_the_shim_is_built_once_and_without_a_compiler_that_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built = numerics.mkl_isa_library()
    assert built.parent == tmp_path / "cache" / "celeba-vgg16" and built.stat().st_size > 0
    monkeypatch.setenv("CC", "no-such-cc")
    assert numerics.mkl_isa_library() == built  # cached: no compiler needed again
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(PipelineError, match=r"builds .*mkl_isa\.c with a C compiler, and 'no-such-cc' is not installed"):
        numerics.mkl_isa_library()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_kernels.py --write")
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({"machine": f"{numerics.cpu_vendor()}, torch {torch.__version__}",
                                     "kernels": numerics.describe(), "digests": layer_digests()}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
