"""The Slicer module's scene glue (P2SAMSlicer/P2SAMSlicerLib) on slicer-core's real MRML classes.

slicer-core (PyPI) ships Slicer's MRML, segmentation and volume libraries without Qt: the
volume and segmentation nodes, storage nodes and vtkSegmentationCore used here are the ones
Slicer runs. The end-to-end test runs the module's blocking ``process()`` with the real
embedded LiteMedSAM on the bundled lung CT crop and a SIMULATED follow-up of it (GTV only,
5 mm slices, no slice margin, part counts 1-2: a small case), and compares with the
``p2sam propagate`` command's output for the same inputs.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))

from P2SAMLogic.errors import CancelledError  # noqa: E402
from P2SAMLogic.io.volume import PROPOSAL_STATUS, Segment, same_geometry  # noqa: E402
from P2SAMSlicerLib import correction, mrml_bridge, runner  # noqa: E402
from P2SAMSlicerLib.background import BackgroundPropagation  # noqa: E402
from P2SAMSlicerLib.logic import PropagationLogic  # noqa: E402
from P2SAMSlicerLib.mrml_bridge import BridgeError  # noqa: E402

DATA = ROOT / "Testing" / "Data" / "lung1_crop"
#: the e2e case: GTV only, measured 0.92 Dice against the simulation's truth (2 CPU cores)
E2E_PARAMETERS = {"slice_margin_mm": 0.0, "max_parts": 2}
E2E_DICE_FLOOR = 0.8
LOGIC = slicer.vtkSlicerSegmentationsModuleLogic


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def lung():
    """``(prior CT int16, {"GTV": mask, "Bone": mask})`` of the bundled crop."""
    ct = sitk.ReadImage(str(DATA / "prior_ct.nrrd"))
    labels = sitk.ReadImage(str(DATA / "prior_labels.nrrd"))
    return ct, {"GTV": sitk.Cast(labels == 1, sitk.sitkUInt8), "Bone": sitk.Cast(labels == 2, sitk.sitkUInt8)}


@pytest.fixture(scope="module")
def followup_case(lung):
    """A SIMULATED follow-up (rigid motion, deformation, GTV shrunk 25 %, 0.7 x 0.7 x 5 mm) and its truth."""
    sys.path.insert(0, str(ROOT / "Testing" / "Tools"))
    from simulate_followup import simulate_followup

    ct, masks = lung
    followup, truth, _ = simulate_followup(sitk.Cast(ct, sitk.sitkFloat32), masks, seed=0, spacing=(0.7, 0.7, 5.0))
    return followup, truth


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def prior_segments(masks, names=("GTV", "Bone")):
    colours = {"GTV": (0.9, 0.2, 0.2), "Bone": (0.95, 0.85, 0.55)}
    return [Segment(n, colours[n], masks[n], segment_id=n) for n in names]


def oblique_image(seed: int = 0) -> sitk.Image:
    """A small int16 volume with an oblique, left-handed-free direction, anisotropic spacing, odd origin."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16))
    a, b = np.radians(20.0), np.radians(-35.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    image.SetDirection((rz @ rx).ravel().tolist())
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((-12.5, 40.25, 7.0))
    return image


# ------------------------------------------------------------------------------------------
# volumes


def test_volume_node_round_trip_keeps_voxels_and_full_geometry(scene):
    image = oblique_image()
    node = mrml_bridge.image_to_volume_node(image, scene, "oblique")
    back = mrml_bridge.volume_node_to_image(node)
    assert same_geometry(back, image, tolerance_mm=1e-6)
    assert np.array_equal(arr(back), arr(image))
    # voxel (i, j, k) lands at the same physical point: RAS = (-L, -P, S)
    m = mrml_bridge.node_ijk_to_ras(node)
    for ijk in [(0, 0, 0), (10, 8, 6), (3, 5, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = m @ np.array([*ijk, 1.0])
        assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_volume_read_by_slicers_own_reader_matches_simpleitk(scene, tmp_path):
    """The RAS/LPS conversion agrees with Slicer's NRRD reader (vtkMRMLVolumeArchetypeStorageNode)."""
    image = oblique_image(1)
    path = str(tmp_path / "oblique.nrrd")
    sitk.WriteImage(image, path)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read by Slicer")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    assert storage.ReadData(node)
    back = mrml_bridge.volume_node_to_image(node)
    assert same_geometry(back, image, tolerance_mm=1e-5)
    assert np.array_equal(arr(back), arr(image))


def test_non_scalar_and_transformed_volumes_are_refused(scene):
    node = mrml_bridge.image_to_volume_node(oblique_image(), scene, "CT")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(BridgeError, match="harden the transform"):
        mrml_bridge.volume_node_to_image(node, "follow-up volume")
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    data = vtk.vtkImageData()
    data.SetDimensions(4, 4, 2)
    data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(data)
    with pytest.raises(BridgeError, match="scalar"):
        mrml_bridge.volume_node_to_image(rgb, "prior volume")
    with pytest.raises(BridgeError, match="no prior volume selected"):
        mrml_bridge.volume_node_to_image(None, "prior volume")


# ------------------------------------------------------------------------------------------
# segmentation node -> segments


def test_segments_in_another_geometry_match_itk_resampling(scene, lung):
    ct, masks = lung
    volume = mrml_bridge.image_to_volume_node(ct, scene, "CT")
    node = mrml_bridge.segments_to_segmentation_node(scene, prior_segments(masks), ct, "contours",
                                                     reference_volume_node=volume)
    coarse = sitk.Image([120, 110, 30], sitk.sitkUInt8)
    coarse.SetSpacing((1.1, 1.2, 4.0))
    coarse.SetOrigin(tuple(np.array(ct.GetOrigin()) + [8.3, 11.7, 3.0]))
    segments = mrml_bridge.segments_from_segmentation_node(node, coarse, min_inside=0.0)
    assert [s.name for s in segments] == ["GTV", "Bone"]
    for s in segments:
        expected = arr(sitk.Resample(masks[s.name], coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        assert same_geometry(s.mask, coarse)
        assert dice(s.array(), expected) > 0.95, s.name


def test_labelmap_import_with_shared_layer_gives_each_segment_exactly(scene, lung):
    ct, masks = lung
    labels = sitk.GetArrayFromImage(masks["GTV"]) + 2 * sitk.GetArrayFromImage(masks["Bone"])
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "imported")
    assert LOGIC.ImportLabelmapToSegmentationNode(mrml_bridge.oriented_image_from_mask(labels, ct), node, "")
    ids = mrml_bridge.segment_ids(node)
    segments = mrml_bridge.segments_from_segmentation_node(node, ct)
    assert len(segments) == 2 and [s.segment_id for s in segments] == ids
    assert np.array_equal(segments[0].array(), labels == 1)
    assert np.array_equal(segments[1].array(), labels == 2)


def test_closed_surface_segmentation_is_converted_without_touching_the_node(scene, lung):
    """E.g. contours loaded from an RTSTRUCT: only a closed-surface representation."""
    ct, _ = lung
    mrml_bridge.ensure_conversion_rules()  # what Slicer's Segmentations module does at start-up
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint([128.0, 128.0, 12.0])) * [-1, -1, 1]  # RAS
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre)
    sphere.SetRadius(12.0)
    sphere.SetThetaResolution(48)
    sphere.SetPhiResolution(48)
    sphere.Update()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "from RTSTRUCT")
    segment = slicer.vtkSegment()
    segment.SetName("Sphere")
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName(), sphere.GetOutput())
    node.GetSegmentation().SetSourceRepresentationName(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
    node.GetSegmentation().AddSegment(segment, "Sphere")
    (s,) = mrml_bridge.segments_from_segmentation_node(node, ct)
    expected_ml = 4.0 / 3.0 * math.pi * 12.0 ** 3 / 1000.0
    assert abs(s.volume_ml() - expected_ml) / expected_ml < 0.2
    assert not node.GetSegmentation().ContainsRepresentation(mrml_bridge.BINARY_LABELMAP), "the prior was modified"


def test_unusable_segments_are_named(scene, lung):
    ct, masks = lung
    empty = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ct)
    node = mrml_bridge.segments_to_segmentation_node(
        scene, prior_segments(masks, ("GTV",)) + [Segment("Empty", (0, 1, 0), empty, "Empty")], ct, "contours")
    with pytest.raises(BridgeError, match="'Empty' of 'contours' is empty"):
        mrml_bridge.segments_from_segmentation_node(node, ct)
    with pytest.raises(BridgeError, match="no segment of 'contours' is selected"):
        mrml_bridge.segments_from_segmentation_node(node, ct, [])
    with pytest.raises(BridgeError, match="no segment with ID Liver"):
        mrml_bridge.segments_from_segmentation_node(node, ct, ["Liver"])
    elsewhere = sitk.Image([40, 40, 10], sitk.sitkInt16)
    elsewhere.SetOrigin((500.0, 500.0, 500.0))
    with pytest.raises(BridgeError, match="'GTV' of 'contours' is not on the other CT: only 0%"):
        mrml_bridge.segments_from_segmentation_node(node, elsewhere, ["GTV"], reference_name="the other CT")


