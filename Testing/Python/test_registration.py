"""Rigid registration, mask warping and simulated follow-ups on the bundled lung1 crop.

The follow-ups here are SIMULATED (the prior CT moved/deformed with a known transform):
see ``Testing/Tools/simulate_followup.py``.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from P2SAMLogic.errors import CancelledError, InputError
from P2SAMLogic.propagation.registration import (
    RegistrationResult, overlap_fraction, register_deformable, register_rigid, resample_to, structure_region,
    warp_mask,
)
from P2SAMLogic.io.volume import same_geometry

ROOT = Path(__file__).resolve().parents[2]
CROP = ROOT / "Testing" / "Data" / "lung1_crop"
sys.path.insert(0, str(ROOT / "Testing" / "Tools"))
from simulate_followup import simulate_followup  # noqa: E402

OBLIQUE_20 = (math.cos(math.radians(20)), -math.sin(math.radians(20)), 0.0,
              math.sin(math.radians(20)), math.cos(math.radians(20)), 0.0, 0.0, 0.0, 1.0)
FLIPPED = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(scope="module")
def prior():
    ct = sitk.ReadImage(str(CROP / "prior_ct.nrrd"))
    labels = sitk.ReadImage(str(CROP / "prior_labels.nrrd"))
    masks = {"GTV": sitk.Cast(labels == 1, sitk.sitkUInt8), "VertebralBody": sitk.Cast(labels == 2, sitk.sitkUInt8)}
    return ct, masks


@pytest.fixture(scope="module")
def gtv_region(prior):
    return structure_region([prior[1]["GTV"]], 15.0)


def _points(image: sitk.Image, mask: sitk.Image, limit: int = 4000) -> np.ndarray:
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    kji = kji[:: max(1, len(kji) // limit)]
    return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in kji])


def _apply(t: sitk.Transform, pts: np.ndarray) -> np.ndarray:
    return np.array([t.TransformPoint([float(v) for v in p]) for p in pts])


def _rotation_error_deg(a: sitk.Euler3DTransform, b: sitk.Euler3DTransform) -> float:
    ra = np.array(a.GetMatrix()).reshape(3, 3)
    rb = np.array(b.GetMatrix()).reshape(3, 3)
    c = (np.trace(ra @ rb.T) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def _rigid_followup(ct: sitk.Image, direction=None):
    """The prior resampled through a known rigid transform onto another grid (no deformation), plus the truth."""
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in ct.GetSize()]))
    truth = sitk.Euler3DTransform()
    truth.SetCenter(centre.tolist())
    truth.SetRotation(*np.radians([1.0, -1.5, 4.0]))
    truth.SetTranslation((12.0, -8.0, 6.0))
    d = np.eye(3) if direction is None else np.asarray(direction).reshape(3, 3)
    size = np.array([190, 190, 40])
    spacing = np.array([0.75, 0.75, 3.0])
    ref = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    ref.SetSpacing(spacing.tolist())
    ref.SetDirection(d.ravel().tolist())
    fov_centre = centre + np.array([4.0, -3.0, 5.0]) - np.array(truth.GetTranslation())
    ref.SetOrigin((fov_centre - d @ ((size - 1) / 2.0 * spacing)).tolist())
    followup = sitk.Resample(ct, ref, truth, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    noise = np.random.default_rng(0).normal(0.0, 10.0, sitk.GetArrayViewFromImage(followup).shape)
    noisy = sitk.GetImageFromArray((sitk.GetArrayFromImage(followup) + noise).astype(np.float32))
    noisy.CopyInformation(followup)
    return noisy, truth


@pytest.mark.parametrize("direction", [None, OBLIQUE_20, FLIPPED], ids=["identity", "oblique20", "flipped"])
def test_rigid_registration_recovers_known_transform(prior, gtv_region, direction):
    ct, masks = prior
    followup, truth = _rigid_followup(ct, direction)
    result = register_rigid(followup, ct, gtv_region)
    assert isinstance(result, RegistrationResult)
    assert isinstance(result.transform, sitk.Euler3DTransform)
    region_fu = warp_mask(gtv_region, followup, truth)
    pts = _points(followup, region_fu)
    error = np.linalg.norm(_apply(result.transform, pts) - _apply(truth, pts), axis=1)
    assert error.mean() < 1.0, f"mean displacement error {error.mean():.2f} mm"
    assert _rotation_error_deg(result.transform, truth) < 1.0
    params = result.parameters()
    assert set(params) >= {"rotation_deg", "translation_mm", "centre_mm", "metric", "seconds"}
    assert len(params["rotation_deg"]) == 3 and len(params["translation_mm"]) == 3 and len(params["centre_mm"]) == 3
    assert result.seconds > 0 and result.iterations > 0 and result.stop_condition


def test_rigid_registration_without_region_and_deterministic(prior):
    ct, masks = prior
    followup, truth = _rigid_followup(ct)
    a = register_rigid(followup, ct)
    b = register_rigid(followup, ct)
    assert np.allclose(a.transform.GetParameters(), b.transform.GetParameters(), atol=1e-9)
    pts = _points(followup, warp_mask(structure_region([masks["GTV"]], 15.0), followup, truth))
    error = np.linalg.norm(_apply(a.transform, pts) - _apply(truth, pts), axis=1)
    assert error.mean() < 1.5


@pytest.fixture(scope="module")
def simulated(prior):
    ct, masks = prior
    return simulate_followup(ct, masks, seed=0)


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x = sitk.GetArrayViewFromImage(a) > 0
    y = sitk.GetArrayViewFromImage(b) > 0
    return 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())


def test_registration_on_simulated_followup_finds_the_gtv(prior, simulated):
    ct, masks = prior
    followup, true_masks, info = simulated
    result = register_rigid(followup, ct, structure_region([masks["GTV"]], 10.0))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(true_masks["GTV"])
    centre = list(stats.GetCentroid(1))
    # the prior point the registration assigns to the follow-up GTV's centre vs the true one (through phi)
    err = np.linalg.norm(np.array(result.transform.TransformPoint(centre))
                         - np.array(info["transform"].TransformPoint(centre)))
    assert err < 1.0
    assert _dice(warp_mask(masks["GTV"], followup, result.transform), true_masks["GTV"]) > 0.75
    assert overlap_fraction(masks["GTV"], followup, result.transform) > 0.99


@pytest.mark.parametrize("method", ["demons", "bspline"])
def test_deformable_baselines_refine_the_rigid_result(prior, simulated, method, monkeypatch):
    import P2SAMLogic.propagation.registration as registration

    ct, masks = prior
    followup, true_masks, info = simulated
    region = structure_region([masks["GTV"]], 10.0)
    rigid = register_rigid(followup, ct, region).transform
    if method == "bspline":  # keep the test short: fewer L-BFGS-B iterations than the benchmark default
        monkeypatch.setattr(registration, "BSPLINE_ITERATIONS", 10)
    deformed = register_deformable(followup, ct, rigid, region, method=method)
    assert isinstance(deformed, sitk.CompositeTransform)
    before = _dice(warp_mask(masks["GTV"], followup, rigid), true_masks["GTV"])
    after = _dice(warp_mask(masks["GTV"], followup, deformed), true_masks["GTV"])
    if method == "demons":
        assert after > before
    else:
        assert after > 0.75
    assert overlap_fraction(masks["GTV"], followup, deformed) > 0.99
    with pytest.raises(InputError):
        register_deformable(followup, ct, rigid, region, method="optical-flow")


def test_progress_and_cancel(prior, gtv_region):
    ct, _ = prior
    followup, _ = _rigid_followup(ct)
    seen = []
    register_rigid(followup, ct, gtv_region, progress=seen.append)
    assert seen[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    with pytest.raises(CancelledError):
        register_rigid(followup, ct, gtv_region, cancel=lambda: True)
    calls = []

    def cancel_later() -> bool:
        calls.append(1)
        return len(calls) > 30  # stops inside an optimizer run, from the iteration observer

    with pytest.raises(CancelledError):
        register_rigid(followup, ct, gtv_region, cancel=cancel_later)


def test_registration_input_errors(prior):
    ct, masks = prior
    followup, _ = _rigid_followup(ct)
    empty = sitk.Cast(masks["GTV"] * 0, sitk.sitkUInt8)
    with pytest.raises(InputError, match="empty"):
        register_rigid(followup, ct, empty)
    blank = sitk.Image(followup.GetSize(), sitk.sitkFloat32) - 1024.0
    blank.CopyInformation(followup)
    with pytest.raises(InputError, match="no body"):
        register_rigid(blank, ct)
    with pytest.raises(InputError, match="empty"):
        structure_region([empty], 10.0)


def test_structure_region_dilates_in_millimetres_on_anisotropic_spacing():
    mask = sitk.Image([41, 41, 21], sitk.sitkUInt8)
    mask.SetSpacing((0.5, 0.5, 4.0))
    mask.SetOrigin((-10.0, 20.0, 5.0))
    mask.SetDirection(FLIPPED)
    mask[20, 20, 10] = 1
    region = structure_region([mask], 8.0)
    assert same_geometry(region, mask) and region.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(region)
    assert set(np.unique(arr)) == {0, 1}
    ks, js, is_ = np.nonzero(arr)
    assert (ks.min(), ks.max()) == (8, 12)  # 8 mm = 2 slices of 4 mm on each side
    assert (is_.min(), is_.max()) == (4, 36)  # 8 mm = 16 columns of 0.5 mm on each side
    kk, jj, ii = np.mgrid[:21, :41, :41]
    ball = ((kk - 10) * 4.0) ** 2 + ((jj - 20) * 0.5) ** 2 + ((ii - 20) * 0.5) ** 2 <= 8.0 ** 2
    assert np.array_equal(arr.astype(bool), ball)
    # union of two masks, margin 0 = the union itself
    other = sitk.Image(mask)
    other[3, 3, 2] = 1
    union = sitk.GetArrayFromImage(structure_region([mask, other], 0.0))
    assert union.sum() == 2


def test_warp_mask_and_resample_take_the_reference_geometry(prior):
    ct, masks = prior
    followup, truth = _rigid_followup(ct, OBLIQUE_20)
    warped = warp_mask(masks["GTV"], followup, truth)
    assert same_geometry(warped, followup)
    assert warped.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(warped))) == {0, 1}
    spacing_ratio = np.prod(ct.GetSpacing()) / np.prod(followup.GetSpacing())
    assert sitk.GetArrayViewFromImage(warped).sum() == pytest.approx(
        sitk.GetArrayViewFromImage(masks["GTV"]).sum() * spacing_ratio, rel=0.15)
    moved = resample_to(ct, followup, truth, default=-1024)
    assert same_geometry(moved, followup) and moved.GetPixelID() == ct.GetPixelID()


def test_overlap_fraction(prior):
    ct, masks = prior
    followup, truth = _rigid_followup(ct)
    assert overlap_fraction(masks["GTV"], followup, truth) == pytest.approx(1.0)
    far = sitk.Image(followup)
    far.SetOrigin([v + 2000.0 for v in followup.GetOrigin()])
    assert overlap_fraction(masks["GTV"], far, truth) == pytest.approx(0.0)
    # a follow-up holding only part of the vertebral body
    half = sitk.RegionOfInterest(followup, [190, 190, 18], [0, 0, 0])
    frac = overlap_fraction(masks["VertebralBody"], half, truth)
    assert 0.0 < frac < 1.0


def test_simulate_followup_geometry_truth_and_determinism(prior):
    ct, masks = prior
    a_img, a_masks, a_info = simulate_followup(ct, masks, seed=3)
    b_img, b_masks, b_info = simulate_followup(ct, masks, seed=3)
    assert np.array_equal(sitk.GetArrayViewFromImage(a_img), sitk.GetArrayViewFromImage(b_img))
    for name in masks:
        assert np.array_equal(sitk.GetArrayViewFromImage(a_masks[name]), sitk.GetArrayViewFromImage(b_masks[name]))
    c_img, _, _ = simulate_followup(ct, masks, seed=4)
    assert not np.array_equal(sitk.GetArrayViewFromImage(a_img), sitk.GetArrayViewFromImage(c_img))

    assert a_img.GetPixelID() == sitk.sitkFloat32
    assert a_img.GetSpacing() == pytest.approx((0.7, 0.7, 3.0))
    assert np.allclose(a_img.GetDirection(), np.eye(3).ravel())
    arr = sitk.GetArrayViewFromImage(a_img)
    assert (arr == -1024.0).any() and arr[0, 0, 0] == -1024.0  # the corner is outside the prior's field of view
    assert np.std(arr[arr != -1024.0]) > 100.0
    assert not np.allclose(a_img.GetOrigin(), ct.GetOrigin(), atol=1.0)
    for name, m in a_masks.items():
        assert same_geometry(m, a_img) and m.GetPixelID() == sitk.sitkUInt8
    # shrink: the true follow-up GTV has ~75% of the prior volume; the vertebral body keeps its volume
    assert a_info["volume_ratio"]["GTV"] == pytest.approx(0.75, abs=0.07)
    assert a_info["volume_ratio_soft"]["GTV"] == pytest.approx(0.75, abs=0.03)
    assert a_info["volume_ratio"]["VertebralBody"] == pytest.approx(1.0, abs=0.08)
    assert a_info["deformation"]["min_jacobian"] > 0.5
    assert a_info["rotation_deg"] == [1.0, -1.5, 4.0] and a_info["translation_mm"] == [12.0, -8.0, 6.0]
    # the rigid part is exactly the documented Euler transform
    rigid = a_info["rigid_transform"]
    assert np.allclose(rigid.GetTranslation(), (12.0, -8.0, 6.0))
    assert np.allclose(rigid.GetCenter(), a_info["rotation_centre_mm"])
    # the true GTV lies where phi sends it: prior GTV at phi(x) for follow-up GTV voxels x
    pts = _points(a_img, a_masks["GTV"], limit=300)
    prior_pts = _apply(a_info["transform"], pts)
    idx = [ct.TransformPhysicalPointToIndex([float(v) for v in p]) for p in prior_pts]
    inside = np.mean([masks["GTV"][i] for i in idx])
    assert inside > 0.8


@pytest.mark.parametrize("direction", [OBLIQUE_20, FLIPPED], ids=["oblique20", "flipped"])
def test_simulate_followup_other_directions_and_size(prior, direction):
    ct, masks = prior
    img, fmasks, info = simulate_followup(ct, {"GTV": masks["GTV"]}, direction=direction, size=(150, 160, 30),
                                          spacing=(0.9, 0.9, 2.5), deformation_mm=0.0, noise_hu=0.0)
    assert img.GetSize() == (150, 160, 30)
    assert np.allclose(img.GetDirection(), direction)
    assert img.GetSpacing() == pytest.approx((0.9, 0.9, 2.5))
    assert sitk.GetArrayViewFromImage(fmasks["GTV"]).sum() > 0
    assert info["volume_ratio"]["GTV"] == pytest.approx(0.75, abs=0.1)


def test_simulate_followup_cli(tmp_path):
    script = ROOT / "Testing" / "Tools" / "simulate_followup.py"
    help_out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "SIMULATED" in help_out.stdout
    subprocess.run([sys.executable, str(script), "--prior", str(CROP / "prior_ct.nrrd"), "--labels",
                    str(CROP / "prior_labels.nrrd"), "--output", str(tmp_path), "--spacing", "1.5", "1.5", "4"],
                   capture_output=True, text=True, check=True)
    for name in ("followup_ct.nrrd", "followup_labels.nrrd", "simulation.json", "rigid_followup_to_prior.tfm"):
        assert (tmp_path / name).is_file()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "followup_labels.nrrd")))
    assert set(np.unique(labels)) == {0, 1, 2}
