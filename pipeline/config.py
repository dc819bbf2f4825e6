"""Loading ``params.yaml``: the one place for paths and knobs.

Every stage calls :func:`load_params`; paths in the file are relative to the folder
that holds it (the project root), and :class:`Params` resolves them.
"""
from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.cli import PipelineError

STRATEGIES = ("head_only", "last_block")
AMP_MODES = ("auto", "none", "bf16")
FROZEN_FEATURES = ("auto", "cache", "recompute")  # train.frozen_features
GROUP_BY = ("none", "identity")  # split.group_by
CHAMPION_DTYPES = ("float16", "float32", "bfloat16")  # select.champion_dtype (pipeline/serving.py DTYPES)
PROMOTE_RULES = ("better", "significant", "always")  # select.promote (pipeline/promote.py)
LIMIT_MIN = 20  # data.limit: the fewest images a stratified 80/10/10 split can take
MIN_IMAGE_SIZE = 32  # data.image_size (VGG-16 halves it five times); the served model's smallest input
VARIANT_KEYS = ("strategy", "lr")  # what a train.variants entry may hold
DEVICES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class Params:
    """The parsed params file plus the project root its relative paths refer to."""

    def __init__(self, raw: dict, root: Path, name: str = "params.yaml"):
        self.raw = raw
        self.root = Path(root).resolve()
        self.name = name  # the params file's name, for messages

    def get(self, dotted: str) -> Any:
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PipelineError(f"{self.name}: missing key '{dotted}'")
            node = node[part]
        return node

    def path(self, dotted: str) -> Path:
        """A path-valued key, resolved against the project root."""
        p = Path(os.path.expanduser(str(self.get(dotted))))
        return p if p.is_absolute() else self.root / p

    def shared_root(self) -> Path:
        """What shared state (the MLflow store, the feature cache) resolves against: the repo
        that a queued or temporary ``dvc exp run`` copied (DVC sets ``DVC_ROOT`` to it in every
        stage), so experiments land in the store the user browses; else the params folder."""
        env = os.environ.get("DVC_ROOT")
        return Path(env).resolve() if env and Path(env).is_dir() else self.root

    def shared_path(self, dotted: str) -> Path:
        """A path-valued key, resolved against :meth:`shared_root`."""
        p = Path(os.path.expanduser(str(self.get(dotted))))
        return p if p.is_absolute() else self.shared_root() / p

    def weights(self) -> str:
        """``model.weights``: ``none``, ``imagenet`` or a state-dict path made absolute (the one
        place it is resolved: checkpoints and cache keys outlive the working directory)."""
        weights = str(self.get("model.weights"))
        return weights if weights in ("none", "imagenet") else str(self.path("model.weights"))

    def run_file(self, variant: str) -> Path:
        """What ``train@<variant>`` hands to ``select``: its MLflow run id and model URI, in a
        folder of their own (``train.runs_dir``), the one dependency of select on training."""
        return self.path("train.runs_dir") / f"{variant}.json"

    def variants(self) -> dict[str, dict]:
        return self.get("train.variants")

    def variant(self, name: str) -> dict:
        variants = self.variants()
        if name not in variants:
            raise PipelineError(
                f"{self.name}: unknown variant '{name}' (train.variants has: {', '.join(variants)})"
            )
        return variants[name]

    def dataset_root(self) -> Path:
        """The folder in CelebA layout that split, train and evaluate read: ``data.root``. With
        ``data.source: synthetic`` that is ``data.synthetic.dir``, which the generate stage writes
        (:func:`validate` checks they agree); with ``celeba``, the user's CelebA folder."""
        root = self.path("data.root")
        if self.get("data.source") == "synthetic":
            hint = "the generated set: run the generate stage first (dvc repro generate)"
        else:
            hint = (f"{self.name} data.root must be the CelebA folder that holds img_align_celeba/ and "
                    "list_attr_celeba.txt, or Kaggle's list_attr_celeba.csv")
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "not found"
            raise PipelineError(f"data.root: {root} {what} ({hint})")
        if not any(root.iterdir()):
            raise PipelineError(f"data.root: {root} is empty ({hint})")
        return root

    def train_config(self) -> TrainConfig:
        """The ``train`` section and what training reads beside it, typed and resolved."""
        t = self.get("train")
        return TrainConfig(
            root=self.root, seed=self.get("base.seed"), image_size=self.get("data.image_size"),
            weights=self.weights(), data_source=self.get("data.source"), data_root=self.path("data.root"),
            split_dir=self.path("split.dir"),
            feature_cache=self.shared_path("train.feature_cache"), epochs=t["epochs"], batch_size=t["batch_size"],
            num_workers=t["num_workers"], device=t["device"], reuse_frozen=t["reuse_frozen"],
            frozen_features=t["frozen_features"], cache_budget_gb=float(t["cache_budget_gb"]),
            frozen_dropout=t["frozen_dropout"], amp=t["amp"], channels_last=t["channels_last"],
            strategies=tuple(v["strategy"] for v in t["variants"].values()))

    def mlflow_config(self) -> MlflowConfig:
        """``base.mlflow``, resolved: the store (:func:`pipeline.store.tracking_uri`), the experiment,
        where a local store keeps artifacts, the registered model."""
        from pipeline.store import tracking_uri  # store imports this module

        return MlflowConfig(uri=tracking_uri(self), experiment=self.get("base.mlflow.experiment"),
                            artifact_root=self.shared_path("base.mlflow.artifact_root"),
                            registered_model=self.get("base.mlflow.registered_model"))

    def resolved(self) -> dict:
        """A plain copy of the whole config, for checkpoints and MLflow."""
        return copy.deepcopy(self.raw)


