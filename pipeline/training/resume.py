"""Resuming a killed ``train@<variant>`` stage from its last completed epoch.

After every epoch the stage saves, in ``<train.models_dir>/<variant>/resume/`` (kept by DVC
between runs: ``persist: true``), the trainable weights, the optimizer, the RNG, the history and
the best epoch so far, with a fingerprint of what they were computed from: this variant's
settings, the split, the seed, the device type, torch's version and the train stage's code
(:mod:`pipeline.core.deps`). The next run resumes only from a state with the same fingerprint;
a finished stage removes the folder.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.core.deps import code_digest
from pipeline.core.files import atomic_write

RESUME_DIR = "resume"  # in <train.models_dir>/<variant>/ while a run is unfinished
RESUME_FILE = "state.pt"
TAG_RESUMED = "resumed_after_epoch"  # the MLflow tag of a resumed run: the epoch it went on from
NOT_COMPUTED = ("models_dir", "runs_dir", "metrics_dir", "history_dir", "feature_cache", "num_workers",
                "cache_budget_gb")  # train.* keys that say where things go and how fast, not what is computed


@dataclass
class Progress:
    """Where a run stands: the epochs done, the best one, the MLflow run (None: a fresh start)."""
    history: list[dict] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best: dict | None = None  # the best epoch's row, ``ckpt`` (its checkpoint), labels, preds, probs
    run_id: str | None = None

    @property
    def first_epoch(self) -> int:
        return len(self.history) + 1


def fingerprint(config: dict, variant: str, split_dir: Path, device: torch.device) -> str:
    """What a resume state must have been made with: this variant's settings (``config``: the
    whole params file, as :meth:`pipeline.core.config.Params.resolved` gives it), the data (the split
    lists in ``split_dir``), the code."""
    cfg = copy.deepcopy(config)
    cfg["train"]["variants"] = {variant: cfg["train"]["variants"][variant]}
    for key in NOT_COMPUTED:
        cfg["train"].pop(key, None)
    h = hashlib.blake2b(json.dumps({k: cfg[k] for k in ("data", "split", "model", "train")}, sort_keys=True,
                                   default=str).encode(), digest_size=16)
    h.update(f"{cfg['base']['seed']}|{device.type}|{torch.__version__}".encode())
    for name in ("train", "val"):
        h.update((split_dir / f"{name}.csv").read_bytes())
    h.update(code_digest("train").encode())
    return h.hexdigest()


def epoch_checkpoint(work: Path, epoch: int) -> Path:
    return work / f"epoch_{epoch:03d}.pt"


def load(work: Path, fingerprint: str) -> dict | None:
    """The state a killed run left, if it was made with this config; else None."""
    path = work / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable state is discarded, not trusted
        print(f"{path}: unreadable resume state, training from scratch")
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"{path}: made with other settings, data or code; training from scratch")
        return None
    best = epoch_checkpoint(work, state["best"]["epoch"])
    if not best.is_file():
        print(f"{best}: missing; training from scratch")
        return None
    return state


def start(work: Path, fingerprint: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    """Resume from the state in ``work`` (weights, optimizer and RNG restored) or start afresh
    (whatever ``work`` held removed); ``work`` exists afterwards."""
    state = load(work, fingerprint)
    if state is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        return Progress()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            named[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    best = {**state["best"], "ckpt": epoch_checkpoint(work, state["best"]["epoch"])}
    return Progress(state["history"], state["epoch_seconds"], best, state["run_id"])


def save(work: Path, state: dict) -> None:
    atomic_write(work / RESUME_FILE, lambda t: torch.save(state, t))
