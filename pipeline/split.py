"""Stage ``split``: read the attribute file, make a seeded stratified train/val/test split.

Usage::

    python -m pipeline.split [--params params.yaml]

With ``data.source: synthetic`` it first generates the embedded default data set (see
:mod:`pipeline.synthetic`) into ``<split.dir>/synthetic`` in CelebA's layout; with
``celeba`` it reads ``data.root``. Writes ``train.csv``, ``val.csv``, ``test.csv``
(``image_id,label``; label 1 = male) and ``split.json`` (class counts) to ``split.dir``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd

from pipeline.config import Params, PipelineError, atomic_write, load_params, one_line, run_main, write_json
from pipeline.data import ATTR_FILE, CLASS_NAMES, check_images, read_attributes

SPLITS = ("train", "val", "test")


def stratified_split(frame: pd.DataFrame, fractions: dict, seed: int,
                     source: str | Path = ATTR_FILE) -> dict[str, pd.DataFrame]:
    """Seeded split of ``frame`` into train/val/test, each with the class balance of the whole."""
    from sklearn.model_selection import train_test_split  # imported here: a bad data set fails fast

    counts = {label: int((frame["label"] == label).sum()) for label in (0, 1)}
    smallest = min(counts, key=counts.get)
    few = f"{source}: only {counts[smallest]} images of class {CLASS_NAMES[smallest]}"
    if counts[smallest] < 3:
        raise PipelineError(f"{few}; at least 3 are needed to stratify")
    holdout = fractions["val"] + fractions["test"]
    try:
        train, rest = train_test_split(frame, test_size=holdout, stratify=frame["label"], random_state=seed)
        val, test = train_test_split(rest, test_size=fractions["test"] / holdout, stratify=rest["label"],
                                     random_state=seed)
    except ValueError as exc:
        raise PipelineError(f"{few}, too few to stratify {len(frame)} images into train/val/test by "
                            f"split.fractions (scikit-learn: {one_line(exc)})") from None
    for name, part in zip(SPLITS, (train, val, test)):
        if part["label"].nunique() < 2:
            raise PipelineError(f"{few}, too few to put one of each class into {name} by split.fractions "
                                f"({len(part)} images there)")
    return {name: part.sort_values("image_id").reset_index(drop=True)
            for name, part in zip(SPLITS, (train, val, test))}


def generate_synthetic(params: Params, seed: int) -> dict:
    """The embedded default set, generated next to its place and then swapped in, so a failure
    leaves the previous set (which the previous split lists point at) as it was."""
    from pipeline import synthetic

    target = params.dataset_root()
    fresh = target.with_name(f".{target.name}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        summary = synthetic.generate(fresh, int(params.get("data.synthetic.images")),
                                     float(params.get("data.synthetic.label_noise")), seed)
        shutil.rmtree(target, ignore_errors=True)
        fresh.rename(target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return summary


def split(params: Params, log=None) -> dict:
    """Read and check the data set, then write the split. Every check comes before the first
    write, so bad data leaves the previous split files as they were."""
    seed = int(params.get("base.seed"))
    out = params.path("split.dir")
    summary: dict = {"source": params.get("data.source")}
    if params.get("data.source") == "synthetic":
        summary["synthetic"] = generate_synthetic(params, seed)
    root = params.dataset_root()
    frame = read_attributes(root)
    started = time.perf_counter()
    n = check_images(root, frame["image_id"])
    if log is not None:
        log(f"split: checked {n} images in {time.perf_counter() - started:.1f} s")
    parts = stratified_split(frame, params.get("split.fractions"), seed, root / ATTR_FILE)
    for name, part in parts.items():
        atomic_write(out / f"{name}.csv", lambda t, part=part: part.to_csv(t, index=False))
        summary[name] = {"images": len(part), "male": int(part["label"].sum()),
                         "female": int((part["label"] == 0).sum())}
    write_json(out / "split.json", summary)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    summary = split(load_params(args.params), log=print)
    print("split: " + ", ".join(f"{s} {summary[s]['images']} ({summary[s]['male']} male)" for s in SPLITS))


if __name__ == "__main__":
    run_main(main)
