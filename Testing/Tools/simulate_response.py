#!/usr/bin/env python
"""SIMULATED tumour response: regression by tissue replacement, irregular growth, CBCT-like follow-ups.

**This is a simulation, not patient data.** ``simulate_followup.py`` shrinks a structure by
contracting the tissue around it, which a deformable registration can undo exactly. Real response
looks different, and this simulator makes that kind of change:

* **regression** (``kind="regress"``): the tumour shrinks irregularly toward its inside and the
  vacated volume becomes lung: local lung intensities with lung-like correlated texture, plus an
  optional faint residue (thin strands ~ -450 HU, as fibrosis or scar). The anatomy around does
  not move;
* **growth** (``kind="grow"``): the tumour grows irregularly into the lung around it (only into
  voxels that were lung, < -400 HU), the new part filled with tumour-like intensities and texture;
* **CBCT-like** (``cbct=True``): the follow-up is degraded as a cone-beam CT would be: blur,
  correlated noise, cupping (a darker centre), a global HU offset.

How: the prior CT and its masks are first resampled onto a finer slice grid (``fine_slice_mm``;
masks through signed-distance interpolation, so a tumour on 3 thick slices keeps a smooth 3D
shape); the change is made there, in prior space; then ``simulate_followup`` (with no
contraction: ``shrink={}``) moves it rigidly, deforms it smoothly (``deformation_mm``), resamples
it on the follow-up grid and adds noise. The true follow-up masks come from the same warp. The
method under test always receives the ORIGINAL prior CT and masks.

The new tumour surface is a level set of the tumour's signed distance plus a smooth random field
(``irregularity_mm``, length scale ``irregularity_scale_mm``), at the level that gives the asked
volume change (bisection; ``info["volume_ratio"]`` reports what was achieved on the follow-up grid).
Everything is deterministic for a given ``seed``.

CLI::

    python Testing/Tools/simulate_response.py --prior Testing/Data/lung1_crop/prior_ct.nrrd \\
        --labels Testing/Data/lung1_crop/prior_labels.nrrd --kind regress --change -0.5 --cbct --output out/resp
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from simulate_followup import OUTSIDE_HU, json_info, simulate_followup

NOTICE = ("SIMULATED tumour response (not patient data): tissue replacement / growth into lung in prior space, "
          "then rigid motion, smooth deformation, resampling and noise")
LUNG_HU = -600.0  # voxels below this are lung
RESIDUE_HU = -450.0


def _fine(prior: sitk.Image, masks: Dict[str, sitk.Image], slice_mm: float) -> Tuple[sitk.Image, Dict[str, sitk.Image], Dict[str, np.ndarray]]:
    """Prior CT and masks on a grid with slices ``slice_mm`` apart (same in-plane grid, same physical extent).

    Returns the fine CT (linear), fine masks (``sitkUInt8``: each prior voxel's slab, blurred along the
    slices and thresholded, so the volume is kept and the ends are rounded) and their signed distances
    (mm, negative inside).
    """
    sp = np.asarray(prior.GetSpacing(), dtype=float)
    size = np.asarray(prior.GetSize())
    factor = max(1, int(round(sp[2] / slice_mm)))
    new_sp = [sp[0], sp[1], sp[2] / factor]
    new_size = [int(size[0]), int(size[1]), int((size[2] - 1) * factor + 1)]
    ref = sitk.Image(new_size, sitk.sitkFloat32)
    ref.SetSpacing(new_sp)
    ref.SetOrigin(prior.GetOrigin())
    ref.SetDirection(prior.GetDirection())
    ct = sitk.Resample(sitk.Cast(prior, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, OUTSIDE_HU,
                       sitk.sitkFloat32)
    out, sdfs = {}, {}
    fine_kji = (new_sp[2], new_sp[1], new_sp[0])
    for name, m in masks.items():
        # nearest-neighbour slabs (each prior voxel's own extent), then a Gaussian blur along the slices
        # thresholded at 0.5: the same volume, with rounded ends instead of steps
        block = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(m > 0, sitk.sitkFloat32), ref, sitk.Transform(),
                                                     sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32))
        smooth = ndimage.gaussian_filter(block, [0.3 * sp[2] / fine_kji[0], 0.5, 0.5])
        arr = smooth >= 0.5
        sdfs[name] = (ndimage.distance_transform_edt(~arr, sampling=fine_kji)
                      - ndimage.distance_transform_edt(arr, sampling=fine_kji)).astype(np.float32)
        mk = sitk.GetImageFromArray(arr.astype(np.uint8))
        mk.CopyInformation(ref)
        out[name] = mk
    return ct, out, sdfs


def _smooth_noise(rng: np.random.Generator, shape, spacing_kji, scale_mm: float) -> np.ndarray:
    """Gaussian-smoothed white noise on the grid, rescaled to unit standard deviation."""
    n = rng.standard_normal(shape)
    sig = [max(0.5, scale_mm / s) for s in spacing_kji]
    n = ndimage.gaussian_filter(n, sig, mode="reflect")
    return n / max(1e-9, float(n.std()))


def _level_for_volume(field: np.ndarray, allowed: np.ndarray, target_voxels: float) -> float:
    """Level ``t`` with ``sum(allowed & (field < t)) ~ target_voxels`` (bisection on the sorted values)."""
    vals = np.sort(field[allowed].ravel())
    if target_voxels <= 0 or vals.size == 0:
        return -np.inf
    i = int(min(vals.size - 1, max(0, round(target_voxels) - 1)))
    return float(vals[i]) + 1e-6


def _local_stats(ct: np.ndarray, where: np.ndarray) -> Tuple[float, float]:
    v = ct[where]
    if v.size < 10:
        return -850.0, 40.0
    return float(np.median(v)), float(max(10.0, np.std(v)))


def change_tumour(ct: np.ndarray, sdf: np.ndarray, spacing_kji, kind: str, volume_change: float,
                  rng: np.random.Generator, irregularity_mm: float = 2.5, irregularity_scale_mm: float = 4.0,
                  residue: bool = True) -> Tuple[np.ndarray, np.ndarray, dict]:
    """The tumour changed in place (prior space): returns the new CT array, the new mask and a description.

    Args:
        ct: ``float32 [k, j, i]`` HU on a fine grid; sdf: the tumour's signed distance (mm, negative inside).
        kind: ``regress`` (``volume_change < 0``) or ``grow`` (``> 0``).
    """
    old = sdf < 0
    v0 = float(old.sum())
    field = sdf + irregularity_mm * _smooth_noise(rng, sdf.shape, spacing_kji, irregularity_scale_mm)
    texture = _smooth_noise(rng, sdf.shape, spacing_kji, 1.2)
    dist_out = ndimage.distance_transform_edt(~old, sampling=spacing_kji)
    shell = (~old) & (dist_out < 12.0)
    if kind == "regress":
        if not -0.95 < volume_change < 0:
            raise ValueError("regression needs -0.95 < volume_change < 0")
        level = _level_for_volume(field, old, v0 * (1.0 + volume_change))
        new = old & (field < level)
        vacated = old & ~new
        lung_med, lung_sd = _local_stats(ct, shell & (ct < LUNG_HU))
        fill = lung_med + lung_sd * texture
        if residue:
            strands = _smooth_noise(rng, sdf.shape, spacing_kji, 1.0) > 1.3
            fill = np.where(strands, RESIDUE_HU + 40.0 * texture, fill)
        # soft edge: blend over ~1 mm inside the vacated region's border with the remaining tumour
        d_new = ndimage.distance_transform_edt(~new, sampling=spacing_kji) if new.any() else np.full(ct.shape, 99.0)
        # the old tumour's blurred edge just outside its mask goes too (else a grey rim outlines its old shape)
        halo = (~old) & (dist_out <= 1.5) & (ct > fill)
        w = np.clip(d_new / 1.0, 0.0, 1.0) * np.where(old, 1.0, np.clip(1.0 - dist_out / 1.5, 0.0, 1.0))
        out = ct.copy()
        region = vacated | halo
        out[region] = (w * fill + (1.0 - w) * ct)[region]
        changed = vacated
    elif kind == "grow":
        if not volume_change > 0:
            raise ValueError("growth needs volume_change > 0")
        # lung within 25 mm, and the old tumour's blurred edge (else a crack of old edge stays inside the growth)
        allowed = (~old) & (dist_out < 25.0) & ((ct < -400.0) | (dist_out <= 1.5))
        level = _level_for_volume(field, allowed, v0 * volume_change)
        new = (allowed & (field < level)) | old
        added = new & ~old
        tum_med, tum_sd = _local_stats(ct, old & (sdf < -0.5))
        tum_sd = min(tum_sd, 50.0)
        fill = tum_med + tum_sd * texture
        w = np.clip(ndimage.distance_transform_edt(new, sampling=spacing_kji) / 1.0, 0.0, 1.0)
        out = ct.copy()
        # also the old tumour's dark partial-volume voxels (thick prior slices), which would show as a crack
        region = added | (old & (ct < tum_med - 150.0))
        out[region] = (w * fill + (1.0 - w) * ct)[region]
        changed = added
    else:
        raise ValueError(f"kind must be 'regress' or 'grow', got {kind!r}")
    return out.astype(np.float32), new, {"kind": kind, "asked_change": volume_change,
                                         "prior_space_change": float(new.sum()) / v0 - 1.0,
                                         "changed_voxels": int(changed.sum())}


def cbct_like(image: sitk.Image, rng: np.random.Generator, noise_hu: float = 25.0, cupping_hu: float = 90.0,
              offset_hu: float = 35.0, blur_mm: float = 0.8) -> sitk.Image:
    """Degrade a CT as a cone-beam CT would look: blur, correlated noise, cupping (darker centre), HU offset."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = arr > OUTSIDE_HU + 1
    sp = image.GetSpacing()
    kji = (sp[2], sp[1], sp[0])
    arr = ndimage.gaussian_filter(arr, [blur_mm / s for s in kji])
    arr += noise_hu * _smooth_noise(rng, arr.shape, kji, 0.9).astype(np.float32)
    jj, ii = np.indices(arr.shape[1:])
    cy, cx = (arr.shape[1] - 1) / 2.0, (arr.shape[2] - 1) / 2.0
    r2 = ((jj - cy) * kji[1]) ** 2 + ((ii - cx) * kji[2]) ** 2
    r2max = float(r2.max())
    arr -= (cupping_hu * (1.0 - r2 / r2max))[None].astype(np.float32)
    arr += offset_hu
    arr[~inside] = OUTSIDE_HU
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def simulate_response(prior: sitk.Image, masks: Dict[str, sitk.Image], target: str = "GTV", *, kind: str = "regress",
                      volume_change: float = -0.5, cbct: bool = False, seed: int = 0, residue: bool = True,
                      rotation_deg: Sequence[float] = (1.0, -1.5, 4.0),
                      translation_mm: Sequence[float] = (12.0, -8.0, 6.0), deformation_mm: float = 1.5,
                      spacing: Sequence[float] = (0.7, 0.7, 2.0), noise_hu: float = 10.0,
                      fine_slice_mm: float = 1.25, direction: Optional[Sequence[float]] = None
                      ) -> Tuple[sitk.Image, Dict[str, sitk.Image], dict]:
    """A SIMULATED response follow-up of ``prior`` (see the module docstring).

    Returns ``(followup, true_masks, info)`` like ``simulate_followup``; ``info`` adds ``"response"``
    (kind, asked and achieved change) and ``"cbct"``. ``info["volume_ratio"][target]`` is the true
    follow-up volume over the ORIGINAL prior mask's volume.
    """
    if target not in masks:
        raise ValueError(f"no mask named {target!r} (have {sorted(masks)})")
    rng = np.random.default_rng([int(seed), 7])
    fine_ct, fine_masks, sdfs = _fine(prior, masks, fine_slice_mm)
    sp = fine_ct.GetSpacing()
    kji = (sp[2], sp[1], sp[0])
    ct_arr, new_mask, desc = change_tumour(sitk.GetArrayFromImage(fine_ct), sdfs[target], kji, kind, volume_change,
                                           rng, residue=residue)
    changed = sitk.GetImageFromArray(ct_arr)
    changed.CopyInformation(fine_ct)
    new_masks = dict(fine_masks)
    m = sitk.GetImageFromArray(new_mask.astype(np.uint8))
    m.CopyInformation(fine_ct)
    new_masks[target] = m
    # the other structures must not overlap the changed tumour
    for name in new_masks:
        if name != target:
            a = sitk.GetArrayFromImage(new_masks[name]).astype(bool) & ~new_mask
            x = sitk.GetImageFromArray(a.astype(np.uint8))
            x.CopyInformation(fine_ct)
            new_masks[name] = x
    followup, truth, info = simulate_followup(changed, new_masks, seed=seed, rotation_deg=rotation_deg,
                                              translation_mm=translation_mm, shrink={},
                                              deformation_mm=deformation_mm, spacing=spacing, noise_hu=noise_hu,
                                              direction=direction)
    if cbct:
        followup = cbct_like(followup, np.random.default_rng([int(seed), 11]))
    vox_fu = float(np.prod(followup.GetSpacing())) / 1000.0
    vox_prior = float(np.prod(prior.GetSpacing())) / 1000.0
    ratio = {}
    for name in masks:
        v0 = float((sitk.GetArrayViewFromImage(masks[name]) > 0).sum()) * vox_prior
        ratio[name] = float((sitk.GetArrayViewFromImage(truth[name]) > 0).sum()) * vox_fu / v0 if v0 else math.nan
    info["volume_ratio"] = ratio
    info["response"] = desc
    info["cbct"] = bool(cbct)
    info["notice"] = NOTICE
    return followup, truth, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write a SIMULATED tumour-response follow-up CT (regression by "
                                 "tissue replacement or growth into lung; optionally CBCT-like) with its true "
                                 "masks. Simulation only: not patient data.")
    ap.add_argument("--prior", required=True, type=Path)
    ap.add_argument("--labels", required=True, type=Path, help="prior labelmap on the prior's grid")
    ap.add_argument("--names", nargs="*", default=["1=GTV", "2=VertebralBody"], help="VALUE=NAME pairs")
    ap.add_argument("--target", default="GTV", help="the structure that responds (default GTV)")
    ap.add_argument("--kind", choices=("regress", "grow"), default="regress")
    ap.add_argument("--change", type=float, default=-0.5, help="volume change, e.g. -0.5 (regression) or 0.4 (growth)")
    ap.add_argument("--cbct", action="store_true", help="make the follow-up CBCT-like")
    ap.add_argument("--no-residue", action="store_true", help="regression without the faint residue")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", nargs=3, type=float, default=(0.7, 0.7, 2.0), help="follow-up voxel spacing (mm)")
    ap.add_argument("--output", required=True, type=Path)
    args = ap.parse_args(argv)
    prior = sitk.ReadImage(str(args.prior))
    labels = sitk.ReadImage(str(args.labels))
    names = {}
    for item in args.names:
        k, _, v = item.partition("=")
        names[int(k)] = v
    masks = {names.get(int(v), f"label{int(v)}"): sitk.Cast(labels == int(v), sitk.sitkUInt8)
             for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v != 0}
    fu, truth, info = simulate_response(prior, masks, args.target, kind=args.kind, volume_change=args.change,
                                        cbct=args.cbct, seed=args.seed, residue=not args.no_residue,
                                        spacing=args.spacing)
    args.output.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(fu), sitk.sitkInt16), str(args.output / "followup_ct.nrrd"), useCompression=True)
    lab = sitk.Image(fu.GetSize(), sitk.sitkUInt8)
    lab.CopyInformation(fu)
    value_of = {n: v for v, n in names.items()}
    for name, m in truth.items():
        lab = sitk.Mask(lab, sitk.Cast(m == 0, sitk.sitkUInt8)) + sitk.Cast(m * value_of.get(name, 0), sitk.sitkUInt8)
    sitk.WriteImage(lab, str(args.output / "followup_labels.nrrd"), useCompression=True)
    meta = json_info(info)
    meta["labels"] = {str(v): n for n, v in value_of.items()}
    (args.output / "simulation.json").write_text(json.dumps(meta, indent=2, default=str))
    print(f"{NOTICE}.\nwrote {args.output}: followup_ct.nrrd, followup_labels.nrrd, simulation.json")
    print("volume ratio (follow-up / prior):", {k: round(v, 3) for k, v in info["volume_ratio"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
