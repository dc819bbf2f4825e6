"""``python -m pipeline <command> [options]``: how dvc.yaml runs every stage, and the tools.

    python -m pipeline generate | split | select | evaluate [--params params.yaml]
    python -m pipeline train --variant head_only-lr1e-3 [--params params.yaml]
    python -m pipeline predict | bench | devcheck | scale | remote | store [options]

The stages that talk to MLflow and run the network (train, select, evaluate) get the fast
preflight first (:func:`pipeline.core.store.preflight`: the params file, the tracking server
and its login), before torch, torchvision or MLflow is imported, so a bad file, a dead server or a
refused login fails in well under a second; then the kernels they compute with
(:mod:`pipeline.core.numerics`, ``train.reproducible``). Then the command's module's ``main``. The
order lives here, once, and each stage module reads top to bottom: docstring, imports, code.
"""
from __future__ import annotations

import importlib
import os
import sys

from pipeline.core import numerics
from pipeline.core.cli import PipelineError, run_main

COMMANDS = {  # name: (module, what it does, for --help without importing torch or MLflow)
    "generate": ("pipeline.stages.generate", "stage: write the synthetic face set in CelebA's layout (data.synthetic)"),
    "split": ("pipeline.stages.split", "stage: check and hash data.root's images, write the train/val/test split"),
    "train": ("pipeline.stages.train", "stage: train one variant (--variant NAME), every epoch tracked in MLflow"),
    "select": ("pipeline.stages.select",
               "stage: pick the best variant from MLflow, register it, promote it if it beats the champion"),
    "evaluate": ("pipeline.stages.evaluate", "stage: score the registered pick on the test split; model card"),
    "predict": ("pipeline.tools.predict", "label face images with the champion of params.yaml's data set (or --model)"),
    "bench": ("pipeline.tools.bench", "plain loop vs frozen-prefix reuse vs native kernels, on the default config"),
    "devcheck": ("pipeline.tools.devcheck", "the training core on a device (GPU): images/s per phase against its ceiling"),
    "scale": ("pipeline.tools.scale", "dvc status, split and a train start on 30,000- and 202,599-image mirrors"),
    "remote": ("pipeline.tools.remote", "dvc push / pull with the remote checked first (push | pull)"),
    "store": ("pipeline.tracking.runs", "print the MLflow store, its artifact folder, the runs page or the champion's URI"),
}
STAGES = {name: COMMANDS[name][0] for name in ("generate", "split", "train", "select", "evaluate")}
TRACKED = ("train", "select", "evaluate")  # the stages that talk to MLflow and run torch: preflight first
QUIET = {"MLFLOW_LOGGING_LEVEL": "WARNING",  # no database set-up INFO lines
         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # no "Downloading artifacts" bars in stage logs


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join(["usage: python -m pipeline <command> [options]   (python -m pipeline <command> --help)", "",
                      *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())])


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(usage())
        return
    if not argv or argv[0] not in COMMANDS:
        got = f" (got {argv[0]!r})" if argv else ""
        print(f"error: usage: python -m pipeline {{{','.join(COMMANDS)}}} [options]{got}", file=sys.stderr)
        sys.exit(2)
    command, options = argv[0], argv[1:]
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    if command in TRACKED:
        from pipeline.core.store import (
            preflight,  # here: split and generate need no MLflow code
        )

        reproducible = preflight(options).get("train.reproducible")
        try:
            numerics.configure(reproducible)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    sys.argv[0] = f"python -m pipeline {command}"  # argparse's prog in the command's usage line
    module = importlib.import_module(COMMANDS[command][0])
    run_main(lambda: module.main(options))


if __name__ == "__main__":
    main(sys.argv[1:])
