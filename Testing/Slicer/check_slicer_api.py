#!/usr/bin/env python3
"""Check every Slicer, Qt, CTK and MRML name the P2SAMSlicer module uses against Slicer 5.8.1.

    python Testing/Slicer/check_slicer_api.py [--names Testing/Slicer/slicer_api_names.json]
                                              [--module-dir P2SAMSlicer] [--json]

The names come from slicer_api_names.json (written by extract_slicer_api.py from Slicer's,
CTK's and PythonQt's sources at the commits recorded in it, Qt 5.15's meta-objects and VTK
9.2.6; no network needed here). Every Python file under the module folder is parsed (never
imported) and these uses are checked:

* module-level names: ``slicer.X``, ``slicer.util.X``, ``slicer.modules.<name>``,
  ``slicer.app`` / ``slicer.mrmlScene`` members, ``qt.X``, ``qt.Qt.X``, ``ctk.X``,
  ``vtk.X``, and what is imported from ``slicer``, ``slicer.util``, ``slicer.i18n``,
  ``slicer.parameterNodeWrapper``, ``slicer.ScriptedLoadableModule``, ``SegmentEditorEffects``;
* members (methods, slots, enum constants, properties) used on objects whose class is known.
  Classes are known only from the code: constructors (``slicer.vtkSegment()``), class-name
  arguments (``AddNewNodeByClass("vtkMRML...")``), ``SafeDownCast``, return types of Slicer's
  methods, type annotations (parameters, returns, variables, dataclass fields; across the
  module's own files), the .ui file's widgets (``self.ui.applyButton``), the effect's
  ``scriptedEffect``, and methods a class inherits from Slicer's Python base classes. Never
  from a variable's name;
* signals: ``obj.connect("signal(args)", handler)`` needs that exact signature on the
  object's class (Qt's meta-objects, Slicer's and CTK's headers) and a handler that needs no
  more arguments than the signal gives;
* known misuse: ``ModificationModeSet`` with a modification extent (it clears the whole segment
  first, see :meth:`FileChecker.check_segment_write`);
* the CMake macros the CMakeLists files call.

Calls on receivers whose class cannot be inferred are listed, each with its file and line
(``unresolved``; the reason for each is in :data:`EXPLAINED`); calls of Python's own str,
bytes, container and file methods on such receivers are counted and listed apart.

Exit status: 0 when no name is unknown and every unresolved call is explained, 1 otherwise.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_NAMES = HERE / "slicer_api_names.json"

#: Segment Editor write calls and the position of their modification-extent argument (after the mode)
SEGMENT_WRITERS = {"modifySelectedSegmentByLabelmap": 2, "ModifySegmentByLabelmap": 4}
#: calls on receivers whose class the checker cannot infer, each with the reason it cannot, and what the
#: call is: ``{(file, call): why}``
EXPLAINED: Dict[Tuple[str, str], str] = {
    ("P2SAMSlicer/P2SAMSlicer.py", "self.layout.addWidget"):
        "self.layout is set by Slicer's ScriptedLoadableModuleWidget.setup() (self.parent.layout(), the module "
        "panel's QVBoxLayout); the checker reads the names of that base class's methods, not the types of the "
        "attributes it assigns. QLayout.addWidget is in PythonQt's wrappers.",
}
#: MRML scene methods whose first argument names the class of the node they return
CLASS_NAME_ARGUMENT = {"AddNewNodeByClass", "GetFirstNodeByClass", "CreateNodeByClass", "GetSingletonNode"}
#: why a member of a Qt object may not be checkable here
QT_METAOBJECT = "Qt slots, signals, properties and Q_ENUMs"
QT_REASON = (": PythonQt finds them at run time through Qt's QMetaObject; they are declared in Qt's own headers "
             "(qtbase), which are not in Slicer's, CTK's or PythonQt's sources and could not be fetched at a "
             "pinned Qt 5.15 (the qtbase snapshot is 716 MB, over the 500 MB fetch limit); the smoke test in a "
             "real Slicer (Testing/Slicer/smoke.sh) exercises them")
#: Python standard-library classes a scripted module's classes may inherit from
STDLIB_BASES = {"TestCase": "unittest.TestCase"}


@dataclass
class Finding:
    file: str
    line: int
    name: str
    status: str  # "ok", "unknown", "unchecked", "unresolved" or "python" (see the module docstring)
    reason: str = ""


class Api:
    """Lookups in the vendored name list."""

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.classes: Dict[str, dict] = {}
        for key in ("vtk_classes", "qt_classes", "ctk_classes", "slicer_classes"):
            self.classes.update(doc.get(key, {}))
        self.qt = set(doc.get("qt_classes", {}))
        self.ctk = set(doc.get("ctk_classes", {}))
        self.python = doc.get("python", {})
        self.used: Set[str] = set()  # classes looked at (extract_slicer_api.py keeps only these)

    def known(self, cls: str, mark: bool = True) -> bool:
        if cls in self.classes:
            if mark:
                self.used.add(cls)
            return True
        return False

    def lineage(self, cls: str, mark: bool = True) -> List[str]:
        out, todo = [], [cls]
        while todo:
            c = todo.pop(0)
            if c in out or not self.known(c, mark):
                continue
            out.append(c)
            todo.extend(self.classes[c].get("bases", []))
        return out

    def member(self, cls: str, name: str, mark: bool = True) -> Optional[str]:
        """``"method"``, ``"constant"`` or ``"property"`` when ``cls`` (or a base) has ``name``."""
        for c in self.lineage(cls, mark):
            entry = self.classes[c]
            for kind in ("methods", "constants", "properties"):
                if name in entry.get(kind, ()):
                    return kind[:-1] if kind != "properties" else "property"
        return None

    def signals(self, cls: str) -> Set[str]:
        """The signals of ``cls`` and its bases (full signatures, as Qt normalises them)."""
        out: Set[str] = set()
        for c in self.lineage(cls):
            out.update(self.classes[c].get("signals", ()))
        return out

    def returns(self, cls: str, method: str) -> Optional[str]:
        """The class ``cls.method()`` returns; for a method only a subclass has (PythonQt and VTK hand out
        objects as their most derived class), that subclass's."""
        for c in self.lineage(cls):
            ret = self.classes[c].get("returns", {}).get(method)
            if ret:
                return ret if self.known(ret) else None
        for c in sorted(self.classes):
            if c != cls and cls in self.lineage(c, mark=False):
                ret = self.classes[c].get("returns", {}).get(method)
                if ret:
                    self.lineage(c)
                    return ret if self.known(ret) else None
        return None

    def python_names(self, module: str) -> Set[str]:
        return set(self.python.get(module, {}).get("names", []))

    def python_class(self, name: str) -> Optional[Tuple[str, List[str]]]:
        for module, part in self.python.items():
            if name in part.get("classes", {}):
                return module, part["classes"][name]
        return None

    def slicer_namespace(self) -> Set[str]:
        return set(self.doc.get("slicer_namespace", []))


