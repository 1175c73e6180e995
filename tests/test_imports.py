"""The core's import graph has no cycles: each module sits on one floor and imports only the
floors below it (deferred imports inside functions included; type-only imports excluded). And
each core module imports on its own, in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from tests.conftest import HANG_S

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "backpack_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def core_imports(name: str) -> set[str]:
    """The backpack_core modules `name` imports, anywhere in its code (not under TYPE_CHECKING)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not _type_checking_only(node, parents):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import hf` names a module
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
            if target in MODULES:
                found.add(target)
        elif isinstance(node, ast.Import) and not _type_checking_only(node, parents):
            found |= {a.name for a in node.names if a.name in MODULES}
    return found - {name, "backpack_core"}


def test_core_import_graph_is_acyclic():
    graph = {name: core_imports(name) for name in MODULES if name != "backpack_core"}
    assert graph["backpack_core.session"] >= {"backpack_core.inspect", "backpack_core.edits"}
    try:
        floors = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        cycle = " -> ".join(reversed(err.args[1]))  # each module imports the next
        pytest.fail(f"import cycle in the core: {cycle}")
    assert floors.index("backpack_core.inspect") < floors.index("backpack_core.session")


def test_each_core_module_imports_on_its_own():
    """One fresh interpreter; before each module, every backpack_core module is forgotten, so
    each import starts from nothing (torch and transformers stay loaded: it is fast)."""
    script = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] == "backpack_core"]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""
    names = [f"backpack_core.{name}" for name in (
        "model", "inspect", "compare", "edits", "session", "generation", "sense_bank",
        "experiments", "loading", "hf")]
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT,
                            capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr
