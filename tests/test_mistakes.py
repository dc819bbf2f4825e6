"""A mistake removes nothing: after a complete ``dvc repro`` of a project on a CelebA-layout folder,
each case below breaks one thing (a param, the attribute file, an image), ``dvc repro`` fails in
one line that names it, and every earlier output is still there byte for byte (DVC removes a
stage's outputs before it runs the command, unless they are ``persist: true``, as every output in
dvc.yaml is): ``git status`` is clean but for the edit, ``dvc status`` reports no changed output,
MLflow holds no new run. Undoing the mistake, ``dvc repro`` runs nothing."""
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from helpers.config import set_dotted
from helpers.projects import copy_project, new_project, sh, stages_run

from pipeline.data import synthetic
from pipeline.data.celeba import ATTR_FILE, IMAGE_DIR

pytestmark = pytest.mark.slow
VARIANT = "head_only-lr1e-3"


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A committed project whose every stage ran on the CelebA-layout folder ``celeba`` beside it."""
    base = tmp_path_factory.mktemp("mistakes")
    synthetic.generate(base / "celeba", 60, 0.0, seed=0)
    root = new_project(base / "project", {"data.source": "celeba", "data.root": str(base / "celeba"),
                                         "train.variants": {VARIANT: {"strategy": "head_only", "lr": 0.001}}})
    sh(["dvc", "repro"], root)
    sh("git add -A && git commit -qm repro", root)
    return root


def outputs(root: Path) -> dict[str, bytes]:
    """Every file the stages wrote (what DVC would remove): metrics/, runs/, models/, data/split/."""
    folders = ("metrics", "runs", "models", "data/split")
    return {str(p.relative_to(root)): p.read_bytes() for f in folders for p in sorted((root / f).rglob("*"))
            if p.is_file()}


def runs_in_store(root: Path) -> int:
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute("SELECT count(*) FROM runs").fetchone()[0]


def edit_params(changes: dict):
    def apply(root: Path, data: Path) -> None:
        raw = yaml.safe_load((root / "params.yaml").read_text())
        for key, value in changes.items():
            set_dotted(raw, key, value)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return apply


def rename_epochs(root: Path, data: Path) -> None:
    """The typo ``train.epoch: 3`` (for ``train.epochs``)."""
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(text.replace("\n  epochs:", "\n  epoch:"))


def attr_lines_edit(edit):
    def apply(root: Path, data: Path) -> None:
        lines = (data / ATTR_FILE).read_text().splitlines()
        (data / ATTR_FILE).write_text("\n".join(edit(lines)) + "\n")
    return apply


def truncate_image(root: Path, data: Path) -> None:
    path = data / IMAGE_DIR / "000008.jpg"
    path.write_bytes(path.read_bytes()[:500])


def remove_image(root: Path, data: Path) -> None:
    (data / IMAGE_DIR / "000007.jpg").unlink()


CASES = {  # the mistake, and what its one line must name
    "params typo train.epoch": (rename_epochs, "train.epochs"),
    "unknown strategy": (edit_params({f"train.variants.{VARIANT}.strategy": "last_blocks"}), "last_blocks"),
    "image size 0": (edit_params({"data.image_size": 0}), "data.image_size"),
    "negative split fraction": (edit_params({"split.fractions.val": -0.1, "split.fractions.train": 1.0}),
                                "split.fractions.val"),
    "duplicated image id": (attr_lines_edit(lambda lines: lines + [lines[4]]), "listed more than once"),
    "file name with a space": (attr_lines_edit(lambda lines: lines[:3] + [lines[3].replace(".jpg", " copy.jpg", 1)]
                                               + lines[4:]), f"{ATTR_FILE}:4"),
    "truncated image": (truncate_image, "000008.jpg"),
    "missing image": (remove_image, "000007.jpg"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_mistake_fails_in_one_line_and_removes_nothing(done, tmp_path, case):
    mistake, culprit = CASES[case]
    root = copy_project(done, tmp_path / "project")
    data = tmp_path / "celeba"
    shutil.copytree(done.parent / "celeba", data)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"]["root"] = str(data)  # the copy's own data folder, to break
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh("dvc commit -f -q && git add -A && git commit -qm 'own data folder'", root)
    assert stages_run(sh(["dvc", "repro"], root).stdout) == []
    before, runs_before = outputs(root), runs_in_store(root)
    params_before = (root / "params.yaml").read_bytes()
    attr_before = (data / ATTR_FILE).read_bytes()

    mistake(root, data)
    proc = sh(["dvc", "repro"], root, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in said, said
    ours = [line for line in said.splitlines() if line.startswith("error:")]  # the stage's one line
    # ...or, when DVC refuses before any stage runs (a tracked param gone), DVC's own one line
    (error,) = ours or [line for line in said.splitlines() if line.startswith("ERROR:")]
    assert culprit in error, said
    print(f"{case}: {error}")  # for the record

    assert outputs(root) == before, "an output changed or went missing"
    changed = [line[3:] for line in sh(["git", "status", "--porcelain"], root).stdout.splitlines()]
    assert changed in ([], ["params.yaml"]), changed
    status = json.loads(sh(["dvc", "status", "--json"], root).stdout)
    assert not [s for s, entries in status.items() for e in entries if "changed outs" in e], status
    assert runs_in_store(root) == runs_before

    (root / "params.yaml").write_bytes(params_before)  # the mistake undone
    (data / ATTR_FILE).write_bytes(attr_before)
    shutil.rmtree(data / IMAGE_DIR)
    shutil.copytree(done.parent / "celeba" / IMAGE_DIR, data / IMAGE_DIR)
    assert stages_run(sh(["dvc", "repro"], root).stdout) == []
    assert outputs(root) == before


def test_a_replaced_image_reruns_split_and_every_stage_that_reads_images(done, tmp_path):
    """Not a mistake: new pixels under an old name. Only split depends on the data folder, and its
    manifest carries each image's hash, so the change reaches train, select and evaluate."""
    root = copy_project(done, tmp_path / "project")
    data = tmp_path / "celeba"
    shutil.copytree(done.parent / "celeba", data)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"]["root"] = str(data)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh("dvc commit -f -q && git add -A && git commit -qm 'own data folder'", root)
    lists = {p.name: p.read_bytes() for p in (root / "data" / "split").glob("*.csv") if p.name != "manifest.csv"}
    victim, other = sorted((data / IMAGE_DIR).glob("*.jpg"))[:2]
    victim.unlink()
    victim.write_bytes(other.read_bytes())
    assert stages_run(sh(["dvc", "repro"], root).stdout) == ["split", f"train@{VARIANT}", "select", "evaluate"]
    assert {p.name: p.read_bytes() for p in (root / "data" / "split").glob("*.csv") if p.name != "manifest.csv"} \
        == lists  # the same lists: the manifest's hash of that image is what changed
