"""``python -m pipeline <stage> [options]``: how dvc.yaml runs every stage.

    python -m pipeline generate | split | select | evaluate [--params params.yaml]
    python -m pipeline train --variant head_only-lr1e-3 [--params params.yaml]

The stages that talk to MLflow and run the network (train, select, evaluate) get the fast
preflight first (:func:`pipeline.store.preflight`: the params file, the tracking server and its
login), before torch, torchvision or MLflow is imported, so a bad file, a dead server or a refused
login fails in well under a second; then the kernels they compute with (:mod:`pipeline.numerics`,
``train.reproducible``). Then the stage module's ``main``. The order lives here, once, and each
stage module reads top to bottom: docstring, imports, code.
"""
from __future__ import annotations

import importlib
import sys

from pipeline import numerics
from pipeline.cli import run_main
from pipeline.store import preflight

STAGES = {"generate": "synthetic", "split": "split", "train": "train", "select": "select", "evaluate": "evaluate"}
TRACKED = ("train", "select", "evaluate")  # the stages that talk to MLflow and run torch: preflight first


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in STAGES:
        got = f" (got {argv[0]!r})" if argv else ""
        print(f"error: usage: python -m pipeline {{{','.join(STAGES)}}} [options]{got}", file=sys.stderr)
        sys.exit(2)
    stage, options = argv[0], argv[1:]
    if stage in TRACKED:
        numerics.configure(preflight(options).get("train.reproducible"))
    sys.argv[0] = f"python -m pipeline {stage}"  # argparse's prog in the stage's usage line
    module = importlib.import_module(f"pipeline.{STAGES[stage]}")
    run_main(lambda: module.main(options))


if __name__ == "__main__":
    main(sys.argv[1:])