@dataclass(frozen=True)
class TrainConfig:
    """What the training core reads of ``params.yaml``, read once (:meth:`Params.train_config`),
    typed (:func:`validate` has checked every value) and with its paths resolved: the modules
    below the train stage's entry point (``frozen``, ``resident``, ``tracking``, ``devcheck``)
    take this, not :class:`Params`."""
    root: Path  # the project (params file's) folder: git commit, model requirements
    seed: int  # base.seed
    image_size: int  # data.image_size
    weights: str  # model.weights: none, imagenet, or a state-dict path made absolute
    data_source: str  # data.source: synthetic or celeba
    data_root: Path  # data.root (Params.dataset_root checks that it holds data)
    split_dir: Path  # split.dir
    feature_cache: Path  # train.feature_cache, against Params.shared_root (shared by queued experiments)
    epochs: int
    batch_size: int
    num_workers: int | str  # a number or "auto"
    device: str  # auto, cpu, cuda, cuda:N, mps
    reuse_frozen: bool
    frozen_features: str  # auto, cache, recompute
    cache_budget_gb: float
    frozen_dropout: bool
    amp: str  # auto, none, bf16
    channels_last: bool  # CUDA only
    strategies: tuple[str, ...]  # every variant's strategy: the frozen layers one cache holds


@dataclass(frozen=True)
class MlflowConfig:
    """``base.mlflow`` resolved (:meth:`Params.mlflow_config`): what :func:`pipeline.tracking.setup`
    takes."""
    uri: str  # the store the stages use: MLFLOW_TRACKING_URI, else base.mlflow.tracking_uri
    experiment: str
    artifact_root: Path  # a local store's artifacts, against Params.shared_root
    registered_model: str


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

    def __init__(self, p: Params):
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


def validate(p: Params) -> None:
    """Cheap checks of the knobs, so a bad value fails before any work is done."""
    check = _Checks(p)
    check.integer("base.seed", 0)
    _validate_data(p, check)
    _validate_split(p, check)
    _validate_train(p, check)
    _validate_variants(p, check)
    check.choice("select.champion_dtype", CHAMPION_DTYPES)
    check.choice("select.promote", PROMOTE_RULES)
    alpha = p.get("select.alpha")
    check(_is_number(alpha) and 0 < alpha < 1, f"select.alpha must be a number between 0 and 1, got {_got(alpha)}")
    check.integer("evaluate.min_slice", 1)
    for key in ("split.dir", "train.feature_cache", "train.models_dir", "train.runs_dir", "train.metrics_dir",
                "train.history_dir", "select.output", "select.curves", "select.metrics", "evaluate.metrics",
                "evaluate.confusion_csv", "evaluate.confusion_png", "evaluate.roc", "evaluate.pr",
                "evaluate.calibration", "evaluate.slices"):
        check.text(key)


def _validate_data(p: Params, check: _Checks) -> None:
    source = p.get("data.source")
    check(source in ("synthetic", "celeba"), f"data.source must be 'synthetic' or 'celeba', got {_got(source)}")
    check.text("data.root")
    check.text("data.synthetic.dir")
    root, generated = p.path("data.root").resolve(), p.path("data.synthetic.dir").resolve()
    if source == "celeba":
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


def _validate_split(p: Params, check: _Checks) -> None:
    check.choice("split.group_by", GROUP_BY)
    fr = p.get("split.fractions")
    check(isinstance(fr, dict) and set(fr) == {"train", "val", "test"},
          f"split.fractions must have exactly the keys train, val, test, got {_got(fr)}")
    for name, value in fr.items():
        check(_is_number(value) and value > 0, f"split.fractions.{name} must be a positive number, got {_got(value)}")
    check(abs(sum(fr.values()) - 1.0) < 1e-6, f"split.fractions must sum to 1, got {sum(fr.values()):g}")


def _validate_train(p: Params, check: _Checks) -> None:
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


def _validate_variants(p: Params, check: _Checks) -> None:
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


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor" merges may be overridden by the keys beside them
            key = key_node.value
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (the second one would silently win)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"{path}: not valid YAML{where} ({problem})") from None
    if raw is None:
        raise PipelineError(f"{path}: params file is empty")
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping at top level, got {type(raw).__name__}")
    params = Params(raw, path.resolve().parent, path.name)
    validate(params)
    return params
