"""The core's layout is its architecture: wings stacked along the data flow, imports running one
way (docs/API.md, "Where things are"):

    common  <-  model  <-  edit  <-  interpret  <-  experiments
                  ^
                  +------  training (common and model only)

A module imports only from its own wing and the wings below it (deferred imports inside
functions included; type-only imports under TYPE_CHECKING excluded), the graph has no cycle, and
each core module imports on its own, in a fresh interpreter. The package's `__init__` (lazy
public names) and the `train` command module sit on top."""

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


# what each wing may import (itself included)
WINGS = {
    "common": {"common"},
    "model": {"common", "model"},
    "edit": {"common", "model", "edit"},
    "interpret": {"common", "model", "edit", "interpret"},
    "experiments": {"common", "model", "edit", "interpret", "experiments"},
    "training": {"common", "model", "training"},
}
TOP = {"backpack_core", "backpack_core.train"}  # may import any wing


def wing(name: str) -> str:
    return name.split(".")[1]


def import_lines(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for each absolute backpack_core import in the file (a `from
    package import module` names the module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backpack_core"):
            targets = [f"{node.module}.{a.name}" for a in node.names
                       if f"{node.module}.{a.name}" in MODULES]
            found += [(node.lineno, t) for t in (targets or [node.module])]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("backpack_core")]
    return found


def layering_violations(modules: dict[str, Path]) -> list[str]:
    """One line per import against the layering (file:line: what it imports and what it may),
    and per relative import (every import names its wing, so a reader sees the layer)."""
    bad = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad += [f"{path.name}:{n.lineno}: relative import"
                for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        if name in TOP:
            continue
        for line, target in import_lines(path):
            if target == "backpack_core" or wing(target) not in WINGS[wing(name)]:
                bad.append(f"{path.name}:{line}: {wing(name)} imports {target} "
                           f"(a {wing(name)} module may import only {sorted(WINGS[wing(name)])})")
    return bad


def test_every_core_module_lives_in_a_wing():
    loose = sorted(n for n in MODULES if n not in TOP and (n.count(".") < 1 or wing(n) not in WINGS))
    assert not loose, f"core modules outside the wings {sorted(WINGS)}: {loose}"


def test_core_imports_run_one_way():
    bad = layering_violations(MODULES)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layering_check_sees_a_violation(tmp_path):
    """The check is not vacuous: a model module importing from interpret (deferred, inside a
    function) is caught with its line, and so is a relative import."""
    fake = tmp_path / "fake.py"
    fake.write_text("import torch\n\n\ndef f():\n"
                    "    from backpack_core.interpret.session import ContextSession\n"
                    "    from .vocab import WordError\n")
    bad = layering_violations({"backpack_core.model.fake": fake})
    assert bad[0] == "fake.py:6: relative import"
    assert bad[1].startswith("fake.py:5: model imports backpack_core.interpret.session")
    assert layering_violations({"backpack_core.interpret.fake": fake}) == ["fake.py:6: relative import"]


def test_core_import_graph_is_acyclic():
    graph = {name: core_imports(name) for name in MODULES if name != "backpack_core"}
    assert "backpack_core.edit.specs" in graph["backpack_core.interpret.session"]
    try:
        floors = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        cycle = " -> ".join(reversed(err.args[1]))  # each module imports the next
        pytest.fail(f"import cycle in the core: {cycle}")
    assert floors.index("backpack_core.model.vocab") < floors.index("backpack_core.interpret.session")


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
    names = sorted(n for n in MODULES if n not in TOP)
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT,
                            capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr
