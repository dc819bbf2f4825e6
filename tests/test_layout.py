"""The package's shape (docs/design.md): modules grouped by concern into packages that import one
way, lowest first -- the shared basics (core), data, training and evaluation, tracking, the
stages, the tools, then ``python -m pipeline`` -- with no import circle between any two modules
(imports inside functions included), no ``_private`` name used outside its module, no module
of 300 lines or more, and nothing in a sub-package's ``__init__.py`` (importing
``pipeline.data.celeba`` must not import torch: the preflight runs before it)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
LEVELS = {"core": 0, "data": 1, "training": 2, "evaluation": 2, "tracking": 3, "stages": 4, "tools": 5, "main": 6}
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LEVELS else "main"  # pipeline, pipeline.__main__


def resolve(name: str) -> str | None:
    """The project module ``name`` refers to (a module, or a name in one), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import of a project module in
    ``module``, at the top or inside a function."""
    tree = ast.parse(MODULES[module].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(resolve(a.name), None, node.lineno) for a in node.names if a.name.startswith("pipeline")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULES:
                    out.append((full, None, node.lineno))  # from pipeline.data import celeba
                else:
                    out.append((resolve(node.module), alias.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m and m != module]


GRAPH = {m: sorted({target for target, _, _ in imports(m)}) for m in MODULES}


def test_no_import_circle_between_modules():
    seen, stack, circles = set(), [], []

    def visit(m):
        if m in stack:
            circles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for target in GRAPH[m]:
            visit(target)
        stack.pop()

    for m in MODULES:
        visit(m)
    assert circles == [], " ; ".join(" -> ".join(c) for c in circles)


def test_packages_import_only_downwards():
    wrong = [f"{m} ({package_of(m)}) imports {target} ({package_of(target)}) at line {line}"
             for m in MODULES for target, _, line in imports(m)
             if package_of(target) != package_of(m) and LEVELS[package_of(target)] >= LEVELS[package_of(m)]]
    assert wrong == [], "\n".join(wrong)


def test_no_private_name_is_used_outside_its_module():
    wrong = []
    for m, path in MODULES.items():
        for target, name, line in imports(m):
            if name and name.startswith("_"):
                wrong.append(f"{m}:{line} imports {target}.{name}")
        bound = {}  # local names bound to project modules: `from pipeline.data import celeba`, `import x as y`
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in MODULES:
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                wrong.append(f"{m}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    assert wrong == [], "\n".join(wrong)


def test_every_sub_package_is_a_folder_with_an_empty_init():
    inits = sorted(PACKAGE.glob("*/__init__.py"))
    assert {p.parent.name for p in inits} == set(LEVELS) - {"main"}
    assert [str(p) for p in inits if p.read_text().strip()] == []
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_is_under_300_lines(module):
    assert len(MODULES[module].read_text().splitlines()) < MAX_LINES, module


def test_the_check_sees_a_circle_an_upward_import_and_a_private_name(tmp_path):
    """The guard itself, on a made-up package of three modules."""
    global MODULES, GRAPH, PACKAGE
    fake = tmp_path / "pipeline"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("def f():\n    from pipeline.data import b\n")
    (fake / "core").mkdir()
    (fake / "core" / "__init__.py").write_text("")
    (fake / "data" / "b.py").write_text("from pipeline.data.a import f\nfrom pipeline.core.config import _hidden\n")
    (fake / "core" / "config.py").write_text("_hidden = 1\nfrom pipeline.data import a\n")
    saved = MODULES, GRAPH, PACKAGE
    try:
        PACKAGE = fake
        MODULES = {module_name(p): p for p in sorted(fake.rglob("*.py"))}
        GRAPH = {m: sorted({t for t, _, _ in imports(m)}) for m in MODULES}
        for check in (test_no_import_circle_between_modules, test_no_private_name_is_used_outside_its_module,
                      test_packages_import_only_downwards):
            with pytest.raises(AssertionError):
                check()
    finally:
        MODULES, GRAPH, PACKAGE = saved
