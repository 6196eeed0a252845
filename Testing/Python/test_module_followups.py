"""Several follow-ups from the Slicer module (P2SAMSlicerLib.followups, PropagationLogic.processSeries, the
background job, the panel), on slicer-core's real scene, volume, segmentation and sequence nodes.
Registration-only runs (``method="rigid"``): these tests are about which nodes come out, not accuracy."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))

from P2SAMLogic.errors import CancelledError  # noqa: E402
from P2SAMLogic.io.volume import Segment, same_geometry  # noqa: E402
from P2SAMSlicerLib import mrml_bridge  # noqa: E402
from P2SAMSlicerLib.background import BackgroundPropagation  # noqa: E402
from P2SAMSlicerLib.followups import NodeSelection, followup_list, sequence_followups  # noqa: E402
from P2SAMSlicerLib.logic import PropagationLogic, summary_rows  # noqa: E402
from P2SAMSlicerLib.mrml_bridge import BridgeError  # noqa: E402

# The toy block phantom below is too small and too uniform for the rigid registration (it lands
# several millimetres off, and the plausibility check of P2SAMLogic/propagation/regcheck.py refuses it):
# these tests are about nodes, so they let a poor registration through.
RIGID = {"method": "rigid", "allow_poor_registration": True}


def proposals(scene):
    """Segmentations other than the registered priors P²SAM adds for comparison."""
    from P2SAMSlicerLib.review import count_segmentations

    return count_segmentations(scene)


def ct_image(shift=0):
    arr = np.full((12, 40, 40), -1000, dtype=np.int16)
    arr[3:9, 10:30, 12:28] = 40
    arr[3:9, 14:18, 16:20] = 300
    image = sitk.GetImageFromArray(np.roll(arr, shift, axis=2))
    image.SetSpacing((1.0, 1.0, 3.0))
    return image


@pytest.fixture
def scene_case():
    scene = slicer.vtkMRMLScene()
    prior_image = ct_image()
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(prior_image) > 0).astype(np.uint8))
    mask.CopyInformation(prior_image)
    prior = mrml_bridge.image_to_volume_node(prior_image, scene, "planning CT")
    segmentation = mrml_bridge.segments_to_segmentation_node(
        scene, [Segment("Block", (0.1, 0.8, 0.2), mask, "Block")], prior_image, "contours", reference_volume_node=prior)
    weeks = [mrml_bridge.image_to_volume_node(ct_image(s), scene, f"CBCT week {n}") for n, s in ((1, 2), (2, 3))]
    return scene, prior, segmentation, weeks


def test_followup_list_order_duplicates_and_the_prior(scene_case):
    scene, prior, segmentation, weeks = scene_case
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    selection = NodeSelection(parameters)
    selection.store([weeks[1], prior, weeks[0]])
    assert [n.GetName() for n in selection.nodes(scene)] == ["planning CT", "CBCT week 1", "CBCT week 2"]
    followups = followup_list(weeks[0], selection.nodes(scene), None, prior)
    assert [f.name for f in followups] == ["CBCT week 1", "CBCT week 2"]  # the prior and the duplicate dropped
    assert followups[0].volume_node is weeks[0] and same_geometry(followups[1].image, ct_image(3))
    with pytest.raises(BridgeError, match="select the follow-up volume"):
        followup_list(None, [], None, prior)


def test_every_volume_of_a_sequence_is_a_followup(scene_case):
    scene, prior, segmentation, weeks = scene_case
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "weekly CBCT")
    for week, node in zip(("1", "2"), weeks):
        sequence.SetDataNodeAtValue(node, week)
    followups = sequence_followups(sequence)
    assert [f.name for f in followups] == ["weekly CBCT [1]", "weekly CBCT [2]"]
    assert all(f.volume_node is None for f in followups)
    assert np.array_equal(sitk.GetArrayFromImage(followups[1].image), sitk.GetArrayFromImage(ct_image(3)))
    empty = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "empty")
    with pytest.raises(BridgeError, match="'empty' holds no scalar volume"):
        sequence_followups(empty)


def test_process_series_makes_one_node_per_followup(scene_case):
    scene, prior, segmentation, weeks = scene_case
    logic = PropagationLogic(scene)
    before = proposals(scene)
    outcome = logic.processSeries(prior, segmentation, followup_list(weeks[0], [weeks[1]]), parameters=RIGID)
    assert proposals(scene) == before + 2
    for node, week in zip(outcome.output_nodes, weeks):
        assert node.GetName() == f"{week.GetName()} P2SAM"
        assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is week
        assert mrml_bridge.stored_report(node)["segments"][0]["name"] == "Block"
    assert [f["name"] for f in outcome.report["followups"]] == ["CBCT week 1", "CBCT week 2"]
    rows = summary_rows([(n, mrml_bridge.stored_report(n), w) for n, w in zip(outcome.output_nodes, weeks)])
    assert [r[:2] for r in rows] == [["CBCT week 1", "Block"], ["CBCT week 2", "Block"]]
    # chained, from a sequence (no volume nodes: the outputs take the images' geometry)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "weekly CBCT")
    for week, node in zip(("1", "2"), weeks):
        sequence.SetDataNodeAtValue(node, week)
    chained = logic.processSeries(prior, segmentation, sequence_followups(sequence), parameters=RIGID, chain=True)
    assert [n.GetName() for n in chained.output_nodes] == ["weekly CBCT [1] P2SAM", "weekly CBCT [2] P2SAM"]
    assert chained.report["followups"][1]["propagated_from"] == "weekly CBCT [1]"
    geometry = chained.output_nodes[1].GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == slicer.vtkSegmentationConverter.SerializeImageGeometry(
        mrml_bridge.empty_oriented_image_like(ct_image(3)))


def test_a_cancelled_series_adds_nothing(scene_case):
    scene, prior, segmentation, weeks = scene_case
    count = scene.GetNumberOfNodes()
    with pytest.raises(CancelledError):
        PropagationLogic(scene).processSeries(prior, segmentation, followup_list(weeks[0], [weeks[1]]),
                                              parameters=RIGID, cancel=lambda: True)
    assert scene.GetNumberOfNodes() == count
    with pytest.raises(BridgeError, match="is the prior volume"):
        PropagationLogic(scene).processSeries(prior, segmentation, followup_list(weeks[0], [prior]) +
                                              followup_list(prior), parameters=RIGID)


def test_background_job_runs_every_followup(scene_case):
    scene, prior, segmentation, weeks = scene_case
    inputs = PropagationLogic(scene).prepareSeries(prior, segmentation, followup_list(weeks[0], [weeks[1]]))
    job = BackgroundPropagation(inputs.prior_image, inputs.prior_segments, [ct_image(2), ct_image(3)],
                                names=["w1", "w2"], chain=True, python=sys.executable, config=RIGID)
    try:
        job.start()
        assert job.wait(timeout=300) == 0, job.log_tail()
        outcome = job.results()
        assert [f["name"] for f in outcome["followups"]] == ["w1", "w2"]
        assert outcome["report"]["chain"] is True and len(outcome["report"]["followups"]) == 2
        for f, shift in zip(outcome["followups"], (2, 3)):
            assert same_geometry(f["segments"][0].mask, ct_image(shift)) and f["segments"][0].array().any()
    finally:
        job.cleanup()


def test_panel_propagates_onto_the_ticked_followups(monkeypatch, scene_case):
    """Apply (blocking) with two "More follow-ups" ticked: three new segmentations, one report table."""
    import slicer_standins as standins

    scene, prior, segmentation, weeks = scene_case
    third = mrml_bridge.image_to_volume_node(ct_image(1), scene, "CBCT week 0")
    standins.install(monkeypatch, scene)
    module = standins.load(ROOT / "P2SAMSlicer" / "P2SAMSlicer.py", "P2SAMSlicer_followups_under_test")
    widget = module.P2SAMSlicerWidget()
    widget.ui = standins.widget_ui()
    widget.logic = module.P2SAMSlicerLogic()
    settings = standins.ParameterNode(scene)
    widget.setParameterNode(settings)
    settings.priorVolume, settings.priorSegmentation, settings.followupVolume = prior, segmentation, third
    NodeSelection(settings.parameterNode).store(weeks)
    shown = []
    widget.showResults = lambda outputs, report=None: shown.append((outputs, report))
    before = proposals(scene)
    followups = widget.followups()
    assert [f.name for f in followups] == ["CBCT week 0", "CBCT week 1", "CBCT week 2"]
    widget._runBlocking(settings, widget.checkedSegmentIds(), {"model": "litemedsam", "modelType": None,
                                                               "device": "cpu"}, RIGID, followups)
    assert proposals(scene) == before + 3
    (outputs, report), = shown
    assert [o[0].GetName() for o in outputs] == ["CBCT week 0 P2SAM", "CBCT week 1 P2SAM", "CBCT week 2 P2SAM"]
    assert [o[2] for o in outputs] == [third, *weeks] and len(report["followups"]) == 3


def test_the_report_table_says_why_a_change_is_not_measurable():
    """A structure cut by a field of view: the panel's change cell names the reason, not a bare n/a."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "week3")
    report = {"segments": [
        {"name": "GTV", "prior_volume_ml": 4.0, "followup_volume_ml": 2.0, "change_percent": None,
         "change_not_measurable": "cut by the follow-up's field of view (slices 0-2 hold it at the edge)",
         "slices_processed": 5, "slices_flagged": 1},
        {"name": "Cord", "prior_volume_ml": 4.0, "followup_volume_ml": 5.0, "change_percent": 25.0,
         "change_not_measurable": None, "slices_processed": 5, "slices_flagged": 0}]}
    rows = summary_rows([(node, report, None)])
    assert [r[4] for r in rows] == ["n/a (cut by FOV)", "+25.0"]
    assert rows[0][:2] == ["week3", "GTV"]
