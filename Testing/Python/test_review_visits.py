"""Reviewing the results of a treatment course: each visit's result on its own volume, "Go" and
"Review and correct" on the right visit, a stored report never used on another visit, no leaked
volume copies. On slicer-core's real scene, volume, sequence and segmentation nodes;
registration-only runs (``method="rigid"``, no model)."""
from __future__ import annotations

import sys
import types
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

from P2SAMLogic.io.volume import Segment  # noqa: E402
from P2SAMSlicerLib import correction, editing, mrml_bridge  # noqa: E402
from P2SAMSlicerLib.followups import followup_list, sequence_followups  # noqa: E402
from P2SAMSlicerLib.logic import PropagationLogic, flagged_rows  # noqa: E402

# The toy block phantom is too small and too uniform for the rigid registration, which the plausibility check
# (P2SAMLogic/propagation/regcheck.py) refuses: these tests are about nodes and visits, so they let it through.
RIGID = {"method": "rigid", "allow_poor_registration": True}


def ct_image(shift=0):
    arr = np.full((12, 40, 40), -1000, dtype=np.int16)
    arr[3:9, 10:30, 12:28] = 40
    arr[3:9, 14:18, 16:20] = 300
    image = sitk.GetImageFromArray(np.roll(arr, shift, axis=2))
    image.SetSpacing((1.0, 1.0, 3.0))
    return image


@pytest.fixture
def course():
    """A planning CT with "Block", and a Sequence of two weekly CBCTs on the same grid."""
    scene = slicer.vtkMRMLScene()
    prior_image = ct_image()
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(prior_image) > 0).astype(np.uint8))
    mask.CopyInformation(prior_image)
    prior = mrml_bridge.image_to_volume_node(prior_image, scene, "planning CT")
    segmentation = mrml_bridge.segments_to_segmentation_node(
        scene, [Segment("Block", (0.1, 0.8, 0.2), mask, "Block")], prior_image, "contours", reference_volume_node=prior)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "weekly CBCT")
    for week, shift in (("1", 2), ("2", 3)):  # the sequence keeps copies; the volumes it was made of go
        volume = mrml_bridge.image_to_volume_node(ct_image(shift), scene, f"recorded {week}")
        sequence.SetDataNodeAtValue(volume, week)
        scene.RemoveNode(volume)
    outcome = PropagationLogic(scene).processSeries(prior, segmentation, sequence_followups(sequence),
                                                    parameters=RIGID)
    return scene, outcome, sequence


@pytest.fixture
def two_weeks():
    """The planning CT's "Block" propagated onto two weekly CBCT volume nodes on the same grid."""
    scene = slicer.vtkMRMLScene()
    prior_image = ct_image()
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(prior_image) > 0).astype(np.uint8))
    mask.CopyInformation(prior_image)
    prior = mrml_bridge.image_to_volume_node(prior_image, scene, "planning CT")
    segmentation = mrml_bridge.segments_to_segmentation_node(
        scene, [Segment("Block", (0.1, 0.8, 0.2), mask, "Block")], prior_image, "contours", reference_volume_node=prior)
    weeks = [mrml_bridge.image_to_volume_node(ct_image(shift), scene, f"CBCT week {n}") for n, shift in ((1, 2), (2, 3))]
    outcome = PropagationLogic(scene).processSeries(prior, segmentation, followup_list(weeks[0], [weeks[1]]),
                                                    parameters=RIGID)
    return scene, outcome, weeks


def source_of(volume):
    """The Segment Editor's source image of a volume (a ``vtkOrientedImageData`` copy owned by Python)."""
    oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume)
    oriented.UnRegister(None)
    return oriented


def outputs_of(outcome, followups_volumes):
    return [(node, mrml_bridge.stored_report(node), volume) for node, volume in zip(outcome.output_nodes,
                                                                                    followups_volumes)]


def item_volumes(scene, outcome):
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    return [node.GetNodeReference(role) for node in outcome.output_nodes]


def test_each_sequence_item_gets_its_own_volume_and_result(course):
    scene, outcome, sequence = course
    volumes = item_volumes(scene, outcome)
    assert all(v is not None and scene.IsNodePresent(v) for v in volumes), "a Sequence result has no reference volume"
    assert [v.GetName() for v in volumes] == ["weekly CBCT [1]", "weekly CBCT [2]"]
    for volume, shift in zip(volumes, (2, 3)):
        assert np.array_equal(sitk.GetArrayFromImage(mrml_bridge.volume_node_to_image(volume)),
                              sitk.GetArrayFromImage(ct_image(shift)))
    outputs = outputs_of(outcome, volumes)
    from P2SAMSlicerLib.logic import review_target

    for index, (node, _report, volume) in enumerate(outputs):
        assert review_target(outputs, index) == (node, volume)
    assert all(row["volume"] in volumes for row in flagged_rows(PropagationLogic(scene), outputs))


