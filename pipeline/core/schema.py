"""What ``params.yaml`` may hold: the allowed values and the checks :func:`pipeline.core.config.load_params`
runs on every key a stage reads (one line per mistake, naming the key)."""
from __future__ import annotations

import math
import os
import re
from typing import Any

from pipeline.core.cli import PipelineError

STRATEGIES = ("head_only", "last_block")
AMP_MODES = ("auto", "none", "bf16")
FROZEN_FEATURES = ("auto", "cache", "recompute")  # train.frozen_features
GROUP_BY = ("none", "identity")  # split.group_by
SPLIT_METHODS = ("stratified", "official")  # split.method (pipeline/stages/split.py)
CHAMPION_DTYPES = ("float16", "float32", "bfloat16")  # select.champion_dtype (pipeline/tracking/served_model.py DTYPES)
PROMOTE_RULES = ("better", "significant", "always")  # select.promote (pipeline/promote.py)
LIMIT_MIN = 20  # data.limit: the fewest images a stratified 80/10/10 split can take
MIN_IMAGE_SIZE = 32  # data.image_size (VGG-16 halves it five times); the served model's smallest input
VARIANT_KEYS = ("strategy", "lr")  # what a train.variants entry may hold
DEVICES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML true is not a number


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _got(value: Any) -> str:
    """``value`` as the message shows it; YAML reads ``1e-3`` (no dot) as text, say so."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return repr(value)
        return f"{value!r} (text: YAML reads a number without a dot such as 1e-3 as a string; write 1.0e-3)"
    return repr(value)


class _Checks:
    """``check(cond, msg)`` and its typed forms, each failing with one line naming the file."""

    def __init__(self, p):
        self.p = p

    def __call__(self, cond: bool, msg: str) -> None:
        if not cond:
            raise PipelineError(f"{self.p.name}: {msg}")

    def integer(self, key: str, minimum: int, why: str = "") -> None:
        value = self.p.get(key)
        self(_is_int(value) and value >= minimum, f"{key} must be an integer >= {minimum}{why}, got {_got(value)}")

    def text(self, key: str) -> None:
        value = self.p.get(key)
        self(isinstance(value, str) and value.strip() != "", f"{key} must be a non-empty string, got {_got(value)}")

    def choice(self, key: str, allowed: tuple[str, ...]) -> None:
        value = self.p.get(key)
        self(value in allowed, f"{key} must be one of {', '.join(allowed)}, got {_got(value)}")


def validate(p) -> None:
    """Cheap checks of the knobs, so a bad value fails before any work is done."""
    check = _Checks(p)
    check.integer("base.seed", 0)
    check.text("base.mlflow.experiment")
    check.text("base.mlflow.registered_model")  # auto or a name (pipeline/core/config.py)
    _validate_data(p, check)
    _validate_split(p, check)
    _validate_train(p, check)
    _validate_variants(p, check)
    check.choice("select.champion_dtype", CHAMPION_DTYPES)
    check.choice("select.promote", PROMOTE_RULES)
    alpha = p.get("select.alpha")
    check(_is_number(alpha) and 0 < alpha < 1, f"select.alpha must be a number between 0 and 1, got {_got(alpha)}")
    check.integer("evaluate.min_slice", 1)
    for key in ("train.feature_cache", *p.wiring):  # the paths: a knob, and the wiring from dvc.yaml
        check.text(key)


def _validate_data(p, check: _Checks) -> None:
    source = p.get("data.source")
    check(source in ("synthetic", "celeba"), f"data.source must be 'synthetic' or 'celeba', got {_got(source)}")
    check.text("data.root")
    check.text("data.synthetic.dir")
    root, generated = p.path("data.root").resolve(), p.path("data.synthetic.dir").resolve()
    if source == "celeba":
        given = str(p.get("data.root"))
        check(os.path.isabs(given),
              f"data.root must be an absolute path for data.source celeba, got {given!r}: a queued or temporary "
              "dvc exp run works in a copy of the project elsewhere, where a relative path points at nothing "
              "(write it as /path/to/celeba)")
        # the generate stage replaces data.synthetic.dir: it must never be, hold or sit in the CelebA folder
        check(not (root == generated or root in generated.parents or generated in root.parents),
              f"data.root ({p.get('data.root')}) and data.synthetic.dir ({p.get('data.synthetic.dir')}) must "
              "not overlap: the generate stage rewrites data.synthetic.dir; point data.root at your CelebA folder")
    else:
        check(root == generated,
              f"data.root must be data.synthetic.dir ({p.get('data.synthetic.dir')}) when data.source is "
              f"synthetic, got {_got(p.get('data.root'))} (for your own CelebA folder set data.source: celeba)")
    check.integer("data.synthetic.images", 1)  # the generate stage runs in both modes
    noise = p.get("data.synthetic.label_noise")
    check(_is_number(noise) and 0 <= noise <= 1,
          f"data.synthetic.label_noise must be a number from 0 to 1, got {_got(noise)}")
    limit = p.get("data.limit")
    check(limit is None or (_is_int(limit) and limit >= LIMIT_MIN),
          f"data.limit must be null (every image) or an integer >= {LIMIT_MIN}, got {_got(limit)}")
    check.integer("data.image_size", MIN_IMAGE_SIZE, " (VGG-16 halves it five times)")


def _validate_split(p, check: _Checks) -> None:
    check.choice("split.method", SPLIT_METHODS)
    check.choice("split.group_by", GROUP_BY)
    # the official partition is the authors' and is taken as it is; regrouping it would make a
    # split of our own that results could no longer be compared with the literature's on
    check(not (p.get("split.method") == "official" and p.get("split.group_by") == "identity"),
          "split.method: official takes CelebA's own partition as it is, so split.group_by must be none "
          "(identity applies to split.method: stratified)")
    fr = p.get("split.fractions")
    check(isinstance(fr, dict) and set(fr) == {"train", "val", "test"},
          f"split.fractions must have exactly the keys train, val, test, got {_got(fr)}")
    for name, value in fr.items():
        check(_is_number(value) and value > 0, f"split.fractions.{name} must be a positive number, got {_got(value)}")
    check(abs(sum(fr.values()) - 1.0) < 1e-6, f"split.fractions must sum to 1, got {sum(fr.values()):g}")


def _validate_train(p, check: _Checks) -> None:
    weights = p.get("model.weights")
    check(isinstance(weights, str) and weights.strip() != "",
          f"model.weights must be none, imagenet or the path of a VGG-16 state dict, got {_got(weights)}")
    check.integer("train.epochs", 1)
    check.integer("train.batch_size", 1)
    workers = p.get("train.num_workers")
    check(workers == "auto" or (_is_int(workers) and workers >= 0),
          f"train.num_workers must be auto or an integer >= 0, got {_got(workers)}")
    device = p.get("train.device")
    check(isinstance(device, str) and DEVICES.fullmatch(device) is not None,
          f"train.device must be auto, cpu, cuda, cuda:N or mps, got {_got(device)}")
    for key in ("train.reproducible", "train.reuse_frozen", "train.frozen_dropout", "train.channels_last"):
        check(isinstance(p.get(key), bool), f"{key} must be true or false, got {_got(p.get(key))}")
    check.choice("train.amp", AMP_MODES)
    check.choice("train.frozen_features", FROZEN_FEATURES)
    budget = p.get("train.cache_budget_gb")
    check(_is_number(budget) and budget > 0, f"train.cache_budget_gb must be a positive number, got {_got(budget)}")


def _validate_variants(p, check: _Checks) -> None:
    variants = p.variants()
    check(isinstance(variants, dict) and len(variants) >= 1, "train.variants must be a non-empty mapping")
    for name, v in variants.items():
        check(re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) is not None,
              f"train.variants: name '{name}' may hold only letters, digits, '_' and '-' "
              "(DVC reads train.variants.<name> as a key path, so a dot breaks it)")
        key = f"train.variants.{name}"
        check(isinstance(v, dict), f"{key} must be a mapping with strategy and lr, got {_got(v)}")
        unknown = [k for k in v if k not in VARIANT_KEYS]
        check(not unknown, f"{key} has unknown key '{unknown[0] if unknown else ''}' "
                           f"(a variant holds {' and '.join(VARIANT_KEYS)})")
        check(v.get("strategy") in STRATEGIES,
              f"{key}.strategy must be one of {', '.join(STRATEGIES)}, got {_got(v.get('strategy'))}")
        lr = v.get("lr")
        check(_is_number(lr) and lr > 0, f"{key}.lr must be a positive number, got {_got(lr)}")
