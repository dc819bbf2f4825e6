"""Loading ``params.yaml`` (the knobs) and the wiring between stages (``vars`` of dvc.yaml).

Every stage calls :func:`load_params`. The wiring -- where each stage writes what the next one
reads (``split.dir``, ``train.runs_dir``, ``select.output``, ...) -- is not a knob, so it lives in
dvc.yaml's ``vars``, where DVC reads it for ``${...}``; :func:`load_params` merges it into the
params under the same keys, so one dotted key names one path everywhere. Paths are relative to
the params file's folder (the project root), and :class:`Params` resolves them, the MLflow
store's URI included (:func:`store_uri`, :func:`tracking_uri`). What a key may hold:
:mod:`pipeline.core.schema`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import deps
from pipeline.core.cli import PipelineError, one_line
from pipeline.core.schema import validate
from pipeline.core.weights import imagenet_weights_file, missing_weights

AUTO = "auto"
REGISTERED_MODEL_PREFIX = "gender-vgg16"  # base.mlflow.registered_model: auto -> gender-vgg16-<data.source>


class Params:
    """The parsed params file plus the project root its relative paths refer to."""

    def __init__(self, raw: dict, root: Path, name: str = "params.yaml", wiring: tuple[str, ...] = ()):
        self.raw = raw
        self.root = Path(root).resolve()
        self.name = name  # the params file's name, for messages
        self.wiring = wiring  # the dotted keys that came from dvc.yaml's vars (paths, all of them)

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

    def require_weights(self) -> None:
        """The file ``model.weights`` names is there (``imagenet``: in the torch cache): split checks it
        first, so a missing file fails in a second, not in train after the folder was hashed."""
        weights = str(self.get("model.weights"))
        path = None if weights == "none" else imagenet_weights_file() if weights == "imagenet" else Path(self.weights())
        if path is not None and not path.is_file():
            raise PipelineError(missing_weights(path, self.get("model.weights") == "imagenet"))

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
            hint = (f"{self.name} data.root must be a CelebA folder: img_align_celeba/ and list_attr_celeba.txt, "
                    "the authors' Anno/ and Img/, or Kaggle's list_attr_celeba.csv")
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
        """``base.mlflow``, resolved: the store (:func:`pipeline.core.config.tracking_uri`), the experiment,
        where a local store keeps artifacts, the registered model."""
        from pipeline.core.config import tracking_uri  # store imports this module

        return MlflowConfig(uri=tracking_uri(self), experiment=self.get("base.mlflow.experiment"),
                            artifact_root=self.shared_path("base.mlflow.artifact_root"),
                            registered_model=self.registered_model())

    def registered_model(self) -> str:
        """``base.mlflow.registered_model``; ``auto``: ``gender-vgg16-<data.source>``, one per data set,
        so the synthetic default and a real CelebA folder never share a champion."""
        name = str(self.get("base.mlflow.registered_model"))
        return f"{REGISTERED_MODEL_PREFIX}-{self.get('data.source')}" if name == AUTO else name

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
    """``base.mlflow`` resolved (:meth:`Params.mlflow_config`): what :func:`pipeline.tracking.runs.setup`
    takes."""
    uri: str  # the store the stages use: MLFLOW_TRACKING_URI, else base.mlflow.tracking_uri
    experiment: str
    artifact_root: Path  # a local store's artifacts, against Params.shared_root
    registered_model: str


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
    wiring = merge_wiring(raw, path.name, wiring_file(path.resolve().parent))
    params = Params(raw, path.resolve().parent, path.name, wiring)
    validate(params)
    return params


def wiring_file(folder: Path) -> Path:
    """The dvc.yaml beside the params file (the project's, or an experiment's copy); else, for a
    params file in a folder of its own (a scratch copy), the one of this checkout."""
    return folder / "dvc.yaml" if (folder / "dvc.yaml").is_file() else deps.DVC_YAML


def read_wiring(dvc_yaml: Path) -> list[dict]:
    """The mappings of ``dvc_yaml``'s ``vars`` (a string item names a vars file: DVC reads it, the
    params do not)."""
    try:
        items = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("vars") or []
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise PipelineError(f"{dvc_yaml}: cannot read its vars ({one_line(exc)})") from None
    return [item for item in items if isinstance(item, dict)]


def merge_wiring(raw: dict, name: str, dvc_yaml: Path) -> tuple[str, ...]:
    """Adds the wiring of ``dvc_yaml`` to ``raw`` (the params) under the same keys and returns
    them, dotted; a key set in both is an error naming it, as DVC refuses to redefine it."""
    added: list[str] = []

    def merge(into: dict, update: dict, prefix: str) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value, f"{prefix}{key}.")
            elif key in into:
                raise PipelineError(f"{name}: {prefix}{key} is wiring between stages, set in {dvc_yaml.name} "
                                    f"(vars); remove it from {name}")
            else:
                into[key] = copy.deepcopy(value)
                added.append(f"{prefix}{key}")

    for item in read_wiring(dvc_yaml):
        merge(raw, item, "")
    return tuple(added)


def write_project(folder: Path, raw: dict) -> Path:
    """A scratch project in ``folder`` from a whole config ``raw`` (knobs and wiring, as
    :meth:`Params.resolved` gives it, edited): the knobs in ``params.yaml``, the wiring keys of this
    checkout's dvc.yaml in a ``dvc.yaml`` of ``vars`` only. What the tools run stages in."""
    knobs, wiring = copy.deepcopy(raw), {}

    def move(src: dict, shape: dict, dst: dict) -> None:
        for key, value in shape.items():
            if isinstance(value, dict):
                move(src.get(key, {}), value, dst.setdefault(key, {}))
            elif key in src:
                dst[key] = src.pop(key)

    for item in read_wiring(deps.DVC_YAML):
        move(knobs, item, wiring)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"vars": [wiring]}, sort_keys=False))
    (folder / "params.yaml").write_text(yaml.safe_dump(knobs, sort_keys=False))
    return folder / "params.yaml"


SQLITE = "sqlite:///"  # MLflow's default store: a SQLite file


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store URI (query string dropped); None for others."""
    return Path(uri[len(SQLITE):].split("?", 1)[0]) if uri.startswith(SQLITE) else None


def store_uri(params: Params) -> str:
    """``base.mlflow.tracking_uri`` with a relative SQLite path made absolute against
    :meth:`Params.shared_root` (so a queued ``dvc exp run`` writes to the repo's store)."""
    uri = str(params.get("base.mlflow.tracking_uri"))
    if uri.startswith(SQLITE) and not uri[len(SQLITE):].startswith("/"):
        return SQLITE + str(params.shared_root() / uri[len(SQLITE):])
    return uri


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` if set (a tracking server, say), else :func:`store_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or store_uri(params)
