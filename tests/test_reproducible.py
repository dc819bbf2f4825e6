"""The same numbers on another machine (pipeline/core/numerics.py): a training stage run under the
settings that differ between real x86-64 machines -- the instruction set the libraries see
(AVX-512 here, AVX2 on many others) and the number of threads (1, 2, 8) -- writes byte-identical
metrics and weights with ``train.reproducible: true``. Without it the same settings give other
numbers: the control that shows this test can fail."""
import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers.projects import new_project, sh

pytestmark = pytest.mark.slow
VARIANT = "last_block-lr1e-3"  # trains conv5: the convolutions' gradients, where the kernels differ most
CONFIG = {"data.synthetic.images": 80, "train.epochs": 2,
          "train.variants": {VARIANT: {"strategy": "last_block", "lr": 0.001}}}
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SETTINGS = {"this machine": {}, "AVX2, 1 thread": {**AVX2_MACHINE, "OMP_NUM_THREADS": "1"},
            "8 threads": {"OMP_NUM_THREADS": "8"}}


@pytest.fixture(scope="module")
def split_project(tmp_path_factory):
    root = new_project(tmp_path_factory.mktemp("reproducible") / "base", CONFIG)
    sh(["dvc", "repro", "split"], root)
    return root


def train_outputs(base: Path, folder: Path, reproducible: bool, extra_env: dict) -> dict[str, bytes]:
    """The train stage in a copy of ``base`` (its own MLflow store and feature cache) under
    ``extra_env``: its metrics, history and trainable weights, byte for byte."""
    root = shutil.copytree(base, folder, symlinks=True)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"]["reproducible"] = reproducible
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh([sys.executable, "-m", "pipeline", "train", "--variant", VARIANT], root, **extra_env)
    files = (f"metrics/train/{VARIANT}.json", f"metrics/history/{VARIANT}.csv", f"models/{VARIANT}/best.pt")
    return {rel: (root / rel).read_bytes() for rel in files}


def digest(outputs: dict[str, bytes]) -> str:
    return hashlib.sha256(b"".join(outputs[k] for k in sorted(outputs))).hexdigest()[:12]


def test_the_same_metrics_under_another_instruction_set_and_thread_count(split_project, tmp_path):
    runs = {name: train_outputs(split_project, tmp_path / f"on-{i}", True, env)
            for i, (name, env) in enumerate(SETTINGS.items())}
    print({name: digest(out) for name, out in runs.items()})  # for the record
    reference = runs["this machine"]
    for name, outputs in runs.items():
        for rel, data in outputs.items():
            assert data == reference[rel], f"{rel} differs under {name}"


def test_without_it_the_same_settings_give_other_numbers(split_project, tmp_path):
    native = train_outputs(split_project, tmp_path / "native", False, {})
    other = train_outputs(split_project, tmp_path / "avx2", False, SETTINGS["AVX2, 1 thread"])
    assert native[f"metrics/history/{VARIANT}.csv"] != other[f"metrics/history/{VARIANT}.csv"]