@pytest.fixture
def panel(monkeypatch, course):
    """The module panel (stand-in Qt) after a run on the sequence; records what the views and editor are told."""
    scene, outcome, sequence = course
    standins.install(monkeypatch, scene)
    module = standins.load(ROOT / "P2SAMSlicer" / "P2SAMSlicer.py", "P2SAMSlicer_review_under_test")
    widget = module.P2SAMSlicerWidget()
    widget.ui = standins.widget_ui()
    widget.logic = module.P2SAMSlicerLogic()
    shown, jumps, opened = [], [], []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: shown.append(kw.get("background")))
    monkeypatch.setattr(slicer.util, "selectModule", lambda name: opened.append(("module", name)), raising=False)
    editor = types.SimpleNamespace(setSegmentationNode=lambda n: opened.append(("segmentation", n)),
                                   setSourceVolumeNode=lambda n: opened.append(("source", n)),
                                   setActiveEffectByName=lambda n: opened.append(("effect", n)))
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        markups=types.SimpleNamespace(logic=lambda: types.SimpleNamespace(
            JumpSlicesToLocation=lambda r, a, s, centred: jumps.append((r, a, s)))),
        segmenteditor=types.SimpleNamespace(widgetRepresentation=lambda: types.SimpleNamespace(
            self=lambda: types.SimpleNamespace(editor=editor)))), raising=False)
    return widget, scene, outcome, shown, jumps, opened


def test_go_shows_the_visit_and_review_opens_its_result(panel, course):
    widget, scene, outcome, shown, jumps, opened = panel
    volumes = item_volumes(scene, outcome)
    outputs = outputs_of(outcome, volumes)
    widget.showResults(outputs)
    assert widget.ui.reviewResultComboBox.items == ["weekly CBCT [1]: weekly CBCT [1] P2SAM",
                                                    "weekly CBCT [2]: weekly CBCT [2] P2SAM"]
    widget.jumpTo((1.0, 2.0, 3.0), volumes[1])  # "Go" on a flagged slice of week 2
    assert shown[-1] is volumes[1] and jumps[-1] == (1.0, 2.0, 3.0)
    assert widget.ui.reviewResultComboBox.currentIndex == 1
    widget.onOpenSegmentEditor()
    assert ("segmentation", outcome.output_nodes[1]) in opened and ("source", volumes[1]) in opened
    opened.clear()
    widget.ui.reviewResultComboBox.setCurrentIndex(0)
    widget.onOpenSegmentEditor()
    assert ("segmentation", outcome.output_nodes[0]) in opened and ("source", volumes[0]) in opened


def test_a_stored_report_is_not_used_on_another_visit_with_the_same_grid(two_weeks):
    scene, outcome, (week1, week2) = two_weeks
    node = outcome.output_nodes[0]  # week 1's result, with week 1's report
    assert correction.session_for(node, source_of(week1)).uses_report
    session = correction.session_for(node, source_of(week2))
    assert not session.uses_report, "week 1's prompts were used on week 2 (same grid, other voxels)"


def test_the_followup_copy_made_for_intensity_masking_is_released(monkeypatch, two_weeks):
    """Writing into an existing segmentation with an editable intensity range copies the follow-up
    (``CreateOrientedImageDataFromVolumeNode``): that copy must be freed when the write is done."""
    scene, outcome, (week1, _) = two_weeks
    kept = []
    real = slicer.vtkSlicerSegmentationsModuleLogic
    create = real.CreateOrientedImageDataFromVolumeNode

    class Spy:
        """The real class, with the factory recording what it returns (a reference is kept to read its count)."""

        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def CreateOrientedImageDataFromVolumeNode(node, *args):
            kept.append(create(node, *args))
            return kept[-1]

    monkeypatch.setattr(slicer, "vtkSlicerSegmentationsModuleLogic", Spy())
    masking = editing.EditorMasking(intensity_range=(0.0, 500.0))
    node = outcome.output_nodes[0]
    proposal = [Segment("Block 2", (0.5, 0.5, 0.5), mrml_bridge.volume_node_to_image(week1) > 0, "Block 2")]
    PropagationLogic(scene).createOutput(proposal, {"segments": []}, mrml_bridge.volume_node_to_image(week1), week1,
                                         node, masking=masking)
    assert len(kept) == 1
    assert kept[0].GetReferenceCount() == 1, "the follow-up copy is still referenced (leaked) after the write"
