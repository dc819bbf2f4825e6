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

import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline import synthetic
from pipeline.config import Params, PipelineError, atomic_write, load_params, run_main, write_json
from pipeline.data import ATTR_FILE, check_images_exist, read_attributes

SPLITS = ("train", "val", "test")


def stratified_split(frame: pd.DataFrame, fractions: dict, seed: int) -> dict[str, pd.DataFrame]:
    """Seeded split of ``frame`` into train/val/test, each with the class balance of the whole."""
    counts = frame["label"].value_counts()
    for label in (0, 1):
        if counts.get(label, 0) < 3:
            raise PipelineError(f"{ATTR_FILE}: only {counts.get(label, 0)} images of class "
                                f"{'male' if label else 'female'}; at least 3 are needed to stratify")
    holdout = fractions["val"] + fractions["test"]
    try:
        train, rest = train_test_split(frame, test_size=holdout, stratify=frame["label"], random_state=seed)
        val, test = train_test_split(rest, test_size=fractions["test"] / holdout, stratify=rest["label"],
                                     random_state=seed)
    except ValueError as exc:
        raise PipelineError(f"{ATTR_FILE}: too few images to stratify {len(frame)} rows ({exc})") from None
    return {name: part.sort_values("image_id").reset_index(drop=True)
            for name, part in zip(SPLITS, (train, val, test))}


def split(params: Params) -> dict:
    seed = int(params.get("base.seed"))
    out = params.path("split.dir")
    summary: dict = {"source": params.get("data.source")}
    if params.get("data.source") == "synthetic":
        target = params.dataset_root()
        shutil.rmtree(target, ignore_errors=True)
        summary["synthetic"] = synthetic.generate(target, int(params.get("data.synthetic.images")),
                                                  float(params.get("data.synthetic.label_noise")), seed)
    root = params.dataset_root()
    frame = read_attributes(root)
    check_images_exist(root, frame["image_id"])
    parts = stratified_split(frame, params.get("split.fractions"), seed)
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
    summary = split(load_params(args.params))
    print("split: " + ", ".join(f"{s} {summary[s]['images']} ({summary[s]['male']} male)" for s in SPLITS))


if __name__ == "__main__":
    run_main(main)
