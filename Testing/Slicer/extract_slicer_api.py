#!/usr/bin/env python3
"""Extract the names of Slicer's Python API at a pinned release into slicer_api_names.json.

Run where git snapshots of the three repositories exist (this is not run in CI; the JSON
it writes is committed and read by check_slicer_api.py):

    python Testing/Slicer/extract_slicer_api.py --slicer /path/Slicer.git --ctk /path/CTK.git \\
        --pythonqt /path/PythonQt.git [--output Testing/Slicer/slicer_api_names.json]

What is read (nothing is copied but names):

* Slicer ``v5.8.1``: every C++ header whose class is wrapped into Python (``vtkMRML*``,
  ``vtkSegment*``, ``vtkOrientedImageData*``, ``vtkSlicer*``, ``qSlicer*``, ``qMRML*``,
  ``vtkITK*``): class, base classes, method names (declarations and the VTK Get/Set/Boolean
  macros), return types of methods returning a known class, enum members, Q_PROPERTY names;
  the Python packages ``slicer`` (util, i18n, ScriptedLoadableModule, parameterNodeWrapper,
  testing) and ``SegmentEditorEffects``: module-level names and class methods; the module
  names (``slicer.modules.<name>``) from the modules' CMakeLists; the CMake macros.
* CTK at the commit Slicer 5.8.1 builds (SuperBuild/External_CTK.cmake): ``ctk*`` headers.
* PythonQt at the commit that CTK builds (CMakeExternals/PythonQt.cmake): the generated Qt
  wrappers (``generated_cpp_511``), i.e. the Qt classes, methods, static methods and enums
  that Python sees as ``qt.*``.
* Qt 5.15's own meta-objects (``--qt-python``: an interpreter with PyQt5 5.15 on the Qt 5.15
  libraries): per QObject class its base class, signals (full signatures), public slots,
  properties and enum keys -- what PythonQt resolves at run time through ``QMetaObject``.
* VTK (``--vtk-python``: an interpreter with ``vtk`` 9.2.6, the release nearest the VTK 9.2
  fork Slicer 5.8.1 builds): the VTK classes the module meets, introspected.
* Signals of Slicer's and CTK's classes from their headers' ``signals:`` sections (the
  signatures normalised as Qt's moc does, one per count of defaulted arguments).

Header parsing is by regular expressions on comment-stripped text: it may list a few names
that are not methods (identifiers followed by "(" inside inline bodies); it does not miss
declared methods. Without ``--qt-python`` the Qt class hierarchy falls back to QT_BASES below
(from Qt 5.15's documentation).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

SLICER_TAG = "v5.8.1"
#: Qt base classes (from Qt 5.15's class documentation, "Inherits:"); Qt headers are not read here
QT_BASES = {
    "QWidget": ["QObject"], "QFrame": ["QWidget"], "QLabel": ["QFrame"], "QAbstractButton": ["QWidget"],
    "QPushButton": ["QAbstractButton"], "QCheckBox": ["QAbstractButton"], "QAbstractSpinBox": ["QWidget"],
    "QSpinBox": ["QAbstractSpinBox"], "QDoubleSpinBox": ["QAbstractSpinBox"], "QComboBox": ["QWidget"],
    "QProgressBar": ["QWidget"], "QAbstractScrollArea": ["QFrame"], "QPlainTextEdit": ["QAbstractScrollArea"],
    "QAbstractItemView": ["QAbstractScrollArea"], "QListView": ["QAbstractItemView"], "QListWidget": ["QListView"],
    "QTableView": ["QAbstractItemView"], "QTableWidget": ["QTableView"], "QHeaderView": ["QAbstractItemView"],
    "QTimer": ["QObject"], "QLayout": ["QObject"], "QBoxLayout": ["QLayout"], "QHBoxLayout": ["QBoxLayout"],
    "QVBoxLayout": ["QBoxLayout"], "QFormLayout": ["QLayout"], "QLineEdit": ["QWidget"],
    "QDialog": ["QWidget"], "QInputDialog": ["QDialog"],
    "QCoreApplication": ["QObject"], "QGuiApplication": ["QCoreApplication"], "QApplication": ["QGuiApplication"],
    "QListWidgetItem": [], "QTableWidgetItem": [], "QColor": [], "QIcon": [],
}
CPP_PREFIXES = ("vtkMRML", "vtkSegment", "vtkOrientedImageData", "vtkSlicer", "qSlicer", "qMRML", "vtkITK")
KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "defined", "catch", "static_cast", "dynamic_cast",
            "reinterpret_cast", "const_cast", "decltype", "new", "delete", "throw", "operator", "Q_PROPERTY",
            "Q_OBJECT", "Q_ENUM", "Q_ENUMS", "Q_FLAGS", "Q_FLAG", "Q_DECLARE_PRIVATE", "Q_DECLARE_PUBLIC",
            "Q_DISABLE_COPY", "vtkTypeMacro"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


_BATCH: Dict[str, subprocess.Popen] = {}


def show(repo: Path, commit: str, path: str) -> str:
    """The text of ``path`` at ``commit`` (one ``git cat-file --batch`` process per repository)."""
    proc = _BATCH.get(str(repo))
    if proc is None:
        proc = _BATCH[str(repo)] = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"],
                                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(f"{commit}:{path}\n".encode())
    proc.stdin.flush()
    header = proc.stdout.readline().decode().split()
    if len(header) < 3 or header[1] != "blob":
        raise FileNotFoundError(f"{path} not at {commit} in {repo}")
    data = proc.stdout.read(int(header[2]))
    proc.stdout.read(1)  # newline after the object
    return data.decode("utf-8", errors="replace")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def parse_header(text: str) -> Dict[str, dict]:
    """``{class: {"bases", "methods", "returns", "constants", "properties"}}`` of a C++ header."""
    code = strip_comments(text)
    out: Dict[str, dict] = {}
    decls = list(re.finditer(r"\bclass\s+(?:\w+_EXPORT\s+)?(\w+)\s*(?:final\s*)?:\s*((?:public|protected|private)"
                             r"\s+[\w:<>]+(?:\s*,\s*(?:public|protected|private)\s+[\w:<>]+)*)\s*\{", code))
    for n, m in enumerate(decls):
        name = m.group(1)
        body = code[m.end(): decls[n + 1].start() if n + 1 < len(decls) else len(code)]
        bases = [b.split()[-1].split("::")[-1] for b in m.group(2).split(",") if b.strip().startswith("public")]
        methods: Set[str] = set()
        returns: Dict[str, str] = {}
        for mm in re.finditer(r"\b([A-Za-z_]\w*)\s*\(", body):
            ident = mm.group(1)
            if ident not in KEYWORDS and not ident.startswith(("vtk", "Q_", "VTK_")):
                methods.add(ident)
        for mm in re.finditer(r"\b(\w+)\s*\*\s*(\w+)\s*\(", body):
            returns.setdefault(mm.group(2), mm.group(1))
        for mm in re.finditer(r"\bvtk(\w*?)Macro\s*\(\s*(\w+)\s*(?:,\s*([\w:\s\*]+?))?\s*[,)]", body):
            kind, prop, ptype = mm.group(1), mm.group(2), (mm.group(3) or "").strip()
            if kind == "Type":
                continue
            if kind.startswith("Boolean"):
                methods.update({prop + "On", prop + "Off"})
            if "Get" in kind:
                methods.add("Get" + prop)
                if "Object" in kind and ptype:
                    returns["Get" + prop] = ptype.replace("*", "").strip()
            if "Set" in kind:
                methods.add("Set" + prop)
        if re.search(r"\bvtk\w*TypeMacro\s*\(", body) or re.search(r"vtkMRMLNodeNewMacro|vtkTypeMacro", body):
            methods.update({"SafeDownCast", "IsA", "GetClassName", "NewInstance", "IsTypeOf"})
        for em in re.finditer(r"\benum\b[^{;]*\{([^}]*)\}", body):
            for item in em.group(1).split(","):
                ident = item.split("=")[0].strip()
                if re.fullmatch(r"[A-Za-z_]\w*", ident):
                    methods.discard(ident)
                    out.setdefault(name, {}).setdefault("constants", set()).add(ident)
        properties = set(re.findall(r"Q_PROPERTY\s*\(\s*[\w:<>\s\*&]+?\s+(\w+)\s+READ", body))
        entry = out.setdefault(name, {})
        entry.update({"bases": bases, "methods": methods, "returns": returns, "properties": properties,
                      "signals": header_signals(body)})
        entry.setdefault("constants", set())
    return out


def normalized_type(text: str) -> str:
    """A C++ parameter type as Qt's ``QMetaObject::normalizedSignature`` writes it (``const QString &`` ->
    ``QString``, ``vtkMRMLNode *`` -> ``vtkMRMLNode*``)."""
    text = re.sub(r"\s+", " ", text.strip())
    if text.startswith("const ") and text.endswith("&"):
        text = text[len("const "):-1].strip()
    return re.sub(r"\s*([*&<>,])\s*", r"\1", text)


def header_signals(body: str) -> Set[str]:
    """Signatures of the signals a class body declares (``signals:`` / ``Q_SIGNALS:`` sections), one per
    number of arguments when some have defaults, as moc generates them: ``{"currentNodeChanged(vtkMRMLNode*)"}``."""
    out: Set[str] = set()
    for section in re.finditer(r"\b(?:signals|Q_SIGNALS)\s*:(.*?)(?=\b(?:public|protected|private)\b\s*"
                               r"(?:slots|Q_SLOTS)?\s*:|\Z)", body, re.S):
        for m in re.finditer(r"\bvoid\s+(\w+)\s*\(([^)]*)\)\s*;", section.group(1)):
            params = [p.strip() for p in m.group(2).split(",") if p.strip() and p.strip() != "void"]
            types = []
            required = len(params)
            for n, p in enumerate(params):
                declaration, _, default = p.partition("=")
                if default and required == len(params):
                    required = n
                words = declaration.strip()
                # drop the parameter name (the last identifier, unless the declaration is a bare type)
                typ = re.sub(r"(?<=[\w*&>])\s*\b[A-Za-z_]\w*\s*$", "", words) if re.search(r"[\s*&]\w+$", words) \
                    else words
                types.append(normalized_type(typ))
            for count in range(required, len(params) + 1):
                out.add(f"{m.group(1)}({','.join(types[:count])})")
    return out


def python_names(text: str) -> Dict[str, object]:
    """Module-level names of a Python file and, per class, its methods and class attributes."""
    tree = ast.parse(text)
    names: Set[str] = set()
    classes: Dict[str, List[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.Assign):
                    members.update(t.id for t in item.targets if isinstance(t, ast.Name))
            classes[node.name] = sorted(members)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return {"names": sorted(names), "classes": classes}


def slicer_part(repo: Path, commit: str) -> dict:
    files = git(repo, "ls-tree", "-r", "--name-only", commit).splitlines()
    classes: Dict[str, dict] = {}
    for path in files:
        base = path.rsplit("/", 1)[-1]
        if path.endswith(".h") and base.startswith(CPP_PREFIXES) and "/Testing/" not in path:
            for name, info in parse_header(show(repo, commit, path)).items():
                if name.startswith(CPP_PREFIXES):
                    info["header"] = path
                    classes[name] = info
    python = {}
    for module, path in (("slicer.util", "Base/Python/slicer/util.py"),
                         ("slicer.i18n", "Base/Python/slicer/i18n.py"),
                         ("slicer.testing", "Base/Python/slicer/testing.py"),
                         ("slicer.ScriptedLoadableModule", "Base/Python/slicer/ScriptedLoadableModule.py"),
                         ("slicer.slicerqt", "Base/Python/slicer/slicerqt.py"),
                         ("slicer", "Base/Python/slicer/__init__.py")):
        python[module] = python_names(show(repo, commit, path))
    pnw: Set[str] = set()
    for path in files:
        if path.startswith("Base/Python/slicer/parameterNodeWrapper/") and path.endswith(".py"):
            tree = ast.parse(show(repo, commit, path))
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                    pnw.update(ast.literal_eval(node.value))
    python["slicer.parameterNodeWrapper"] = {"names": sorted(pnw), "classes": {}}
    effects_dir = "Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/"
    effects = {"names": set(), "classes": {}}
    for path in files:
        if path.startswith(effects_dir) and path.endswith(".py"):
            part = python_names(show(repo, commit, path))
            effects["names"].update(n for n in part["names"] if n[0].isupper())
            effects["classes"].update(part["classes"])
    python["SegmentEditorEffects"] = {"names": sorted(effects["names"]), "classes": effects["classes"]}
    modules = set()
    module_logic: Dict[str, str] = {}
    scripted_widgets: Dict[str, Dict[str, Optional[str]]] = {}
    for path in files:
        if re.match(r"Modules/(Loadable|Scripted|CLI)/[^/]+/CMakeLists\.txt$", path):
            m = re.search(r'set\(\s*MODULE_NAME\s+"?(\w+)"?\s*\)', show(repo, commit, path))
            if m:
                modules.add(m.group(1))
    for path in files:  # the logic class a loadable module creates: slicer.modules.<name>.logic()
        m = re.match(r"Modules/Loadable/[^/]+/qSlicer(\w+)Module\.cxx$", path)
        if m and m.group(1) in modules:
            logic = re.search(r"::createLogic\(\)\s*\{[^}]*?return\s+(vtk\w+)::New\(\)", show(repo, commit, path))
            if logic:
                module_logic[m.group(1).lower()] = logic.group(1)
    for path in files:  # attributes of scripted module widgets: slicer.modules.<name>.widgetRepresentation().self()
        m = re.match(r"Modules/Scripted/(\w+)/(\w+)\.py$", path)
        if m and m.group(1) == m.group(2) and m.group(1) in modules:
            text = show(repo, commit, path)
            widget = re.search(r"class\s+" + m.group(1) + r"Widget\b.*?(?=\nclass\s|\Z)", text, re.S)
            if widget:
                attrs: Dict[str, Optional[str]] = {}
                for a in re.finditer(r"self\.(\w+)\s*=\s*(?:(?:slicer|\w+PythonQt)\.(\w+)\()?", widget.group(0)):
                    if a.group(2) or a.group(1) not in attrs:
                        attrs[a.group(1)] = a.group(2)
                scripted_widgets[m.group(1).lower()] = attrs
    cmake = set()
    for path in files:
        if path.startswith("CMake/") and path.endswith(".cmake"):
            cmake.update(re.findall(r"^\s*(?:macro|function)\s*\(\s*(\w+)", show(repo, commit, path), re.M | re.I))
    # names set on the "slicer" package at run time (documented in its __init__.py) and its sub-modules
    namespace = set(re.findall(r"\.\. py:attribute:: (\w+)", show(repo, commit, "Base/Python/slicer/__init__.py")))
    namespace |= {p.split("/")[3].split(".")[0] for p in files
                  if p.startswith("Base/Python/slicer/") and p.count("/") >= 3 and not p.endswith(".in")}
    namespace |= set(python["slicer"]["names"])
    return {"classes": classes, "python": python, "modules": sorted(modules), "cmake": sorted(cmake),
            "module_logic": module_logic, "scripted_widgets": scripted_widgets, "namespace": sorted(namespace)}


def ctk_part(repo: Path, commit: str) -> dict:
    classes = {}
    cmake = set()
    for path in git(repo, "ls-tree", "-r", "--name-only", commit).splitlines():
        base = path.rsplit("/", 1)[-1]
        if path.endswith(".h") and base.startswith("ctk") and "/Testing/" not in path:
            for name, info in parse_header(show(repo, commit, path)).items():
                if name.startswith("ctk"):
                    info["header"] = path
                    classes[name] = info
        if path.startswith("CMake/") and path.endswith(".cmake"):
            cmake.update(re.findall(r"^\s*(?:macro|function)\s*\(\s*(\w+)", show(repo, commit, path), re.M | re.I))
    return {"classes": classes, "cmake": sorted(cmake)}


def pythonqt_part(repo: Path, commit: str, metaobjects: Optional[dict] = None) -> dict:
    """The Qt classes Python sees as ``qt.*``: PythonQt's generated wrappers (methods, static methods,
    enums), plus, from ``metaobjects`` (:func:`qt_metaobjects`), what PythonQt finds through each class's
    QMetaObject: its base class, signals, slots, properties and Q_ENUM keys."""
    classes: Dict[str, dict] = {}
    for path in git(repo, "ls-tree", "-r", "--name-only", commit).splitlines():
        if not (path.startswith("generated_cpp_511/") and path.endswith(".h")):
            continue
        code = strip_comments(show(repo, commit, path))
        for m in re.finditer(r"class PythonQtWrapper_(\w+)\s*:\s*public QObject\s*\{(.*?)\n\};", code, re.S):
            name, body = m.group(1), m.group(2)
            entry = classes.setdefault(name, {"bases": QT_BASES.get(name, []), "methods": set(), "returns": {},
                                              "constants": set(), "properties": set()})
            for mm in re.finditer(r"(?:\b(\w+)\s*\*\s*)?\b(\w+)\s*\(\s*(?:const\s+)?" + re.escape(name)
                                  + r"\s*\*\s*theWrappedObject", body):
                method = mm.group(2)
                method = method[5:] if method.startswith("py_q_") else method
                entry["methods"].add(method)
                if mm.group(1):
                    entry["returns"].setdefault(method, mm.group(1))
            for mm in re.finditer(r"\bstatic_" + re.escape(name) + r"_(\w+)\s*\(", body):
                entry["methods"].add(mm.group(1))
            for em in re.finditer(r"\benum\s+\w+\s*\{([^}]*)\}", body):
                for item in em.group(1).split(","):
                    ident = item.split("=")[0].strip()
                    if ident:
                        entry["constants"].add(ident)
    for name, meta in (metaobjects or {}).get("classes", {}).items():
        entry = classes.setdefault(name, {"bases": [], "methods": set(), "returns": {}, "constants": set(),
                                          "properties": set()})
        entry["bases"] = meta["bases"]
        entry["methods"] = set(entry["methods"]) | set(meta["slots"])
        entry["properties"] = set(entry["properties"]) | set(meta["properties"])
        entry["constants"] = set(entry["constants"]) | set(meta["constants"])
        entry["signals"] = set(meta["signals"])
    builtins = set(re.findall(r'\{"(\w+)",', show(repo, commit, "src/PythonQtInstanceWrapper.cpp")))
    decorators = strip_comments(show(repo, commit, "src/PythonQtStdDecorators.h"))
    builtins |= set(re.findall(r"\b([a-z]\w*)\s*\(\s*(?:const\s+)?QObject\s*\*", decorators))
    return {"classes": classes, "builtins": builtins}


#: run by an interpreter with PyQt5 (Qt 5.15): every QObject class of QtCore, QtGui and QtWidgets, from its
#: QMetaObject -- base class, signals, slots, properties, enum keys -- as JSON on stdout
QT_METAOBJECT_DUMP = r"""
import json, sys
from PyQt5 import QtCore, QtGui, QtWidgets
out = {}
for module in (QtCore, QtGui, QtWidgets):
    for name in dir(module):
        cls = getattr(module, name)
        mo = getattr(cls, "staticMetaObject", None)
        if not isinstance(mo, QtCore.QMetaObject) or mo.className() != name:
            continue
        entry = {"bases": [mo.superClass().className()] if mo.superClass() else [], "signals": [], "slots": [],
                 "properties": [], "constants": []}
        for i in range(mo.methodOffset(), mo.methodCount()):
            m = mo.method(i)
            signature = bytes(m.methodSignature()).decode()
            if m.methodType() == QtCore.QMetaMethod.Signal:
                entry["signals"].append(signature)
            elif m.methodType() == QtCore.QMetaMethod.Slot and m.access() == QtCore.QMetaMethod.Public:
                entry["slots"].append(signature.split("(")[0])
        for i in range(mo.propertyOffset(), mo.propertyCount()):
            entry["properties"].append(mo.property(i).name())
        for i in range(mo.enumeratorOffset(), mo.enumeratorCount()):
            e = mo.enumerator(i)
            entry["constants"] += [e.key(k) for k in range(e.keyCount())]
        out[name] = entry
