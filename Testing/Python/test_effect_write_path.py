"""The P²SAM effect's writes into a segment, through Slicer's real Segment Editor write code.

The effect file (``SegmentEditorEffect.py``) runs as it does in Slicer: its ``clickAt``,
"Undo last click" and "Re-propagate" handlers, the Lib code they call, and the real
LiteMedSAM. Its ``scriptedEffect`` forwards each call to slicer-core's real
``vtkSlicerSegmentEditorLogic`` (:mod:`segment_editor_on_logic`): the modifier labelmap,
``ModifySegmentByLabelmap`` with the editor's masking and overwrite settings, and the
segmentation's undo history (``vtkSegmentationHistory``) are Slicer's own. Qt widgets are
stand-ins (:mod:`slicer_standins`); no part of the write path is.

Case: the bundled lung CT; "GTV" is the tumour's slice-12 contour copied on slices 4-20 (a
multi-slice segment), with slice 12 missing part of it; "Lung" overlaps "GTV" on every
slice (overlap allowed before, in its own layer); "Region" limits the editable area in the
masked variants.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))

import slicer_standins as standins  # noqa: E402
from segment_editor_on_logic import AbstractEffectEnums, EditorWidgetOnLogic, ScriptedEffectOnLogic  # noqa: E402

from P2SAMLogic.io.volume import Segment  # noqa: E402
from P2SAMSlicerLib import mrml_bridge  # noqa: E402

EFFECT_FILE = ROOT / "P2SAMSlicer" / "SegmentEditorP2SAM" / "SegmentEditorP2SAMLib" / "SegmentEditorEffect.py"
DATA = ROOT / "Testing" / "Data" / "lung1_crop"
K = 12  # the corrected slice
FIRST, LAST = 4, 20  # GTV's slices
EDITOR = slicer.vtkMRMLSegmentEditorNode
SEGNODE = slicer.vtkMRMLSegmentationNode


@pytest.fixture(scope="module")
def ct_case():
    ct = sitk.ReadImage(str(DATA / "prior_ct.nrrd"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "prior_labels.nrrd")))
    tumour = labels[K] == 1
    gtv = np.zeros(labels.shape, dtype=bool)
    gtv[FIRST:LAST + 1] = tumour
    cut = tumour.copy()
    cut[:, :121] = False  # slice 12 misses the tumour's left part (columns < 121)
    gtv[K] = cut
    lung = np.zeros(labels.shape, dtype=bool)
    lung[:, 100:160, 100:160] = True
    region = np.zeros(labels.shape, dtype=bool)
    region[:, :, 116:] = True  # editable area of the masked variant: columns >= 116
    return ct, tumour, {"GTV": gtv, "Lung": lung, "Region": region}


def _segments(ct, masks):
    colours = {"GTV": (0.9, 0.2, 0.2), "Lung": (0.3, 0.6, 0.9), "Region": (0.4, 0.8, 0.4)}
    out = []
    for name, mask in masks.items():
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(ct)
        out.append(Segment(name, colours[name], image, name))
    return out


@pytest.fixture
def editor(monkeypatch, ct_case):
    """``(effect, scripted, scene, segmentation node, ct)``: the effect active on "GTV", source = the CT."""
    mrml_bridge.ensure_conversion_rules()  # the undo history copies segments (needs the converter factory)
    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    monkeypatch.setattr(slicer, "qSlicerSegmentEditorAbstractEffect", AbstractEffectEnums, raising=False)
    module = standins.load(EFFECT_FILE, "SegmentEditorEffect_write_path")
    ct, _, masks = ct_case
    volume = mrml_bridge.image_to_volume_node(ct, scene, "CT")
    segmentation = mrml_bridge.segments_to_segmentation_node(scene, _segments(ct, masks), ct, "contours",
                                                             reference_volume_node=volume)
    editor_node = scene.AddNode(EDITOR())
    scripted = ScriptedEffectOnLogic(scene, editor_node)
    editor_node.SetAndObserveSegmentationNode(segmentation)
    editor_node.SetAndObserveSourceVolumeNode(volume)
    editor_node.SetSelectedSegmentID("GTV")
    effect = module.SegmentEditorEffect(scripted)
    effect.setupOptionsFrame()
    effect.setMRMLDefaults()
    widgets = [EditorWidgetOnLogic(scripted, effect)]
    sys.modules["qt"].QApplication = standins.Anything(allWidgets=lambda: widgets)
    return effect, scripted, scene, segmentation, ct


def masks_of(segmentation, ct):
    return mrml_bridge.masks_from_segmentation_node(segmentation, ct)


def unchanged_except(before, after, name, slices):
    """True when segment ``name`` is voxel-identical outside ``slices``."""
    keep = np.ones(before[name].shape[0], dtype=bool)
    keep[list(slices)] = False
    return np.array_equal(before[name][keep], after[name][keep])


def tumour_click(tumour):
    """A voxel of the tumour's left part (missing from slice 12 of "GTV"): ``(j, i)``."""
    jj, ii = np.nonzero(tumour & (np.arange(tumour.shape[1])[None, :] < 118))
    n = len(jj) // 2
    return int(jj[n]), int(ii[n])


