"""The Qt-free state of the module panel and the effect (P2SAMSlicerLib.panel_state, .selftest,
.correction.click_target, .background) on slicer-core's real MRML nodes."""
from __future__ import annotations

import os
import sys
import unittest
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))

from P2SAMSlicerLib import background, correction  # noqa: E402
from P2SAMSlicerLib.panel_state import BusyError, BusyState, SegmentSelection  # noqa: E402
from P2SAMSlicerLib.selftest import run_test_methods  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def segmentation(scene, names, node_name="contours"):
    from P2SAMSlicerLib.mrml_bridge import ensure_conversion_rules

    ensure_conversion_rules()  # Slicer registers them at start-up; empty segments need them
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name)
    for n in names:
        node.GetSegmentation().AddEmptySegment(n, n)
    return node


# ------------------------------------------------------------------------------------------
# SegmentSelection


def test_selection_is_one_parameter_write_and_one_modified_event(scene):
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    seg = segmentation(scene, ["GTV", "Lung", "Heart"])
    selection = SegmentSelection(parameters)
    assert selection.checked(seg) == ["GTV", "Lung", "Heart"] and not selection.is_stored(seg)
    seen = []
    parameters.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: seen.append(selection.checked(seg)))
    assert selection.store(seg, ["Heart", "GTV"])
    # observers see the complete new selection, in the segmentation's order, exactly once
    assert seen == [["GTV", "Heart"]]
    assert not selection.store(seg, ["Heart", "GTV"]) and len(seen) == 1  # unchanged: no event
    selection.set_all(seg, False)
    assert seen[-1] == [] and selection.is_stored(seg)


def test_selection_belongs_to_its_segmentation_and_drops_removed_segments(scene):
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    first, second = segmentation(scene, ["GTV", "Lung"]), segmentation(scene, ["Liver", "Kidney"], "other")
    selection = SegmentSelection(parameters)
    selection.store(first, ["Lung"])
    assert selection.checked(second) == ["Liver", "Kidney"]  # another segmentation: untouched, all ticked
    first.GetSegmentation().RemoveSegment("Lung")
    assert selection.checked(first) == []  # the ticked one is gone; the user's "none else" is kept


def test_selection_survives_saving_and_loading_the_scene(scene, tmp_path):
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "P2SAMSlicer")
    seg = segmentation(scene, ["GTV", "Lung"])
    SegmentSelection(parameters).store(seg, ["Lung"])
    path = str(tmp_path / "scene.mrml")
    scene.SetURL(path)
    assert scene.Commit()
    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(path)
    assert loaded.Import()
    parameters2 = loaded.GetFirstNodeByName("P2SAMSlicer")
    seg2 = loaded.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert seg2.GetID() == seg.GetID()
    assert SegmentSelection(parameters2).is_stored(seg2)
    for name in ("GTV", "Lung"):  # the .mrml alone holds no voxels: the segments come from their own file
        seg2.GetSegmentation().AddEmptySegment(name, name)
    assert SegmentSelection(parameters2).checked(seg2) == ["Lung"]


# ------------------------------------------------------------------------------------------
# BusyState


def test_busy_state_refuses_a_second_run_and_cancels_the_first():
    busy = BusyState()
    events = []

    def process_events():  # what Slicer does inside processEvents: deliver the user's clicks
        events.append("events")
        with pytest.raises(BusyError, match="a propagation is still running"):
            with busy.running("a click correction"):
                events.append("second run started")
        assert busy.request_cancel()

    with busy.running("a propagation"):
        progress = busy.progress_callback(lambda f, m: events.append((f, m)), process_events)
        progress(0.5, "half way")
        assert busy.should_cancel()
    assert events == [(0.5, "half way"), "events"]
    assert not busy.busy and not busy.should_cancel() and not busy.request_cancel()


# ------------------------------------------------------------------------------------------
# self-test runner


def test_run_test_methods_reports_skips_and_raises_failures():
    log = []

    class Case(unittest.TestCase):
        def setUp(self):
            log.append("setUp")

        def test_a(self):
            log.append("a")

        def test_b(self):
            self.skipTest("no model here")

        def test_c(self):
            self.fail("wrong")

    case = Case()
    shown = []
    assert run_test_methods(case, ["test_a", "test_b"], shown.append) == {"test_a": "passed",
                                                                          "test_b": "skipped: no model here"}
    assert log == ["setUp", "a", "setUp"] and "test_b skipped: no model here" in shown
    with pytest.raises(AssertionError, match="wrong"):
        run_test_methods(case, ["test_a", "test_c", "test_a"])
    assert log[-2:] == ["a", "setUp"]  # stopped at the failure


