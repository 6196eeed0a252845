"""The module panel and the Segment Editor effect, driven as Slicer drives them, on slicer-core's MRML.

Qt does not exist here: ``slicer_standins`` gives the files just enough of it (a checklist
that emits ``itemChanged`` like ``QListWidget``, labels and buttons that accept anything),
and a settings object on a REAL ``vtkMRMLScriptedModuleNode`` whose ModifiedEvent fires
synchronously, as in Slicer. Scenes, volumes, segmentations, slice and editor nodes are
slicer-core's real classes. Each test reproduces one defect found by reading the module
against Slicer's source; each failed on the code before its fix.
"""
from __future__ import annotations

import os
import sys
import unittest
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_standins as standins  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "P2SAMSlicer" / "P2SAMSlicer.py"
EFFECT_MODULE_FILE = ROOT / "P2SAMSlicer" / "SegmentEditorP2SAM" / "SegmentEditorP2SAM.py"
EFFECT_FILE = ROOT / "P2SAMSlicer" / "SegmentEditorP2SAM" / "SegmentEditorP2SAMLib" / "SegmentEditorEffect.py"
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))

from P2SAMLogic.io.volume import Segment  # noqa: E402
from P2SAMSlicerLib import mrml_bridge  # noqa: E402


def small_case(scene):
    """A 40 x 40 x 12 CT with a soft-tissue block, two segments on it, and a shifted follow-up."""
    arr = np.full((12, 40, 40), -1000, dtype=np.int16)
    arr[3:9, 10:30, 12:28] = 40
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing((1.0, 1.0, 3.0))
    block = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    block.CopyInformation(ct)
    edge = np.zeros_like(arr, dtype=np.uint8)
    edge[3:9, 10:30, 12:16] = 1
    edge_img = sitk.GetImageFromArray(edge)
    edge_img.CopyInformation(ct)
    follow = sitk.GetImageFromArray(np.roll(arr, 2, axis=2))
    follow.CopyInformation(ct)
    prior = mrml_bridge.image_to_volume_node(ct, scene, "prior")
    seg = mrml_bridge.segments_to_segmentation_node(
        scene, [Segment("Block", (0.1, 0.8, 0.2), block, "Block"), Segment("Edge", (0.9, 0.2, 0.2), edge_img, "Edge")],
        ct, "contours", reference_volume_node=prior)
    followup = mrml_bridge.image_to_volume_node(follow, scene, "follow-up")
    return prior, seg, followup


@pytest.fixture
def panel(monkeypatch):
    """``(module, widget, settings, scene)``: the module file on stand-ins, its widget on a real scene."""
    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    module = standins.load(MODULE_FILE, "P2SAMSlicer_widget_under_test")
    widget = module.P2SAMSlicerWidget()
    widget.ui = standins.widget_ui()
    widget.logic = module.P2SAMSlicerLogic()
    widget.ui.segmentsListWidget.connect("itemChanged(QListWidgetItem*)", widget.onSegmentItemChanged)
    settings = standins.ParameterNode(scene)
    widget.setParameterNode(settings)
    return module, widget, settings, scene


def ticked(widget):
    return widget.ui.segmentsListWidget.checked_ids()


# ------------------------------------------------------------------------------------------
# defect 1: the first untick (or "None") was undone by the parameter node's ModifiedEvent


def test_unticking_a_segment_sticks(panel):
    module, widget, settings, scene = panel
    prior, seg, followup = small_case(scene)
    settings.priorVolume, settings.followupVolume = prior, followup
    settings.priorSegmentation = seg
    assert ticked(widget) == ["Block", "Edge"]  # nothing chosen yet: every segment
    widget.ui.segmentsListWidget.click("Edge", False)  # the user unticks Edge
    assert ticked(widget) == ["Block"]
    assert widget.checkedSegmentIds() == ["Block"]  # what Apply propagates
    # the choice is kept in the parameter node: a panel opened later on it shows the same ticks
    again = module.P2SAMSlicerWidget()
    again.ui = standins.widget_ui()
    again.logic = widget.logic
    again.setParameterNode(settings)
    assert ticked(again) == ["Block"]


def test_none_button_unticks_everything_and_disables_apply(panel):
    module, widget, settings, scene = panel
    prior, seg, followup = small_case(scene)
    settings.priorVolume, settings.followupVolume = prior, followup
    settings.priorSegmentation = seg
    widget.setAllSegmentsChecked(False)
    assert ticked(widget) == [] and widget.checkedSegmentIds() == []
    assert widget.ui.applyButton.enabled is False
    widget.ui.segmentsListWidget.click("Block", True)
    assert ticked(widget) == ["Block"] and widget.ui.applyButton.enabled is True