MASKING = {
    "everywhere": lambda node, seg: None,
    "inside segment": lambda node, seg: (node.SetMaskMode(SEGNODE.EditAllowedInsideSingleSegment),
                                         node.SetMaskSegmentID("Region")),
    "intensity range": lambda node, seg: (node.SetSourceVolumeIntensityMask(True),
                                          node.SetSourceVolumeIntensityMaskRange(-200.0, 400.0)),
}


@pytest.mark.parametrize("masking", sorted(MASKING))
def test_a_click_changes_only_the_clicked_slice(editor, ct_case, masking):
    effect, scripted, scene, segmentation, ct = editor
    _, tumour, _ = ct_case
    MASKING[masking](scripted.parameterSetNode(), segmentation)
    before = masks_of(segmentation, ct)
    j, i = tumour_click(tumour)
    result = effect.clickAt(K, j, i, positive=True)
    after = masks_of(segmentation, ct)
    for name in ("GTV", "Lung", "Region"):
        assert unchanged_except(before, after, name, [K]), f"'{name}' changed outside slice {K} ({masking})"
    assert result.changed and not np.array_equal(before["GTV"][K], after["GTV"][K])
    assert before["GTV"][K][before["GTV"][K]].all() and after["GTV"][K][before["GTV"][K]].all(), \
        "a positive click outside the contour only adds to it"
    if masking == "everywhere":
        assert after["GTV"][K][j, i]
    if masking == "inside segment":  # nothing changes outside the editable area
        outside = ~before["Region"][K]
        assert np.array_equal(before["GTV"][K][outside], after["GTV"][K][outside])
        assert after["GTV"][K][before["Region"][K]].sum() > before["GTV"][K][before["Region"][K]].sum()
    if masking == "intensity range":
        ct_k = sitk.GetArrayFromImage(ct)[K]
        grown = after["GTV"][K] & ~before["GTV"][K]
        assert grown.any() and ((ct_k[grown] >= -200) & (ct_k[grown] <= 400)).all()
    # overwrite "all segments" (the editor's default): "Lung" lost exactly the voxels the click added
    assert np.array_equal(after["Lung"][K], before["Lung"][K] & ~(after["GTV"][K] & ~before["GTV"][K]))
    assert np.array_equal(result.written, after["GTV"][K])


def test_one_click_is_one_undo_step_of_the_segment_editor(editor, ct_case):
    effect, scripted, scene, segmentation, ct = editor
    _, tumour, _ = ct_case
    before = masks_of(segmentation, ct)
    effect.clickAt(K, *tumour_click(tumour), positive=True)
    assert scripted.logic.CanUndo()
    scripted.logic.Undo()
    back = masks_of(segmentation, ct)
    for name in before:
        assert np.array_equal(back[name], before[name]), name
    assert not scripted.logic.CanUndo(), "one click saved more than one undo state"


