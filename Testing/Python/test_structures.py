"""Decomposition of rings and several-piece structures (P2SAMLogic.propagation.structures), and the ROI core."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from P2SAMLogic.method.roi import place_square, roi_context, roi_mm
from P2SAMLogic.propagation.structures import cavity_slices, fill_slices, plan_structure, recompose


def image(arr: np.ndarray, spacing=(1.0, 1.0, 3.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    return img


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def ring_volume(k=6, shape=(64, 64), r_out=20, r_in=12, open_slices=()):
    vol = np.zeros((k,) + shape, dtype=bool)
    for i in range(k):
        ring = disc(shape, 32, 32, r_out) & ~disc(shape, 32, 32, r_in)
        if i in open_slices:  # a "C": cut the ring open on the right
            ring[30:35, 32 + r_in - 1:] = False
        vol[i] = ring
    return vol


def test_a_ring_is_planned_as_outer_region_and_cavity():
    vol = ring_volume()
    plan = plan_structure("Myocardium", image(vol))
    assert plan.shape == "ring" and plan.rings == [0]
    roles = {p.role: sitk.GetArrayFromImage(p.mask).astype(bool) for p in plan.parts}
    assert set(roles) == {"outer", "cavity"}
    assert (roles["outer"] == fill_slices(vol)).all()
    assert (roles["cavity"] == (fill_slices(vol) & ~vol)).all() and roles["cavity"].any()
    # recomposed from the parts themselves, the ring is exactly the prior ring (its hole kept)
    results = {p.name: roles[p.role] for p in plan.parts}
    out = recompose(plan, results, results, vol)
    assert (out == vol).all()


def test_a_filled_blob_and_a_ring_with_few_closed_slices_stay_whole():
    blob = np.zeros((5, 64, 64), dtype=bool)
    blob[1:4] = disc((64, 64), 30, 30, 10)
    assert plan_structure("GTV", image(blob)).shape == "filled"
    # a "C" on most slices (open ring): not a ring
    c_shape = ring_volume(k=6, open_slices=(0, 1, 2, 3, 4))
    assert plan_structure("Wall", image(c_shape)).shape == "filled"
    assert plan_structure("Myocardium", image(ring_volume()), decompose=False).shape == "filled"


def test_open_ring_slices_keep_the_registered_ring():
    vol = ring_volume(open_slices=(0,))
    assert cavity_slices(vol).tolist() == [False, True, True, True, True, True]
    plan = plan_structure("Myocardium", image(vol))
    outer = next(p for p in plan.parts if p.role == "outer")
    cavity = next(p for p in plan.parts if p.role == "cavity")
    reg = {outer.name: sitk.GetArrayFromImage(outer.mask).astype(bool),
           cavity.name: sitk.GetArrayFromImage(cavity.mask).astype(bool)}
    # the model's outer region on slice 0 is a filled disc (what a box prompt returns): the open slice
    # must keep the registered "C", not a disc
    res = {outer.name: fill_slices(vol) | disc((64, 64), 32, 32, 20)[None], cavity.name: reg[cavity.name]}
    out = recompose(plan, res, reg, vol)
    assert (out[0] == vol[0]).all()
    assert not out[3][32, 32]  # the hole of a closed slice stays open


def test_several_pieces_are_planned_each_with_its_own_parts():
    vol = np.zeros((6, 64, 64), dtype=bool)
    vol[1:4] = disc((64, 64), 15, 15, 6)
    vol[2:5] |= disc((64, 64), 45, 45, 8)
    vol[3, 60, 60] = True  # a one-voxel speck joins the nearest piece
    plan = plan_structure("Nodes", image(vol))
    assert plan.shape == "pieces" and plan.pieces == 2
    masks = [sitk.GetArrayFromImage(p.mask).astype(bool) for p in plan.parts]
    assert sum(m.sum() for m in masks) == vol.sum()  # nothing dropped
    assert all(m.any() for m in masks)
    assert masks[0].sum() > masks[1].sum()  # the largest piece first
    res = {p.name: sitk.GetArrayFromImage(p.mask).astype(bool) for p in plan.parts}
    assert (recompose(plan, res, res, vol) == vol).all()


def test_roi_core_keeps_size_and_stays_inside():
    shape = (100, 120)
    w = roi_mm(np.array([2.0, 3.0, 12.0, 9.0]), (0.5, 0.5), margin_mm=5.0, min_mm=10.0, shape=shape)
    assert w[0] == 0 and w[1] == 0  # shifted inside, not cut
    assert (w[2] - w[0]) == (w[3] - w[1]) == 32  # (5 mm + 2 x 5 mm) / 0.5 mm = 30 px, at least 32 px
    w = roi_mm(np.array([20.0, 30.0, 60.0, 50.0]), (0.5, 0.5), margin_mm=5.0, min_mm=10.0, shape=shape)
    assert (w[2] - w[0]) == 60  # (20 mm + 10 mm) / 0.5 mm
    cut = roi_context(np.array([2.0, 3.0, 12.0, 9.0]), shape, context=1.0, clip=True)
    assert cut[0] == 0 and cut[2] - cut[0] < 30  # clipped at the border
    shifted = roi_context(np.array([2.0, 3.0, 12.0, 9.0]), shape, context=1.0)
    assert shifted[2] - shifted[0] == 32 and shifted[0] == 0
    big = place_square((60, 50), (500, 500), shape)
    assert list(big) == [0, 0, 120, 100]