class Project:
    """The module's own Python modules, functions and classes, with the types their annotations state.

    ``modules[stem] = {"functions": {name: return annotation}, "classes": {name: {"fields": {attr:
    annotation}, "methods": {name: return annotation}, "bases": [...]}}}``; annotations are kept as
    AST nodes and resolved by the checker of the file that uses them.
    """

    def __init__(self, files: Iterable[Path] = ()) -> None:
        self.modules: Dict[str, dict] = {}
        for path in files:
            self.add(path.stem, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))

    def add(self, stem: str, tree: ast.Module) -> None:
        functions, classes = {}, {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[node.name] = node.returns
            elif isinstance(node, ast.ClassDef):
                fields: Dict[str, ast.AST] = {}
                methods: Dict[str, Optional[ast.AST]] = {}
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        fields[item.target.id] = item.annotation
                    elif isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        if any(ast.unparse(d) == "property" for d in item.decorator_list):
                            fields[item.name] = item.returns
                        else:
                            methods[item.name] = item.returns
                        for sub in ast.walk(item):  # self.x: T = ... in a method
                            if isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Attribute) and \
                                    isinstance(sub.target.value, ast.Name) and sub.target.value.id == "self":
                                fields.setdefault(sub.target.attr, sub.annotation)
                classes[node.name] = {"fields": fields, "methods": methods,
                                      "bases": [ast.unparse(b).split(".")[-1] for b in node.bases]}
        self.modules[stem] = {"functions": functions, "classes": classes}

    def find_class(self, name: str) -> Optional[dict]:
        for module in self.modules.values():
            if name in module["classes"]:
                return module["classes"][name]
        return None

    def lineage(self, name: str) -> List[dict]:
        out, todo = [], [name]
        while todo:
            found = self.find_class(todo.pop(0))
            if found is not None and found not in out:
                out.append(found)
                todo.extend(found["bases"])
        return out


import builtins as _builtins  # noqa: E402
import io as _io  # noqa: E402

#: Python's built-in functions and classes (their results are Python objects, not Slicer's)
PYTHON_BUILTINS = {n for n in dir(_builtins) if not n.startswith("_")} - {"super"}
#: methods of Python's own str, bytes, containers and files: a call of one of these on a receiver of unknown
#: type is tallied as Python's, not listed as an unresolved Slicer call
PYTHON_METHODS = {n for t in (str, bytes, list, dict, set, tuple, _io.TextIOWrapper, _io.BufferedReader)
                  for n in dir(t) if not n.startswith("_")}

#: typing constructs whose first argument is the element type of a sequence
SEQUENCE_TYPES = {"List", "Sequence", "Iterable", "Iterator", "list", "tuple"}

# ------------------------------------------------------------------------------------------
# types: ("instance", cls) ("class", cls) ("module", name) ("ui", file) ("modules",)
#        ("slicermodule", name) ("pyinstance", class) ("skip",)
#        ("localmodule", stem) ("localclass", name) ("localfunc", stem, name) ("local", class)
#        ("localmethod", class, name) ("tuple", [types]) ("list", type)

SKIP = ("skip",)


