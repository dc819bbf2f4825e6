"""The committed results are the golden result: the repo's own ``dvc repro`` from a fresh store
writes ``metrics/`` byte for byte as committed, and the same checkpoints. CI runs on whatever
processor the submitting session had (Intel and AMD both seen), so over time both vendors check
the promise of docs/reproducibility.md; tests/test_kernels.py names the layer when it breaks."""
from __future__ import annotations

import pytest
import yaml
from helpers.config import REPO
from helpers.projects import default_repro

from pipeline.core import numerics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    return default_repro(tmp_path_factory)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_fresh_store_default_repro_writes_the_committed_metrics_byte_for_byte(repro):
    committed, made = REPO / "metrics", repro / "metrics"
    assert files_under(made) == files_under(committed)
    differ = [rel for rel in files_under(committed) if (made / rel).read_bytes() != (committed / rel).read_bytes()]
    assert not differ, (f"on this {numerics.cpu_vendor()} CPU the default repro wrote other bytes in "
                        f"metrics/{', metrics/'.join(differ)} (tests/test_kernels.py names the kernel)")


def test_and_the_same_checkpoints(repro):
    def checkpoints(lock):
        stages = yaml.safe_load(lock.read_text())["stages"]
        return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])
                if out["path"].startswith("models/") and out["path"] != "models/best.json"}  # run ids

    committed = checkpoints(REPO / "dvc.lock")
    assert len(committed) == 4  # each variant's folder: best.pt
    assert checkpoints(repro / "dvc.lock") == committed