def test_undo_last_click_takes_back_one_click_and_keeps_every_other_slice(editor, ct_case):
    effect, scripted, scene, segmentation, ct = editor
    _, tumour, _ = ct_case
    before = masks_of(segmentation, ct)
    effect.clickAt(K, *tumour_click(tumour), positive=True)
    one = masks_of(segmentation, ct)
    jj, ii = np.nonzero(one["GTV"][K])
    n = int(np.argmax(jj + ii))
    effect.clickAt(K, int(jj[n]), int(ii[n]), positive=False)  # carves the lower right part
    assert not np.array_equal(masks_of(segmentation, ct)["GTV"][K], one["GTV"][K])
    effect.onUndoClick()
    assert slicer.errors_shown == []
    back = masks_of(segmentation, ct)
    for name in before:
        assert unchanged_except(before, back, name, [K]), f"'{name}' changed outside slice {K}"
        assert np.array_equal(back[name], one[name]), f"'{name}' is not as it was after the first click"
    assert effect.actions().session.clicks("GTV", K) == (1, 0)
    effect.onUndoClick()
    back = masks_of(segmentation, ct)
    for name in before:
        assert np.array_equal(back[name], before[name]), f"'{name}' is not as it was before the clicks"
    assert not scripted.logic.CanUndo(), "'Undo last click' must step back in the editor's history, not add to it"


def test_repropagation_keeps_every_slice_beyond_the_neighbours(editor, ct_case):
    effect, scripted, scene, segmentation, ct = editor
    _, tumour, _ = ct_case
    # the parameters a propagation would have left on the node; one part keeps the model calls few
    mrml_bridge.store_report(segmentation, {"segments": [], "provenance": {"parameters": {
        "max_parts": 1, "negative_parts": 0}}}, ct)
    scripted.setParameter("Neighbours", 1)
    effect.clickAt(K, *tumour_click(tumour), positive=True)
    before = masks_of(segmentation, ct)
    effect.onRepropagate()
    assert slicer.errors_shown == []
    after = masks_of(segmentation, ct)
    for name in before:
        assert unchanged_except(before, after, name, [K - 1, K + 1]), f"'{name}' changed beyond the neighbours"
    assert after["GTV"][[K - 1, K + 1]].reshape(2, -1).any(axis=1).all(), "re-propagated slices came out empty"
    assert "Re-computed slices 11, 13" in effect.statusLabel.text
    scripted.logic.Undo()  # the re-propagation is one undo step
    assert np.array_equal(masks_of(segmentation, ct)["GTV"], before["GTV"])