# ------------------------------------------------------------------------------------------
# segments -> segmentation node, storage, subject hierarchy


def test_output_node_names_colours_tags_status_and_seg_nrrd_round_trip(scene, lung, tmp_path):
    ct, masks = lung
    volume = mrml_bridge.image_to_volume_node(ct, scene, "follow-up")
    segments = prior_segments(masks)
    segments[0].tags = {"P2SAM.Status": PROPOSAL_STATUS, "P2SAM.Model": "LiteMedSAM", "P2SAM.FlaggedSlices": "3,4"}
    node = mrml_bridge.segments_to_segmentation_node(scene, segments, ct, "proposal", reference_volume_node=volume)
    seg = node.GetSegmentation()
    assert mrml_bridge.segment_ids(node) == ["GTV", "Bone"]
    gtv = seg.GetSegment("GTV")
    assert gtv.GetName() == "GTV" and np.allclose(gtv.GetColor(), (0.9, 0.2, 0.2))
    assert mrml_bridge.segment_tag(gtv, "P2SAM.Status") == PROPOSAL_STATUS
    assert mrml_bridge.segment_tag(gtv, "P2SAM.FlaggedSlices") == "3,4"
    assert LOGIC.GetSegmentStatus(gtv) == LOGIC.InProgress, "a proposal is 'in progress' in Slicer's status column"
    assert LOGIC.GetSegmentStatus(seg.GetSegment("Bone")) == LOGIC.NotStarted
    # reference geometry = the volume's
    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    geometry = seg.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(mrml_bridge.empty_oriented_image_like(ct))
    assert geometry == expected

    path = str(tmp_path / "proposal.seg.nrrd")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(path)
    assert storage.WriteData(node)
    again = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "read back")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(path)
    assert reader.ReadData(again)
    assert mrml_bridge.segment_names(again) == {"GTV": "GTV", "Bone": "Bone"}
    gtv2 = again.GetSegmentation().GetSegment("GTV")
    assert np.allclose(gtv2.GetColor(), (0.9, 0.2, 0.2), atol=1e-3)
    assert mrml_bridge.segment_tag(gtv2, "P2SAM.Status") == PROPOSAL_STATUS
    assert LOGIC.GetSegmentStatus(gtv2) == LOGIC.InProgress
    for name, mask in mrml_bridge.masks_from_segmentation_node(again, ct).items():
        assert np.array_equal(mask, arr(masks[name]).astype(bool)), name
    # other readers of the file: slicerio and the engine's own reader
    slicerio = pytest.importorskip("slicerio")
    info = slicerio.read_segmentation(path, skip_voxels=True)
    assert [s["name"] for s in info["segments"]] == ["GTV", "Bone"]
    from P2SAMLogic.io import read_segmentation

    read = {s.name: s for s in read_segmentation(path, ct)}
    assert np.array_equal(read["Bone"].array(), arr(masks["Bone"]).astype(bool))