json.dump({"qt_version": QtCore.qVersion(), "classes": out}, sys.stdout)
"""


def qt_metaobjects(python: str) -> dict:
    """``{"qt_version", "classes": {class: {"bases", "signals", "slots", "properties", "constants"}}}`` from the
    meta-objects of Qt 5.15 itself, read by ``python`` (an interpreter with PyQt5 and its Qt 5.15 libraries)."""
    done = subprocess.run([python, "-c", QT_METAOBJECT_DUMP], capture_output=True, text=True, check=True,
                          env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    return json.loads(done.stdout)


def vtk_part(start: Iterable[str], depth: int = 3, python: Optional[str] = None) -> dict:
    """:func:`vtk_names` run by ``python`` (an interpreter with the VTK to describe), or by this one."""
    if python is None:
        return vtk_names(start, depth)
    script = ("import json, sys; sys.path.insert(0, %r); from extract_slicer_api import vtk_names, jsonable; "
              "json.dump(jsonable(vtk_names(json.load(sys.stdin), %d)), sys.stdout)"
              % (str(Path(__file__).parent), depth))
    done = subprocess.run([python, "-c", script], input=json.dumps(sorted(start)), capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def vtk_names(start: Iterable[str], depth: int = 3) -> dict:
    """VTK's own classes reachable from ``start`` (bases; return types up to ``depth`` steps), from the
    installed ``vtk`` wheel (Slicer builds its own VTK; its source is not read here)."""
    import vtk

    classes: Dict[str, dict] = {}
    todo = [(n, 0) for n in start]
    while todo:
        name, level = todo.pop()
        if name in classes or not name.startswith("vtk"):
            continue
        cls = getattr(vtk, name, None)
        if not isinstance(cls, type):
            continue
        entry = {"bases": [b.__name__ for b in cls.__bases__ if b.__name__.startswith("vtk")], "methods": set(),
                 "constants": set(), "returns": {}, "properties": set()}
        for attr in dir(cls):
            if attr.startswith("_"):
                continue
            value = getattr(cls, attr)
            if callable(value) and not isinstance(value, type) and not type(value).__name__.endswith("EnumType"):
                if attr[:1].isupper():  # VTK methods; lower-case names are VTK 9.4+ Python properties
                    entry["methods"].add(attr)
                    m = re.search(r"\)\s*->\s*(vtk\w+)", getattr(value, "__doc__", "") or "")
                    if m:
                        entry["returns"][attr] = m.group(1)
            elif isinstance(value, (int, type)) or type(value).__module__.startswith("vtkmodules"):
                if attr[:1].isupper() or attr.startswith("VTK_"):
                    entry["constants"].add(attr)
        classes[name] = entry
        todo += [(b, level) for b in entry["bases"]]
        if level < depth:
            todo += [(r, level + 1) for r in entry["returns"].values()]
    names = {n for n in dir(vtk) if not n.startswith("_")}
    return {"classes": classes, "names": names, "version": vtk.vtkVersion.GetVTKVersion()}


def reduce_to_module(doc: dict, module_dir: Path) -> dict:
    """Keep only the classes and vtk names the module's check looks at (the vendored list stays small).

    The checker reports a class missing from the reduced list as unknown: re-run this script when the
    module starts using a new class.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from check_slicer_api import Api, check

    api = Api(doc)
    findings = check(api, module_dir, [Path(__file__).resolve().with_name("run_self_tests.py")])
    used: Set[str] = set()
    for cls in list(api.used):
        used.update(api.lineage(cls))
    out = dict(doc)
    for key in ("slicer_classes", "ctk_classes", "qt_classes", "vtk_classes"):
        out[key] = {k: v for k, v in doc[key].items() if k in used}
    out["vtk_names"] = sorted({f.name.split(".")[1] for f in findings if f.name.startswith("vtk.")})
    return out


