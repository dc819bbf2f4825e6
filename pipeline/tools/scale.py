"""``make bench-scale``: the daily commands on CelebA-sized data folders, measured.

Usage::

    make bench-scale                                  # = python -m pipeline scale
    python -m pipeline scale --sizes 30000 --workdir /tmp/scale

For each size it builds, in a scratch folder, a mirror of ``../shared/celeba-sample`` (its 4,584
real images hard-linked under new ids, the attribute and identity rows repeated to match: the
sample's own files untouched), and a copy of this project reading it (``data.source: celeba``,
git and DVC initialised). Then, in that copy, it times:

* ``dvc repro split`` from nothing (and its check and hash of the images, from its log), then
  the split command by itself;
* ``dvc status`` and ``dvc status split``, warm (the second of two runs);
* ``dvc status`` after one ``Male`` value of the attribute file was flipped (then restored);
* a train stage's per-image work before its first epoch, in this process: reading the train and
  val lists, :func:`pipeline.data.manifest.verify` (a stat per image) and the images' digest that the
  caches are keyed by (CPU and wall seconds).

It prints one table (a column per size) and, last, one JSON line. Figures, not assertions. The
images are hard links, so their bytes sit in the page cache: these are lower bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.core.cli import PipelineError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "celeba-sample"
SIZES = (30_000, 202_599)  # CelebA30k, all of CelebA
PROJECT_FILES = ("pipeline", "dvc.yaml", "params.yaml", "requirements.txt", ".gitignore", ".dvcignore")


def mirror(sample: Path, folder: Path, n: int) -> Path:
    """``n`` images in CelebA's official layout: ``sample``'s files (a CelebA-layout folder)
    hard-linked under new ids, each repeat of a person a new identity."""
    from pipeline.data.celeba import ATTR_FILE, IDENTITY_FILE, IMAGE_DIR

    lines = (sample / ATTR_FILE).read_text().splitlines()
    header, rows = lines[1], lines[2:]
    identity = dict(line.split() for line in (sample / IDENTITY_FILE).read_text().splitlines())
    n_people = max(map(int, identity.values()))
    (folder / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    attr, ident = [], []
    for j in range(n):
        src, values = rows[j % len(rows)].split(None, 1)
        image_id = f"{j + 1:06d}.jpg"
        os.link(sample / IMAGE_DIR / src, folder / IMAGE_DIR / image_id)
        attr.append(f"{image_id} {values}")
        ident.append(f"{image_id} {int(identity[src]) + n_people * (j // len(rows))}")
    (folder / ATTR_FILE).write_text(f"{n}\n{header}\n" + "\n".join(attr) + "\n")
    (folder / IDENTITY_FILE).write_text("\n".join(ident) + "\n")
    return folder


def project(folder: Path, data_root: Path) -> Path:
    """A copy of this project (code, dvc.yaml, params) reading ``data_root``, git and DVC initialised."""
    folder.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, folder / name)
    raw = yaml.safe_load((folder / "params.yaml").read_text())
    raw["data"].update(source="celeba", root=str(data_root))
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["git", "init", "-q"], folder)
    run(["dvc", "init", "-q"], folder)
    shutil.copytree(REPO / ".dvc" / "plots", folder / ".dvc" / "plots", dirs_exist_ok=True)
    shutil.copy(REPO / ".dvc" / "config", folder / ".dvc" / "config")
    return folder


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Run ``cmd`` in ``cwd``; (wall seconds, its output)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "GIT_AUTHOR_NAME": "scale", "GIT_AUTHOR_EMAIL": "scale@localhost",
           "GIT_COMMITTER_NAME": "scale", "GIT_COMMITTER_EMAIL": "scale@localhost"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"{' '.join(cmd)} failed in {cwd}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return time.perf_counter() - started, proc.stdout + proc.stderr


def per_image_work(params_path: Path) -> tuple[float, float]:
    """(CPU s, wall s) of what a train stage does per image before its first epoch."""
    from pipeline.core.config import load_params
    from pipeline.data import manifest
    from pipeline.data.dataset import read_split
    from pipeline.training import decoded

    params = load_params(params_path)
    cfg = params.train_config()
    cpu, wall = time.process_time(), time.perf_counter()
    frames = {name: read_split(cfg.split_dir, name) for name in ("train", "val")}
    for frame in frames.values():
        manifest.verify(params.dataset_root(), frame, cfg.split_dir, cfg.feature_cache, log=lambda _: None)
    decoded.images_digest(cfg, frames)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(work: Path, n: int, log) -> dict:
    from pipeline.data.celeba import ATTR_FILE

    started = time.perf_counter()
    data = mirror(SAMPLE, work / f"celeba-{n}", n)
    root = project(work / f"project-{n}", data)
    log(f"  {n} images: mirror and project in {time.perf_counter() - started:.0f} s")
    out: dict = {}
    out["repro_split"], said = run(["dvc", "repro", "split"], root)
    checked = [line for line in said.splitlines() if line.startswith("split: checked")]
    out["split_check"] = float(checked[0].split(" in ")[1].split()[0]) if checked else None
    out["split_command"], _ = run([sys.executable, "-m", "pipeline", "split"], root)  # again, by itself
    for key, cmd in (("status", ["dvc", "status"]), ("status_split", ["dvc", "status", "split"])):
        run(cmd, root)
        out[key], _ = run(cmd, root)
    attr = data / ATTR_FILE
    text = attr.read_text()
    lines = text.splitlines()
    male = 1 + lines[1].split().index("Male")
    fields = lines[2].split()
    fields[male] = "1" if fields[male] == "-1" else "-1"
    attr.write_text("\n".join([*lines[:2], " ".join(fields), *lines[3:]]) + "\n")
    out["status_after_edit"], said = run(["dvc", "status"], root)
    out["edit_seen"] = "split" in said
    attr.write_text(text)
    out["per_image_cpu"], out["per_image_wall"] = per_image_work(root / "params.yaml")
    log(f"  {n} images: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()})}")
    return out


def table(results: dict[int, dict]) -> list[str]:
    rows = [("dvc repro split, first (s)", "repro_split"), ("  its check (and hash) of the images (s)", "split_check"),
            ("the split command by itself (s)", "split_command"),
            ("dvc status, warm (s)", "status"), ("dvc status split, warm (s)", "status_split"),
            ("dvc status after a label edit (s)", "status_after_edit"),
            ("train: per-image work, CPU s", "per_image_cpu"), ("train: per-image work, wall s", "per_image_wall")]
    sizes = sorted(results)
    lines = [f"{'':36s}" + "".join(f"{n:>12,d}" for n in sizes)]
    for label, key in rows:
        lines.append(f"{label:36s}" + "".join(f"{results[n][key]:12.2f}" if results[n][key] is not None
                                              else f"{'-':>12s}" for n in sizes))
    lines.append(f"{'status / status split':36s}" + "".join(f"{results[n]['status'] / results[n]['status_split']:11.2f}x"
                                                           for n in sizes))
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args(argv)
    if not SAMPLE.is_dir():
        raise PipelineError(f"{SAMPLE}: the CelebA sample is not there (it is mirrored to each size)")
    keep = args.workdir is not None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scale-")).resolve()
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        results = {n: measure(work, n, log) for n in args.sizes}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(table(results)))
    print(json.dumps({str(n): r for n, r in results.items()}))