class FileChecker(ast.NodeVisitor):
    def __init__(self, api: Api, path: Path, module_names: Set[str], ui_widgets: Dict[str, str],
                 project: Optional[Project] = None) -> None:
        self.api = api
        self.project = project or Project()
        self.stem = path.stem
        self.path = path
        self.rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        self.module_names = module_names
        self.ui_widgets = ui_widgets
        self.findings: List[Finding] = []
        self.globals: Dict[str, tuple] = {}
        self.scopes: List[Dict[str, tuple]] = []
        self.classes: List[Tuple[str, Dict[str, tuple], List[str], Set[str]]] = []  # name, self env, bases, methods
        self.local_classes: Dict[str, Tuple[List[str], Set[str]]] = {}
        self.param_classes: Dict[str, Dict[str, ast.AST]] = {}
        self.functions: Dict[str, tuple] = {}
        self.methods_by_class: Dict[str, Dict[str, ast.FunctionDef]] = {}
        self.assigned: Dict[str, ast.AST] = {}  # name -> the expression assigned to it in the current function

    # -- reporting ---------------------------------------------------------------------------
    def report(self, node: ast.AST, name: str, status: str, reason: str = "") -> None:
        self.findings.append(Finding(self.rel, getattr(node, "lineno", 0), name, status, reason))

    # -- environment -------------------------------------------------------------------------
    def lookup(self, name: str) -> Optional[tuple]:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name in self.globals:
            return self.globals[name]
        return None

    def bind(self, name: str, value: Optional[tuple]) -> None:
        if value is None:
            return
        (self.scopes[-1] if self.scopes else self.globals)[name] = value

    # -- imports -----------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            bound = alias.asname or root
            if alias.name in ("qt", "ctk", "vtk", "slicer"):
                self.bind(bound, ("module", alias.name))
            elif alias.name.endswith("PythonQt") and alias.name.startswith("qSlicer"):
                library = alias.name[: -len("PythonQt")]
                classes = [c for c, e in self.api.classes.items()
                           if c.startswith("qSlicer") and library_folder(library) in e.get("header", "")]
                status = "ok" if classes else "unknown"
                self.report(node, f"import {alias.name}", status,
                            "" if classes else "no Slicer library of that name")
                self.bind(bound, ("module", "pythonqt:" + library))
            else:
                self.bind(bound, SKIP)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        checked = {"slicer": self.api.slicer_namespace() | set(self.api.classes),
                   "slicer.util": self.api.python_names("slicer.util"),
                   "slicer.i18n": self.api.python_names("slicer.i18n"),
                   "slicer.parameterNodeWrapper": self.api.python_names("slicer.parameterNodeWrapper"),
                   "slicer.ScriptedLoadableModule": self.api.python_names("slicer.ScriptedLoadableModule"),
                   "SegmentEditorEffects": self.api.python_names("SegmentEditorEffects"),
                   "SegmentEditorEffects.AbstractScriptedSegmentEditorEffect":
                       self.api.python_names("SegmentEditorEffects")}
        for alias in node.names:
            bound = alias.asname or alias.name
            if module in checked:
                if alias.name == "*":
                    self.report(node, f"from {module} import *", "ok")
                    continue
                ok = alias.name in checked[module]
                self.report(node, f"{module}.{alias.name}", "ok" if ok else "unknown",
                            "" if ok else f"not a name of {module} in the vendored list (Slicer 5.8.1); if Slicer "
                                          "has it, re-run extract_slicer_api.py")
                if module == "slicer" and self.api.known(alias.name):
                    self.bind(bound, ("class", alias.name))
                elif self.api.python_class(alias.name):
                    self.bind(bound, ("pyclass", alias.name))
                else:
                    self.bind(bound, SKIP)
            else:
                self.bind(bound, self.project_import(module, alias.name))

    def project_import(self, module: str, name: str) -> tuple:
        """What ``from <module> import <name>`` binds when it names one of the module's own files or
        their functions and classes (``from . import mrml_bridge``, ``from .logic import review_target``)."""
        stem = module.split(".")[-1] if module.strip(".") else ""
        if name in self.project.modules and (not stem or stem.endswith("Lib") or stem == "P2SAMSlicerLib"):
            return ("localmodule", name)
        part = self.project.modules.get(stem)
        if part is not None:
            if name in part["classes"]:
                return ("localclass", name)
            if name in part["functions"]:
                return ("localfunc", stem, name)
        return SKIP

    # -- classes and functions ----------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> None:
        # classes made with @parameterNodeWrapper: their annotated fields are typed
        for sub in node.body:
            if isinstance(sub, ast.ClassDef) and any("parameterNodeWrapper" in ast.unparse(d) for d in sub.decorator_list):
                self.param_classes[sub.name] = {f.target.id: f.annotation for f in sub.body
                                                if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)}
        for sub in node.body:  # module-level functions with a return annotation naming a Slicer class
            if isinstance(sub, ast.FunctionDef) and sub.returns is not None:
                t = self.annotation_type(sub.returns)
                if t is not None and t != SKIP:
                    self.functions[sub.name] = t
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = [ast.unparse(b) for b in node.bases]
        methods = {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.local_classes[node.name] = (bases, methods)
        self.methods_by_class.setdefault(node.name, {}).update(
            {f.name: f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))})
        env: Dict[str, tuple] = {}
        self.classes.append((node.name, env, bases, methods))
        # self.X = <expr> anywhere in the class, typed once everything is bound
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                for t in sub.targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        env.setdefault(t.attr, None)
        for fn in node.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            if fn.returns is not None:  # self.method() -> the class its return annotation names
                t = self.annotation_type(fn.returns)
                if t is not None:
                    env["()" + fn.name] = t
            decorators = [ast.unparse(d) for d in fn.decorator_list]
            if "property" in decorators:
                t = self.annotation_type(fn.returns) if fn.returns is not None else None
                if t is not None:
                    env[fn.name] = t
            scope = self.parameter_types(fn)
            self.bind_function_imports(fn, scope)
            self.scopes.append(scope)
            for sub in ast.walk(fn):
                if isinstance(sub, ast.Assign) and len(sub.targets) == 1:
                    t = sub.targets[0]
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        value = self.typeof(sub.value, quiet=True)
                        if value is not None and env.get(t.attr) in (None, SKIP):
                            env[t.attr] = value
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Attribute) and \
                        isinstance(sub.target.value, ast.Name) and sub.target.value.id == "self":
                    value = self.annotation_type(sub.annotation)
                    if value is not None:
                        env[sub.target.attr] = value
            self.scopes.pop()
        self.generic_visit(node)
        self.classes.pop()

    def annotation_type(self, annotation: Optional[ast.AST]) -> Optional[tuple]:
        """The type an annotation names: a Slicer/VTK class, a local parameterNodeWrapper class, or SKIP."""
        if annotation is None:
            return None
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return SKIP
        if isinstance(annotation, ast.Subscript):
            outer = ast.unparse(annotation.value).split(".")[-1]
            inner = annotation.slice
            items = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
            if outer == "Optional":
                return self.annotation_type(items[0])
            if outer in ("Tuple",) and not (len(items) == 2 and ast.unparse(items[1]) == "..."):
                return ("tuple", [self.annotation_type(i) or SKIP for i in items])
            if outer in SEQUENCE_TYPES or outer == "Tuple":
                return ("list", self.annotation_type(items[0]) or SKIP)
            return SKIP
        name = ast.unparse(annotation).strip("'\"").split(".")[-1]
        if name in self.param_classes:
            return ("paramnode", name)
        if self.api.known(name):
            return ("instance", name)
        if self.project.find_class(name) is not None:
            return ("local", name)
        return SKIP

    def parameter_types(self, node: ast.FunctionDef) -> Dict[str, tuple]:
        scope: Dict[str, tuple] = {}
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            t = self.annotation_type(a.annotation)
            if t is not None:
                scope[a.arg] = t
        if self.classes and node.name == "__init__" and "scriptedEffect" in scope:
            scope["scriptedEffect"] = ("instance", "qSlicerSegmentEditorScriptedEffect")
        elif self.classes and node.name == "__init__" and "scriptedEffect" in [a.arg for a in node.args.args]:
            scope["scriptedEffect"] = ("instance", "qSlicerSegmentEditorScriptedEffect")
        return scope

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.assigned = {sub.targets[0].id: sub.value for sub in ast.walk(node) if isinstance(sub, ast.Assign)
                         and len(sub.targets) == 1 and isinstance(sub.targets[0], ast.Name)}
        scope = self.parameter_types(node)
        self.scopes.append(scope)
        self.defaults = {a.arg: d.value for a, d in zip(node.args.args[::-1], node.args.defaults[::-1])
                         if isinstance(d, ast.Constant) and isinstance(d.value, str)}
        self.bind_function_imports(node, scope)
        # flow-insensitive: bind every simple assignment of the function first (twice: chains)
        for _ in range(3):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and len(sub.targets) == 1:
                    self.bind_target(scope, sub.targets[0], self.typeof(sub.value, quiet=True))
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    value = self.annotation_type(sub.annotation)
                    if value is not None:
                        scope[sub.target.id] = value
                elif isinstance(sub, ast.ExceptHandler) and sub.name:
                    scope.setdefault(sub.name, SKIP)  # a Python exception
                elif isinstance(sub, (ast.With, ast.AsyncWith)):
                    for item in sub.items:
                        if item.optional_vars is not None:
                            self.bind_target(scope, item.optional_vars, self.typeof(item.context_expr, quiet=True))
                elif isinstance(sub, (ast.For, ast.comprehension)):
                    self.bind_target(scope, sub.target, self.element_type(sub.iter))
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def element_type(self, iterable: ast.AST) -> Optional[tuple]:
        """The type of the items of ``iterable`` (a typed sequence, ``zip(...)``, ``enumerate(...)``)."""
        if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name) and self.lookup(iterable.func.id) \
                is None and iterable.func.id in ("zip", "enumerate") and iterable.args:
            parts = [self.element_type(a) for a in iterable.args]
            return ("tuple", [SKIP, parts[0]]) if iterable.func.id == "enumerate" else ("tuple", parts)
        t = self.typeof(iterable, quiet=True)
        if t is not None and t[0] == "list":
            return t[1]
        return SKIP if t == SKIP else None

    def bind_function_imports(self, node: ast.AST, scope: Dict[str, tuple]) -> None:
        """Imports inside a function bind their names before anything else is typed."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                for alias in sub.names:
                    name = alias.asname or alias.name.split(".")[0]
                    scope.setdefault(name, ("module", alias.name) if alias.name in ("qt", "ctk", "vtk", "slicer")
                                     else SKIP)
            elif isinstance(sub, ast.ImportFrom):
                for alias in sub.names:
                    scope.setdefault(alias.asname or alias.name, self.project_import(sub.module or "", alias.name))

    def bind_target(self, scope: Dict[str, tuple], target: ast.AST, value: Optional[tuple]) -> None:
        """Bind an assignment target (a name, or a tuple of them unpacking a typed tuple) once."""
        if value is None:
            return
        if isinstance(target, ast.Name):
            if target.id not in scope:
                scope[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            parts = value[1] if value[0] == "tuple" and len(value[1]) == len(target.elts) else \
                [SKIP] * len(target.elts) if value == SKIP else [None] * len(target.elts)
            for element, part in zip(target.elts, parts):
                self.bind_target(scope, element, part)

    # -- expressions ------------------------------------------------------------------------
    def self_type(self) -> Optional[tuple]:
        return ("self",) if self.classes else None

    def typeof(self, expr: ast.AST, quiet: bool = False) -> Optional[tuple]:
        if isinstance(expr, ast.Name):
            if expr.id == "self" and self.classes:
                return ("self",)
            if expr.id == "cls" and self.classes and self.lookup("cls") is None:
                return ("localclass", self.classes[-1][0])
            found = self.lookup(expr.id)
            if found is None and expr.id in ("__file__", "__name__", "__doc__"):
                return SKIP
            return found
        if isinstance(expr, ast.Attribute):
            base = self.typeof(expr.value, quiet=True)
            return self.member_type(base, expr.attr)
        if isinstance(expr, ast.Call):
            return self.call_type(expr)
        if isinstance(expr, ast.Constant):
            return SKIP
        if isinstance(expr, ast.Subscript):
            base = self.typeof(expr.value, quiet=True)
            if base is not None and base[0] == "tuple" and isinstance(expr.slice, ast.Constant) and \
                    isinstance(expr.slice.value, int) and -len(base[1]) <= expr.slice.value < len(base[1]):
                return base[1][expr.slice.value]
            if base is not None and base[0] == "list":
                return base[1] if not isinstance(expr.slice, ast.Slice) else base
            return SKIP if base == SKIP else None
        if isinstance(expr, ast.IfExp):
            body = self.typeof(expr.body, quiet=True)
            return body if body not in (None, SKIP) else self.typeof(expr.orelse, quiet=True)
        if isinstance(expr, ast.BoolOp):
            types = [self.typeof(value, quiet=True) for value in expr.values]
            for t in types:
                if t not in (None, SKIP):
                    return t
            return SKIP if SKIP in types else None
        if isinstance(expr, (ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.JoinedStr,
                             ast.BinOp, ast.Compare)):
            return SKIP
        return None

    def member_type(self, base: Optional[tuple], attr: str) -> Optional[tuple]:
        if base is None:
            return None
        if base == SKIP:
            return SKIP
        kind = base[0]
        if kind == "paramnode":
            field = self.param_classes.get(base[1], {}).get(attr)
            if field is None:
                return None
            t = self.annotation_type(field)
            return t
        if kind == "module":
            name = base[1]
            if name == "slicer":
                if attr == "app":
                    return ("instance", "qSlicerApplication")
                if attr == "mrmlScene":
                    return ("instance", "vtkMRMLScene")
                if attr == "modules":
                    return ("modules",)
                if attr in self.api.python and False:
                    return None
                if f"slicer.{attr}" in self.api.python:
                    return ("module", f"slicer.{attr}")
                if self.api.known(attr):
                    return ("class", attr)
                return None
            if name in ("qt", "ctk") or name.startswith("pythonqt:"):
                return ("class", attr) if self.api.known(attr) else None
            if name == "vtk":
                return ("class", attr) if self.api.known(attr) else SKIP
            return None
        if kind == "modules":
            return ("slicermodule", attr)
        if kind == "localmodule":
            part = self.project.modules.get(base[1], {})
            if attr in part.get("classes", {}):
                return ("localclass", attr)
            if attr in part.get("functions", {}):
                return ("localfunc", base[1], attr)
            return SKIP  # a module constant
        if kind == "local":
            for entry in self.project.lineage(base[1]):
                if attr in entry["fields"]:
                    return self.annotation_type(entry["fields"][attr]) or None
                if attr in entry["methods"]:
                    return ("localmethod", base[1], attr)
            return None
        if kind == "self":
            env = self.classes[-1][1]
            if attr == "ui" and self.ui_widgets:
                return ("ui",)
            if attr == "scriptedEffect":
                return ("instance", "qSlicerSegmentEditorScriptedEffect")
            return env.get(attr)
        if kind == "ui":
            cls = self.ui_widgets.get(attr)
            return ("instance", cls) if cls and self.api.known(cls) else None
        if kind == "instance":
            if self.api.member(base[1], attr) == "property":
                return None
            return None
        if kind == "scriptedwidget" and attr in self.api.doc.get("scripted_widgets", {}).get(base[1], {}):
            cls = self.api.doc["scripted_widgets"][base[1]][attr]
            if cls and self.api.known(cls):
                return ("instance", cls)
            return ("opaque", f"an attribute of the {base[1]} module widget whose class the source does not show")
        return None

    def call_type(self, call: ast.Call) -> Optional[tuple]:
        func = call.func
        callee = self.typeof(func, quiet=True)
        if callee == SKIP:
            return SKIP  # a Python function or method (str.format, a module of the engine...): Python's result
        if callee is not None and callee[0] == "class":
            return ("instance", callee[1])  # a constructor: slicer.vtkSegment(), vtk.vtkMatrix4x4()
        if isinstance(func, ast.Name) and func.id in self.functions:
            return self.functions[func.id]
        if callee is not None and callee[0] == "localclass":
            return ("local", callee[1])
        if callee is not None and callee[0] == "localfunc":
            returns = self.project.modules.get(callee[1], {}).get("functions", {}).get(callee[2])
            return self.annotation_type(returns) if returns is not None else None
        if callee is not None and callee[0] == "localmethod":
            for entry in self.project.lineage(callee[1]):
                if callee[2] in entry["methods"]:
                    returns = entry["methods"][callee[2]]
                    return self.annotation_type(returns) if returns is not None else None
            return None
        if isinstance(func, ast.Name) and self.stem in self.project.modules:
            part = self.project.modules[self.stem]
            if func.id in part["classes"] and self.lookup(func.id) is None:
                return ("local", func.id)
            if func.id in part["functions"] and part["functions"][func.id] is not None and self.lookup(func.id) is None:
                return self.annotation_type(part["functions"][func.id])
        if isinstance(func, ast.Attribute):
            base = self.typeof(func.value, quiet=True)
            if base == SKIP:
                return SKIP
            if base is None:
                return None
            if base[0] == "class":
                if func.attr == "SafeDownCast":
                    return ("instance", base[1])
                ret = self.api.returns(base[1], func.attr)
                return ("instance", ret) if ret else None
            if base[0] == "instance":
                if func.attr in CLASS_NAME_ARGUMENT:
                    arg = call.args[1 if func.attr == "GetSingletonNode" else 0] if call.args else None
                    if isinstance(arg, ast.Name) and arg.id in getattr(self, "defaults", {}):
                        arg = ast.Constant(self.defaults[arg.id])  # a parameter: its default class name
                    if isinstance(arg, ast.Constant) and self.api.known(str(arg.value)):
                        return ("instance", str(arg.value))
                    return None  # the class is a variable: only the generic return type is known
                ret = self.api.returns(base[1], func.attr)
                return ("instance", ret) if ret else None
            if base[0] == "slicermodule":
                if func.attr == "logic":
                    cls = self.api.doc.get("module_logic", {}).get(base[1])
                    return ("instance", cls) if cls and self.api.known(cls) else None
                if func.attr == "widgetRepresentation":
                    return ("modulewidget", base[1])
            if base[0] == "modulewidget" and func.attr == "self":
                return ("scriptedwidget", base[1])
            if base[0] == "self" and self.classes:
                return self.classes[-1][1].get("()" + func.attr)
            return None
        if isinstance(func, ast.Name):
            t = self.lookup(func.id)
            if t and t[0] == "class":
                return ("instance", t[1])
            if t and t[0] == "pyclass":
                return ("pyinstance", t[1])
            if t is None and func.id in PYTHON_BUILTINS:
                return SKIP  # open(), repr(), dict()...: Python's objects
        if isinstance(func, ast.Name) and func.id == "super" and self.classes:
            return ("super",)
        return None

    # -- checks -----------------------------------------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        base = self.typeof(node.value, quiet=True)
        self.check_member(node, base, node.attr, isinstance(node.ctx, ast.Store))
        self.generic_visit(node)

    def check_member(self, node: ast.Attribute, base: Optional[tuple], attr: str, store: bool) -> None:
        text = ast.unparse(node)
        if base == SKIP:
            return
        if base is not None and base[0] == "opaque":
            self.report(node, text, "unchecked", base[1])
            return
        if base is not None and base[0] == "paramnode":
            ok = attr in self.param_classes.get(base[1], {}) or attr in ("parameterNode", "connectGui", "disconnectGui",
                                                                         "AddObserver", "RemoveObserver")
            self.report(node, f"{base[1]}.{attr}", "ok" if ok else "unknown", "" if ok else "not a parameter node field")
            return
        if base is None:
            if isinstance(getattr(node, "parent_call", None), ast.Call) and not self.is_python_or_sitk(node.value):
                if attr in PYTHON_METHODS:
                    self.report(node, text, "python", "a method of Python's own types (str, bytes, list, dict, set, "
                                                      "files) on a receiver of unknown type")
                else:
                    self.report(node, text, "unresolved", "receiver class not inferred")
            return
        kind = base[0]
        if kind in ("localmodule", "localclass", "localfunc", "local", "localmethod", "tuple", "list"):
            return  # the module's own code and containers: nothing of Slicer's to check
        if kind == "super":  # super().method(): a method of one of the class's (Slicer Python) bases
            for b in self.classes[-1][2]:
                found = self.api.python_class(b.split(".")[-1])
                if found and attr in found[1]:
                    self.report(node, f"{b.split('.')[-1]}.{attr}", "ok")
                    return
            self.report(node, f"super().{attr}", "unknown", "not a method of the class's Slicer base classes")
            return
        if kind == "module":
            name = base[1]
            if name == "slicer":
                ok = (attr in ("app", "mrmlScene", "modules", "moduleNames") or f"slicer.{attr}" in self.api.python
                      or attr in self.api.slicer_namespace() or self.api.known(attr))
                self.report(node, f"slicer.{attr}", "ok" if ok else "unknown",
                            "" if ok else "not in the vendored list (Slicer 5.8.1); if Slicer has it, re-run "
                                          "extract_slicer_api.py")
            elif name.startswith("slicer."):
                ok = attr in self.api.python_names(name)
                self.report(node, f"{name}.{attr}", "ok" if ok else "unknown", "" if ok else f"not in {name}")
            elif name in ("qt", "ctk"):
                ok = self.api.known(attr) and (attr in self.api.qt if name == "qt" else attr in self.api.ctk)
                self.report(node, f"{name}.{attr}", "ok" if ok else "unknown",
                            "" if ok else f"no {name} class {attr} in the wrapped classes")
            elif name == "vtk":
                ok = attr in self.api.doc.get("vtk_names", []) or self.api.known(attr)
                self.report(node, f"vtk.{attr}", "ok" if ok else "unknown", "" if ok else "not in VTK")
            elif name.startswith("pythonqt:"):
                ok = self.api.known(attr)
                self.report(node, text, "ok" if ok else "unknown", "" if ok else "not in that library")
            return
        if kind == "modules":
            ok = attr.lower() == attr and attr in self.module_names
            self.report(node, f"slicer.modules.{attr}", "ok" if ok else "unknown",
                        "" if ok else "no Slicer module of that (lower-case) name")
            return
        if kind == "slicermodule":
            ok = self.api.member("qSlicerAbstractCoreModule", attr) is not None or \
                self.api.member("qSlicerAbstractModule", attr) is not None
            self.report(node, f"slicer.modules.{base[1]}.{attr}", "ok" if ok else "unknown",
                        "" if ok else "not a member of qSlicerAbstractCoreModule")
            return
        if kind == "modulewidget":
            ok = attr == "self" or self.api.member("qSlicerAbstractModuleRepresentation", attr) is not None
            self.report(node, text, "ok" if ok else "unknown", "")
            return
        if kind == "scriptedwidget":
            ok = attr in self.api.doc.get("scripted_widgets", {}).get(base[1], {})
            self.report(node, text, "ok" if ok else "unknown",
                        "" if ok else f"the {base[1]} module widget has no attribute {attr}")
            return
        if kind == "ui":
            ok = attr in self.ui_widgets
            self.report(node, text, "ok" if ok else "unknown", "" if ok else "no such widget in the .ui file")
            return
        if kind == "self":
            self.check_self_member(node, attr, store)
            return
        if kind in ("class", "instance"):
            cls = base[1]
            member = self.api.member(cls, attr)
            if member is not None and not (store and member == "method"):
                self.report(node, f"{cls}.{attr}", "ok")
                return
            subclass = next((c for c in sorted(self.api.classes) if c != cls and cls in self.api.lineage(c, mark=False)
                             and self.api.member(c, attr, mark=False) is not None), None)
            if subclass is not None and not store:
                self.api.lineage(subclass)
                # VTK and PythonQt return objects as their own (most derived) class
                self.report(node, f"{subclass}.{attr}", "ok", f"declared {cls}, used as {subclass}")
                return
            qt_members_possible = cls in self.api.qt or (attr[:1].islower() and set(self.api.lineage(cls)) & self.api.qt)
            if qt_members_possible:
                # a Slicer/CTK class declares its own members in its headers; a lower-case name may still be
                # a slot, signal or property it inherits from a Qt class
                # PythonQt: slots, signals and properties come from QMetaObject, not from the wrappers
                setter = "set" + attr[:1].upper() + attr[1:]
                if store and self.api.member(cls, setter) == "method":
                    self.report(node, f"{cls}.{attr}", "ok")
                elif attr in self.api.doc.get("qt_builtins", ()):
                    self.report(node, f"{cls}.{attr}", "ok")  # PythonQt's own methods on every wrapped object
                else:
                    self.report(node, f"{cls}.{attr}", "unchecked", QT_METAOBJECT)
                return
            self.report(node, f"{cls}.{attr}", "unknown", f"{cls} has no {'property' if store else 'member'} {attr}")
            return
        if kind == "pyinstance":
            found = self.api.python_class(base[1])
            ok = found is not None and attr in found[1]
            self.report(node, f"{base[1]}.{attr}", "ok" if ok else "unknown", "")

    def check_self_member(self, node: ast.Attribute, attr: str, store: bool) -> None:
        name, env, bases, methods = self.classes[-1]
        if store or attr in env or attr in methods or attr.startswith("_"):
            return
        if not isinstance(getattr(node, "parent_call", None), ast.Call):
            return
        # a method call on self that this class does not define: it must come from a Slicer base class
        for base in bases:
            base_name = base.split(".")[-1]
            if base_name in self.local_classes and attr in self.local_classes[base_name][1]:
                return
            if base_name in STDLIB_BASES:
                import unittest

                if hasattr(unittest.TestCase, attr):
                    self.report(node, f"self.{attr} (unittest.TestCase)", "ok")
                    return
            found = self.api.python_class(base_name)
            if found and attr in found[1]:
                self.report(node, f"{base_name}.{attr}", "ok")
                return
            if found:  # the Slicer base's own bases (e.g. ScriptedLoadableModuleTest -> unittest.TestCase)
                import unittest

                if base_name.endswith("Test") and hasattr(unittest.TestCase, attr):
                    self.report(node, f"{base_name}.{attr} (unittest.TestCase)", "ok")
                    return
        inherited = [b for b in bases if self.api.python_class(b.split(".")[-1])]
        if inherited:
            self.report(node, f"self.{attr}", "unknown", f"not defined here nor in {', '.join(inherited)}")

    def is_python_or_sitk(self, expr: ast.AST) -> bool:
        t = self.typeof(expr, quiet=True)
        return t == SKIP

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute):
            node.func.parent_call = node  # type: ignore[attr-defined]
            if node.func.attr == "connect" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                self.check_connect(node)
            elif node.func.attr in SEGMENT_WRITERS:
                self.check_segment_write(node)
        self.generic_visit(node)

    def check_connect(self, node: ast.Call) -> None:
        """``widget.connect("signal(args)", handler)``: the signal must exist with exactly that signature on the
        widget's class (Qt's meta-objects, Slicer's and CTK's headers), and the handler must not need more
        arguments than the signal gives (PythonQt passes a Python slot at most as many as it accepts)."""
        base = self.typeof(node.func.value, quiet=True)
        signature = re.sub(r"\s+", "", node.args[0].value)
        if base is None or base == SKIP or base[0] not in ("instance",):
            self.report(node, f"connect {signature!r}", "unresolved" if base is None else "ok",
                        "receiver class not inferred" if base is None else "")
            return
        cls = base[1]
        signals = self.api.signals(cls)
        if signature not in signals:
            near = sorted(sig for sig in signals if sig.split("(")[0] == signature.split("(")[0])
            self.report(node, f"{cls}.signal {signature}", "unknown",
                         f"{cls} has no signal {signature}" + (f" (it has {', '.join(near)})" if near else ""))
            return
        self.report(node, f"{cls}.signal {signature}", "ok")
        given = 0 if signature.endswith("()") else signature.count(",") + 1
        needed = self.handler_arguments(node.args[1]) if len(node.args) > 1 else None
        if needed is not None and needed > given:
            self.report(node, f"{cls}.signal {signature} -> {ast.unparse(node.args[1])}", "unknown",
                        f"the handler needs {needed} argument(s); the signal gives {given}")

    def handler_arguments(self, handler: ast.AST) -> Optional[int]:
        """Required positional arguments of a handler: a lambda, or a method of the class being checked."""
        args = None
        if isinstance(handler, ast.Lambda):
            args = handler.args
        elif isinstance(handler, ast.Attribute) and isinstance(handler.value, ast.Name) and handler.value.id == "self" \
                and self.classes:
            method = self.methods_by_class.get(self.classes[-1][0], {}).get(handler.attr)
            if method is not None:
                args = method.args
        if args is None:
            return None
        positional = [a.arg for a in args.posonlyargs + args.args]
        if positional and positional[0] in ("self", "cls") and not isinstance(handler, ast.Lambda):
            positional = positional[1:]
        return max(0, len(positional) - len(args.defaults))

    def check_segment_write(self, node: ast.Call) -> None:
        """``ModificationModeSet`` with a modification extent: Slicer first clears the whole segment, then
        writes the modifier only inside the extent (qSlicerSegmentEditorAbstractEffect::modifySegmentByLabelmap,
        Slicer 5.8.1), so every voxel of the segment outside the extent is lost."""
        extent_at = SEGMENT_WRITERS[node.func.attr]
        mode = node.args[extent_at - 1] if len(node.args) >= extent_at else None
        extent = node.args[extent_at] if len(node.args) > extent_at else next(
            (k.value for k in node.keywords if k.arg in ("modificationExtent", "extent")), None)
        if mode is None or extent is None or (isinstance(extent, ast.Constant) and isinstance(extent.value, bool)):
            return
        if isinstance(mode, ast.Name) and mode.id in self.assigned:  # mode = ...ModificationModeSet; ...(mode)
            mode = self.assigned[mode.id]
        if ast.unparse(mode).split(".")[-1] == "ModificationModeSet":
            self.report(node, f"{node.func.attr}(ModificationModeSet, extent)", "unknown",
                        "Set with an extent clears the whole segment and writes only inside the extent (Slicer 5.8.1 "
                        "modifySegmentByLabelmap): the segment keeps nothing outside it; pass a full-extent modifier, "
                        "or Add/Remove within the extent")


def library_folder(library: str) -> str:
    """``qSlicerSegmentationsEditorEffects`` -> ``Segmentations/EditorEffects``."""
    m = re.match(r"qSlicer(\w+?)(EditorEffects|ModuleWidgets|SubjectHierarchyPlugins|Module)$", library)
    if not m:
        return library
    return f"{m.group(1)}/{m.group(2)}"


def ui_widget_classes(module_dir: Path) -> Dict[str, Dict[str, str]]:
    """``{py file stem: {widget name: class}}`` for each ``Resources/UI/<stem>.ui``."""
    out = {}
    for ui in module_dir.rglob("*.ui"):
        tree = ET.parse(ui)
        out[ui.stem] = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    return out


def own_module_names(module_dir: Path) -> Set[str]:
    names = set()
    for cmake in module_dir.rglob("CMakeLists.txt"):
        m = re.search(r"set\(\s*MODULE_NAME\s+\"?(\w+)\"?\s*\)", cmake.read_text())
        if m:
            names.add(m.group(1))
    return names


def check(api: Api, module_dir: Path, extra_files: Iterable[Path] = ()) -> List[Finding]:
    """Every finding for the Python files and CMakeLists under ``module_dir`` (and ``extra_files``)."""
    module_names = {m.lower() for m in api.doc.get("modules", [])} | {m.lower() for m in own_module_names(module_dir)}
    uis = ui_widget_classes(module_dir)
    findings: List[Finding] = []
    files = [*sorted(module_dir.rglob("*.py")), *extra_files]
    project = Project(files)
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        checker = FileChecker(api, path, module_names, uis.get(path.stem, {}), project)
        checker.visit(tree)
        findings += checker.findings
    cmake_known = set(api.doc.get("cmake", [])) | {"add_subdirectory", "set", "if", "endif", "foreach", "endforeach",
                                                    "list", "file", "message", "get_filename_component", "install",
                                                    "configure_file", "include", "find_package", "project",
                                                    "cmake_minimum_required", "string", "elseif", "else"}
    root_cmake = [ROOT / "CMakeLists.txt"] if module_dir.resolve().parent == ROOT else []
    for cmake in sorted([*module_dir.rglob("CMakeLists.txt"), *root_cmake]):
        rel = str(cmake.relative_to(ROOT)) if cmake.is_relative_to(ROOT) else str(cmake)
        for n, line in enumerate(cmake.read_text().splitlines(), start=1):
            m = re.match(r"\s*([A-Za-z_]\w*)\s*\(", line)
            if m and not line.strip().startswith("#"):
                name = m.group(1)
                ok = name in cmake_known or name.lower() in {c.lower() for c in cmake_known}
                findings.append(Finding(rel, n, f"cmake {name}", "ok" if ok else "unknown",
                                        "" if ok else "not a CMake command nor a Slicer/CTK macro"))
    return findings


def summarise(findings: Iterable[Finding]) -> dict:
    findings = list(findings)
    unchecked: Dict[Tuple[str, str], List[str]] = {}
    qt_members: Dict[str, List[str]] = {}
    for f in findings:
        if f.status == "unchecked" and f.reason == QT_METAOBJECT:
            qt_members.setdefault(f.name, []).append(f"{f.file}:{f.line}")
        elif f.status == "unchecked":
            unchecked.setdefault((f.name, f.reason), []).append(f"{f.file}:{f.line}")
    if qt_members:
        unchecked[(", ".join(sorted(qt_members)), QT_METAOBJECT + QT_REASON)] = sorted(
            {w for ws in qt_members.values() for w in ws})
    unresolved = sorted(({"call": f.name, "where": f"{f.file}:{f.line}",
                          "why": EXPLAINED.get((f.file, f.name), "")} for f in findings if f.status == "unresolved"),
                        key=lambda u: (u["where"].split(":")[0], int(u["where"].split(":")[1]), u["call"]))
    return {
        "checked": sum(1 for f in findings if f.status == "ok"),
        "distinct_checked": len({f.name for f in findings if f.status == "ok"}),
        "unknown": [asdict(f) for f in findings if f.status == "unknown"],
        "unresolved": unresolved,
        "python_calls": sum(1 for f in findings if f.status == "python"),
        "python_where": [f"{f.file}:{f.line}: {f.name}" for f in findings if f.status == "python"],
        "unchecked": [{"name": k[0], "reason": k[1], "where": v} for k, v in sorted(unchecked.items())],
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=Path, default=DEFAULT_NAMES, help="the vendored name list (JSON)")
    parser.add_argument("--module-dir", type=Path, default=ROOT / "P2SAMSlicer", help="the module's source folder")
    parser.add_argument("--also", type=Path, nargs="*", default=[HERE / "run_self_tests.py"],
                        help="more Python files that run inside Slicer (default: Testing/Slicer/run_self_tests.py)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    doc = json.loads(args.names.read_text(encoding="utf-8"))
    summary = summarise(check(Api(doc), args.module_dir.resolve(), [p.resolve() for p in args.also]))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        src = doc.get("source", {}).get("Slicer", {})
        versions = {k: doc.get("source", {}).get(k, {}).get("version") for k in ("Qt", "VTK")}
        print(f"Slicer {src.get('tag')} ({src.get('commit', '')[:12]}), Qt {versions['Qt']}, "
              f"VTK {versions['VTK']}: {summary['checked']} uses of "
              f"{summary['distinct_checked']} names checked, {len(summary['unknown'])} unknown")
        for u in summary["unknown"]:
            print(f"  UNKNOWN {u['file']}:{u['line']}: {u['name']} ({u['reason']})")
        print(f"{len(summary['unresolved'])} unresolved call(s) (receiver class not inferred):")
        for u in summary["unresolved"]:
            print(f"  {u['where']}: {u['call']} -- {u['why'] or 'NOT EXPLAINED'}")
        print(f"{summary['python_calls']} call(s) of Python's own str/bytes/container/file methods on receivers of "
              "unknown type (not Slicer's; not checked):")
        for where in summary["python_where"]:
            print(f"  {where}")
        print(f"could not check ({len(summary['unchecked'])}):")
        for u in summary["unchecked"]:
            print(f"  {u['name']}: {u['reason']} [{', '.join(u['where'][:3])}{' ...' if len(u['where']) > 3 else ''}]")
    unexplained = [u for u in summary["unresolved"] if not u["why"]]
    return 1 if summary["unknown"] or unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