def test_output_goes_into_the_followups_study(scene, lung):
    ct, masks = lung
    volume = mrml_bridge.image_to_volume_node(ct, scene, "follow-up")
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Follow-up study")
    item = sh.GetItemByDataNode(volume) or sh.CreateItem(study, volume)
    sh.SetItemParent(item, study)
    node = mrml_bridge.segments_to_segmentation_node(scene, prior_segments(masks, ("GTV",)), ct, "proposal",
                                                     reference_volume_node=volume)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_a_chosen_output_node_keeps_its_name_and_its_other_segments(scene, lung):
    ct, masks = lung
    volume = mrml_bridge.image_to_volume_node(ct, scene, "follow-up")
    chosen = mrml_bridge.segments_to_segmentation_node(scene, prior_segments(masks, ("GTV",)), ct, "my review",
                                                       reference_volume_node=volume)
    report = {"status": PROPOSAL_STATUS, "segments": []}
    node = PropagationLogic(scene).createOutput(prior_segments(masks, ("Bone",)), report, ct, volume, chosen)
    assert node is chosen and node.GetName() == "my review"
    assert sorted(mrml_bridge.segment_names(node).values()) == ["Bone", "GTV"]
    kept = mrml_bridge.masks_from_segmentation_node(node, ct)
    assert np.array_equal(kept["GTV"], arr(masks["GTV"]).astype(bool))
    assert np.array_equal(kept["Bone"], arr(masks["Bone"]).astype(bool))
    assert mrml_bridge.stored_report(node) == report
    scene.RemoveNode(volume)
    with pytest.raises(BridgeError, match="removed from the scene"):
        PropagationLogic(scene).createOutput(prior_segments(masks, ("Bone",)), report, ct, volume, None)


