"""Inputs that used to give a normal-looking wrong result: each now gives exit status 2 with a message
naming the input, or a result whose report says what is wrong.

* corrupt inputs (P2SAMLogic/io/sanity.py): truncated NIfTI and gzip files, NaN / infinite voxels,
  sheared voxel axes;
* a failed registration (P2SAMLogic/propagation/regcheck.py): a follow-up whose header claims a 90-degree rotation;
* a structure cut by a field of view: change not measurable, the cut slices flagged, in every
  prior segmentation format;
* a .seg.nrrd segment partly outside the prior image: a warning;
* outputs (P2SAMLogic/io/outputs.py): a write that fails on the third file leaves the old files intact.

The CLI runs use ``--method rigid`` (registration only, no model): a few seconds each.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import json
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from P2SAMLogic.cli import main
from P2SAMLogic.errors import InputError, OutputError
from P2SAMLogic.io import read_segmentation, read_volume, write_segmentation
from P2SAMLogic.io.volume import Segment

from conftest import LUNG_CROP

PRIOR = str(LUNG_CROP / "prior_ct.nrrd")
PRIOR_SEG = str(LUNG_CROP / "prior.seg.nrrd")
PRIOR_LABELS = str(LUNG_CROP / "prior_labels.nrrd")
CUT_MESSAGE = "cut by the follow-up's field of view at slice 0: change not measurable"


def run(capsys, *args):
    code = main(["propagate", "--quiet", *[str(a) for a in args]])
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(folder: Path) -> dict:
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def expect_error(capsys, tmp_path, bad_input, args, *patterns):
    """Exit 2, the message names ``bad_input`` and holds every pattern, nothing written under ``tmp_path``."""
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert str(bad_input) in err, err
    for pattern in patterns:
        assert pattern in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(tmp_path) == before
    return err


@pytest.fixture(scope="module")
def fu_image(simulated_followup):
    """The demo's simulated follow-up as int16 (as scanners store CT)."""
    return sitk.Cast(sitk.Round(simulated_followup[0]), sitk.sitkInt16)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fu_image):
    """The follow-up as .nii.gz, .nii and .nrrd in a folder of its own (outputs go to each test's tmp_path)."""
    d = tmp_path_factory.mktemp("inputs")
    sitk.WriteImage(fu_image, str(d / "fu.nii.gz"), True)
    sitk.WriteImage(fu_image, str(d / "fu.nii"), False)
    sitk.WriteImage(fu_image, str(d / "fu.nrrd"), True)
    return d


def propagate_args(followup, out_dir, *extra, segments="GTV"):
    return ["--prior-image", PRIOR, "--prior-segmentation", PRIOR_SEG, "--followup", followup,
            "--output", Path(out_dir) / "o.seg.nrrd", "--report", Path(out_dir) / "r.json", "--method", "rigid",
            "--segments", segments, *extra]


# -- corrupt files: refused before anything runs ---------------------------------------------------

def test_truncated_nii_gz_followup_is_refused(tmp_path, inputs, capsys):
    bad = tmp_path / "in" / "half.nii.gz"
    bad.parent.mkdir()
    data = (inputs / "fu.nii.gz").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    # what ITK alone makes of it: a volume whose second half is zeros
    assert (sitk.GetArrayViewFromImage(sitk.ReadImage(str(bad)))[-1] == 0).all()
    expect_error(capsys, tmp_path, bad, propagate_args(bad, tmp_path),
                 "is truncated: its gzip stream ends before its end-of-stream marker")


def test_truncated_nii_followup_is_refused(tmp_path, inputs, capsys):
    bad = tmp_path / "in" / "half.nii"
    bad.parent.mkdir()
    data = (inputs / "fu.nii").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    expect_error(capsys, tmp_path, bad, propagate_args(bad, tmp_path),
                 f"is truncated: its header describes {len(data)} bytes of header and voxels, but the file holds "
                 f"{len(data) // 2} (50%)")


def test_gzip_with_a_bad_checksum_is_refused(tmp_path, inputs):
    data = bytearray((inputs / "fu.nii.gz").read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="crc.nii.gz: is not a valid gzip file .*incorrect data check"):
        read_volume(str(bad))


