"""The engine's layers (docs/architecture.md), checked by reading every import of every module.

``P2SAMLogic`` is layered; a module imports only from its own layer or from a lower one:

    cli (front-ends)  ->  propagation (3D pipeline)  ->  method (2D P²SAM)  ->  models
                                                      io (beside: any layer above it may use it)
    base: the package itself, errors, runtime, _version (everyone may use it)

Imports are read with ``ast`` (module level and inside functions alike), resolved to the engine's
modules, and checked for cycles and for imports against the rule. Each subpackage is also imported
alone in a fresh interpreter, which must then hold no module of a higher layer. Sizes: no module over
600 lines, no class over 300.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "P2SAMLogic"

#: layer -> rank; a module may import its own layer or a layer of lower rank (models and io share a rank
#: and may not import each other)
RANKS = {"base": 0, "models": 1, "io": 1, "method": 2, "propagation": 3, "cli": 4}
BASE = {"P2SAMLogic", "P2SAMLogic._version", "P2SAMLogic.errors", "P2SAMLogic.runtime"}
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    if module == "P2SAMLogic.__main__":
        return "cli"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in RANKS and parts[1] != "base":
        return parts[1]
    raise AssertionError(f"{module} belongs to no layer: put it in a subpackage (or add it to BASE if every "
                         "layer needs it)")


def imports_of(module: str, path: Path, source: str = None) -> Set[str]:
    """The engine modules ``module`` imports anywhere in its code (with the packages their import runs)."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if not (target == "P2SAMLogic" or target.startswith("P2SAMLogic.")):
                continue
            parts = target.split(".")
            for n in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                name = ".".join(parts[:n])
                if name in MODULES and name != module and not module.startswith(name + "."):
                    found.add(name)  # (a module's own packages are being imported already: no edge)
    return found


def graph() -> Dict[str, Set[str]]:
    return {m: imports_of(m, p) for m, p in MODULES.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def upward(edges: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for source, targets in sorted(edges.items()):
        a = layer_of(source)
        for target in sorted(targets):
            b = layer_of(target)
            if a != b and not RANKS[b] < RANKS[a]:
                if source == "P2SAMLogic" or target == "P2SAMLogic":
                    continue  # the package itself: base, imported by all (its re-exports load lazily)
                bad.append(f"{source} ({a}) imports {target} ({b})")
    return bad


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 30
    for module in MODULES:
        layer_of(module)


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_imports_go_down_the_layers_only():
    assert upward(graph()) == []


def test_the_checks_see_an_upward_import_and_a_cycle():
    """An import of the CLI added inside a function of the method layer is caught by both checks."""
    edges = graph()
    path = MODULES["P2SAMLogic.method.segmenter"]
    source = path.read_text(encoding="utf-8") + "\n\ndef _late():\n    from ..cli.app import main\n"
    edges["P2SAMLogic.method.segmenter"] = imports_of("P2SAMLogic.method.segmenter", path, source)
    assert "P2SAMLogic.method.segmenter (method) imports P2SAMLogic.cli.app (cli)" in upward(edges)
    assert any("P2SAMLogic.method.segmenter" in c and "P2SAMLogic.cli.app" in c for c in cycles(edges))


def test_the_package_top_reexports_exist():
    """``from P2SAMLogic import propagate, PropagationConfig, ...``: each name is where the package says."""
    import importlib

    import P2SAMLogic

    for name, module in P2SAMLogic._EXPORTS.items():
        assert hasattr(importlib.import_module(f"P2SAMLogic.{module}"), name), (name, module)
        assert getattr(P2SAMLogic, name) is getattr(importlib.import_module(f"P2SAMLogic.{module}"), name)


SUBPACKAGES = sorted({m.split(".")[1] for m in MODULES if m.count(".") >= 2})


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_each_subpackage_imports_alone(subpackage):
    """In a fresh interpreter, every module of the subpackage imports, and nothing of a higher layer is loaded."""
    own = sorted(m for m in MODULES if m.startswith(f"P2SAMLogic.{subpackage}."))
    code = ("import importlib, json, sys\n"
            f"for m in {own!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('P2SAMLogic'))))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    rank = RANKS[layer_of(f"P2SAMLogic.{subpackage}")]
    above = [m for m in loaded if m in MODULES and RANKS[layer_of(m)] > rank]
    assert above == []
    if subpackage in ("models", "io"):
        other = "io" if subpackage == "models" else "models"
        assert [m for m in loaded if m.startswith(f"P2SAMLogic.{other}")] == []


def test_modules_and_classes_are_small():
    too_large = []
    for module, path in sorted(MODULES.items()):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_large.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            size = node.end_lineno - node.lineno + 1 if isinstance(node, ast.ClassDef) else 0
            if size > MAX_CLASS_LINES:
                too_large.append(f"{path.relative_to(ROOT)}: class {node.name} has {size} lines")
    assert too_large == []


def test_the_docs_name_every_subpackage_and_module():
    """docs/architecture.md names every module of the subpackages, and every file it names exists; the
    README's layout names every subpackage."""
    import re

    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Repository layout"):]
    files = {p.name for p in MODULES.values()}
    for sub in SUBPACKAGES:
        assert f"{sub}/" in layout, f"README's layout lacks {sub}/"
        assert f"`{sub}/`" in architecture, f"docs/architecture.md lacks {sub}/"
        for path in (PACKAGE / sub).glob("*.py"):
            if path.name != "__init__.py" and not path.name.startswith("_"):
                assert path.name in architecture, f"docs/architecture.md does not name {sub}/{path.name}"
    named = set(re.findall(r"(?<![/\w])([a-z_0-9]+\.py)\b", architecture))  # (not P2SAMSlicerLib/x.py)
    assert named <= files, f"docs/architecture.md names files that do not exist: {sorted(named - files)}"