def test_flagged_slice_points_are_on_the_followup_slice(lung):
    ct, _ = lung
    report = {"segments": [{"name": "GTV", "slices": [
        {"index": 5, "flagged": True, "reason": "low QA", "qa": 0.4, "window": [10, 20, 50, 60]},
        {"index": 6, "flagged": False}]}]}
    (entry, ras), = list(mrml_bridge.iter_flagged_points(report, mrml_bridge.geometry_of(ct)))
    assert entry["index"] == 5
    ijk = ct.TransformPhysicalPointToContinuousIndex(tuple(np.array(ras) * [-1, -1, 1]))
    assert np.allclose(ijk, (29.5, 39.5, 5.0), atol=1e-6)
    assert mrml_bridge.slice_prompts(report, "GTV", 5) == ([10, 20, 50, 60], None)
    assert mrml_bridge.slice_prompts(report, "Bone", 5) == (None, None)


# ------------------------------------------------------------------------------------------
# the module's logic


@pytest.fixture
def nodes(scene, lung, followup_case):
    ct, masks = lung
    followup, _ = followup_case
    prior = mrml_bridge.image_to_volume_node(ct, scene, "prior CT")
    segmentation = mrml_bridge.segments_to_segmentation_node(scene, prior_segments(masks), ct, "prior contours",
                                                             reference_volume_node=prior)
    follow = mrml_bridge.image_to_volume_node(followup, scene, "follow-up CT")
    return prior, segmentation, follow


def test_logic_refuses_bad_inputs_and_leaves_the_scene_unchanged(scene, nodes, lung):
    prior, segmentation, follow = nodes
    logic = PropagationLogic(scene)
    copy = mrml_bridge.image_to_volume_node(lung[0], scene, "same scan, loaded twice")
    count = scene.GetNumberOfNodes()
    cases = [
        (dict(segmentIds=[]), "no segment of 'prior contours' is selected"),
        (dict(followupVolume=prior), "is the prior volume"),
        (dict(followupVolume=copy), "is identical to the prior volume"),
        (dict(outputSegmentation=segmentation), "the prior is never modified"),
        (dict(followupVolume=None), "select the follow-up volume"),
        (dict(priorSegmentation=None), "select the prior segmentation"),
    ]
    for overrides, message in cases:
        kwargs = dict(priorVolume=prior, priorSegmentation=segmentation, followupVolume=follow)
        kwargs.update(overrides)
        with pytest.raises(BridgeError, match=message):
            logic.process(**kwargs)
    assert scene.GetNumberOfNodes() == count