def _with_voxels(image: sitk.Image, value: float) -> sitk.Image:
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    arr[16:18, 90:100, 80:90] = value  # on the GTV's slices
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize("value, name, kind", [(np.inf, "inf.nrrd", "infinite"), (np.nan, "nan.nrrd", "NaN"),
                                               (np.nan, "nan.nii.gz", "NaN"), (-np.inf, "minf.nii", "infinite")])
def test_non_finite_voxels_are_refused(tmp_path, fu_image, capsys, value, name, kind):
    bad = tmp_path / "in" / name
    bad.parent.mkdir()
    sitk.WriteImage(_with_voxels(fu_image, value), str(bad))
    if name.endswith((".nii", ".nii.gz")) and kind == "NaN":  # ITK's NIfTI reader turns NaN into 0
        assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(str(bad)))).all()
    expect_error(capsys, tmp_path, bad, propagate_args(bad, tmp_path),
                 f"holds 200 voxel(s) that are not finite numbers ({kind}; the first at [k, j, i] = [16, 90, 80])")


def test_non_finite_prior_given_to_the_engine_is_refused(lung_crop, fu_image):
    from P2SAMLogic.propagation.pipeline import PropagationConfig, check_inputs

    ct, masks = lung_crop
    with pytest.raises(InputError, match=r"^prior image: holds 200 voxel\(s\) that are not finite numbers \(NaN"):
        check_inputs(_with_voxels(ct, np.nan), [Segment("GTV", (1, 0, 0), masks["GTV"])], fu_image,
                     PropagationConfig())


def test_sheared_nrrd_is_refused(tmp_path, fu_image, capsys):
    bad = tmp_path / "in" / "sheared.nrrd"
    bad.parent.mkdir()
    img = sitk.Image(fu_image)
    d = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    img.SetDirection([float(v) for v in (d / np.linalg.norm(d, axis=0)).flatten()])
    sitk.WriteImage(img, str(bad))
    expect_error(capsys, tmp_path, bad, propagate_args(bad, tmp_path),
                 "its voxel axes are not perpendicular (a sheared grid: angles between the axes 73.30°, 90.00°, "
                 "90.00° instead of 90°)")


def test_sheared_nifti_sform_is_refused(tmp_path, inputs, capsys):
    """ITK would read this file with its sform replaced by a rotation (and only a console warning)."""
    raw = bytearray(gzip.decompress((inputs / "fu.nii.gz").read_bytes()))
    srow = list(struct.unpack("<12f", raw[280:328]))
    srow[1] = 0.3  # x now depends on j: the j axis is no longer perpendicular to i
    raw[280:328] = struct.pack("<12f", *srow)
    bad = tmp_path / "in" / "sheared.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(gzip.compress(bytes(raw)))
    expect_error(capsys, tmp_path, bad, propagate_args(bad, tmp_path),
                 "its NIfTI sform's voxel axes are not perpendicular")


def test_intact_files_are_read_as_before(inputs, fu_image):
    ref = sitk.GetArrayViewFromImage(fu_image)
    for name in ("fu.nii.gz", "fu.nii", "fu.nrrd"):
        img, _ = read_volume(str(inputs / name))
        assert np.array_equal(sitk.GetArrayViewFromImage(img), ref), name


# -- a segment partly outside the prior image -------------------------------------------------------

def test_seg_nrrd_segment_partly_outside_the_prior_image_warns(tmp_path, lung_crop):
    ct, masks = lung_crop
    gtv = sitk.GetArrayFromImage(masks["GTV"])
    ks = np.flatnonzero(gtv.any(axis=(1, 2)))
    # the segmentation's grid: the prior's with 10 more slices before its first; the GTV (3 slices) drawn
    # so that its first slice lies beyond the prior image's first slice (a third of it outside)
    sz = list(ct.GetSize())
    bigger = sitk.Image(sz[0], sz[1], sz[2] + 10, sitk.sitkUInt8)
    bigger.SetSpacing(ct.GetSpacing())
    bigger.SetDirection(ct.GetDirection())
    bigger.SetOrigin(ct.TransformIndexToPhysicalPoint([0, 0, -10]))
    arr = np.zeros((sz[2] + 10, sz[1], sz[0]), np.uint8)
    arr[9: 9 + len(ks)] = gtv[ks[0]: ks[-1] + 1]  # bigger slice 9 = prior slice -1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(bigger)
    path = tmp_path / "outside.seg.nrrd"
    write_segmentation(str(path), [Segment("GTV", (1, 0, 0), mask)], bigger, {})
    with pytest.warns(UserWarning, match=r"outside.seg.nrrd: segment 'GTV' lies partly outside the prior image "
                                         r"\(\d+% of its voxels fall beyond the prior image's grid\)"):
        (seg,) = read_segmentation(str(path), ct, None)
    kept = np.flatnonzero(seg.array().any(axis=(1, 2)))
    assert list(kept) == [0, 1] and 0 < seg.array().sum() < gtv.sum()


