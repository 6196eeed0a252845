"""The module's use of Slicer's API, checked against Slicer 5.8.1's own names (Testing/Slicer).

The names were extracted from Slicer's, CTK's and PythonQt's sources at the commits recorded in
Testing/Slicer/slicer_api_names.json (no network here); the MRML members the checker accepts are
also looked up on slicer-core's real classes.
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "Slicer"))

from check_slicer_api import DEFAULT_NAMES, Api, check, main, summarise  # noqa: E402

SLICER_5_8_1 = "11eaf62e5a70b828021ff8beebbdd14d10d4f51c"


@pytest.fixture(scope="module")
def doc():
    return json.loads(DEFAULT_NAMES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def findings(doc):
    return check(Api(doc), ROOT / "P2SAMSlicer", [ROOT / "Testing" / "Slicer" / "run_self_tests.py"])


def test_the_vendored_list_records_its_sources(doc):
    assert doc["source"]["Slicer"]["tag"] == "v5.8.1" and doc["source"]["Slicer"]["commit"] == SLICER_5_8_1
    assert len(doc["source"]["CTK"]["commit"]) == 40 and len(doc["source"]["PythonQt"]["commit"]) == 40
    readme = (ROOT / "Testing" / "Slicer" / "README.md").read_text()
    for needle in (SLICER_5_8_1, doc["source"]["CTK"]["commit"], "Apache-2.0", "BSD"):
        assert needle in readme


def test_module_and_effect_use_no_unknown_slicer_name(findings):
    summary = summarise(findings)
    assert summary["unknown"] == [], "\n".join(f"{u['file']}:{u['line']}: {u['name']} ({u['reason']})"
                                               for u in summary["unknown"])
    names = {f.name for f in findings if f.status == "ok"}
    # the coverage the issue asks for: module-level names and members of MRML / segmentation objects
    for expected in ("slicer.util.tryWithErrorDisplay", "slicer.app", "qt.QTimer", "slicer.modules.segmenteditor",
                     "vtkMRMLSegmentationNode.GetSegmentation", "vtkSegmentation.GetSegment",
                     "vtkOrientedImageData.GetExtent", "vtkMRMLScene.AddNewNodeByClass",
                     "qSlicerSegmentEditorScriptedEffect.modifySelectedSegmentByLabelmap",
                     "vtkSlicerSegmentationsModuleLogic.SetSegmentStatus",
                     "slicer.parameterNodeWrapper.parameterNodeWrapper", "cmake slicer_add_python_unittest",
                     "slicer.util.exit"):
        assert expected in names, expected
    assert summary["distinct_checked"] >= 250


def test_every_unresolved_call_is_listed_and_explained(findings):
    """No class is guessed: a call whose receiver's class the code does not show is listed with its place and
    the reason; the list stays short. Qt's own members are checked against its meta-objects (none unchecked)."""
    summary = summarise(findings)
    assert len(summary["unresolved"]) <= 20
    for entry in summary["unresolved"]:
        assert re.match(r".+\.py:\d+$", entry["where"]) and len(entry["why"]) > 40, entry
    assert summary["unchecked"] == []
    assert summary["python_calls"] == len(summary["python_where"]) <= 20


def test_signals_are_checked_against_qt_ctk_and_slicer(findings):
    names = {f.name for f in findings if f.status == "ok"}
    for expected in ("QPushButton.signal clicked()", "QPushButton.signal clicked(bool)", "QTimer.signal timeout()",
                     "QListWidget.signal itemChanged(QListWidgetItem*)", "QSpinBox.signal valueChanged(int)",
                     "qMRMLCheckableNodeComboBox.signal checkedNodesChanged()",
                     "qSlicerApplication.signal startupCompleted()"):
        assert expected in names, expected


def test_the_vendored_list_records_slicers_qt_and_vtk(doc):
    assert doc["source"]["Qt"]["version"].startswith("5.15.")
    assert doc["source"]["VTK"]["version"].startswith("9.2.")
    assert "492821449a5f2a9a1f5c73c3c6dd4389f1059d66" in doc["source"]["VTK"]["slicer_builds"]