def test_cancelled_run_adds_nothing(scene, nodes):
    prior, segmentation, follow = nodes
    count = scene.GetNumberOfNodes()
    with pytest.raises(CancelledError):
        PropagationLogic(scene).process(prior, segmentation, follow, device="cpu", cancel=lambda: True)
    assert scene.GetNumberOfNodes() == count


@pytest.fixture(scope="module")
def shared_model(litemedsam):
    """The session's LiteMedSAM behind the module's model cache (as if loaded with device 'cpu')."""
    runner._MODELS[("litemedsam", None, "cpu")] = litemedsam
    yield litemedsam
    runner._MODELS.pop(("litemedsam", None, "cpu"), None)


@pytest.fixture(scope="module")
def e2e(shared_model, lung, followup_case, tmp_path_factory):
    """``process()`` on the small case, and the CLI on the same inputs (files)."""
    ct, masks = lung
    followup, truth = followup_case
    scene = slicer.vtkMRMLScene()
    prior = mrml_bridge.image_to_volume_node(ct, scene, "prior CT")
    segmentation = mrml_bridge.segments_to_segmentation_node(scene, prior_segments(masks), ct, "prior contours",
                                                             reference_volume_node=prior)
    follow = mrml_bridge.image_to_volume_node(followup, scene, "follow-up CT")
    calls = []
    prior_mtime = segmentation.GetSegmentation().GetMTime()
    outcome = PropagationLogic(scene).process(prior, segmentation, follow, segmentIds=["GTV"], device="cpu",
                                              parameters=E2E_PARAMETERS, progress=lambda f, m: calls.append((f, m)))
    assert segmentation.GetSegmentation().GetMTime() == prior_mtime, "the prior segmentation was modified"
    # the same inputs through the command line, from files, in the CLI's own way: it loads its own
    # model (its own embedding cache: nothing computed by process() is reused)
    folder = tmp_path_factory.mktemp("cli")
    sitk.WriteImage(ct, str(folder / "prior.nrrd"))
    sitk.WriteImage(followup, str(folder / "followup.nrrd"))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(folder / "prior.seg.nrrd"))
    assert storage.WriteData(segmentation)
    import P2SAMLogic.models
    from P2SAMLogic import cli

    loaded = []
    original = P2SAMLogic.models.load_model

    def load_model(*args, **kwargs):
        loaded.append(original(*args, **kwargs))
        return loaded[-1]

    P2SAMLogic.models.load_model = load_model  # counts loads; the model itself is loaded for real
    try:
        status = cli.main(["propagate", "--prior-image", str(folder / "prior.nrrd"), "--prior-segmentation",
                           str(folder / "prior.seg.nrrd"), "--followup", str(folder / "followup.nrrd"),
                           "--output", str(folder / "out.seg.nrrd"), "--segments", "GTV", "--device", "cpu",
                           "--slice-margin", "0", "--max-parts", "2", "--quiet"])
    finally:
        P2SAMLogic.models.load_model = original
    assert status == 0
    assert len(loaded) == 1 and loaded[0] is not shared_model and loaded[0].encode_calls > 0, \
        "the command line must run its own model, not reuse the module's embeddings"
    return scene, follow, outcome, calls, folder


