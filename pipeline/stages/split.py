"""Stage ``split``: read the attribute file, make a seeded stratified train/val/test split, or take
CelebA's own.

Usage::

    python -m pipeline split [--params params.yaml]

It reads the CelebA-layout folder ``data.root`` (official, the authors' archive or Kaggle layout,
see :func:`pipeline.data.celeba.detect_layout`): with ``data.source: synthetic`` the embedded
default set that the generate stage wrote (:mod:`pipeline.data.synthetic`), with ``celeba`` real
CelebA. ``split.method: stratified`` makes the split: ``data.limit: N`` first keeps a seeded
stratified subset of N images; ``split.group_by: none`` splits images (stratified by class),
``identity`` splits people (see :func:`identity_split`). ``split.method: official`` takes the
partition file's train/val/test as they are (see :func:`official_split`), ``data.limit: N`` a
seeded stratified subset of each.
Writes ``train.csv``, ``val.csv``, ``test.csv`` (``image_id,label``; label 1 = male),
``test_attributes.csv`` (the test images' other attributes, 1 / -1: what evaluate slices by),
``manifest.csv`` (every image's split, size and content hash: :mod:`pipeline.data.manifest`) and
``split.json`` (class counts, method, group_by; with an identity file, identities per split and
their overlap) to ``split.dir``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.cli import PipelineError, one_line
from pipeline.core.config import Params, load_params
from pipeline.core.files import atomic_write, write_json
from pipeline.data import manifest
from pipeline.data.celeba import (
    ATTR_FILE,
    attribute_columns,
    detect_layout,
    identities_of,
    read_attributes,
)
from pipeline.data.dataset import CLASS_NAMES, SPLIT_SUMMARY, TEST_ATTRIBUTES
from pipeline.data.images import scan
from pipeline.data.partition import partitions_of

SPLITS = ("train", "val", "test")


def _class_counts(frame: pd.DataFrame, source) -> tuple[dict, str]:
    counts = {label: int((frame["label"] == label).sum()) for label in (0, 1)}
    smallest = min(counts, key=counts.get)
    return counts, f"{source}: only {counts[smallest]} images of class {CLASS_NAMES[smallest]}"


def _check_parts(parts: dict[str, pd.DataFrame], few: str, why=None) -> dict[str, pd.DataFrame]:
    """``parts`` sorted by id, once each holds both classes (a split of one class has no accuracy
    to select or evaluate by); else the error ``few`` begins, or ``why(name, part)`` makes."""
    for name in SPLITS:
        if parts[name]["label"].nunique() < 2:
            raise PipelineError(why(name, parts[name]) if why else
                                f"{few}, too few to put one of each class into {name} by split.fractions "
                                f"({len(parts[name])} images there)")
    return {name: parts[name].sort_values("image_id").reset_index(drop=True) for name in SPLITS}


def stratified_split(frame: pd.DataFrame, fractions: dict, seed: int,
                     source: str | Path = ATTR_FILE) -> dict[str, pd.DataFrame]:
    """Seeded split of ``frame`` into train/val/test, each with the class balance of the whole."""
    from sklearn.model_selection import (
        train_test_split,  # imported here: a bad data set fails fast
    )

    counts, few = _class_counts(frame, source)
    if min(counts.values()) < 3:
        raise PipelineError(f"{few}; at least 3 are needed to stratify")
    holdout = fractions["val"] + fractions["test"]
    try:
        train, rest = train_test_split(frame, test_size=holdout, stratify=frame["label"], random_state=seed)
        val, test = train_test_split(rest, test_size=fractions["test"] / holdout, stratify=rest["label"],
                                     random_state=seed)
    except ValueError as exc:
        raise PipelineError(f"{few}, too few to stratify {len(frame)} images into train/val/test by "
                            f"split.fractions (scikit-learn: {one_line(exc)})") from None
    return _check_parts({"train": train, "val": val, "test": test}, few)


def identity_split(frame: pd.DataFrame, identity: pd.Series, fractions: dict, seed: int,
                   source: str | Path = ATTR_FILE) -> dict[str, pd.DataFrame]:
    """Seeded identity-disjoint split: all images of a person go to one split, and each split
    keeps the class balance of the whole.

    A greedy assignment of whole identities: the identities in a seeded random order, then
    stably sorted by number of images, largest first (the many small ones come last and even
    out what the large ones left). Each goes to the split where it most reduces
    ``sum over splits of ((males - target males)^2 + (females - target females)^2) / target
    size``, the targets being ``split.fractions`` of the whole set's male and female counts.
    That fills the splits in proportion to their targets, males and females separately, so
    each split's size and male fraction end within about one identity's images of target.
    """
    counts, few = _class_counts(frame, source)
    if min(counts.values()) < 3:
        raise PipelineError(f"{few}; at least 3 are needed to stratify")
    people = (pd.DataFrame({"identity": identity.to_numpy(), "label": frame["label"].to_numpy()})
              .groupby("identity", sort=True)["label"].agg(["size", "sum"]))
    if len(people) < len(SPLITS):
        raise PipelineError(f"{source}: only {len(people)} identities, too few to split by person into "
                            f"{', '.join(SPLITS)}")
    males = people["sum"].to_numpy(dtype=float)
    females = people["size"].to_numpy(dtype=float) - males
    order = np.random.default_rng(seed).permutation(len(people))
    order = order[np.argsort(-people["size"].to_numpy()[order], kind="stable")]
    share = np.array([fractions[name] for name in SPLITS], dtype=float)
    target_m, target_f = share * counts[1], share * counts[0]
    size = share * len(frame)
    m, f = np.zeros(len(SPLITS)), np.zeros(len(SPLITS))
    assign = np.empty(len(people), dtype=int)
    for i in order:
        gm, gf = males[i], females[i]
        cost = (gm * (2 * (m - target_m) + gm) + gf * (2 * (f - target_f) + gf)) / size
        s = int(np.argmin(cost))  # ties: the first split in SPLITS order
        assign[i] = s
        m[s] += gm
        f[s] += gf
    where = pd.Series(assign, index=people.index).loc[identity.to_numpy()].to_numpy()
    return _check_parts({name: frame[where == k] for k, name in enumerate(SPLITS)}, few)


def official_split(frame: pd.DataFrame, partition: pd.Series, source: str | Path, limit: int | None = None,
                   seed: int = 0, listed_in: str | Path = ATTR_FILE,
                   params_name: str = "params.yaml") -> dict[str, pd.DataFrame]:
    """CelebA's own partition of ``frame``, as it is: partition 0 is train, 1 val, 2 test
    (``partition``: one value per row of ``frame``, read from ``source``, the partition file).
    It is what the literature reports on (162,770 / 19,867 / 19,962 images; by the authors'
    account 8,000 / 1,000 / 1,000 people, no one in two parts, so ``identity_overlap`` in
    ``split.json`` says whether that holds for the images at hand). No class balance is imposed,
    but each part must hold both classes.

    ``limit`` (``data.limit``): a seeded stratified subset of each part (:func:`limit_subset`),
    ``limit`` images in all, shared in proportion to the parts' sizes (rounded down, the images
    left over going to the largest remainders, ties in train, val, test order): a 30,000-image
    run keeps the official proportions, and every image stays in the part the authors put it in.
    ``listed_in``: the attribute file, for the messages."""
    codes = partition.to_numpy()
    parts = {name: frame[codes == k] for k, name in enumerate(SPLITS)}
    of = "the listed images"
    if limit is not None:
        sizes = np.array([len(parts[name]) for name in SPLITS])
        _check_limit(limit, int(sizes.sum()), listed_in, params_name)
        exact = limit * sizes / sizes.sum()
        take = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - take), kind="stable")[:limit - int(take.sum())]:
            take[k] += 1
        parts = {name: limit_subset(parts[name], int(n), seed, f"{source} ({name})", params_name)
                 for name, n in zip(SPLITS, take)}
        of = f"the data.limit subset of {limit}"
    return _check_parts(parts, "", why=lambda name, part: (
        f"{source}: partition {SPLITS.index(name)} ({name}) holds {len(part)} of {of}, "
        f"{int(part['label'].sum())} male and {int((part['label'] == 0).sum())} female; split.method: official "
        "needs both classes in train, val and test"))


def _check_limit(limit: int, available: int, source: str | Path, params_name: str) -> None:
    if limit > available:
        raise PipelineError(f"{params_name}: data.limit is {limit}, more than the {available} images "
                            f"listed in {source}")


def limit_subset(frame: pd.DataFrame, limit: int, seed: int, source: str | Path,
                 params_name: str = "params.yaml") -> pd.DataFrame:
    """A seeded subset of ``limit`` rows with the class balance of ``frame`` (sorted by id)."""
    from sklearn.model_selection import train_test_split

    _check_limit(limit, len(frame), source, params_name)
    frame = frame.sort_values("image_id").reset_index(drop=True)  # the subset does not depend on row order
    if limit == len(frame):
        return frame
    try:
        kept, _ = train_test_split(frame, train_size=limit, stratify=frame["label"], random_state=seed)
    except ValueError as exc:
        raise PipelineError(f"{source}: cannot take a stratified subset of {limit} of its {len(frame)} images "
                            f"(data.limit; scikit-learn: {one_line(exc)})") from None
    return kept.sort_values("image_id").reset_index(drop=True)


def split(params: Params, log=None) -> dict:
    """Read and check the data set, then write the split. Every check comes before the first
    write, so bad data leaves the previous split files as they were."""
    params.require_weights()  # what train will need, known now: fail before the folder is read
    seed = int(params.get("base.seed"))
    out = params.path("split.dir")
    summary: dict = {"source": params.get("data.source")}
    root = params.dataset_root()
    layout = detect_layout(root)
    if params.get("data.source") == "celeba":
        summary["layout"] = layout.kind
    frame = read_attributes(root)
    limit = params.get("data.limit")
    method = params.get("split.method")
    summary["method"] = method
    official = None
    if method == "official":  # split here, before the images are checked: a bad partition fails fast
        if limit is not None:
            summary["limit"] = {"images": int(limit), "of": len(frame)}
        official = official_split(frame, partitions_of(root, frame["image_id"]), layout.partition_file,
                                  None if limit is None else int(limit), seed, layout.attr_file, params.name)
        frame = pd.concat([official[name] for name in SPLITS], ignore_index=True)
    elif limit is not None:
        summary["limit"] = {"images": int(limit), "of": len(frame)}
        frame = limit_subset(frame, int(limit), seed, layout.attr_file, params.name)
    group_by = params.get("split.group_by")
    summary["group_by"] = group_by
    identity = None
    if group_by == "identity":
        identity = identities_of(root, frame["image_id"])
    elif layout.identity_file.is_file():  # not needed to split, but it tells how many people straddle splits
        try:
            identity = identities_of(root, frame["image_id"])
        except PipelineError:
            identity = None
    started = time.perf_counter()
    scanned = scan(root, frame["image_id"])
    if log is not None:
        log(f"split: checked and hashed {len(scanned)} images in {time.perf_counter() - started:.1f} s")
    fractions = params.get("split.fractions")
    if official is not None:
        parts = official
    elif group_by == "identity":
        parts = identity_split(frame, identity, fractions, seed, layout.attr_file)
    else:
        parts = stratified_split(frame, fractions, seed, layout.attr_file)
    if identity is not None:
        person = dict(zip(frame["image_id"], identity))
        people = {name: {person[i] for i in part["image_id"]} for name, part in parts.items()}
        seen: dict = {}
        for name in SPLITS:
            for p in people[name]:
                seen[p] = seen.get(p, 0) + 1
        summary["identities"] = len(seen)
        # people with images in more than one split: 0 by construction for group_by identity
        summary["identity_overlap"] = sum(1 for times in seen.values() if times > 1)
    attributes = attribute_columns(root, parts["test"]["image_id"]).rename_axis("image_id").reset_index()
    for name, part in parts.items():
        atomic_write(out / f"{name}.csv", lambda t, part=part: part.to_csv(t, index=False))
        summary[name] = {"images": len(part), "male": int(part["label"].sum()),
                         "female": int((part["label"] == 0).sum())}
        if identity is not None:
            summary[name]["identities"] = len(people[name])
    atomic_write(out / TEST_ATTRIBUTES, lambda t: attributes.to_csv(t, index=False))
    manifest.write(out, parts, scanned)
    manifest.remember(params.shared_path("train.feature_cache"), root, out, scanned)
    write_json(out / SPLIT_SUMMARY, summary)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    summary = split(load_params(args.params), log=print)
    print("split: " + ", ".join(f"{s} {summary[s]['images']} ({summary[s]['male']} male)" for s in SPLITS)
          + (f"; {summary['identities']} identities, {summary['identity_overlap']} in more than one split"
             if "identities" in summary else "") + f" ({time.perf_counter() - started:.1f} s)")