def test_mrml_members_the_checker_accepts_exist_in_slicer_core(findings):
    slicer = pytest.importorskip("slicer")
    checked, missing = 0, []
    for f in findings:
        cls = f.name.split(".", 1)[0]
        if f.status == "ok" and "." in f.name and cls.startswith(("vtkMRML", "vtkSegment", "vtkOrientedImageData",
                                                                   "vtkSlicer")):
            checked += 1
            if not hasattr(getattr(slicer, cls, None), f.name.rsplit(".", 1)[1]):
                missing.append(f.name)
    assert checked >= 100 and missing == []


def test_the_checker_reports_wrong_names(tmp_path, doc):
    module = tmp_path / "Bad"
    module.mkdir()
    (module / "Bad.py").write_text(textwrap.dedent('''
        import qt
        import slicer
        from slicer.util import VTKObservationMixinn
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


        def run(scene: "slicer.vtkMRMLScene", segmentation_node: "slicer.vtkMRMLSegmentationNode", target):
            slicer.util.tryWithErrorDisplayy("x")
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "n")
            node.GetSegmentation().GetSegmentt("GTV")
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNodee(None)
            mode = slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSett
            timer = qt.QTimerr()
            slicer.modules.nosuchmodule.logic()
            target.GetExtent()  # a segment ID string by its use: never typed by its name


        class BadTest(ScriptedLoadableModuleTest):
            def test_x(self):
                self.delayDisplayy("x")


        class Panel:
            def __init__(self, scriptedEffect):
                self.scriptedEffect = scriptedEffect
                self.button = qt.QPushButton("x")
                self.spin = qt.QSpinBox()
                self.button.connect("clicked(int)", self.onClick)  # no such signature
                self.spin.connect("valueChanged(int)", self.onTwo)  # the handler needs two arguments
                self.spin.connect("valueChanged(int)", self.onOne)  # fine

            def onClick(self):
                pass

            def onTwo(self, value, other):
                pass

            def onOne(self, value):
                pass

            def write(self, modifier, k):
                mode = slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet
                self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode, [0, 9, 0, 9, k, k])
                self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode)  # fine: the whole extent
        '''))
    (module / "CMakeLists.txt").write_text("slicerMacroBuildScriptedModulee(NAME Bad)\n")
    findings = check(Api(doc), module)
    unknown = {f.name for f in findings if f.status == "unknown"}
    assert {"slicer.util.VTKObservationMixinn", "slicer.util.tryWithErrorDisplayy", "vtkSegmentation.GetSegmentt",
            "vtkMRMLSegmentationNode.SetReferenceImageGeometryParameterFromVolumeNodee",
            "qSlicerSegmentEditorAbstractEffect.ModificationModeSett", "qt.QTimerr", "slicer.modules.nosuchmodule",
            "self.delayDisplayy", "cmake slicerMacroBuildScriptedModulee", "QPushButton.signal clicked(int)",
            "QSpinBox.signal valueChanged(int) -> self.onTwo",
            "modifySelectedSegmentByLabelmap(ModificationModeSet, extent)"} <= unknown, unknown
    assert sum(1 for f in findings if f.name == "modifySelectedSegmentByLabelmap(ModificationModeSet, extent)") == 1
    assert "QSpinBox.signal valueChanged(int) -> self.onOne" not in unknown
    unresolved = [f for f in findings if f.status == "unresolved"]
    assert [(f.name, f.line) for f in unresolved] == [("target.GetExtent", 16)]


def test_command_line_exit_status(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "0 unknown" in out and "unresolved call(s)" in out and "NOT EXPLAINED" not in out


# ------------------------------------------------------------------------------------------
# Testing/Slicer/smoke.sh: where there is no Slicer it fails, loudly


SMOKE = ROOT / "Testing" / "Slicer" / "smoke.sh"


@pytest.mark.parametrize("args,message", [([], "give exactly one argument"),
                                          (["/no/such/Slicer"], "does not exist"),
                                          ([str(ROOT)], "is not a file"),
                                          ([str(ROOT / "README.md")], "is not executable")])
def test_smoke_script_fails_loudly_without_slicer(args, message):
    import subprocess

    out = subprocess.run(["bash", str(SMOKE), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr and "self-tests did NOT run" in out.stderr


def test_smoke_script_fails_when_slicer_ends_without_running_the_tests(tmp_path):
    """An executable that is not Slicer (here: one that exits 0 at once) is no pass."""
    import subprocess

    fake = tmp_path / "Slicer"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(SMOKE), str(fake)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "without running the self-tests" in out.stderr
