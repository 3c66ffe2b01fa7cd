"""The package's layers: imports point down only, with no cycles; nothing imports the CLI; the
report renderer is a leaf. Read from the source with ``ast``, so a violation fails here even where
no other test runs the offending line.

Imports inside ``if TYPE_CHECKING:`` are annotations only (never executed) and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top: a module may import its own layer and the layers below it.
LAYERS = [
    {"gpt2tune.errors", "gpt2tune.report"},
    {"gpt2tune.runtime"},
    {"gpt2tune.core"},
    {"gpt2tune.formats"},
    {"gpt2tune.data"},
    {"gpt2tune.inference"},
    {"gpt2tune.finetune"},
    {"gpt2tune.experiments"},
    {"gpt2tune.serve"},
    {"gpt2tune.cli"},
]
ENTRY_POINTS = {"gpt2tune", "gpt2tune.__main__"}  # the lazy public API and `python -m gpt2tune`


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> set[str]:
    """Every gpt2tune module imported anywhere in ``tree`` (functions included)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gpt2tune")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "gpt2tune"
        ):
            found.add(node.module)
            # "from gpt2tune.x import y" may name a submodule y
            found.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted((SRC / "gpt2tune").rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph = {}
    for name, path in modules.items():
        deps = {m for m in _imports(ast.parse(path.read_text(), str(path))) if m in modules}
        graph[name] = deps - {name}
    return graph


GRAPH = _graph()


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in layer):
            return i
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS in {__file__}")


def test_every_module_has_a_layer():
    for module in GRAPH:
        if module not in ENTRY_POINTS:
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m not in ENTRY_POINTS))
def test_imports_point_down(module):
    up = [d for d in GRAPH[module] if d not in ENTRY_POINTS and _layer(d) > _layer(module)]
    assert not up, f"{module} imports {up}, which sit in a higher layer"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_nothing_imports_the_cli():
    for module, deps in GRAPH.items():
        if module == "gpt2tune.__main__" or module.startswith("gpt2tune.cli"):
            continue
        assert not [d for d in deps if d.startswith("gpt2tune.cli")], f"{module} imports the CLI"


def test_report_is_a_leaf():
    for module, deps in GRAPH.items():
        if module.startswith("gpt2tune.report"):
            outside = [d for d in deps if not d.startswith("gpt2tune.report")]
            assert not outside, f"{module} imports {outside}; the report renders plain data only"


def test_the_checker_sees_imports_inside_functions():
    # the graph must include function-level imports, or lazy imports could hide a cycle
    tree = ast.parse("def f():\n    from gpt2tune.cli.main import main\n")
    assert "gpt2tune.cli.main" in _imports(tree)
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from gpt2tune.cli.main import main\n"
    )
    assert not _imports(tree)


# A newcomer reads a module whole: none is over MAX_LINES lines, and none outside the CLI (which
# wires every command to its library call) reaches into more than MAX_IMPORTS of the package's
# modules. Package __init__ files (empty, or the lazy public API) are not counted as imports.
MAX_LINES = 500
MAX_IMPORTS = 15
PACKAGES = {_module_name(p.parent) for p in (SRC / "gpt2tune").rglob("__init__.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_modules_stay_short(module):
    path = SRC / (module.replace(".", "/") + ("/__init__.py" if module in PACKAGES else ".py"))
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by responsibility"


@pytest.mark.parametrize(
    "module", sorted(m for m in GRAPH if m not in ENTRY_POINTS and not m.startswith("gpt2tune.cli"))
)
def test_no_module_reaches_into_most_of_the_package(module):
    used = sorted(GRAPH[module] - PACKAGES)
    assert len(used) <= MAX_IMPORTS, f"{module} imports {len(used)} modules: {used}"


def test_test_modules_have_unique_names():
    """pytest imports test modules by their file name (tests/ has no packages): two files of one
    name in different folders stop the whole run at collection."""
    names = [p.name for p in Path(__file__).parent.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