# ------------------------------------------------------------------------------------------
# defect 3: user events delivered by processEvents() during a blocking run


def blocking_run(widget, settings, during):
    """Run the panel's in-process propagation (registration only: no model) with ``during`` called
    from the first ``slicer.app.processEvents()``, as Slicer would deliver a click there."""
    slicer.app.hooks = [during]
    args = {"model": "litemedsam", "modelType": None, "device": "cpu"}
    widget._runBlocking(settings, widget.checkedSegmentIds(), args, {"method": "rigid"})
    assert slicer.app.calls >= 1, "the run never let the GUI process events"


@pytest.fixture
def ready(panel):
    module, widget, settings, scene = panel
    prior, seg, followup = small_case(scene)
    settings.priorVolume, settings.followupVolume = prior, followup
    settings.priorSegmentation = seg
    messages = []
    widget.log = messages.append
    return widget, settings, scene, seg, messages


def segmentation_nodes(scene):
    """Segmentations other than the registered priors P²SAM adds for comparison."""
    from P2SAMSlicerLib.review import count_segmentations

    return count_segmentations(scene)


def test_closing_the_scene_during_a_blocking_run_cancels_it(ready):
    widget, settings, scene, seg, messages = ready
    before = segmentation_nodes(scene)
    blocking_run(widget, settings, lambda: widget.onSceneStartClose(None, None))
    assert segmentation_nodes(scene) == before, "a result was added to a scene that was closing"
    assert any("Cancelled" in m for m in messages), messages
    assert not widget._isRunning()


def test_opening_the_segment_editor_during_a_blocking_run_is_refused(ready, monkeypatch):
    widget, settings, scene, seg, messages = ready
    opened = []
    monkeypatch.setattr(slicer.util, "selectModule", opened.append)
    widget._lastOutput = seg  # a result of an earlier run
    before = segmentation_nodes(scene)
    blocking_run(widget, settings, widget.onOpenSegmentEditor)
    assert opened == [], "the Segment Editor was opened in the middle of a run"
    assert segmentation_nodes(scene) == before + 1  # the run itself finished
    assert any("Wait for the propagation" in m for m in messages)


def test_apply_during_a_blocking_run_cancels_it_and_starts_nothing(ready):
    widget, settings, scene, seg, messages = ready
    before = segmentation_nodes(scene)
    blocking_run(widget, settings, widget.onApplyButton)
    assert segmentation_nodes(scene) == before
    assert any("Cancelled" in m for m in messages)


def test_ticking_a_segment_during_a_blocking_run_changes_nothing(ready):
    widget, settings, scene, seg, messages = ready
    blocking_run(widget, settings, lambda: widget.ui.segmentsListWidget.click("Edge", False))
    assert widget.checkedSegmentIds() == ["Block", "Edge"]


# ------------------------------------------------------------------------------------------
# defect 2: "Reload and Test" calls runTest() directly: a skip must not be a failure


def run_self_test(case):
    """``case.runTest()`` as "Reload and Test" calls it; a SkipTest escaping it is the defect (pytest
    itself would turn it into a skip of this test, so it is caught here)."""
    try:
        case.runTest()
    except unittest.SkipTest as skip:
        pytest.fail(f"runTest() raised SkipTest ({skip}): Slicer shows this as a failed test")


def test_module_self_test_reports_a_skip_as_skipped(panel):
    module, widget, settings, scene = panel
    case = module.P2SAMSlicerTest()
    ran = []
    case.test_EngineImports = lambda: ran.append("imports")
    case.test_BadInputsAreRefused = lambda: ran.append("bad inputs")
    case.test_PropagationReachesDiceFloor = lambda: case.skipTest("P²SAM's Python packages are not installed")
    case.test_WidgetRunsInBackground = lambda: ran.append("widget")
    case.test_SeveralFollowupsInOneRun = lambda: ran.append("several")
    case.test_ProposalIntoExistingSegmentationIsOneUndoStep = lambda: ran.append("undo")
    run_self_test(case)
    assert ran == ["imports", "bad inputs", "widget", "several", "undo"]
    assert any("skipped: P²SAM's Python packages are not installed" in m for m in case.messages)
    case.test_BadInputsAreRefused = lambda: case.fail("bad input accepted")
    with pytest.raises(AssertionError, match="bad input accepted"):
        case.runTest()  # failures still fail


