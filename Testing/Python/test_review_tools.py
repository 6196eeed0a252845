"""What a planner uses while reviewing: negative clicks (toggle, N key, Cmd on macOS), click markers,
flagged-slice navigation with "reviewed" marks, the registered prior for comparison, the prior's
terminology, the worker's log on failure, the Restart button. On slicer-core's real MRML nodes and
Segment Editor logic (``segment_editor_on_logic``), Qt widgets as stand-ins; clicks run the real LiteMedSAM."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))

import slicer_standins as standins  # noqa: E402
from segment_editor_on_logic import AbstractEffectEnums, ScriptedEffectOnLogic  # noqa: E402

from P2SAMLogic.io.volume import Segment  # noqa: E402
from P2SAMSlicerLib import background, mrml_bridge, review  # noqa: E402
from P2SAMSlicerLib.followups import followup_list  # noqa: E402
from P2SAMSlicerLib.logic import PropagationLogic  # noqa: E402

EFFECT_FILE = ROOT / "P2SAMSlicer" / "SegmentEditorP2SAM" / "SegmentEditorP2SAMLib" / "SegmentEditorEffect.py"
LIVER = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
         "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")


@pytest.mark.parametrize("negative_mode,modifier,positive", [(False, False, True), (False, True, False),
                                                             (True, False, False), (True, True, True)])
def test_which_clicks_are_negative(negative_mode, modifier, positive):
    assert review.click_is_positive(negative_mode, modifier) is positive


def test_the_modifier_is_cmd_on_macos():
    assert review.negative_modifier_label("darwin") == "Cmd"
    assert review.negative_modifier_label("linux") == review.negative_modifier_label("win32") == "Ctrl"


def block_case(scene):
    """A 40 x 40 x 12 CT with a soft-tissue block and a "Block" segment on slices 3-8."""
    arr = np.full((12, 40, 40), -1000, dtype=np.int16)
    arr[3:9, 10:30, 12:28] = 40
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing((1.0, 1.0, 3.0))
    mask = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    mask.CopyInformation(ct)
    volume = mrml_bridge.image_to_volume_node(ct, scene, "CT")
    segmentation = mrml_bridge.segments_to_segmentation_node(scene, [Segment("Block", (0.1, 0.8, 0.2), mask, "Block")],
                                                             ct, "contours", reference_volume_node=volume)
    return ct, volume, segmentation


@pytest.fixture
def effect(monkeypatch):
    mrml_bridge.ensure_conversion_rules()
    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    monkeypatch.setattr(slicer, "qSlicerSegmentEditorAbstractEffect", AbstractEffectEnums, raising=False)
    module = standins.load(EFFECT_FILE, "SegmentEditorEffect_review_tools")
    ct, volume, segmentation = block_case(scene)
    editor_node = scene.AddNode(slicer.vtkMRMLSegmentEditorNode())
    scripted = ScriptedEffectOnLogic(scene, editor_node)
    editor_node.SetAndObserveSegmentationNode(segmentation)
    editor_node.SetAndObserveSourceVolumeNode(volume)
    editor_node.SetSelectedSegmentID("Block")
    effect = module.SegmentEditorEffect(scripted)
    effect.setupOptionsFrame()
    effect.setMRMLDefaults()
    effect.statusLabel = standins.Anything()
    effect.negativeButton = standins.Anything(checked=False)
    effect.negativeButton.connect = lambda *a: None
    sys.modules["qt"].QApplication = standins.Anything(allWidgets=lambda: [])  # no Segment Editor widget here
    return effect, scripted, scene, segmentation, ct


def key(effect, name):
    interactor = standins.Anything(GetControlKey=lambda: 0, GetKeySym=lambda: name)
    view = standins.Anything(className=lambda: "qMRMLSliceWidget",
                             sliceLogic=lambda: standins.Anything(GetSliceNode=lambda: None))
    return effect.processInteractionEvents(interactor, vtk.vtkCommand.KeyPressEvent, view)


def test_n_switches_to_negative_clicks_and_markers_show_each_click(effect):
    effect, scripted, scene, segmentation, ct = effect
    effect.clickAt(5, 18, 20, positive=True)  # inside the block: changes nothing, a green marker
    assert key(effect, "n") is True
    effect.onNegativeToggled(effect.negativeButton.checked)  # what Qt's toggled(bool) does
    assert scripted.integerParameter("NegativeClicks") == 1
    negative = review.click_is_positive(bool(scripted.integerParameter("NegativeClicks")), False) is False
    effect.clickAt(5, 12, 14, positive=not negative)
    markers = effect.actions().markers()
    m = mrml_bridge.node_ijk_to_ras(scene.GetFirstNodeByName("CT"))
    green, red = markers.points(True), markers.points(False)
    assert np.allclose(green, [(m @ [20, 18, 5, 1])[:3]]) and np.allclose(red, [(m @ [14, 12, 5, 1])[:3]])
    assert scene.GetFirstNodeByName("P2SAM negative clicks").GetDisplayNode().GetColor() == review.NEGATIVE_COLOUR
    scripted.logic.Undo()  # Ctrl+Z: the negative click goes, and so does its marker at the next update
    effect.onUndoClick()  # the session follows Ctrl+Z; then the first click, which changed nothing, is dropped
    assert slicer.errors_shown == []
    assert markers.points(False) == [] and markers.points(True) == []
    assert effect.actions().session.clicks("Block", 5) == (0, 0)


def flagged_report(ks):
    return {"segments": [{"name": "Block", "slices": [{"index": k, "flagged": True, "reason": f"why {k}"}
                                                      for k in ks]}]}


def test_flagged_slices_next_previous_and_reviewed_marks(effect):
    effect, scripted, scene, segmentation, ct = effect
    mrml_bridge.store_report(segmentation, flagged_report([2, 5, 9]), ct)
    actions = effect.actions()
    assert actions.next_flagged(None, 1)[0] == 2
    k, ras, message = actions.next_flagged(5, 1)
    assert k == 9 and "why 9" in message and "0 of 3 reviewed" in message
    assert actions.next_flagged(2, -1)[0] == 9  # wraps round
    assert "marked reviewed" in actions.toggle_reviewed(9)
    assert actions.next_flagged(5, 1)[0] == 2  # 9 is reviewed: skipped
    assert review.SliceReview(segmentation).reviewed("Block") == [9]
    assert segmentation.GetAttribute(review.REVIEWED_ATTRIBUTE) == '{"Block": [9]}'  # saved with the scene
    actions.toggle_reviewed(2), actions.toggle_reviewed(5)
    with pytest.raises(ValueError, match="Every flagged slice of 'Block' is marked reviewed"):
        actions.next_flagged(0, 1)
    other = slicer.vtkMRMLSegmentationNode()
    mrml_bridge.store_report(other, flagged_report([1]), mrml_bridge.volume_node_to_image(
        scene.GetFirstNodeByName("CT")) * 2)  # another visit's voxels: its flagged slices are not used
    segmentation.SetAttribute(mrml_bridge.CONTENT_ATTRIBUTE, other.GetAttribute(mrml_bridge.CONTENT_ATTRIBUTE))
    effect.actions().forget()
    with pytest.raises(ValueError, match="No P²SAM report for this source volume"):
        effect.actions().next_flagged(0, 1)


def test_a_result_keeps_the_priors_terminology_and_brings_the_registered_prior():
    scene = slicer.vtkMRMLScene()
    ct, volume, segmentation = block_case(scene)
    segmentation.GetSegmentation().GetSegment("Block").SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), LIVER)
    moved = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(ct), 2, axis=2))
    moved.CopyInformation(ct)
    week = mrml_bridge.image_to_volume_node(moved, scene, "week 1")
    outcome = PropagationLogic(scene).processSeries(volume, segmentation, followup_list(week),
                                                    parameters={"method": "rigid"})
    node = outcome.output_nodes[0]
    segment = node.GetSegmentation().GetSegment(node.GetSegmentation().GetNthSegmentID(0))
    assert mrml_bridge.segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName()) == LIVER
    assert mrml_bridge.segment_tag(segment, "P2SAM.Status") is not None
    prior = review.registered_prior_node(node)
    assert prior is not None and prior.GetName() == "week 1 P2SAM registered prior"
    display = prior.GetDisplayNode()
    assert display.GetSegmentOpacity2DFill("Block") == 0.0 and display.GetSegmentOpacity2DOutline("Block") == 1.0
    assert mrml_bridge.masks_from_segmentation_node(prior, moved)["Block"].any()
    assert review.is_registered_prior(prior) and not review.is_registered_prior(node)
    assert not prior.GetDisplayNode().GetVisibility()  # hidden until the planner asks for it
    assert review.show_registered_prior(node, True) and prior.GetDisplayNode().GetVisibility()


def test_the_workers_log_is_shown_when_a_run_fails():
    text = background.failure_text({"type": "RuntimeError", "message": "CUDA out of memory"},
                                   "loading LiteMedSAM\nencoding slice 12\nRuntimeError: CUDA out of memory")
    assert text.startswith("P²SAM failed: CUDA out of memory")
    assert "Last lines of the worker's log:\nloading LiteMedSAM\nencoding slice 12" in text
    assert "Traceback" in background.failure_text({"message": "x", "traceback": "Traceback (most recent)"}, "")


def test_panel_shows_the_log_and_offers_a_restart(monkeypatch):
    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    module = standins.load(ROOT / "P2SAMSlicer" / "P2SAMSlicer.py", "P2SAMSlicer_review_tools")
    widget = module.P2SAMSlicerWidget()
    widget.ui = standins.widget_ui()
    widget.logic = module.P2SAMSlicerLogic()
    logged = []
    widget.log = logged.append

    class FailedJob:
        """A finished background job whose worker failed (what BackgroundPropagation reports)."""

        running = False

        def poll(self):
            return []

        def error(self):
            return {"type": "RuntimeError", "message": "out of memory"}

        def log_tail(self):
            return "loading LiteMedSAM\nRuntimeError: out of memory"

        def cleanup(self):
            pass

    widget._job, widget._jobContext = FailedJob(), (None, None, None, None, {})
    widget._timer = standins.Anything()
    widget.onTimer()
    assert any("Last lines of the worker's log:" in m and "loading LiteMedSAM" in m for m in logged)
    from P2SAMSlicerLib import dependencies

    monkeypatch.setattr(dependencies, "slicer_install_missing", lambda ask=True: dependencies.InstallOutcome(
        ["scikit-learn"], False, True, "Installed: scikit-learn. Restart Slicer before using P²SAM."))
    monkeypatch.setattr(slicer.util, "infoDisplay", lambda *a, **k: None, raising=False)
    assert widget.onInstallDependencies() is False
    assert widget.ui.restartButton.visible is True