# -- registration plausibility ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def rotated(tmp_path_factory, fu_image):
    """The follow-up with its header rotated by 90 degrees about z (pixels unchanged)."""
    d = tmp_path_factory.mktemp("rotated")
    img = sitk.Image(fu_image)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    img.SetDirection([float(v) for v in (rot @ np.array(fu_image.GetDirection()).reshape(3, 3)).flatten()])
    sitk.WriteImage(img, str(d / "rotated.nrrd"), True)
    return d / "rotated.nrrd"


def test_followup_with_a_90_degree_header_rotation_is_refused(tmp_path, rotated, capsys):
    err = expect_error(capsys, tmp_path, rotated, propagate_args(rotated, tmp_path),
                       "registration failed for segment 'GTV': the follow-up does not match the prior around it "
                       "after the rigid stage (plausibility score", "--allow-poor-registration")
    assert "orientation (direction cosines) is probably wrong in its header" in err


def test_a_poor_registration_let_through_flags_every_slice_and_reports_no_change(tmp_path, rotated, capsys):
    code, out, err = run(capsys, *propagate_args(rotated, tmp_path, "--allow-poor-registration"))
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    (seg,) = report["segments"]
    assert seg["change_percent"] is None
    assert seg["change_not_measurable"] == "registration failed the plausibility check: change not measurable"
    assert seg["slices"] and all(s["flagged"] for s in seg["slices"])
    assert all(s["reason"].startswith("registration failed the plausibility check") for s in seg["slices"])
    check = report["provenance"]["registration"]["checks"]["GTV"]["registration_check"]
    assert check["passed"] is False and check["score"] < check["bound"]
    assert any("registration failed the plausibility check" in w for w in report["warnings"])
    main(["propagate", *[str(a) for a in propagate_args(rotated, tmp_path, "--allow-poor-registration",
                                                        "--overwrite")]])
    assert "n/a (registration failed)" in capsys.readouterr().out


# -- field of view ----------------------------------------------------------------------------------

def _prior_segmentation(kind: str, folder: Path, lung_crop):
    """``(prior image path, prior segmentation path)`` in the asked format (DICOM: a CT series + the object)."""
    from dicom_tools import write_ct_series, write_dicom_seg, write_rtstruct

    ct, masks = lung_crop
    if kind == "labelmap":
        return PRIOR, PRIOR_LABELS
    if kind == "seg.nrrd":
        return PRIOR, PRIOR_SEG
    series = folder / "prior_ct"
    write_ct_series(ct, series)
    segs = [Segment("GTV", (1, 0, 0), masks["GTV"])]
    if kind == "rtstruct":
        return series, write_rtstruct(segs, series, folder / "RS.dcm")
    return series, write_dicom_seg(segs, series, folder / "SEG.dcm")