def test_effect_self_test_reports_a_skip_as_skipped(monkeypatch):
    standins.install(monkeypatch, slicer.vtkMRMLScene())
    module = standins.load(EFFECT_MODULE_FILE, "SegmentEditorP2SAM_under_test")
    case = module.SegmentEditorP2SAMTest()
    case.test_EffectIsRegistered = lambda: None
    case.test_ClickCorrectsASlice = lambda: case.skipTest("packages missing")
    run_self_test(case)
    assert any("skipped: packages missing" in m for m in case.messages)


# ------------------------------------------------------------------------------------------
# defect 4: the effect swallowed every left click and showed a modal error in other views


@pytest.fixture
def effect_case(monkeypatch):
    """The effect on a real segmentation + volume + Segment Editor node, and a real slice node (the view);
    its ``scriptedEffect`` forwards to slicer-core's real Segment Editor logic (``segment_editor_on_logic``)."""
    from segment_editor_on_logic import AbstractEffectEnums, ScriptedEffectOnLogic

    mrml_bridge.ensure_conversion_rules()
    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    monkeypatch.setattr(slicer, "qSlicerSegmentEditorAbstractEffect", AbstractEffectEnums, raising=False)
    module = standins.load(EFFECT_FILE, "SegmentEditorEffect_under_test")
    prior, seg, followup = small_case(scene)
    editor_node = scene.AddNode(slicer.vtkMRMLSegmentEditorNode())  # not registered in slicer-core's scene
    scripted = ScriptedEffectOnLogic(scene, editor_node)
    editor_node.SetAndObserveSegmentationNode(seg)
    editor_node.SetAndObserveSourceVolumeNode(prior)
    editor_node.SetSelectedSegmentID("Block")
    effect = module.SegmentEditorEffect(scripted)
    effect.statusLabel = standins.Anything()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    view_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    view_node.SetDimensions(200, 200, 1)
    view_node.SetFieldOfView(100.0, 100.0, 1.0)
    view = standins.Anything(className=lambda: "qMRMLSliceWidget",
                             sliceLogic=lambda: standins.Anything(GetSliceNode=lambda: view_node))
    return effect, view_node, view, prior, seg


def left_click(effect, view, xy, control=False):
    import vtk

    interactor = standins.Anything(GetShiftKey=lambda: 0, GetAltKey=lambda: 0, GetControlKey=lambda: int(control),
                                   GetEventPosition=lambda: xy)
    return effect.processInteractionEvents(interactor, vtk.vtkCommand.LeftButtonPressEvent, view)


def block_mask(seg, prior):
    return mrml_bridge.masks_from_segmentation_node(seg, mrml_bridge.volume_node_to_image(prior))["Block"]


def test_effect_leaves_clicks_in_other_views_to_slicer_without_a_dialog(effect_case):
    effect, view_node, view, prior, seg = effect_case
    before = block_mask(seg, prior)
    view_node.SetOrientation("Sagittal")
    view_node.JumpSliceByCentering(-20.0, -20.0, 15.0)
    assert left_click(effect, view, (100, 100)) is False  # not consumed: Slicer handles it
    assert slicer.errors_shown == []
    assert "does not show slices of the source volume" in effect.statusLabel.text
    assert effect.actions().session.last is None and np.array_equal(block_mask(seg, prior), before)


def test_effect_corrects_the_voxel_under_a_click_in_an_aligned_view(effect_case):
    effect, view_node, view, prior, seg = effect_case
    before = block_mask(seg, prior)
    view_node.SetOrientation("Axial")
    # centre the view on voxel (i, j, k) = (20, 18, 5): its RAS point
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    prior.GetIJKToRASMatrix(ijk_to_ras)
    ras = [sum(ijk_to_ras.GetElement(r, c) * v for c, v in enumerate((20, 18, 5, 1))) for r in range(3)]
    view_node.JumpSliceByCentering(*ras)
    view_node.UpdateMatrices()
    assert left_click(effect, view, (100, 100), control=True) is True
    assert slicer.errors_shown == []
    session = effect.actions().session
    assert session.last == ("Block", 5) and session.clicks("Block", 5) == (0, 1)  # Ctrl+click: negative
    after = block_mask(seg, prior)
    assert before[5, 18, 20] and not after[5, 18, 20], "the negative click did not remove the voxel under it"
    keep = np.arange(after.shape[0]) != 5
    assert np.array_equal(after[keep], before[keep])
    assert left_click(effect, view, (0, 0)) is False  # 50 mm off: outside the 40 x 40 mm volume
    assert "outside the source volume" in effect.statusLabel.text and session.clicks("Block", 5) == (0, 1)
    assert slicer.errors_shown == []