# ------------------------------------------------------------------------------------------
# where a click lands (the effect)


def volume_geometry():
    """IJKToRAS of an oblique 30 x 20 x 10 volume (0.8 x 0.8 x 2.5 mm, rotated 20 degrees about S)."""
    a = np.radians(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.8, 0.8, 2.5])
    m[:3, 3] = (5.0, -12.0, 40.0)
    return m


def view(scene, orientation, centre_ras):
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    node.SetDimensions(300, 300, 1)
    node.SetFieldOfView(60.0, 60.0, 1.0)
    assert node.SetOrientation(orientation)
    node.JumpSliceByCentering(*centre_ras)
    node.UpdateMatrices()
    return node


def test_click_target_follows_slicers_xy_to_ijk_on_an_oblique_volume(scene):
    m = volume_geometry()
    centre = (m @ [12, 7, 4, 1])[:3]
    axial = view(scene, "Axial", centre)
    # an axial view is not aligned with a volume rotated about S? it is: the k axis is S
    t = correction.click_target(axial, m, (10, 20, 30), (150, 150))
    assert t.ok and (t.k, t.j, t.i) == (4, 7, 12)
    # one voxel to the right on screen (0.2 mm per pixel: 4 pixels = 0.8 mm along R-L), rounded as Slicer does
    ras = np.array([[axial.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)]) @ [154, 150, 0, 1]
    ijk = np.linalg.solve(m, ras)[:3]
    t2 = correction.click_target(axial, m, (10, 20, 30), (154, 150))
    assert (t2.i, t2.j, t2.k) == tuple(int(np.floor(v + 0.5)) for v in ijk)
    sagittal = view(scene, "Sagittal", centre)
    assert correction.click_target(sagittal, m, (10, 20, 30), (150, 150)).problem == correction.NOT_ALIGNED
    far = correction.click_target(axial, m, (10, 20, 30), (0, 0))
    assert far.problem == correction.OUTSIDE


def test_click_target_through_a_linear_parent_transform(scene):
    m = volume_geometry()
    centre = (m @ [12, 7, 4, 1])[:3]
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 8.0)  # the segmentation is shown 8 mm to the right (R)
    transform.SetMatrixTransformToParent(shift)
    axial = view(scene, "Axial", centre + [8.0, 0.0, 0.0])
    t = correction.click_target(axial, m, (10, 20, 30), (150, 150), transform)
    assert t.ok and (t.k, t.j, t.i) == (4, 7, 12)


# ------------------------------------------------------------------------------------------
# background process: interpreter and job folder


def test_background_python_is_never_the_slicer_application(tmp_path, monkeypatch):
    app = tmp_path / "bin" / "SlicerApp-real"
    app.parent.mkdir()
    app.write_text("#!/bin/sh\n")
    app.chmod(0o755)
    monkeypatch.setattr(background.shutil, "which", lambda name: None)
    monkeypatch.setattr(background.sys, "executable", str(app))
    with pytest.raises(RuntimeError, match="PythonSlicer.*Run in background"):
        background.default_python()
    python_slicer = app.parent / "PythonSlicer"
    python_slicer.write_text("#!/bin/sh\n")
    python_slicer.chmod(0o755)
    assert background.default_python() == str(python_slicer)
    monkeypatch.setattr(background.sys, "executable", sys.executable)
    python_slicer.unlink()
    if os.path.basename(sys.executable).lower().startswith("python"):
        assert background.default_python() == sys.executable


def test_a_job_that_cannot_start_leaves_no_folder(tmp_path):
    import SimpleITK as sitk
    from P2SAMLogic.io.volume import Segment

    image = sitk.Image([8, 8, 4], sitk.sitkInt16)
    mask = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    mask[2, 2, 1] = 1
    job = background.BackgroundPropagation(image, [Segment("S", (1, 0, 0), mask)], image,
                                           python=str(tmp_path / "no-such-python"), work_dir=str(tmp_path))
    assert os.path.isdir(job.folder)
    with pytest.raises(RuntimeError, match="no-such-python"):
        job.start()
    assert not os.path.exists(job.folder) and os.listdir(tmp_path) == []
