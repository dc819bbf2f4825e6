"""dvc.yaml is the one list of the code each stage runs (:mod:`pipeline.core.deps`): package
folders and single files. The resume fingerprint and the cache keys hash the train stage's list,
so a module outside it would leave DVC, resume and the caches blind to its edits. Every module a
stage's command imports (at the top or inside a function) or names as a file must be under that
stage's deps, and every dep must hold a module the stage runs (a needless dep re-runs the stage
for nothing)."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline import __main__ as LAUNCHER
from pipeline.core import deps

STAGES = yaml.safe_load(deps.DVC_YAML.read_text())["stages"]
PACKAGE = deps.PACKAGE.name


def module_file(module: str) -> Path | None:
    """The file of project module ``module`` (dotted), or None when it is not one."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = deps.PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def modules_used(path: Path, seen: set[Path] | None = None, launcher=None) -> set[Path]:
    """``path`` (a module file of the package) and every module file of the package it imports
    or names as a ``*.py`` file, transitively."""
    seen = set() if seen is None else seen
    if path in seen:
        return seen
    seen.add(path)
    for node in ast.walk(ast.parse(path.read_text())):
        found = []
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # from pipeline.data import celeba
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"\w+\.py", node.value):
            found = [str(p.relative_to(deps.PACKAGE.parent).with_suffix("")).replace("/", ".")
                     for p in path.parent.glob(node.value)]  # a module passed by path (a pyfunc's python_model)
        for module in found:
            target = module_file(module)
            if target is not None:
                modules_used(target, seen)
    return seen


def used_by(stage: str) -> set[Path]:
    spec = STAGES[stage].get("do", STAGES[stage])
    command = re.fullmatch(rf"python -m {PACKAGE} (\w+)( .*)?", spec["cmd"]).group(1)
    used = modules_used(module_file(LAUNCHER.STAGES[command]))  # the launcher imports it by name
    launcher = deps.PACKAGE / "__main__.py"
    # the launcher itself, without the stages and tools it does not run for this command
    seen = {launcher}
    for node in ast.walk(ast.parse(launcher.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and (command in LAUNCHER.TRACKED or "store" not in node.module):
            for module in [node.module] + [f"{node.module}.{a.name}" for a in node.names]:
                if module_file(module):
                    modules_used(module_file(module), seen)
    return {p for p in used | seen if p.name != "__init__.py"}  # a sub-package's __init__.py is empty (test_layout)


def listed(stage: str) -> list[Path]:
    spec = STAGES[stage].get("do", STAGES[stage])
    return [deps.PACKAGE.parent / d for d in spec["deps"] if isinstance(d, str) and d.startswith(f"{PACKAGE}/")]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_under_its_deps(stage):
    used, names = used_by(stage), listed(stage)
    outside = sorted(str(p.relative_to(deps.PACKAGE.parent)) for p in used
                     if not any(p == d or p.is_relative_to(d) for d in names))
    assert outside == [], f"dvc.yaml: stage {stage} runs {outside} but does not depend on them"
    needless = [str(d.relative_to(deps.PACKAGE.parent)) for d in names
                if not any(p == d or p.is_relative_to(d) for p in used)]
    assert needless == [], f"dvc.yaml: stage {stage} depends on {needless} but never runs them"
    assert all(d.exists() for d in names), stage
    assert set(deps.code_files(stage)) >= {p for p in used if p.suffix == ".py"}, stage


def test_the_walk_sees_imports_inside_functions_and_modules_named_by_path():
    """The guard itself: train imports the served model only inside train_log.log_pyfunc, which
    names mlflow_model.py as a path; both must be found."""
    used = {str(p.relative_to(deps.PACKAGE)) for p in modules_used(deps.PACKAGE / "stages" / "train.py")}
    assert {"tracking/train_log.py", "tracking/served_model.py", "tracking/mlflow_model.py", "core/store.py",
            "training/resume.py"} <= used, used


def test_split_and_generate_run_no_mlflow_code():
    """The launcher imports the tracking server's preflight only for the tracked stages."""
    assert not any("tracking" in p.parts for p in used_by("split") | used_by("generate"))
