"""The public API: everything the README names is importable from ``gpt2tune`` itself, and
importing the package alone does not import torch (so ``gpt2tune --version`` is instant)."""

import importlib
import subprocess
import sys

import gpt2tune


def test_public_names_are_the_defining_modules_objects():
    for name, module in gpt2tune._API.items():
        assert getattr(gpt2tune, name) is getattr(importlib.import_module(module), name), name
    assert set(gpt2tune.__all__) == {*gpt2tune._API, "__version__"}


def test_importing_the_package_does_not_import_torch():
    code = "import sys, gpt2tune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_type_checkers_see_the_same_names_from_the_same_modules():
    """The ``if TYPE_CHECKING:`` imports (what mypy and IDEs read) re-export exactly ``_API``."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(gpt2tune.__file__).read_text(encoding="utf-8"))
    [block] = [
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    ]
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            assert alias.asname == alias.name  # `X as X`: an explicit re-export (PEP 484)
            seen[alias.name] = node.module
    assert seen == gpt2tune._API
