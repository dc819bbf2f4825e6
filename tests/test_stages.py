"""dvc.yaml is the one list of the code each stage runs (:mod:`pipeline.stages`): the resume
fingerprint and the cache keys hash the train stage's list, so a module missing from it would
leave DVC, resume and the caches blind to its edits. Every module a stage's command imports
(at the top or inside a function) or names as a file must be among that stage's deps, and nothing else (a needless dep re-runs
the stage for nothing)."""
import ast
import re

import pytest
import yaml

from pipeline import __main__ as LAUNCHER
from pipeline import stages

STAGES = yaml.safe_load(stages.DVC_YAML.read_text())["stages"]


def modules_used(name: str, seen: set[str] | None = None) -> set[str]:
    """``name`` (a module file of the package) and every module of the package it imports or
    names as a ``*.py`` file, transitively."""
    seen = set() if seen is None else seen
    if name in seen:
        return seen
    seen.add(name)
    package = stages.PACKAGE.name
    for node in ast.walk(ast.parse((stages.PACKAGE / name).read_text())):
        found = []
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == package:
            found = [f"{package}.{a.name}" for a in node.names]  # from pipeline import frozen
        elif isinstance(node, ast.ImportFrom) and node.module:
            found = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"\w+\.py", node.value):
            found = [f"{package}.{node.value[:-3]}"]  # a module passed by path (a pyfunc's python_model)
        for module in found:
            if module.startswith(f"{package}.") and (stages.PACKAGE / f"{module.split('.')[1]}.py").is_file():
                modules_used(f"{module.split('.')[1]}.py", seen)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_among_its_deps(stage):
    spec = STAGES[stage].get("do", STAGES[stage])
    stage_name = re.fullmatch(rf"python -m {stages.PACKAGE.name} (\w+)( .*)?", spec["cmd"]).group(1)
    used = modules_used("__main__.py") | modules_used(f"{LAUNCHER.STAGES[stage_name]}.py")  # the launcher imports it by name
    listed = {path.name for path in stages.code_files(stage)}
    assert used - listed == set(), f"dvc.yaml: stage {stage} runs {sorted(used - listed)} but does not depend on them"
    assert listed - used == set(), f"dvc.yaml: stage {stage} depends on {sorted(listed - used)} but never runs them"
    assert all(path.is_file() for path in stages.code_files(stage)), stage


def test_the_walk_sees_imports_inside_functions_and_modules_named_by_path():
    """The guard itself: train imports serving only inside tracking.log_pyfunc, and names
    mlflow_model.py as a path; both must be found."""
    used = modules_used("train.py")
    assert {"tracking.py", "serving.py", "mlflow_model.py", "store.py", "resume.py"} <= used, used