def test_process_output_is_a_new_node_on_the_followup_geometry(e2e, followup_case):
    scene, follow, outcome, calls, _ = e2e
    followup, truth = followup_case
    node = outcome.output_node
    assert node.IsA("vtkMRMLSegmentationNode") and node.GetName() == "follow-up CT P2SAM"
    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is follow
    geometry = node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == slicer.vtkSegmentationConverter.SerializeImageGeometry(
        mrml_bridge.empty_oriented_image_like(followup))
    assert mrml_bridge.segment_names(node) == {"GTV": "GTV"}
    gtv = node.GetSegmentation().GetSegment("GTV")
    assert np.allclose(gtv.GetColor(), (0.9, 0.2, 0.2))
    assert mrml_bridge.segment_tag(gtv, "P2SAM.Status") == PROPOSAL_STATUS
    assert mrml_bridge.segment_tag(gtv, "P2SAM.Model") == "LiteMedSAM"
    assert LOGIC.GetSegmentStatus(gtv) == LOGIC.InProgress
    mask = mrml_bridge.masks_from_segmentation_node(node, followup)["GTV"]
    assert dice(mask, arr(truth["GTV"])) >= E2E_DICE_FLOOR
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    report = mrml_bridge.stored_report(node)
    assert report["status"] == PROPOSAL_STATUS and report["segments"][0]["name"] == "GTV"
    assert mrml_bridge.stored_geometry(node) == mrml_bridge.geometry_of(followup)
    assert json.loads(node.GetAttribute(mrml_bridge.MODEL_ATTRIBUTE))["model"] == "litemedsam"


def test_process_matches_the_command_line(e2e, followup_case):
    """Slicer and ``p2sam propagate`` run the same pipeline: the CLI's .seg.nrrd, read by Slicer, agrees."""
    scene, follow, outcome, _, folder = e2e
    followup, _ = followup_case
    cli_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CLI output")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(folder / "out.seg.nrrd"))
    assert storage.ReadData(cli_node)
    ours = mrml_bridge.masks_from_segmentation_node(outcome.output_node, followup)["GTV"]
    theirs = mrml_bridge.masks_from_segmentation_node(cli_node, followup)["GTV"]
    assert ours.any() and dice(ours, theirs) >= 0.98


def test_process_output_survives_a_seg_nrrd_round_trip(e2e, followup_case, tmp_path):
    scene, follow, outcome, _, _ = e2e
    followup, _ = followup_case
    path = str(tmp_path / "proposal.seg.nrrd")
    writer = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    writer.SetFileName(path)
    assert writer.WriteData(outcome.output_node)
    again = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(path)
    assert reader.ReadData(again)
    before = mrml_bridge.masks_from_segmentation_node(outcome.output_node, followup)["GTV"]
    after = mrml_bridge.masks_from_segmentation_node(again, followup)["GTV"]
    assert np.array_equal(before, after)
    assert mrml_bridge.segment_tag(again.GetSegmentation().GetSegment("GTV"), "P2SAM.Status") == PROPOSAL_STATUS


def test_correction_session_uses_the_report_and_a_click_keeps_the_slice(e2e, followup_case):
    """The Segment Editor effect's logic on the output node: P²SAM's window/box for the slice, one click."""
    scene, follow, outcome, _, _ = e2e
    followup, truth = followup_case
    node = outcome.output_node
    source = LOGIC.CreateOrientedImageDataFromVolumeNode(follow)
    session = correction.session_for(node, source)
    assert session.uses_report
    assert session.intensity == (-910.0, 590.0)
    mask3d = correction.segment_mask_on(node, "GTV", source)
    truth_arr = arr(truth["GTV"]).astype(bool)
    k = int(np.argmax(truth_arr.reshape(truth_arr.shape[0], -1).sum(1)))
    jj, ii = np.nonzero(truth_arr[k])
    new = session.click("GTV", k, float(np.median(ii)), float(np.median(jj)), True, mask3d[k])
    window, box = mrml_bridge.slice_prompts(session.report, "GTV", k)
    assert np.allclose(session.corrector("GTV", k).window, window)
    assert dice(new, truth_arr[k]) >= max(0.6, dice(mask3d[k], truth_arr[k]) - 0.05)
    assert session.clicks("GTV", k) == (1, 0)
    session.commit("GTV", k, new)
    assert session.sync("GTV", k, new) == "same"
    elsewhere = np.zeros_like(new)
    elsewhere[:3, :3] = True  # the slice as another effect left it: the clicks are not replayed over it
    assert session.sync("GTV", k, elsewhere) == "edited" and session.clicks("GTV", k) == (0, 0)