def test_a_paint_stroke_between_two_clicks_survives_the_second_click(editor, ct_case):
    effect, scripted, scene, segmentation, ct = editor
    _, tumour, _ = ct_case
    effect.clickAt(K, *tumour_click(tumour), positive=True)
    # Paint (Add mode, through the same logic) a 5 x 5 blob on slice 12, away from the tumour
    modifier = scripted.defaultModifierLabelmap()
    from vtk.util import numpy_support

    ext = modifier.GetExtent()
    voxels = numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars()).reshape(
        ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    voxels[K, 60:65, 60:65] = 1
    modifier.Modified()
    scripted.saveStateForUndo()
    scripted.modifySelectedSegmentByLabelmap(modifier, slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd,
                                             [ext[0], ext[1], ext[2], ext[3], ext[4] + K, ext[4] + K])
    painted = masks_of(segmentation, ct)["GTV"][K]
    assert painted[60:65, 60:65].all()
    jj, ii = np.nonzero(painted[100:, :] & ~np.zeros_like(painted[100:, :]))
    result = effect.clickAt(K, int(jj.max()) + 100, int(ii.max()), positive=False)
    after = masks_of(segmentation, ct)["GTV"][K]
    assert after[60:65, 60:65].all(), "the second click replayed the first over the paint stroke"
    assert result.sync == "edited"


def test_ctrl_z_takes_back_one_click_and_the_session_follows(editor, ct_case):
    effect, scripted, scene, segmentation, ct = editor
    _, tumour, _ = ct_case
    effect.clickAt(K, *tumour_click(tumour), positive=True)
    one = masks_of(segmentation, ct)["GTV"][K]
    jj, ii = np.nonzero(one)
    n = int(np.argmax(jj + ii))
    corner = (int(jj[n]), int(ii[n]))  # the contour's lower right voxel
    effect.clickAt(K, *corner, positive=False)
    carved = one & ~masks_of(segmentation, ct)["GTV"][K]
    assert carved.any() and carved[corner]
    scripted.logic.Undo()  # Ctrl+Z in the Segment Editor
    assert np.array_equal(masks_of(segmentation, ct)["GTV"][K], one)
    top = (int(jj.min()), int(ii[np.argmin(jj)]))
    result = effect.clickAt(K, *top, positive=True)  # inside the contour: changes nothing by itself
    after = masks_of(segmentation, ct)["GTV"][K]
    assert after[carved].all(), "the undone negative click was replayed"
    assert result.sync == "undone"
    assert effect.actions().session.clicks("GTV", K) == (2, 0), "the undone negative click is still in the session"


# ------------------------------------------------------------------------------------------
# a proposal written into a segmentation the user already has (module panel)

MODULE_FILE = ROOT / "P2SAMSlicer" / "P2SAMSlicer.py"


@pytest.fixture
def panel_with_editor(monkeypatch, ct_case):
    """``(widget, editor, user's segmentation being edited, output segmentation, ct, volume)``: the module
    panel (stand-in Qt) and the Segment Editor on the real logic, editing another segmentation with one
    undo step of the user's."""
    from segment_editor_on_logic import SegmentEditorWidgetOnLogic

    mrml_bridge.ensure_conversion_rules()
    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    module = standins.load(MODULE_FILE, "P2SAMSlicer_write_path")
    widget = module.P2SAMSlicerWidget()
    widget.ui = standins.widget_ui()
    widget.logic = module.P2SAMSlicerLogic()
    ct, _, masks = ct_case
    volume = mrml_bridge.image_to_volume_node(ct, scene, "CT")
    users = mrml_bridge.segments_to_segmentation_node(scene, _segments(ct, {"Lung": masks["Lung"]}), ct, "being edited",
                                                      reference_volume_node=volume)
    output = mrml_bridge.segments_to_segmentation_node(scene, _segments(ct, {"Region": masks["Region"]}), ct, "mine",
                                                       reference_volume_node=volume)
    editor = SegmentEditorWidgetOnLogic(scene)
    import types

    module_widget = types.SimpleNamespace(editor=editor)  # the Segment Editor module's widget (its Python side)
    representation = types.SimpleNamespace(self=lambda: module_widget)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(segmenteditor=types.SimpleNamespace(
        widgetRepresentation=lambda: representation)), raising=False)
    editor.setSegmentationNode(users)
    editor.saveStateForUndo()
    users.GetSegmentation().AddEmptySegment("added by the user")
    assert editor.logic.CanUndo()
    return widget, editor, users, output, ct, volume


def _write_proposal(widget, output, ct, volume, ct_case):
    _, tumour, masks = ct_case
    proposal = _segments(ct, {"GTV": masks["GTV"]})
    widget.logic.createOutput(proposal, {"segments": []}, ct, volume, output, save_state=widget.undoCheckpoint(output))
    if hasattr(widget, "_proposalUndo"):
        widget._proposalUndo.written()
    assert sorted(mrml_bridge.segment_names(output).values()) == ["GTV", "Region"]


def test_a_proposal_into_another_segmentation_keeps_the_editors_undo_history(panel_with_editor, ct_case):
    widget, editor, users, output, ct, volume = panel_with_editor
    before = masks_of(output, ct)
    _write_proposal(widget, output, ct, volume, ct_case)
    assert editor.segmentationNode() is users, "the Segment Editor was switched to the output segmentation"
    assert editor.logic.CanUndo(), "the user's undo history was erased"
    editor.undo()
    assert users.GetSegmentation().GetSegment("added by the user") is None
    widget.onUndoProposal()
    after = masks_of(output, ct)
    assert sorted(after) == ["Region"] and np.array_equal(after["Region"], before["Region"])


def test_a_proposal_into_the_edited_segmentation_is_one_step_of_its_history(panel_with_editor, ct_case):
    widget, editor, users, output, ct, volume = panel_with_editor
    editor.setSegmentationNode(output)
    before = masks_of(output, ct)
    _write_proposal(widget, output, ct, volume, ct_case)
    assert editor.logic.CanUndo()
    output.GetSegmentation().GetSegment("Region").SetName("renamed after")  # a later change: no silent restore
    assert not widget._proposalUndo.can_undo()
    output.GetSegmentation().GetSegment("Region").SetName("Region")
    editor.undo()  # Ctrl+Z in the Segment Editor
    after = masks_of(output, ct)
    assert sorted(after) == ["Region"] and np.array_equal(after["Region"], before["Region"])
