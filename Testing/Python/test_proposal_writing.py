"""Writing a proposal into the user's own segmentation node (P2SAMSlicerLib.editing), on slicer-core's
real segmentation, Segment Editor and segmentation-history classes: other segments keep their voxels
unless the Segment Editor's overwrite setting says otherwise, the editable area and intensity range
apply, and the whole proposal is one undo step."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))

from P2SAMLogic.io.volume import PROPOSAL_STATUS, Segment  # noqa: E402
from P2SAMSlicerLib import editing, mrml_bridge  # noqa: E402
from P2SAMSlicerLib.logic import PropagationLogic  # noqa: E402

NODE = slicer.vtkMRMLSegmentationNode
EDITOR = slicer.vtkMRMLSegmentEditorNode


@pytest.fixture
def case():
    """A 30 x 24 x 6 volume (values = column index i), the user's segmentation with 'Lung' and 'Heart', and a
    proposal 'GTV' that overlaps 'Lung' in columns 8..11."""
    mrml_bridge.ensure_conversion_rules()  # what Slicer does at start-up (undo copies need the rules)
    scene = slicer.vtkMRMLScene()
    values = np.tile(np.arange(30, dtype=np.int16), (6, 24, 1))
    ref = sitk.GetImageFromArray(values)
    ref.SetSpacing((0.9, 0.9, 2.5))
    ref.SetOrigin((-10.0, 4.0, 20.0))
    volume = mrml_bridge.image_to_volume_node(ref, scene, "follow-up")

    def mask(box):
        arr = np.zeros((6, 24, 30), bool)
        arr[box] = True
        image = sitk.GetImageFromArray(arr.astype(np.uint8))
        image.CopyInformation(ref)
        return image

    user = mrml_bridge.segments_to_segmentation_node(
        scene, [Segment("Lung", (0.5, 0.7, 0.9), mask(np.s_[1:5, 4:20, 2:12]), "Lung"),
                Segment("Heart", (0.8, 0.3, 0.3), mask(np.s_[1:5, 4:20, 20:28]), "Heart")], ref, "my contours",
        reference_volume_node=volume)
    proposal = [Segment("GTV", (0.9, 0.2, 0.2), mask(np.s_[2:4, 8:14, 8:16]), "GTV",
                        {"P2SAM.Status": PROPOSAL_STATUS})]
    return scene, ref, volume, user, proposal


def arrays(node, ref):
    return {mrml_bridge.segment_names(node)[sid]: mrml_bridge.segment_mask(node, sid, ref)
            for sid in mrml_bridge.segment_ids(node)}


def test_default_never_changes_another_segment(case):
    scene, ref, volume, user, proposal = case
    before = arrays(user, ref)
    written = editing.write_proposal(user, proposal, ref)
    after = arrays(user, ref)
    assert np.array_equal(after["Lung"], before["Lung"]) and np.array_equal(after["Heart"], before["Heart"])
    assert np.array_equal(after["GTV"], proposal[0].array())  # overlap allowed
    gtv = user.GetSegmentation().GetSegment(written[0])
    assert mrml_bridge.segment_tag(gtv, "P2SAM.Status") == PROPOSAL_STATUS
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentStatus(gtv) == slicer.vtkSlicerSegmentationsModuleLogic.InProgress


def test_overwrite_all_takes_the_voxels_from_the_other_segments(case):
    scene, ref, volume, user, proposal = case
    before = arrays(user, ref)
    editing.write_proposal(user, proposal, ref, editing.EditorMasking(overwrite_mode=EDITOR.OverwriteAllSegments))
    after = arrays(user, ref)
    assert np.array_equal(after["GTV"], proposal[0].array())
    assert np.array_equal(after["Lung"], before["Lung"] & ~proposal[0].array())
    assert np.array_equal(after["Heart"], before["Heart"])


def test_editable_area_and_intensity_range_limit_the_proposal(case):
    scene, ref, volume, user, proposal = case
    before = arrays(user, ref)
    editing.write_proposal(user, proposal, ref, editing.EditorMasking(mask_mode=NODE.EditAllowedOutsideAllSegments))
    after = arrays(user, ref)
    assert np.array_equal(after["GTV"], proposal[0].array() & ~before["Lung"] & ~before["Heart"])
    assert np.array_equal(after["Lung"], before["Lung"])
    # an editable intensity range (the volume's value is the column index): columns 10..13 only
    source = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume)
    user.GetSegmentation().RemoveSegment(mrml_bridge.segment_ids(user)[-1])
    editing.write_proposal(user, proposal, ref, editing.EditorMasking(intensity_range=(10.0, 13.0)), source)
    columns = np.zeros_like(proposal[0].array())
    columns[:, :, 10:14] = True
    assert np.array_equal(arrays(user, ref)["GTV"], proposal[0].array() & columns)


def test_a_segment_of_the_same_name_is_replaced_inside_the_editable_area_only(case):
    scene, ref, volume, user, proposal = case
    old = np.zeros((6, 24, 30), bool)
    old[0:6, 0:4, 0:30] = True  # rows 0..3: partly inside Lung's rows? no: Lung starts at row 4
    old[3, 10, 5] = True  # one voxel inside Lung
    image = sitk.GetImageFromArray(old.astype(np.uint8))
    image.CopyInformation(ref)
    editing.write_proposal(user, [Segment("GTV", (1, 0, 0), image, "GTV")], ref)
    editing.write_proposal(user, proposal, ref, editing.EditorMasking(mask_mode=NODE.EditAllowedOutsideAllSegments))
    lung = arrays(user, ref)["Lung"]
    gtv = arrays(user, ref)["GTV"]
    assert len(mrml_bridge.segment_ids(user)) == 3  # replaced, not added twice
    assert np.array_equal(gtv, (proposal[0].array() & ~lung & ~arrays(user, ref)["Heart"]) | (old & lung))


def test_the_whole_proposal_is_one_undo_step(case):
    scene, ref, volume, user, proposal = case
    before = arrays(user, ref)
    history = slicer.vtkSegmentationHistory()
    history.SetSegmentation(user.GetSegmentation())
    two = proposal + [Segment("Node", (0, 0, 1), proposal[0].mask, "Node")]
    editing.write_proposal(user, two, ref, editing.EditorMasking(overwrite_mode=EDITOR.OverwriteAllSegments),
                           save_state=history.SaveState)
    assert history.GetNumberOfStates() == 1 and len(mrml_bridge.segment_ids(user)) == 4
    assert history.RestorePreviousState()
    restored = arrays(user, ref)
    assert sorted(restored) == ["Heart", "Lung"]
    for name in before:
        assert np.array_equal(restored[name], before[name]), name


def test_masking_settings_come_from_the_segment_editor_node(case):
    scene, ref, volume, user, proposal = case
    editor = slicer.vtkMRMLSegmentEditorNode()
    editor.SetSingletonTag(editing.SEGMENT_EDITOR_SINGLETON_TAG)
    scene.AddNode(editor)
    editor.SetOverwriteMode(EDITOR.OverwriteAllSegments)
    editor.SetMaskMode(NODE.EditAllowedInsideAllSegments)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(-5.0, 50.0)
    editor.SetAndObserveSegmentationNode(user)
    masking = editing.EditorMasking.from_scene(scene, user)
    assert (masking.overwrite_mode, masking.mask_mode, masking.intensity_range) == (
        EDITOR.OverwriteAllSegments, NODE.EditAllowedInsideAllSegments, (-5.0, 50.0))
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "another")
    assert editing.EditorMasking.from_scene(scene, other).mask_mode == NODE.EditAllowedEverywhere
    assert "overwrites all other segments" in masking.describe()


def test_module_output_into_an_existing_node_keeps_the_users_segments(case):
    """PropagationLogic.createOutput with a chosen output node (what Apply does) adds the proposal's segments
    and keeps every segment the node already held."""
    scene, ref, volume, user, proposal = case
    before = arrays(user, ref)
    report = {"status": PROPOSAL_STATUS, "segments": []}
    saved = []
    node = PropagationLogic(scene).createOutput(proposal, report, ref, volume, user, save_state=lambda: saved.append(1))
    after = arrays(node, ref)
    assert node is user and sorted(after) == ["GTV", "Heart", "Lung"] and saved == [1]
    assert np.array_equal(after["Lung"], before["Lung"]) and np.array_equal(after["Heart"], before["Heart"])
    assert np.array_equal(after["GTV"], proposal[0].array())