# ------------------------------------------------------------------------------------------
# background process


def _rigid_job(lung, followup_case, **kwargs):
    ct, masks = lung
    followup, _ = followup_case
    return BackgroundPropagation(ct, prior_segments(masks), followup, python=sys.executable,
                                 config={"method": "rigid"}, **kwargs)


def test_background_process_reports_progress_and_returns_the_engines_result(lung, followup_case):
    from P2SAMLogic.propagation.pipeline import PropagationConfig, propagate

    job = _rigid_job(lung, followup_case)
    try:
        job.start()
        assert job.wait(timeout=300) == 0, job.log_tail()
        lines = job.poll()
        assert lines and lines[-1] == (1.0, "done")
        assert job.error() is None
        segments, report = job.result()
        ct, masks = lung
        followup, _ = followup_case
        expected = propagate(ct, prior_segments(masks), followup, config=PropagationConfig(method="rigid"))
        assert [s.name for s in segments] == ["GTV", "Bone"]
        for got, want in zip(segments, expected.segments):
            assert same_geometry(got.mask, followup)
            assert np.array_equal(got.array(), want.array())
            assert got.tags["P2SAM.Status"] == PROPOSAL_STATUS
        assert report["segments"][0]["name"] == "GTV"
    finally:
        job.cleanup()
    assert not os.path.exists(job.folder)


def test_background_process_cancel_leaves_no_result(lung, followup_case):
    ct, masks = lung
    followup, _ = followup_case
    job = BackgroundPropagation(ct, prior_segments(masks), followup, python=sys.executable, device="cpu")
    try:
        job.cancel()  # before it even starts: the engine stops at its first check
        job.start()
        assert job.wait(timeout=300) == runner.EXIT_CANCELLED, job.log_tail()
        assert job.error()["type"] == "CancelledError"
        with pytest.raises(RuntimeError):
            job.result()
    finally:
        job.cleanup()


def test_runner_reports_bad_input(lung, followup_case):
    """The job program itself (in-process here): bad parameters -> exit status 2 and error.json."""
    job = _rigid_job(lung, followup_case)
    path = os.path.join(job.folder, "job.json")
    with open(path, encoding="utf-8") as handle:
        spec = json.load(handle)
    spec["config"] = {"max_parts": 0}
    runner.write_json_atomic(path, spec)
    try:
        assert runner.run_job(job.folder) == runner.EXIT_INPUT
        assert "max_parts" in runner.read_error(job.folder)["message"]
        assert not os.path.exists(os.path.join(job.folder, "result.json"))
    finally:
        job.cleanup()


def test_correct_a_slice_then_repropagate_from_it(e2e, followup_case):
    """The effect's "Use this slice as reference and re-propagate" on the module's output: the corrected
    slice (here: the true contour) is P²SAM's reference for its neighbours."""
    scene, follow, outcome, _, _ = e2e
    followup, truth = followup_case
    source = LOGIC.CreateOrientedImageDataFromVolumeNode(follow)
    session = correction.session_for(outcome.output_node, source)
    truth_arr = arr(truth["GTV"]).astype(bool)
    present = np.flatnonzero(truth_arr.reshape(truth_arr.shape[0], -1).any(axis=1))
    k = int(present[len(present) // 2])
    masks = session.repropagate(k, truth_arr[k], neighbours=1, spacing_xy=correction.pixel_spacing(session.ijk_to_ras))
    assert sorted(masks) == [k - 1, k + 1]
    for j, mask in masks.items():
        if truth_arr[j].sum() > 20:
            assert dice(mask, truth_arr[j]) >= 0.5, j
