"""Holds a train stage still once an epoch is complete, so a test can kill it at a known point.

Put this folder on ``PYTHONPATH`` with ``PAUSE_AFTER_EPOCH=N`` and ``PAUSE_MARKER=/some/file``:
in any Python process (dvc itself, the stage it runs) an audit hook watches renames. When the
train stage is about to put epoch N+1's checkpoint into its resume folder
(``.../resume/epoch_<N+1>.pt``: :func:`pipeline.core.files.atomic_write` renames it into place), epoch N
has been saved in the resume state and logged to MLflow. The hook then writes the marker file
and sleeps until the process is killed. The test waits for the marker (a condition, not a
timing window) and kills the stage: it dies after exactly N epochs, every time.
"""
import os
import sys
import time

_EPOCH = os.environ.get("PAUSE_AFTER_EPOCH")
_MARKER = os.environ.get("PAUSE_MARKER")


def _hook(event, args):
    if event != "os.rename" or len(args) < 2:
        return
    dst = os.fsdecode(args[1]) if isinstance(args[1], (str, bytes, os.PathLike)) else ""
    if os.path.basename(dst) == f"epoch_{int(_EPOCH) + 1:03d}.pt" and \
            os.path.basename(os.path.dirname(dst)) == "resume":
        with open(_MARKER, "w") as f:
            f.write(f"{os.getpid()}\n")
        while True:  # until SIGKILL
            time.sleep(60)


if _EPOCH and _MARKER:
    sys.addaudithook(_hook)
