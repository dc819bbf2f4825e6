"""The one error type, and the wrapper that turns any error of a command into one line on stderr
and a non-zero exit (a traceback only with ``PIPELINE_DEBUG=1``)."""
from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any, Callable

DEBUG_ENV = "PIPELINE_DEBUG"  # set to 1: unexpected errors show their traceback


class PipelineError(Exception):
    """An error the user can fix; stages print it as one line and exit non-zero."""


class Stopped(BaseException):
    """SIGTERM (``timeout``, ``dvc queue kill``, a cluster's scheduler): raised where the command
    is, so its ``finally`` blocks remove what it had half written, as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def one_line(text: Any) -> str:
    """An exception's text on one line. An exception that a DataLoader worker re-raised carries
    the worker's whole traceback in its text; keep only its last line, the error itself."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if any(ln.startswith("Original Traceback") for ln in lines):
        last = lines[-1]
        prefix = f"{PipelineError.__module__}.{PipelineError.__name__}: "
        return last[len(prefix):] if last.startswith(prefix) else f"in a data loader worker: {last}"
    return " ".join(lines)


def run_main(fn: Callable[[], Any]) -> None:
    """Run a stage's main(): every error becomes one line on stderr, no traceback.

    A :class:`PipelineError` (the user's to fix) and any unexpected exception exit 1,
    Ctrl-C exits 130, SIGTERM 143 (each after the command's clean-up ran). With ``PIPELINE_DEBUG=1`` in the environment the exception is
    re-raised instead, traceback and all.
    """
    debug = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    # What the imports made (torch, torchvision, MLflow: ~450k objects) lives as long as the
    # process: frozen, the cyclic GC never scans it again, neither while the command runs nor at
    # interpreter exit (~2-3 s of a stage's exit on a 2-core CPU). preflight() turned the GC off
    # for the imports; it is on from here.
    gc.freeze()
    gc.enable()
    signal.signal(signal.SIGTERM, _stop)
    try:
        fn()
    except PipelineError as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Stopped as exc:
        print(f"error: stopped by {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except Exception as exc:  # noqa: BLE001 - a bug or an environment problem: one line, and how to see more
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {one_line(exc) or '(no message)'} "
              f"(unexpected; set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(1)