@pytest.mark.parametrize("kind", ["labelmap", "seg.nrrd", "rtstruct", "dicom-seg"])
def test_structure_cut_by_the_followups_field_of_view(tmp_path, fu_image, lung_crop, capsys, kind):
    """The follow-up ends inside the GTV (3 of its 5 slices kept): no change reported, the cut slice flagged."""
    src = tmp_path / "in"
    src.mkdir()
    cut = src / "cut.nrrd"
    sitk.WriteImage(fu_image[:, :, 17:], str(cut))  # the GTV's follow-up slices are 15-19
    prior, seg = _prior_segmentation(kind, src, lung_crop)
    segments = "Label 1" if kind == "labelmap" else "GTV"
    out = tmp_path / "out"
    out.mkdir()
    args = ["--prior-image", prior, "--prior-segmentation", seg, "--followup", cut, "--output", out / "o.seg.nrrd",
            "--report", out / "r.json", "--method", "rigid", "--segments", segments]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    report = json.loads((out / "r.json").read_text())
    (s,) = report["segments"]
    assert s["change_percent"] is None and s["change_not_measurable"] == CUT_MESSAGE
    assert 0 in s["flagged_slices"]
    assert next(x for x in s["slices"] if x["index"] == 0)["reason"].startswith("cut by the follow-up's field of view")
    assert f"segment '{segments}': {CUT_MESSAGE}" in report["warnings"]
    (cuts,) = report["provenance"]["registration"]["checks"][segments]["field_of_view"]
    assert cuts["image"] == "follow-up" and 0.1 < cuts["outside_fraction"] < 0.6
    if kind == "seg.nrrd":  # the table, once
        main(["propagate", *[str(a) for a in args], "--overwrite"])
        printed = capsys.readouterr().out
        assert "n/a (cut by FOV)" in printed and "%" not in printed.split("n/a (cut by FOV)")[0].splitlines()[-1]


def test_structure_inside_both_fields_of_view_reports_its_change(tmp_path, inputs, capsys):
    code, _, err = run(capsys, *propagate_args(inputs / "fu.nrrd", tmp_path))
    assert code == 0, err
    (s,) = json.loads((tmp_path / "r.json").read_text())["segments"]
    assert s["change_percent"] is not None and s["change_not_measurable"] is None and s["flagged_slices"] == []
    check = json.loads((tmp_path / "r.json").read_text())["provenance"]["registration"]["checks"]["GTV"]
    assert check["registration_check"]["passed"] is True and check["field_of_view"] == []


