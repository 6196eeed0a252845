"""The module's use of Slicer's API, checked against Slicer 5.8.1's own names (Testing/Slicer).

The names were extracted from Slicer's, CTK's and PythonQt's sources at the commits recorded in
Testing/Slicer/slicer_api_names.json (no network here); the MRML members the checker accepts are
also looked up on slicer-core's real classes.
"""
from __future__ import annotations

import json
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


def test_what_could_not_be_checked_is_short_and_explained(findings):
    unchecked = summarise(findings)["unchecked"]
    assert len(unchecked) <= 3
    for entry in unchecked:
        assert len(entry["reason"]) > 40 and entry["where"]


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


        def run(scene, segmentation_node):
            slicer.util.tryWithErrorDisplayy("x")
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "n")
            node.GetSegmentation().GetSegmentt("GTV")
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNodee(None)
            mode = slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSett
            timer = qt.QTimerr()
            slicer.modules.nosuchmodule.logic()


        class BadTest(ScriptedLoadableModuleTest):
            def test_x(self):
                self.delayDisplayy("x")
        '''))
    (module / "CMakeLists.txt").write_text("slicerMacroBuildScriptedModulee(NAME Bad)\n")
    unknown = {f.name for f in check(Api(doc), module) if f.status == "unknown"}
    assert {"slicer.util.VTKObservationMixinn", "slicer.util.tryWithErrorDisplayy", "vtkSegmentation.GetSegmentt",
            "vtkMRMLSegmentationNode.SetReferenceImageGeometryParameterFromVolumeNodee",
            "qSlicerSegmentEditorAbstractEffect.ModificationModeSett", "qt.QTimerr", "slicer.modules.nosuchmodule",
            "self.delayDisplayy", "cmake slicerMacroBuildScriptedModulee"} <= unknown, unknown


def test_command_line_exit_status(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "0 unknown" in out and "could not check" in out


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
