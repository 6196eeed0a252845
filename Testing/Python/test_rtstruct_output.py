"""RTSTRUCT output (``--output X.dcm --output-format rtstruct``): read back with pydicom and rasterised
independently (scikit-image polygons, even-odd), it gives back the written labelmap, rings included."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from P2SAMLogic.cli import main
from P2SAMLogic.io import read_segmentation, read_volume, write_segmentation
from P2SAMLogic.io.dicom_objects import pixel_outlines
from P2SAMLogic.io.volume import PROPOSAL_STATUS, Segment

pydicom = pytest.importorskip("pydicom")
draw = pytest.importorskip("skimage.draw")

PROVENANCE = {"model": {"name": "LiteMedSAM", "sha256": "ab" * 32}, "version": "0.1.0", "method": "p2sam",
              "status": PROPOSAL_STATUS, "date": "2026-01-01T00:00:00"}


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def oblique_ct(size=(48, 40, 10)):
    """A small CT-like volume (air, a body of soft tissue, a bone block) on an oblique, anisotropic grid (LPS)."""
    arr = np.full(size[::-1], -1000, dtype=np.int16)
    yy, xx = np.mgrid[:size[1], :size[0]]
    body = ((yy - 20) / 18.0) ** 2 + ((xx - 24) / 22.0) ** 2 < 1
    arr[:, body] = 40
    arr[:, 28:34, 10:16] = 500
    image = sitk.GetImageFromArray(arr)
    a = np.radians(25.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    image.SetDirection((rot @ tilt).ravel().tolist())
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-20.0, 15.5, -40.0))
    return image


def structures(image):
    """A ring (disc with a hole) on slices 2..6 and a blob touching the image border on slices 4..8."""
    nz, ny, nx = sitk.GetArrayViewFromImage(image).shape
    yy, xx = np.mgrid[:ny, :nx]
    r = np.hypot(yy - 20, xx - 22)
    ring = np.zeros((nz, ny, nx), bool)
    ring[2:7] = (r < 12) & (r >= 6)
    blob = np.zeros_like(ring)
    blob[4:9, 25:40, 35:48] = True
    blob[6, 30, 40] = False  # a one-pixel hole
    out = []
    for name, color, arr in (("Ring", (0.1, 0.8, 0.3), ring), ("Node", (0.9, 0.2, 0.2), blob)):
        mask = sitk.GetImageFromArray(arr.astype(np.uint8))
        mask.CopyInformation(image)
        out.append(Segment(name, color, mask, name, {"P2SAM.Status": PROPOSAL_STATUS}))
    return out


@pytest.fixture(scope="module")
def dicom_followup(tmp_path_factory):
    from dicom_tools import write_ct_series

    image = oblique_ct()
    folder = tmp_path_factory.mktemp("fu") / "ct"
    write_ct_series(image, folder)
    follow, source = read_volume(str(folder))
    return follow, source


def rasterise(ds, reference):
    """``{ROI name: bool [k, j, i]}`` from the RTSTRUCT's contours on ``reference``: every contour's points
    (LPS mm) to continuous index, filled with scikit-image on its slice, contours of a slice XOR-ed."""
    nz, ny, nx = sitk.GetArrayViewFromImage(reference).shape
    m = np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing())
    inv = np.linalg.inv(m)
    origin = np.array(reference.GetOrigin())
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for rc in ds.ROIContourSequence:
        arr = np.zeros((nz, ny, nx), bool)
        for c in getattr(rc, "ContourSequence", []):
            pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
            ijk = (pts - origin) @ inv.T
            k = int(round(float(ijk[:, 2].mean())))
            assert np.abs(ijk[:, 2] - k).max() < 1e-3, "a contour is not on one slice"
            arr[k] ^= draw.polygon2mask((ny, nx), ijk[:, [1, 0]])
        out[names[int(rc.ReferencedROINumber)]] = arr
    return out


def test_rtstruct_reads_back_as_the_written_labelmap(dicom_followup, tmp_path):
    follow, source = dicom_followup
    segments = structures(follow)
    out = tmp_path / "proposal.dcm"
    write_segmentation(out, segments, follow, PROVENANCE, source, kind="rtstruct")
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    masks = rasterise(ds, follow)
    for s in segments:
        assert dice(masks[s.name], s.array()) >= 0.95, s.name
        assert np.array_equal(masks[s.name], s.array()), s.name  # pixel outlines: exact
    ring = masks["Ring"][4]
    assert ring.any() and not ring[20, 22], "the ring's hole was filled"
    assert not masks["Node"][6, 30, 40], "the one-pixel hole was filled"
    # the engine's own reader agrees
    back = {s.name: s.array() for s in read_segmentation(str(out), follow, source)}
    for s in segments:
        assert np.array_equal(back[s.name], s.array())


def test_rtstruct_keeps_names_colours_frame_of_reference_and_provenance(dicom_followup, tmp_path):
    follow, source = dicom_followup
    out = tmp_path / "proposal.dcm"
    write_segmentation(out, structures(follow), follow, PROVENANCE, source, kind="rtstruct")
    ds = pydicom.dcmread(str(out))
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.dicom_files]
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Ring", "Node"]
    colours = [[int(v) for v in rc.ROIDisplayColor] for rc in ds.ROIContourSequence]
    assert colours == [[int(round(255 * c)) for c in s.color] for s in structures(follow)]
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    assert all(r.ReferencedFrameOfReferenceUID == slices[0].FrameOfReferenceUID for r in ds.StructureSetROISequence)
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == slices[0].SeriesInstanceUID
    sop = {s.SOPInstanceUID for s in slices}
    referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
                  for rc in ds.ROIContourSequence for c in rc.ContourSequence}
    assert referenced <= sop and len(referenced) == 7  # slices 2..8
    assert ds.PatientID == slices[0].PatientID and ds.StudyInstanceUID == slices[0].StudyInstanceUID
    assert PROPOSAL_STATUS in ds.SeriesDescription and ds.ApprovalStatus == "UNAPPROVED"
    assert "ab" * 32 in ds.StructureSetDescription and "LiteMedSAM" in ds.StructureSetDescription
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" for r in ds.StructureSetROISequence)


def test_pixel_outlines_of_random_masks_fill_back_exactly():
    from P2SAMLogic.io.dicom_objects import _fill_even_odd

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((17, 23)) < rng.uniform(0.2, 0.8)
        outlines = pixel_outlines(mask)
        assert np.array_equal(_fill_even_odd(outlines, mask.shape), mask)


def test_cli_writes_rtstruct_for_a_dicom_followup_only(lung_crop, simulated_followup, tmp_path, capsys):
    from dicom_tools import write_ct_series

    from conftest import LUNG_CROP

    fu, truth, _ = simulated_followup
    fu_dir = tmp_path / "fu"
    write_ct_series(fu, fu_dir)
    args = ["propagate", "--quiet", "--prior-image", LUNG_CROP / "prior_ct.nrrd", "--prior-segmentation",
            LUNG_CROP / "prior.seg.nrrd", "--segments", "GTV", "--method", "rigid"]
    code = main([str(a) for a in args + ["--followup", fu_dir, "--output", tmp_path / "rs.dcm",
                                         "--output-format", "rtstruct"]])
    assert code == 0, capsys.readouterr().err
    ds = pydicom.dcmread(str(tmp_path / "rs.dcm"))
    assert ds.Modality == "RTSTRUCT" and [r.ROIName for r in ds.StructureSetROISequence] == ["GTV"]
    follow, source = read_volume(str(fu_dir))
    (gtv,) = read_segmentation(str(tmp_path / "rs.dcm"), follow, source)
    assert dice(gtv.array(), sitk.GetArrayFromImage(truth["GTV"])) >= 0.5  # registration only: a rough proposal
    nrrd = tmp_path / "fu.nrrd"
    sitk.WriteImage(fu, str(nrrd))
    code = main([str(a) for a in args + ["--followup", nrrd, "--output", tmp_path / "rs2.dcm",
                                         "--output-format", "rtstruct"]])
    assert code == 2 and "RTSTRUCT output needs the follow-up as a DICOM series" in capsys.readouterr().err
    code = main([str(a) for a in args + ["--followup", fu_dir, "--output", tmp_path / "rs3.seg.nrrd",
                                         "--output-format", "rtstruct"]])
    assert code == 2 and "extension .dcm" in capsys.readouterr().err
    assert not (tmp_path / "rs2.dcm").exists() and not (tmp_path / "rs3.seg.nrrd").exists()