def test_in_plane_cut_names_the_edge_and_the_slices(lung_crop):
    from P2SAMLogic.propagation.regcheck import followup_cut

    ct, masks = lung_crop
    gtv = sitk.GetArrayFromImage(masks["GTV"])
    cols = np.flatnonzero(gtv.any(axis=(0, 1)))
    half = int((cols[0] + cols[-1]) // 2)
    cut = followup_cut(masks["GTV"], ct[:half, :, :], sitk.Euler3DTransform())  # same space, right part gone
    ks = np.flatnonzero(gtv[:, :, half:].any(axis=(1, 2)))
    assert cut is not None and cut.image == "follow-up"
    assert cut.where == f"column {half - 1} (slices {ks[0]}-{ks[-1]})" and cut.slices == [int(k) for k in ks]
    assert cut.reason() == f"cut by the follow-up's field of view at column {half - 1} (slices {ks[0]}-{ks[-1]}): " \
                           "change not measurable"
    assert followup_cut(masks["GTV"], ct, sitk.Euler3DTransform()) is None


def test_structure_cut_by_the_prior_images_field_of_view(lung_crop):
    """The prior ends inside the GTV, the follow-up (here: the full crop) goes on beyond it."""
    from P2SAMLogic.propagation.regcheck import prior_cut

    ct, masks = lung_crop
    gtv = sitk.GetArrayFromImage(masks["GTV"])
    ks = np.flatnonzero(gtv.any(axis=(1, 2)))
    k_end = int(ks[2])
    cut_mask = masks["GTV"][:, :, : k_end + 1]
    found = prior_cut(cut_mask, ct, sitk.Euler3DTransform())
    assert found is not None and found.image == "prior image" and found.slices == [k_end]
    assert found.reason() == f"cut by the prior image's field of view at its slice {k_end}: change not measurable"
    # both scans end at the same slice: the same part of the structure in both, nothing to report
    assert prior_cut(cut_mask, ct[:, :, : k_end + 1], sitk.Euler3DTransform()) is None
    assert prior_cut(masks["GTV"], ct, sitk.Euler3DTransform()) is None


# -- outputs: all or nothing -------------------------------------------------------------------------

def _fail_on_third_file(monkeypatch):
    """Make every writer's atomic file fail with ENOSPC on the third file of the run (after writing into it)."""
    from P2SAMLogic.io import images2d as io2d, outputs
    from P2SAMLogic.io import segmentations

    real = outputs.atomic_path
    calls = []

    @contextlib.contextmanager
    def failing(path, suffix=""):
        calls.append(str(path))
        with real(path, suffix) as tmp:
            yield tmp
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    for module in (outputs, io2d, segmentations):
        monkeypatch.setattr(module, "atomic_path", failing)
    return calls


@pytest.mark.parametrize("output, third", [("o.seg.nrrd", "o.png"), ("o.nii.gz", "r.json")])
def test_a_write_failing_on_the_third_file_leaves_the_old_outputs(tmp_path, inputs, capsys, monkeypatch, output,
                                                                   third):
    args = ["--prior-image", PRIOR, "--prior-segmentation", PRIOR_SEG, "--followup", inputs / "fu.nrrd",
            "--output", tmp_path / output, "--report", tmp_path / "r.json", "--overlay", tmp_path / "o.png",
            "--method", "rigid", "--segments", "GTV", "--overwrite"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    before = snapshot(tmp_path)
    assert len(before) == (4 if output.endswith(".nii.gz") else 3)  # + the NIfTI's label table
    calls = _fail_on_third_file(monkeypatch)
    code, out, err = run(capsys, *args)
    assert len(calls) == 3 and calls[2].endswith(third)
    assert code == 1
    assert err.strip() == (f"p2sam: error: {tmp_path / third}: could not be written (No space left on device); "
                           "nothing was written, the old output files are intact")
    assert snapshot(tmp_path) == before  # byte for byte, and no temporary file left


def test_several_followups_failing_on_the_third_file_leave_the_old_outputs(tmp_path, inputs, capsys, monkeypatch):
    out = tmp_path / "course"
    out.mkdir()
    for name in ("fu.seg.nrrd", "fu.overlay.png", "report.json"):  # an earlier run's files
        (out / name).write_bytes(b"earlier " + name.encode())
    before = snapshot(tmp_path)
    calls = _fail_on_third_file(monkeypatch)
    code, _, err = run(capsys, "--prior-image", PRIOR, "--prior-segmentation", PRIOR_SEG, "--followup",
                       inputs / "fu.nrrd", "--output-dir", out, "--method", "rigid", "--segments", "GTV",
                       "--overwrite")
    assert code == 1 and [Path(c).name for c in calls] == ["fu.seg.nrrd", "fu.overlay.png", "report.json"]
    assert err.strip().endswith("report.json: could not be written (No space left on device); nothing was "
                                "written, the old output files are intact")
    assert snapshot(tmp_path) == before


def test_write_all_puts_every_old_file_back_when_a_replacement_fails(tmp_path, monkeypatch):
    from P2SAMLogic.io import outputs

    names = ["a.txt", "b.txt", "c.txt"]
    for n in names:
        (tmp_path / n).write_text(f"old {n}")
    before = snapshot(tmp_path)
    real_replace = os.replace
    moved = []

    def replace(src, dst):
        if ".tmp" in os.path.basename(str(src)):
            moved.append(dst)
            if len(moved) == 2:
                raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OutputError, match="could not be written .I/O error.; nothing was written"):
        outputs.write_all([(tmp_path / n, lambda n=n: outputs.write_text_atomic(tmp_path / n, f"new {n}"))
                           for n in names])
    assert snapshot(tmp_path) == before
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    assert outputs.write_all([(tmp_path / n, lambda n=n: outputs.write_text_atomic(tmp_path / n, f"new {n}"))
                              for n in names]) == [str(tmp_path / n) for n in names]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {n: f"new {n}" for n in names}


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, inputs, capsys, monkeypatch):
    import P2SAMLogic.io as io3d

    def broken(*args, **kwargs):
        raise RuntimeError("reader\nexploded")

    monkeypatch.setattr(io3d, "read_volume", broken)
    args = propagate_args(inputs / "fu.nrrd", tmp_path)
    code, _, err = run(capsys, *args)
    assert code == 1
    assert err.strip() == ("p2sam: error: RuntimeError: reader exploded (no output was replaced; run again with "
                           "--debug for the traceback)")
    with pytest.raises(RuntimeError, match="exploded"):
        main(["propagate", *[str(a) for a in args], "--debug"])
    assert not list(tmp_path.iterdir())
