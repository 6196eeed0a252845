"""3D input/output: volumes, DICOM series, Slicer/NIfTI/DICOM segmentations (small synthetic data)."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from P2SAMLogic import io as io3d
from P2SAMLogic.errors import InputError, OutputError
from P2SAMLogic.io.volume import Segment, VolumeSource, mask_image_like, same_geometry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Tools"))
import dicom_tools  # noqa: E402

SIZE = (40, 48, 12)  # i, j, k


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


AXIAL = np.eye(3)
OBLIQUE = _rot(0, 0.3) @ _rot(2, 0.2)  # right-handed, oblique
RAS_LIKE = np.diag([-1.0, -1.0, 1.0])  # flipped i and j (right-handed)
FLIPPED_K = np.diag([1.0, 1.0, -1.0])  # left-handed: slice axis against the DICOM normal


def make_image(direction=AXIAL, spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0), seed=0) -> sitk.Image:
    """A CT-like float32 volume (HU integers -1000..1000) with a bright sphere."""
    rng = np.random.RandomState(seed)
    kk, jj, ii = np.mgrid[: SIZE[2], : SIZE[1], : SIZE[0]]
    arr = np.full(kk.shape, -1000.0) + rng.randint(0, 50, kk.shape)
    arr[((ii - 20) ** 2 + (jj - 24) ** 2 + ((kk - 6) * 3) ** 2) < 150] = 300
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection([float(v) for v in np.asarray(direction).flatten()])
    return img


def masks():
    """Three [k, j, i] bool masks: a sphere, an overlapping box, and a ring with a hole."""
    kk, jj, ii = np.mgrid[: SIZE[2], : SIZE[1], : SIZE[0]]
    sphere = ((ii - 15) ** 2 + (jj - 20) ** 2 + ((kk - 6) * 3) ** 2) < 100
    box = (ii > 12) & (ii < 30) & (jj > 15) & (jj < 35) & (kk > 3) & (kk < 9)
    r2 = (ii - 28) ** 2 + (jj - 30) ** 2
    ring = (r2 < 81) & (r2 >= 16) & (kk > 2) & (kk < 10)
    return {"Sphere": sphere, "Box": box, "Ring": ring}


def make_segments(ref: sitk.Image, tags=None):
    colors = {"Sphere": (1.0, 0.0, 0.0), "Box": (0.0, 1.0, 0.0), "Ring": (0.2, 0.4, 1.0)}
    return [Segment(n, colors[n], mask_image_like(a, ref), segment_id=n.lower(), tags=dict(tags or {}))
            for n, a in masks().items()]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol=1e-3):
    assert tuple(a.GetSize()) == tuple(b.GetSize())
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


@pytest.fixture(scope="module")
def ct_oblique(tmp_path_factory):
    """An oblique CT series on disk: (folder, image written, uids)."""
    folder = tmp_path_factory.mktemp("ct_oblique")
    img = make_image(OBLIQUE)
    uids = dicom_tools.write_ct_series(img, folder)
    return folder, img, uids


# ------------------------------------------------------------------ volumes

@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".nii", ".mha", ".mhd"])
def test_read_volume_file_formats(tmp_path, ext):
    img = make_image(RAS_LIKE if ext.startswith(".nii") else OBLIQUE)
    path = tmp_path / f"vol{ext}"
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16), str(path))
    vol, src = io3d.read_volume(path)
    assert vol.GetPixelID() == sitk.sitkFloat32
    assert_same_geometry(vol, img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol), sitk.GetArrayFromImage(img))
    assert src.kind == "file" and src.modality == "CT" and src.path == str(path)


def test_read_volume_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        io3d.read_volume(tmp_path / "nope.nrrd")
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: garbage\n\nxxxx")
    with pytest.raises(InputError) as e:
        io3d.read_volume(bad)
    assert str(e.value).startswith(str(bad))
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(20, 30, sitk.sitkInt16), str(flat))
    with pytest.raises(InputError, match="is a 2D image; a volume is needed"):
        io3d.read_volume(flat)
    one = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.Image(20, 30, 1, sitk.sitkInt16), str(one))
    with pytest.raises(InputError, match="is a 2D image"):
        io3d.read_volume(one)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM image series"):
        io3d.read_volume(empty)


@pytest.mark.parametrize("direction", [AXIAL, OBLIQUE, RAS_LIKE], ids=["axial", "oblique", "flipped-ij"])
def test_dicom_series_round_trip(tmp_path, direction):
    img = make_image(direction)
    uids = dicom_tools.write_ct_series(img, tmp_path / "ct", description="round trip")
    vol, src = io3d.read_volume(tmp_path / "ct", role="prior image")
    assert_same_geometry(vol, img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol), sitk.GetArrayFromImage(img))
    assert src.kind == "dicom" and src.modality == "CT"
    assert src.series_uid == uids["series_uid"] and src.study_uid == uids["study_uid"]
    assert src.frame_of_reference_uid == uids["frame_of_reference_uid"]
    assert src.dicom_files == uids["files"]  # sorted along the slice axis
    # one file of the series: the whole series is read
    vol2, _ = io3d.read_volume(uids["files"][5])
    assert same_geometry(vol2, vol)


def test_dicom_left_handed_volume_is_read_along_the_slice_normal(tmp_path):
    """DICOM slices are ordered along cross(row, column): a flipped k axis comes back reversed,
    at the same physical places with the same values."""
    img = make_image(OBLIQUE @ FLIPPED_K)
    dicom_tools.write_ct_series(img, tmp_path / "ct")
    vol, src = io3d.read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol)[::-1], sitk.GetArrayFromImage(img))
    for idx in [(0, 0, 0), (39, 0, 11), (5, 40, 3)]:
        back = (idx[0], idx[1], SIZE[2] - 1 - idx[2])
        np.testing.assert_allclose(vol.TransformIndexToPhysicalPoint(back), img.TransformIndexToPhysicalPoint(idx),
                                   atol=1e-3)
    np.testing.assert_allclose(np.linalg.det(np.array(vol.GetDirection()).reshape(3, 3)), 1.0, atol=1e-6)


def test_dicom_series_selection(tmp_path):
    folder = tmp_path / "two"
    a = dicom_tools.write_ct_series(make_image(), folder / "a", description="venous")
    b = dicom_tools.write_ct_series(make_image(seed=1), folder / "b", description="arterial", series_number=2)
    seg = [Segment("S", (1, 0, 0), mask_image_like(masks()["Sphere"], make_image()))]
    dicom_tools.write_rtstruct(seg, folder / "a", folder / "rt.dcm")  # ignored as an image series
    listed = io3d.list_dicom_series(folder)
    assert [s["series_uid"] for s in listed] == [a["series_uid"], b["series_uid"]]
    assert listed[0]["files"] == SIZE[2] and listed[0]["modality"] == "CT" and listed[1]["description"] == "arterial"
    assert listed[0]["study_uid"] == a["study_uid"]
    with pytest.raises(InputError) as e:
        io3d.read_volume(folder)
    msg = str(e.value)
    assert msg.startswith(str(folder)) and "--series-uid" in msg
    assert a["series_uid"] in msg and b["series_uid"] in msg and "arterial" in msg and "12 file" in msg
    vol, src = io3d.read_volume(folder, series_uid=b["series_uid"])
    assert src.series_uid == b["series_uid"] and vol.GetSize() == SIZE
    with pytest.raises(InputError) as e:
        io3d.read_volume(folder, series_uid="1.2.3.4")
    assert "1.2.3.4" in str(e.value) and a["series_uid"] in str(e.value)


def test_corrupt_dicom_series(tmp_path):
    img = make_image()
    # a truncated slice file
    t = dicom_tools.write_ct_series(img, tmp_path / "trunc")
    data = Path(t["files"][4]).read_bytes()
    Path(t["files"][4]).write_bytes(data[: len(data) - 500])
    with pytest.raises(InputError) as e:
        io3d.read_volume(tmp_path / "trunc")
    assert str(e.value).startswith(str(tmp_path / "trunc")) and "slice_0004.dcm" in str(e.value)
    assert "truncated" in str(e.value)
    # a file cut inside its header
    h = dicom_tools.write_ct_series(img, tmp_path / "header")
    Path(h["files"][2]).write_bytes(Path(h["files"][2]).read_bytes()[:200])
    with pytest.raises(InputError, match="slice_0002.dcm"):
        io3d.read_volume(tmp_path / "header")
    # a missing middle slice
    m = dicom_tools.write_ct_series(img, tmp_path / "gap")
    os.remove(m["files"][6])
    with pytest.raises(InputError, match="missing slice") as e:
        io3d.read_volume(tmp_path / "gap")
    assert "slice_0005.dcm" in str(e.value) and "slice_0007.dcm" in str(e.value)
    # inconsistent rows/columns
    r = dicom_tools.write_ct_series(img, tmp_path / "rows")
    small = make_image()[:, :40, :]
    odd = dicom_tools.write_ct_series(small, tmp_path / "tmp", series_uid=r["series_uid"],
                                      study_uid=r["study_uid"], frame_of_reference_uid=r["frame_of_reference_uid"])
    os.replace(odd["files"][3], r["files"][3])
    with pytest.raises(InputError, match="rows/columns"):
        io3d.read_volume(tmp_path / "rows")
    # a single slice is a 2D image
    s = dicom_tools.write_ct_series(img[:, :, :1], tmp_path / "single")
    with pytest.raises(InputError, match="2D image"):
        io3d.read_volume(tmp_path / "single")
    assert s["files"]


# ------------------------------------------------------------------ .seg.nrrd

def _slicer_read(path):
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return slicer, node


def _lps_matrix(img: sitk.Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    return m


@pytest.mark.parametrize("direction", [OBLIQUE, RAS_LIKE @ FLIPPED_K], ids=["oblique", "flipped"])
def test_seg_nrrd_write_loads_in_slicerio_and_slicer(tmp_path, direction):
    import vtk
    from vtk.util import numpy_support

    ref = make_image(direction)
    tags = {"P2SAM.Status": "unreviewed proposal", "P2SAM.Date": "2024-05-01T10:20:30+00:00",
            "P2SAM.Parameters": '{"a":1}'}
    segs = make_segments(ref, tags)
    out = tmp_path / "result.seg.nrrd"
    prov = {"status": "unreviewed proposal", "model": {"name": "LiteMedSAM", "sha256": "ab" * 32}}
    assert io3d.write_segmentation(out, segs, ref, prov) == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["result.seg.nrrd"]
    # header: provenance and conversion parameters
    head = out.read_bytes().split(b"\n\n", 1)[0].decode("utf-8")
    line = [ln for ln in head.splitlines() if ln.startswith("P2SAM_Provenance:=")][0]
    assert json.loads(line.split(":=", 1)[1]) == prov
    # slicerio
    slicerio = pytest.importorskip("slicerio")
    s = slicerio.read_segmentation(str(out))
    assert [x["name"] for x in s["segments"]] == ["Sphere", "Box", "Ring"]
    assert [tuple(x["color"]) for x in s["segments"]] == [seg.color for seg in segs]
    np.testing.assert_allclose(s["ijkToLPS"], _lps_matrix(ref), atol=1e-6)
    for x, seg in zip(s["segments"], segs):
        vox = s["voxels"][x["layer"]] if s["voxels"].ndim == 4 else s["voxels"]
        np.testing.assert_array_equal((vox == x["labelValue"]).transpose(2, 1, 0), seg.array())
    # slicer-core: names, colours, tags, geometry = reference
    slicer, node = _slicer_read(out)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _lps_matrix(ref)
    for n, seg in enumerate(segs):
        sg = segmentation.GetNthSegment(n)
        assert segmentation.GetNthSegmentID(n) == seg.segment_id
        assert sg.GetName() == seg.name
        np.testing.assert_allclose(sg.GetColor(), seg.color, atol=1e-6)
        for k, v in tags.items():
            value = vtk.reference("")
            assert sg.GetTag(k, value) and str(value) == v
        rep = sg.GetRepresentation("Binary labelmap")
        m = vtk.vtkMatrix4x4()
        rep.GetImageToWorldMatrix(m)
        np.testing.assert_allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)], ras, atol=1e-5)
        ext = rep.GetExtent()
        assert ext == (0, SIZE[0] - 1, 0, SIZE[1] - 1, 0, SIZE[2] - 1)
        arr = numpy_support.vtk_to_numpy(rep.GetPointData().GetScalars()).reshape(SIZE[2], SIZE[1], SIZE[0])
        np.testing.assert_array_equal(arr == sg.GetLabelValue(), seg.array())
    # overlapping segments (the box overlaps both others) are in different layers
    layers = {x["layer"] for x in s["segments"]}
    assert len(layers) >= 2 and segmentation.GetNumberOfLayers() == len(layers)
    geom = segmentation.GetConversionParameter("Reference image geometry")
    assert geom == io3d.reference_geometry_string(ref)
    # and our reader gives the same segments back
    back = io3d.read_segmentation(out, ref)
    assert [b.name for b in back] == ["Sphere", "Box", "Ring"]
    for b, seg in zip(back, segs):
        assert same_geometry(b.mask, ref) and b.color == seg.color and b.segment_id == seg.segment_id
        np.testing.assert_array_equal(b.array(), seg.array())
        assert b.tags == tags


def test_seg_nrrd_single_layer_loads_in_slicer(tmp_path):
    """Non-overlapping segments share one 3D labelmap layer."""
    from vtk.util import numpy_support

    ref = make_image(OBLIQUE)
    kk, jj, ii = np.mgrid[: SIZE[2], : SIZE[1], : SIZE[0]]
    segs = [Segment("Sphere", (1, 0, 0), mask_image_like(masks()["Sphere"], ref)),
            Segment("Corner", (0, 0, 1), mask_image_like((ii > 32) & (jj > 38), ref))]
    out = tmp_path / "one.seg.nrrd"
    io3d.write_segmentation(out, segs, ref, {"status": "unreviewed proposal"})
    assert b"\ndimension: 3\n" in out.read_bytes()[:400]
    _, node = _slicer_read(out)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 1 and segmentation.GetNumberOfSegments() == 2
    for n, seg in enumerate(segs):
        sg = segmentation.GetNthSegment(n)
        assert sg.GetName() == seg.name
        rep = sg.GetRepresentation("Binary labelmap")
        arr = numpy_support.vtk_to_numpy(rep.GetPointData().GetScalars()).reshape(SIZE[2], SIZE[1], SIZE[0])
        np.testing.assert_array_equal(arr == sg.GetLabelValue(), seg.array())
    back = io3d.read_segmentation(out, ref)
    np.testing.assert_array_equal(back[1].array(), segs[1].array())


def test_seg_nrrd_written_by_slicer_is_read_onto_the_reference(tmp_path):
    """slicer-core writes a cropped 4D seg.nrrd in RAS-derived LPS geometry; we resample it to a reference."""
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    expected = {}
    # slicer image: RAS identity axes (LPS -x, -y), first voxel at LPS (-15, -18, 3);
    # reference: the same voxels with LPS identity axes, so i and j run the other way
    ref = sitk.Image(20, 24, 10, sitk.sitkFloat32)
    ref.SetSpacing((1.0, 1.0, 2.0))
    ref.SetOrigin((-34.0, -41.0, 3.0))
    for n, name in enumerate(["Liver", "Lesion"]):
        seg = slicer.vtkSegment()
        seg.SetName(name)
        seg.SetColor(0.9, 0.1 * n, 0.2)
        seg.SetTag("Source", "slicer")
        oi = slicer.vtkOrientedImageData()
        oi.SetDimensions(20, 24, 10)
        oi.SetSpacing(1.0, 1.0, 2.0)
        oi.SetOrigin(15.0, 18.0, 3.0)  # RAS of LPS (-15, -18, 3)
        oi.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        a = numpy_support.vtk_to_numpy(oi.GetPointData().GetScalars()).reshape(10, 24, 20)
        a[:] = 0
        a[2:6, 4 + n: 12 + n, 3:9] = 1  # overlapping: two layers
        oi.Modified()
        seg.AddRepresentation("Binary labelmap", oi)
        node.GetSegmentation().AddSegment(seg, name)
        exp = np.zeros((10, 24, 20), bool)
        exp[2:6, 4 + n: 12 + n, 3:9] = True
        expected[name] = exp[:, ::-1, ::-1]  # RAS i, j axes run against LPS i, j
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    path = tmp_path / "slicer.seg.nrrd"
    storage.SetFileName(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert storage.WriteData(node) == 1
    back = io3d.read_segmentation(path, ref)
    assert [b.name for b in back] == ["Liver", "Lesion"]
    assert back[1].tags["Source"] == "slicer" and back[1].color == pytest.approx((0.9, 0.1, 0.2))
    for b in back:
        assert same_geometry(b.mask, ref)
        np.testing.assert_array_equal(b.array(), expected[b.name])


def test_read_segmentation_names_and_errors(tmp_path):
    ref = make_image()
    segs = make_segments(ref)
    empty = Segment("Empty", (0.5, 0.5, 0.5), mask_image_like(np.zeros(ref.GetSize()[::-1], bool), ref))
    path = tmp_path / "s.seg.nrrd"
    io3d.write_segmentation(path, segs + [empty], ref, {})
    got = io3d.read_segmentation(path, ref, names=["Ring", "Sphere"])
    assert [g.name for g in got] == ["Ring", "Sphere"]
    np.testing.assert_array_equal(got[0].array(), masks()["Ring"])
    with pytest.raises(InputError) as e:
        io3d.read_segmentation(path, ref, names=["Liver"])
    assert str(e.value).startswith(str(path)) and "'Liver'" in str(e.value)
    assert "'Sphere'" in str(e.value) and "'Box'" in str(e.value)
    with pytest.raises(InputError, match="segment 'Empty' is empty"):
        io3d.read_segmentation(path, ref)
    far = make_image(origin=(500.0, 500.0, 500.0))
    with pytest.raises(InputError, match="does not overlap the prior image"):
        io3d.read_segmentation(path, far, names=["Sphere"])
    # a coarser reference elsewhere in space: resampled in physical space
    coarse = sitk.Image(20, 24, 6, sitk.sitkFloat32)
    coarse.SetSpacing((1.6, 1.8, 5.0))
    coarse.SetOrigin(ref.GetOrigin())
    got = io3d.read_segmentation(path, coarse, names=["Box"])[0]
    assert same_geometry(got.mask, coarse)
    assert got.volume_ml() == pytest.approx(segs[1].volume_ml(), rel=0.35)
    with pytest.raises(InputError, match="not found"):
        io3d.read_segmentation(tmp_path / "missing.seg.nrrd", ref)
    broken = tmp_path / "broken.seg.nrrd"
    broken.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="broken.seg.nrrd"):
        io3d.read_segmentation(broken, ref)


# ------------------------------------------------------------------ labelmaps and NIfTI output

def test_labelmap_read(tmp_path):
    ref = make_image(RAS_LIKE)
    lab = np.zeros(ref.GetSize()[::-1], np.uint8)
    m = masks()
    lab[m["Box"]] = 3
    lab[m["Ring"]] = 7
    img = sitk.GetImageFromArray(lab)
    img.CopyInformation(ref)
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(img, str(path))
    segs = io3d.read_segmentation(path, ref)
    assert [s.name for s in segs] == ["Label 3", "Label 7"]
    np.testing.assert_array_equal(segs[1].array(), lab == 7)
    # a plain labelmap .nrrd (no Segment fields) too
    nrrd_path = tmp_path / "labels.nrrd"
    sitk.WriteImage(img, str(nrrd_path))
    assert [s.name for s in io3d.read_segmentation(nrrd_path, ref, names=["Label 7"])] == ["Label 7"]
    # an image is not a labelmap
    sitk.WriteImage(ref + 0.5, str(tmp_path / "image.nrrd"))
    with pytest.raises(InputError, match="not a labelmap"):
        io3d.read_segmentation(tmp_path / "image.nrrd", ref)


def test_nifti_write_with_label_table(tmp_path):
    ref = make_image(OBLIQUE)
    segs = make_segments(ref, {"P2SAM.Status": "unreviewed proposal"})
    out = tmp_path / "result.nii.gz"
    with pytest.warns(UserWarning, match="overlap"):
        io3d.write_segmentation(out, segs, ref, {"model": {"name": "m"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.labels.json", "result.nii.gz"]
    img = sitk.ReadImage(str(out))
    assert img.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(img, ref, tol=1e-4)
    lab = sitk.GetArrayFromImage(img)
    np.testing.assert_array_equal(lab == 3, masks()["Ring"])
    table = json.loads((tmp_path / "result.labels.json").read_text())
    assert table["labels"]["2"]["name"] == "Box" and table["provenance"] == {"model": {"name": "m"}}
    back = io3d.read_segmentation(out, ref)
    assert [b.name for b in back] == ["Sphere", "Box", "Ring"]
    assert back[2].color == segs[2].color and back[2].tags == {"P2SAM.Status": "unreviewed proposal"}
    # overlap: the later segment won (the ring over the box)
    np.testing.assert_array_equal(back[1].array(), masks()["Box"] & ~masks()["Ring"])


# ------------------------------------------------------------------ RTSTRUCT

@pytest.mark.parametrize("direction", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_rtstruct_read(tmp_path, direction):
    img = make_image(direction)
    dicom_tools.write_ct_series(img, tmp_path / "ct")
    vol, src = io3d.read_volume(tmp_path / "ct")
    segs = make_segments(vol)
    rt = dicom_tools.write_rtstruct(segs, tmp_path / "ct", tmp_path / "rt.dcm")
    back = io3d.read_segmentation(rt, vol, src)
    assert [b.name for b in back] == ["Sphere", "Box", "Ring"]
    for b, s in zip(back, segs):
        assert same_geometry(b.mask, vol)
        assert dice(b.array(), s.array()) >= 0.9, b.name
        assert b.color == pytest.approx(s.color, abs=1 / 255)
    # the ring's hole stays empty (even-odd rule)
    ring = back[2].array()
    assert not ring[6, 30, 28] and ring[6, 30, 34]
    # the RTSTRUCT of another series (same geometry) is refused
    other = dicom_tools.write_ct_series(img, tmp_path / "other")
    vol2, src2 = io3d.read_volume(tmp_path / "other")
    with pytest.raises(InputError) as e:
        io3d.read_segmentation(rt, vol2, src2)
    assert f"not the prior image's series {other['series_uid']}" in str(e.value)
    assert str(e.value).startswith(str(rt))
    # without a DICOM source the contours are still placed in physical space
    assert len(io3d.read_segmentation(rt, vol2, names=["Box"])) == 1


def test_rtstruct_on_a_resampled_reference(tmp_path, ct_oblique):
    folder, img, _ = ct_oblique
    vol, src = io3d.read_volume(folder)
    segs = make_segments(vol)
    rt = dicom_tools.write_rtstruct(segs[:1], folder, tmp_path / "rt.dcm")
    # the same voxels as an axial NIfTI-like file volume: no DICOM source, flipped axes
    flipped = sitk.Flip(vol, [True, False, False])
    back = io3d.read_segmentation(rt, flipped)[0]
    assert dice(back.array()[:, :, ::-1], segs[0].array()) >= 0.9


# ------------------------------------------------------------------ DICOM SEG

def test_dicom_seg_write_and_read_back(tmp_path, ct_oblique):
    import pydicom

    folder, _, uids = ct_oblique
    vol, src = io3d.read_volume(folder)
    segs = make_segments(vol)
    empty = Segment("Empty", (0.5, 0.5, 0.5), mask_image_like(np.zeros(vol.GetSize()[::-1], bool), vol))
    out = tmp_path / "result.dcm"
    prov = {"model": {"name": "LiteMedSAM", "sha256": "cd" * 32}, "version": "0.1.0",
            "status": "unreviewed proposal"}
    io3d.write_segmentation(out, segs + [empty], vol, prov, src)
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "SEG" and "P2SAM unreviewed proposal" in ds.SeriesDescription
    assert ds.SegmentationType == "BINARY" and len(ds.SegmentSequence) == 4
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["series_uid"]
    assert ds.FrameOfReferenceUID == uids["frame_of_reference_uid"]
    alg = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == "P2SAM" and "cd" * 32 in alg.AlgorithmParameters
    assert "unreviewed proposal" in alg.AlgorithmParameters and "LiteMedSAM" in alg.AlgorithmParameters
    back = io3d.read_segmentation(out, vol, src, names=["Sphere", "Box", "Ring"])
    for b, s in zip(back, segs):
        assert same_geometry(b.mask, vol)
        np.testing.assert_array_equal(b.array(), s.array())
        assert b.color == pytest.approx(s.color, abs=0.02)
    with pytest.raises(InputError, match="segment 'Empty' is empty"):
        io3d.read_segmentation(out, vol, src)
    # all segments empty: still a valid file
    out2 = tmp_path / "empty.dcm"
    io3d.write_segmentation(out2, [empty], vol, prov, src)
    assert pydicom.dcmread(str(out2)).SegmentSequence[0].SegmentLabel == "Empty"


def test_dicom_seg_from_builder_on_another_grid(tmp_path, ct_oblique):
    folder, _, _ = ct_oblique
    vol, src = io3d.read_volume(folder)
    segs = make_segments(vol)
    path = dicom_tools.write_dicom_seg(segs, folder, tmp_path / "seg.dcm")
    back = io3d.read_segmentation(path, vol, src, names=["Box"])[0]
    np.testing.assert_array_equal(back.array(), segs[1].array())
    # onto a 2x finer-in-plane grid of the same space
    fine = sitk.Resample(vol, [80, 96, 12], sitk.Transform(), sitk.sitkLinear, vol.GetOrigin(),
                         [0.4, 0.45, 2.5], vol.GetDirection())
    got = io3d.read_segmentation(path, fine, names=["Sphere"])[0]
    assert same_geometry(got.mask, fine)
    assert got.volume_ml() == pytest.approx(segs[0].volume_ml(), rel=0.1)


# ------------------------------------------------------------------ output paths and atomic writes

def test_output_kind_and_check_output_path(tmp_path):
    assert io3d.output_kind("a/b.seg.nrrd") == "seg.nrrd"
    assert io3d.output_kind("b.nii.gz") == "nifti" and io3d.output_kind("b.NII") == "nifti"
    assert io3d.output_kind("b.dcm") == "dicom-seg"
    with pytest.raises(InputError, match=r"\.seg\.nrrd.*\.nii\.gz.*\.dcm"):
        io3d.output_kind("b.png")
    with pytest.raises(InputError, match="DICOM SEG output needs the follow-up as a DICOM series"):
        io3d.check_output_path(tmp_path / "x.dcm", reference_source=VolumeSource(path="f.nrrd"))
    with pytest.raises(InputError, match="does not exist"):
        io3d.check_output_path(tmp_path / "nope" / "x.seg.nrrd")
    existing = tmp_path / "x.seg.nrrd"
    existing.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        io3d.check_output_path(existing)
    assert io3d.check_output_path(existing, overwrite=True) == "seg.nrrd"


def test_write_refuses_existing_file_and_overwrites_on_request(tmp_path):
    ref = make_image()
    segs = make_segments(ref)
    out = tmp_path / "r.seg.nrrd"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        io3d.write_segmentation(out, segs, ref, {})
    assert out.read_bytes() == b"precious"
    io3d.write_segmentation(out, segs, ref, {}, overwrite=True)
    assert out.read_bytes().startswith(b"NRRD0004")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    ref = make_image()
    segs = make_segments(ref)
    # a segment on another grid
    wrong = Segment("Wrong", (1, 0, 0), mask_image_like(np.ones((5, 6, 7), bool), sitk.Image(7, 6, 5, sitk.sitkUInt8)))
    for name in ("a.seg.nrrd", "a.nii.gz"):
        with pytest.raises(InputError, match="segment 'Wrong'"):
            io3d.write_segmentation(tmp_path / name, segs + [wrong], ref, {})
    # a missing (hence unwritable) folder
    with pytest.raises(InputError):
        io3d.write_segmentation(tmp_path / "missing" / "a.seg.nrrd", segs, ref, {})
    assert list(tmp_path.iterdir()) == []
    # a failure in the middle of writing: the temporary file goes, the old file stays

    def boom(tmp, *args, **kwargs):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    old = tmp_path / "b.seg.nrrd"
    old.write_bytes(b"old result")
    monkeypatch.setattr(io3d.segmentations, "_write_seg_nrrd", boom)  # the writer the dispatcher calls
    with pytest.raises(OutputError, match="disk full"):  # not an input problem: exit status 1, not 2
        io3d.write_segmentation(old, segs, ref, {}, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["b.seg.nrrd"] and old.read_bytes() == b"old result"
    monkeypatch.setattr(io3d.segmentations, "_write_nifti", boom)
    with pytest.raises(OutputError, match="disk full"):
        io3d.write_segmentation(tmp_path / "c.nii.gz", segs, ref, {})
    assert [p.name for p in tmp_path.iterdir()] == ["b.seg.nrrd"]


def test_import_is_light():
    import subprocess

    code = ("import sys, P2SAMLogic.io; "
            "print(sorted(m for m in ('pydicom', 'highdicom', 'nrrd', 'slicer', 'vtk') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]"
