"""The tumour-response simulator (Testing/Tools/simulate_response.py): change by tissue replacement, not by
contracting the anatomy, with a known truth."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from simulate_response import cbct_like, simulate_response

# no motion, no noise; a coarse grid to keep the test fast
MOTION = dict(rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0), deformation_mm=0.0, noise_hu=0.0,
              spacing=(1.0, 1.0, 2.5), fine_slice_mm=2.5)


@pytest.fixture(scope="module")
def unchanged(lung_crop):
    """The crop re-imaged with no response, no motion, no noise: the reference to compare against."""
    ct, masks = lung_crop
    return simulate_response(ct, masks, "GTV", kind="grow", volume_change=1e-9, **MOTION)


@pytest.mark.parametrize("kind,change", [("regress", -0.5), ("grow", 0.6)])
def test_the_tumour_changes_by_the_asked_volume_and_the_anatomy_around_it_does_not_move(lung_crop, unchanged,
                                                                                          kind, change):
    ct, masks = lung_crop
    fu, truth, info = simulate_response(ct, masks, "GTV", kind=kind, volume_change=change, **MOTION)
    base_fu, base_truth, _ = unchanged
    assert info["response"]["kind"] == kind
    assert abs(info["response"]["prior_space_change"] - change) < 0.03
    ratio = sitk.GetArrayViewFromImage(truth["GTV"]).sum() / sitk.GetArrayViewFromImage(base_truth["GTV"]).sum()
    assert abs(ratio - (1.0 + change)) < 0.1
    # the vertebral body is untouched, and so is the image away from the tumour
    assert (sitk.GetArrayViewFromImage(truth["VertebralBody"]) == sitk.GetArrayViewFromImage(base_truth["VertebralBody"])).all()
    diff = np.abs(sitk.GetArrayFromImage(fu) - sitk.GetArrayFromImage(base_fu)) > 1.0
    from scipy import ndimage

    near = ndimage.binary_dilation(sitk.GetArrayViewFromImage(truth["GTV"]) | sitk.GetArrayViewFromImage(base_truth["GTV"]),
                                   iterations=4)
    assert diff.any() and not (diff & ~near).any()
    gtv = sitk.GetArrayViewFromImage(truth["GTV"]).astype(bool)
    old = sitk.GetArrayViewFromImage(base_truth["GTV"]).astype(bool)
    values = sitk.GetArrayViewFromImage(fu)
    if kind == "regress":  # the vacated volume became lung-like (much darker than the tumour)
        vacated = old & ~ndimage.binary_dilation(gtv, iterations=2)
        assert np.median(values[vacated]) < np.median(values[gtv]) - 300
    else:  # the new part looks like tumour, not lung
        added = gtv & ~ndimage.binary_dilation(old, iterations=2)
        assert np.median(values[added]) > -300


def test_cbct_like_degradation_shifts_blurs_and_noises_the_image(unchanged):
    fu = unchanged[0]
    cb = cbct_like(fu, np.random.default_rng(0))
    a, b = sitk.GetArrayFromImage(fu), sitk.GetArrayFromImage(cb)
    inside = a > -1000
    assert b.shape == a.shape and cb.GetSpacing() == fu.GetSpacing()
    d = (b - a)[inside]
    assert 5.0 < d.std() < 150.0  # noise and blur
    # cupping: the centre darker than the edge, relative to the original
    k = a.shape[0] // 2
    centre = (b - a)[k, a.shape[1] // 2 - 5:a.shape[1] // 2 + 5, a.shape[2] // 2 - 5:a.shape[2] // 2 + 5].mean()
    edge = (b - a)[k, :5, :5][inside[k, :5, :5]].mean() if inside[k, :5, :5].any() else 35.0
    assert centre < edge - 30.0
