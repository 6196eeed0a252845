"""Check that the code Slicer 5.8 runs needs no Python newer than 3.9 (Slicer 5.8 ships Python 3.9).

Two checks, each listing ``file:line: what``:

* `vermin <https://github.com/netromdk/vermin>`_ (``-t=3.9-``, annotations evaluated): syntax
  (``match``, parenthesised context managers...), standard-library modules, functions and
  arguments (``itertools.pairwise``, ``zip(strict=...)``...) newer than 3.9;
* union types ``X | Y`` where Python evaluates them: in any annotation of a module without
  ``from __future__ import annotations`` (Slicer's ``parameterNodeWrapper`` evaluates the
  annotations of the class it wraps), and in run-time expressions whose operands are types
  (``isinstance(v, int | str)``, ``Alias = int | None``). vermin's own union detection is a
  heuristic that also flags bit flags (``os.W_OK | os.X_OK``), so this one is done here, on the AST.

Usage: ``python Testing/Slicer/check_python39.py [PATH...]`` (default: :data:`PATHS`); exit status
1 when anything is found.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List

ROOT = Path(__file__).resolve().parents[2]
#: what runs inside Slicer: the engine, the module (panel, Lib, effect) and the self-test runner
PATHS = ("P2SAMLogic", "P2SAMSlicer", "Testing/Slicer/run_self_tests.py")
TARGET = "3.9"
_TYPE_NAMES = {"None", "int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set", "frozenset", "type",
               "object", "complex", "Any", "Optional", "Union", "List", "Dict", "Tuple", "Set", "Sequence",
               "Mapping", "Callable", "Iterable"}

#: a CamelCase name (a class); ALL_CAPS names are constants such as flags (``os.W_OK``, ``re.M``)
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$")


def python_files(paths: Iterable[str]) -> List[Path]:
    out = []
    for p in paths:
        path = (ROOT / p) if not Path(p).is_absolute() else Path(p)
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def vermin_violations(files: List[Path]) -> List[str]:
    """``file:line: feature requires 3.x`` for everything vermin finds newer than 3.9."""
    command = [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())", f"-t={TARGET}-",
               "--no-tips", "--violations", "--eval-annotations", "--no-parse-comments", "--format", "parsable",
               *[str(f) for f in files]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, 1) or "Traceback" in done.stderr:
        raise RuntimeError(f"vermin failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    out = []
    for line in done.stdout.splitlines():
        # path:line:column:py2:py3:feature (the last line, without path, is the summary)
        m = re.match(r"^(.+?):(\d+):(\d*):([^:]*):([^:]*):(.+)$", line)
        if not m or not m.group(6).strip():
            continue
        py3 = m.group(5)
        if py3 and py3 != "!" and tuple(int(v) for v in re.findall(r"\d+", py3)[:2]) > (3, 9):
            out.append(f"{_rel(m.group(1))}:{m.group(2)}: {m.group(6).strip()} requires {py3}")
    return out


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def _is_type_expression(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name):
        return node.id in _TYPE_NAMES or bool(_CLASS_NAME.match(node.id))
    if isinstance(node, ast.Attribute):
        return bool(_CLASS_NAME.match(node.attr))
    if isinstance(node, ast.Subscript):
        return _is_type_expression(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_expression(node.left) or _is_type_expression(node.right)
    return False


def union_violations(files: List[Path]) -> List[str]:
    """``X | Y`` between types where Python 3.9 would evaluate it (see the module docstring)."""
    out = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                        any(a.name == "annotations" for a in n.names) for n in tree.body)
        annotations = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                    if a is not None and a.annotation is not None:
                        annotations.add(id(a.annotation))
                if node.returns is not None:
                    annotations.add(id(node.returns))
            elif isinstance(node, ast.AnnAssign):
                annotations.add(id(node.annotation))
        inside = set()
        for node in ast.walk(tree):
            if id(node) in annotations:
                for sub in ast.walk(node):
                    inside.add(id(sub))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
                continue
            in_annotation = id(node) in inside
            if in_annotation and postponed:
                continue  # a string under PEP 563, never evaluated by this code
            if in_annotation or (_is_type_expression(node.left) and _is_type_expression(node.right)):
                out.append(f"{_rel(str(path))}:{node.lineno}: union type `X | Y` requires 3.10"
                           + (" (annotation evaluated without `from __future__ import annotations`)"
                              if in_annotation else ""))
    return sorted(set(out))


def check(paths: Iterable[str] = PATHS) -> List[str]:
    """Every 3.10+ construct in ``paths`` (files or folders, relative to the repository), as ``file:line: what``."""
    files = python_files(paths)
    return sorted(set(vermin_violations(files) + union_violations(files)))


def main(argv: List[str] = None) -> int:
    found = check(argv or PATHS)
    for line in found:
        print(line)
    print(f"{len(found)} construct(s) newer than Python {TARGET}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