def jsonable(obj):
    if isinstance(obj, set):
        return sorted(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    return obj


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slicer", required=True, type=Path, help="git directory of Slicer/Slicer")
    parser.add_argument("--ctk", required=True, type=Path, help="git directory of commontk/CTK")
    parser.add_argument("--pythonqt", required=True, type=Path, help="git directory of commontk/PythonQt")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("slicer_api_names.json"))
    parser.add_argument("--module-dir", type=Path, default=Path(__file__).resolve().parents[2] / "P2SAMSlicer",
                        help="the module whose names are kept in the output")
    parser.add_argument("--full", default=None, help="also write the unreduced list here")
    parser.add_argument("--qt-python", default=None,
                        help="a Python with PyQt5 on Qt 5.15 (e.g. pip install PyQt5==5.15.11 PyQt5-Qt5==5.15.2): the "
                             "Qt classes' signals, slots, properties, enums and bases are read from Qt's meta-objects")
    parser.add_argument("--vtk-python", default=None,
                        help="a Python with the VTK to describe (e.g. pip install vtk==9.2.6, the release nearest "
                             "Slicer 5.8.1's VTK 9.2 fork); default: this interpreter's vtk")
    args = parser.parse_args(argv)
    slicer_commit = git(args.slicer, "rev-parse", SLICER_TAG + "^{commit}").strip()
    ctk_cmake = show(args.slicer, slicer_commit, "SuperBuild/External_CTK.cmake")
    ctk_commit = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*\n\s*"([0-9a-f]{40})"', ctk_cmake).group(1)
    pythonqt_cmake = show(args.ctk, ctk_commit, "CMakeExternals/PythonQt.cmake")
    pythonqt_commit = re.search(r"set\(revision_tag ([0-9a-f]{40})\)", pythonqt_cmake).group(1)
    slicer = slicer_part(args.slicer, slicer_commit)
    ctk = ctk_part(args.ctk, ctk_commit)
    metaobjects = qt_metaobjects(args.qt_python) if args.qt_python else None
    qt = pythonqt_part(args.pythonqt, pythonqt_commit, metaobjects)
    starts = set()
    for part in (slicer["classes"], ctk["classes"]):
        for entry in part.values():
            starts.update(entry["bases"])
            starts.update(entry["returns"].values())
    vtk_info = vtk_part(starts, python=args.vtk_python)
    vtk_fork = re.search(r'set\(_git_tag "([0-9a-f]{40})"\)\s*#\s*(\S+)',
                         show(args.slicer, slicer_commit, "SuperBuild/External_VTK.cmake"))
    doc = {
        "source": {
            "Slicer": {"repository": "https://github.com/Slicer/Slicer", "tag": SLICER_TAG, "commit": slicer_commit,
                       "licence": "3D Slicer License (BSD-style)"},
            "CTK": {"repository": "https://github.com/commontk/CTK", "commit": ctk_commit,
                    "pinned_by": "Slicer SuperBuild/External_CTK.cmake", "licence": "Apache-2.0"},
            "PythonQt": {"repository": "https://github.com/commontk/PythonQt", "commit": pythonqt_commit,
                         "pinned_by": "CTK CMakeExternals/PythonQt.cmake", "licence": "LGPL-2.1 (names only)",
                         "wrappers": "generated_cpp_511 (used for Qt >= 5.11)"},
            "VTK": {"version": vtk_info["version"],
                    "from": "the vtk wheel of that version (VTK's own classes the module meets), introspected",
                    "slicer_builds": (f"Slicer/VTK {vtk_fork.group(2)} ({vtk_fork.group(1)}), a VTK 9.2 fork "
                                      "(SuperBuild/External_VTK.cmake); its source was not available")
                    if vtk_fork else "see SuperBuild/External_VTK.cmake"},
            "Qt": {"version": (metaobjects or {}).get("qt_version"),
                   "from": "the meta-objects of Qt's own classes (PyQt5 on the Qt 5.15 libraries of PyQt5-Qt5): "
                           "signals, slots, properties, enums, base classes; Slicer 5.8 requires Qt 5.15"}
            if metaobjects else {"from": "not read: Qt base classes from QT_BASES only"},
        },
        "slicer_classes": slicer["classes"],
        "ctk_classes": ctk["classes"],
        "qt_classes": qt["classes"],
        "qt_builtins": sorted(qt["builtins"]),
        "vtk_classes": vtk_info["classes"],
        "vtk_names": sorted(vtk_info["names"]),
        "python": slicer["python"],
        "slicer_namespace": slicer["namespace"],
        "modules": slicer["modules"],
        "module_logic": slicer["module_logic"],
        "scripted_widgets": slicer["scripted_widgets"],
        "cmake": sorted(set(slicer["cmake"]) | set(ctk["cmake"])),
    }
    doc = jsonable(doc)
    if args.full:
        Path(args.full).write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
    doc = reduce_to_module(doc, args.module_dir.resolve())
    args.output.write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(doc['slicer_classes'])} Slicer, {len(doc['ctk_classes'])} CTK and "
          f"{len(doc['qt_classes'])} Qt classes (Slicer {slicer_commit[:12]}, CTK {ctk_commit[:12]}, "
          f"PythonQt {pythonqt_commit[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
