#!/usr/bin/env python
"""SIMULATED follow-up scans: a prior CT re-imaged through a known rigid motion and deformation.

**This is a simulation, not patient data.** It exists so that registration and
propagation can be tested against a known ground truth. A simulated follow-up is the
prior CT itself, moved rigidly, deformed smoothly, with one or more structures made
smaller by a local radial deformation, resampled on a new grid (other spacing, field of
view, origin and optionally direction) with Gaussian noise added. Real follow-ups differ in
many more ways (breathing, contrast, new anatomy, different scanner and reconstruction).

Model (all points LPS mm)
-------------------------
``followup(x) = prior(phi(x))`` with ``phi = D o A``:

* ``A`` — rigid ``sitk.Euler3DTransform`` (follow-up point -> prior point): rotation
  ``rotation_deg`` (Euler angles X, Y, Z) about the prior's field-of-view centre, then
  translation ``translation_mm``.
* ``D(y) = y + u(y)`` — a displacement field on a ~2 mm grid over the prior, sum of

  - for every structure ``s`` in ``shrink`` (volume fraction ``f`` lost): a radial *expansion*
    around the structure's centroid ``c``, ``(k - 1) (y - c) w(|y - c|)`` with
    ``k = (1 - f) ** (-1/3)``, ``w = 1`` inside a core ball holding the whole structure and a cosine
    taper to 0 outside. Because ``phi`` expands around ``c``, the structure *shrinks* in the
    follow-up by exactly ``1 - f`` in volume (up to voxelisation);
  - a smooth random field (Gaussian-smoothed noise, length scale ``deformation_scale_mm``,
    maximum magnitude ``deformation_mm``), made constant (a pure shift) inside each shrinking
    structure's core so it does not change that structure's volume.

The true follow-up masks are the prior masks carried by the same ``phi`` (linear
interpolation of 0/1, ``>= 0.5``) onto the follow-up grid. The follow-up CT is ``float32``
HU, ``-1024`` where ``phi(x)`` falls outside the prior, plus noise of ``noise_hu`` elsewhere.
Everything is deterministic for a given ``seed``.

CLI::

    python Testing/Tools/simulate_followup.py --prior Testing/Data/lung1_crop/prior_ct.nrrd \\
        --labels Testing/Data/lung1_crop/prior_labels.nrrd --names 1=GTV 2=VertebralBody --output out/sim
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

#: value outside the prior's field of view (HU of air)
OUTSIDE_HU = -1024.0
#: fraction of the mapped prior field of view cut away on the low / high side of each follow-up axis
FOV_CUT_LOW = (0.06, 0.03, 0.10)
FOV_CUT_HIGH = (0.02, 0.07, 0.05)
#: the follow-up field of view keeps at least this much (mm) around every structure
STRUCTURE_KEEP_MM = 20.0

NOTICE = ("SIMULATED follow-up (not patient data): the prior CT moved rigidly, smoothly deformed, "
          "with structures shrunk by a local radial deformation, resampled and noised")


# --------------------------------------------------------------------------- geometry helpers

def _direction_matrix(direction) -> np.ndarray:
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        raise ValueError("direction must be an orthonormal 3 x 3 matrix (9 values, row-major)")
    return d


def _voxel_points(image: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """``N x 3`` LPS points of ``N x 3`` ``[k, j, i]`` voxel indices."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    ijk = np.asarray(kji, dtype=float)[:, ::-1]
    return np.asarray(image.GetOrigin()) + (ijk * np.asarray(image.GetSpacing())) @ d.T


def _corners(image: sitk.Image) -> np.ndarray:
    s = np.asarray(image.GetSize()) - 1
    kji = np.array([[k, j, i] for i in (0, s[0]) for j in (0, s[1]) for k in (0, s[2])])
    return _voxel_points(image, kji)


def _fov_centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))


def _rigid(centre: np.ndarray, rotation_deg, translation_mm) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetCenter([float(v) for v in centre])
    t.SetRotation(*[math.radians(float(a)) for a in rotation_deg])
    t.SetTranslation([float(v) for v in translation_mm])
    return t


def _apply_linear(t: sitk.Transform, pts: np.ndarray) -> np.ndarray:
    b = np.array(t.TransformPoint((0.0, 0.0, 0.0)))
    m = np.stack([np.array(t.TransformPoint(tuple(float(v) for v in e))) - b for e in np.eye(3)], axis=1)
    return pts @ m.T + b


# --------------------------------------------------------------------------- deformation

def _taper(r: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """1 for ``r <= r0``, cosine down to 0 at ``r1``, 0 beyond."""
    t = np.clip((r - r0) / (r1 - r0), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _smooth_random_field(rng: np.random.Generator, shape: Tuple[int, int, int], spacing_mm: float,
                         scale_mm: float) -> np.ndarray:
    """``3 x nz x ny x nx`` smooth random vectors, max magnitude 1.

    Gaussian-smoothed white noise (sigma ``scale_mm``) on a coarse grid (``scale_mm / 5``), then linear
    upsampling onto the ``shape`` grid of spacing ``spacing_mm`` (both grids start at the same point).
    """
    coarse_mm = max(scale_mm / 5.0, spacing_mm)
    cshape = tuple(int(math.ceil((n - 1) * spacing_mm / coarse_mm)) + 3 for n in shape)
    fine = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkFloat32)
    fine.SetSpacing([float(spacing_mm)] * 3)
    comps = []
    for _ in range(3):
        noise = ndimage.gaussian_filter(rng.standard_normal(cshape), scale_mm / coarse_mm, mode="wrap")
        coarse = sitk.GetImageFromArray(noise.astype(np.float32))
        coarse.SetSpacing([float(coarse_mm)] * 3)
        coarse.SetOrigin([-coarse_mm] * 3)
        comps.append(sitk.GetArrayFromImage(sitk.Resample(coarse, fine, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                          sitk.sitkFloat32)).astype(np.float64))
    field = np.stack(comps)
    peak = float(np.sqrt((field ** 2).sum(0)).max())
    return field / peak if peak > 0 else field


def _field_at(field: np.ndarray, origin: np.ndarray, spacing: float, p: np.ndarray) -> np.ndarray:
    """Linear interpolation of a ``3 x nz x ny x nx`` field (axis-aligned LPS grid) at one point."""
    idx = (np.asarray(p) - origin) / spacing
    coords = [[idx[2]], [idx[1]], [idx[0]]]
    return np.array([ndimage.map_coordinates(field[c], coords, order=1, mode="nearest")[0] for c in range(3)])


def _build_deformation(prior: sitk.Image, masks: Dict[str, sitk.Image], shrink: Dict[str, float], rng,
                       deformation_mm: float, deformation_scale_mm: float, field_spacing_mm: float):
    """The displacement field ``u`` on an axis-aligned LPS grid over the prior (+10 mm), and its description."""
    corners = _corners(prior)
    lo, hi = corners.min(0) - 10.0, corners.max(0) + 10.0
    spacing = float(field_spacing_mm)
    while np.prod(np.ceil((hi - lo) / spacing) + 1) > 6e6:
        spacing *= 1.25
    nx, ny, nz = (int(v) for v in np.ceil((hi - lo) / spacing) + 1)
    zz, yy, xx = np.meshgrid(*[lo[a] + spacing * np.arange(n) for a, n in ((2, nz), (1, ny), (0, nx))],
                             indexing="ij")
    pos = np.stack([xx, yy, zz])  # 3 x nz x ny x nx, LPS mm

    if deformation_mm > 0:
        rand = deformation_mm * _smooth_random_field(rng, (nz, ny, nx), spacing, deformation_scale_mm)
    else:
        rand = np.zeros((3, nz, ny, nx))
    u = np.zeros_like(pos)
    described = {}
    for name, fraction in shrink.items():
        arr = sitk.GetArrayViewFromImage(masks[name]) > 0
        kji = np.argwhere(arr)
        if kji.size == 0:
            raise ValueError(f"structure {name!r} is empty: cannot shrink it")
        pts = _voxel_points(masks[name], kji)
        centre = pts.mean(0)
        half_voxel = 0.5 * float(np.linalg.norm(masks[name].GetSpacing()))
        r_struct = float(np.linalg.norm(pts - centre, axis=1).max()) + half_voxel
        k = (1.0 - float(fraction)) ** (-1.0 / 3.0)
        r0 = r_struct + deformation_mm + 2.0
        r1 = r0 + (r0 + 10.0) * max(1.0, 3.0 * (k - 1.0) / 0.3)
        rel = pos - centre[:, None, None, None]
        w = _taper(np.sqrt((rel ** 2).sum(0)), r0, r1)
        shift = _field_at(rand, lo, spacing, centre)
        rand = rand + w[None] * (shift[:, None, None, None] - rand)
        u += (k - 1.0) * rel * w[None]
        described[name] = {"centre_mm": centre.tolist(), "scale_factor": k, "core_radius_mm": r0,
                           "taper_radius_mm": r1, "random_shift_mm": shift.tolist()}
    u += rand
    # Jacobian determinant of y -> y + u(y) (must stay positive: the map is invertible)
    grads = [np.gradient(u[c], spacing) for c in range(3)]  # grads[c][axis z, y, x]
    jac = np.empty((3, 3) + u.shape[1:])
    for c in range(3):
        for a, g in zip((2, 1, 0), grads[c]):
            jac[c, a] = g
    jac += np.eye(3)[:, :, None, None, None]
    det = (jac[0, 0] * (jac[1, 1] * jac[2, 2] - jac[1, 2] * jac[2, 1])
           - jac[0, 1] * (jac[1, 0] * jac[2, 2] - jac[1, 2] * jac[2, 0])
           + jac[0, 2] * (jac[1, 0] * jac[2, 1] - jac[1, 1] * jac[2, 0]))
    if float(det.min()) <= 0.05:
        raise ValueError(f"the simulated deformation folds (minimum Jacobian {float(det.min()):.3f}): "
                         "use a smaller shrink or deformation_mm, or a larger deformation_scale_mm")
    field = sitk.GetImageFromArray(np.moveaxis(u, 0, -1).astype(np.float64), isVector=True)
    field.SetOrigin([float(v) for v in lo])
    field.SetSpacing([spacing] * 3)
    info = {"field_spacing_mm": spacing, "min_jacobian": float(det.min()),
            "max_displacement_mm": float(np.sqrt((u ** 2).sum(0)).max()),
            "max_random_displacement_mm": float(np.sqrt((rand ** 2).sum(0)).max()), "structures": described}
    return field, info


# --------------------------------------------------------------------------- follow-up grid

def _followup_grid(prior: sitk.Image, masks: Dict[str, sitk.Image], rigid: sitk.Euler3DTransform, spacing,
                   size, direction: np.ndarray, origin) -> sitk.Image:
    """An empty ``float32`` image with the follow-up geometry."""
    inv = rigid.GetInverse()
    q = _apply_linear(inv, _corners(prior)) @ direction  # follow-up frame coordinates
    qlo, qhi = q.min(0), q.max(0)
    ext = qhi - qlo
    lo = qlo + np.asarray(FOV_CUT_LOW) * ext
    hi = qhi - np.asarray(FOV_CUT_HIGH) * ext
    s_lo, s_hi = np.full(3, np.inf), np.full(3, -np.inf)
    for mask in masks.values():  # keep every structure (+ margin) inside the follow-up
        kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
        if kji.size:
            sq = _apply_linear(inv, _voxel_points(mask, kji[:: max(1, len(kji) // 5000)])) @ direction
            s_lo = np.minimum(s_lo, np.maximum(sq.min(0) - STRUCTURE_KEEP_MM, qlo))
            s_hi = np.maximum(s_hi, np.minimum(sq.max(0) + STRUCTURE_KEEP_MM, qhi))
    has_structures = bool(np.all(np.isfinite(s_lo)))
    if has_structures:
        lo, hi = np.minimum(lo, s_lo), np.maximum(hi, s_hi)
    spacing = np.asarray(spacing, dtype=float)
    if size is None:
        size = (np.floor((hi - lo) / spacing) + 1).astype(int)
    size = np.asarray(size, dtype=int)
    if origin is None:
        centre_q = 0.5 * (lo + hi)
        half = 0.5 * (size - 1) * spacing
        if has_structures:  # a given (smaller) size: slide the box so that it holds the structures if it can
            for a in range(3):
                if s_hi[a] - s_lo[a] >= 2 * half[a]:
                    centre_q[a] = 0.5 * (s_lo[a] + s_hi[a])
                elif centre_q[a] - half[a] > s_lo[a]:
                    centre_q[a] = s_lo[a] + half[a]
                elif centre_q[a] + half[a] < s_hi[a]:
                    centre_q[a] = s_hi[a] - half[a]
        origin = direction @ (centre_q - half)
    ref = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    ref.SetSpacing([float(v) for v in spacing])
    ref.SetDirection([float(v) for v in direction.ravel()])
    ref.SetOrigin([float(v) for v in origin])
    return ref


def _warp_binary(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform, rigid: sitk.Transform,
                 pad_mm: float) -> Tuple[sitk.Image, float]:
    """Mask carried onto ``reference`` (linear interpolation of 0/1, >= 0.5), resampling only near the structure.

    Also returns the "soft" volume (ml): the sum of the interpolated fractions times the voxel volume.
    """
    out = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(reference)
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if kji.size == 0:
        return out, 0.0
    pts = _apply_linear(rigid.GetInverse(), _voxel_points(mask, kji))
    d = np.array(reference.GetDirection()).reshape(3, 3)
    idx = ((pts - np.asarray(reference.GetOrigin())) @ d) / np.asarray(reference.GetSpacing())
    pad = pad_mm / np.asarray(reference.GetSpacing())
    size = np.asarray(reference.GetSize())
    lo = np.clip(np.floor(idx.min(0) - pad), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(0) + pad), 0, size - 1).astype(int)
    sub = sitk.Image([int(v) for v in hi - lo + 1], sitk.sitkFloat32)
    sub.SetSpacing(reference.GetSpacing())
    sub.SetDirection(reference.GetDirection())
    sub.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    warped = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkFloat32), sub, transform, sitk.sitkLinear, 0.0,
                           sitk.sitkFloat32)
    soft_ml = float(sitk.GetArrayViewFromImage(warped).sum()) * float(np.prod(reference.GetSpacing())) / 1000.0
    return sitk.Paste(out, sitk.Cast(warped >= 0.5, sitk.sitkUInt8), warped.GetSize(), [0, 0, 0],
                      [int(v) for v in lo]), soft_ml


def _volume_ml(mask: sitk.Image) -> float:
    return float((sitk.GetArrayViewFromImage(mask) > 0).sum()) * float(np.prod(mask.GetSpacing())) / 1000.0


# --------------------------------------------------------------------------- public API

def simulate_followup(prior: sitk.Image, masks: Dict[str, sitk.Image], *, seed: int = 0,
                      rotation_deg: Sequence[float] = (1.0, -1.5, 4.0),
                      translation_mm: Sequence[float] = (12.0, -8.0, 6.0),
                      shrink: Optional[Dict[str, float]] = None, deformation_mm: float = 2.0,
                      spacing: Sequence[float] = (0.7, 0.7, 3.0), size: Optional[Sequence[int]] = None,
                      direction: Optional[Sequence[float]] = None, noise_hu: float = 10.0,
                      origin: Optional[Sequence[float]] = None, deformation_scale_mm: float = 40.0,
                      field_spacing_mm: float = 2.0) -> Tuple[sitk.Image, Dict[str, sitk.Image], dict]:
    """Make a SIMULATED follow-up of ``prior`` with known ground truth (see the module docstring).

    Args:
        prior: prior CT (HU, any pixel type, LPS).
        masks: prior structures ``name -> binary image`` on the prior's grid (any integer type).
        seed: seeds the random deformation and the noise (same seed, same output).
        rotation_deg, translation_mm: the rigid part ``A`` (follow-up point -> prior point), rotation
            about the prior's field-of-view centre (``info["rotation_centre_mm"]``).
        shrink: ``name -> volume fraction lost`` (``0 <= f < 0.9``). ``None`` means ``{"GTV": 0.25}``
            when a ``"GTV"`` mask is given, else no shrinking. ``{}`` shrinks nothing.
        deformation_mm: maximum magnitude of the smooth random displacement (0 = none).
        spacing: follow-up voxel spacing (mm).
        size: follow-up size ``(i, j, k)``; ``None`` covers most of the prior's (moved) field of view,
            cut asymmetrically (:data:`FOV_CUT_LOW` / :data:`FOV_CUT_HIGH`) but keeping 20 mm around
            every structure, so the follow-up's field of view and origin differ from the prior's.
        direction: follow-up direction cosines (9 values, row-major, like SimpleITK); ``None`` = identity.
        noise_hu: standard deviation of the Gaussian noise added inside the field of view.
        origin: follow-up origin (LPS mm); ``None`` centres the grid on the chosen field of view (with a
            given ``size`` too small for it, slid so that it still holds the structures where possible).
        deformation_scale_mm: length scale (Gaussian sigma) of the random field.
        field_spacing_mm: grid spacing of the displacement field.

    Returns:
        ``(followup_ct, followup_masks, info)``: ``float32`` HU image (outside = -1024); the true masks
        (``sitkUInt8`` 0/1) on the follow-up grid; ``info`` with ``"rigid_transform"`` (the exact
        ``A``), ``"transform"`` (``sitk.CompositeTransform`` ``phi = D o A``, follow-up -> prior points),
        ``"rotation_deg"``, ``"translation_mm"``, ``"rotation_centre_mm"``, ``"volume_ratio"`` (true
        follow-up mask volume / prior mask volume per structure; for a structure only a few slices thick
        this carries the voxelisation error of the new slice grid, e.g. +-0.05 for lung1's 3-slice GTV),
        ``"volume_ratio_soft"`` (the same with the interpolated fractions summed before thresholding:
        close to ``1 - shrink``), ``"shrink_asked"``, ``"shrink_achieved"``,
        ``"deformation"`` (field details, per-structure centre / shift, minimum Jacobian), ``"geometry"``,
        ``"seed"``, ``"noise_hu"`` and ``"notice"``.
    """
    if prior.GetDimension() != 3:
        raise ValueError("prior must be a 3-D image")
    masks = dict(masks)
    if shrink is None:
        shrink = {"GTV": 0.25} if "GTV" in masks else {}
    for name, fraction in shrink.items():
        if name not in masks:
            raise ValueError(f"cannot shrink {name!r}: no such mask (have {sorted(masks)})")
        if not 0.0 <= float(fraction) < 0.9:
            raise ValueError(f"shrink fraction of {name!r} must be in [0, 0.9), got {fraction}")
    for name, m in masks.items():
        if tuple(m.GetSize()) != tuple(prior.GetSize()):
            raise ValueError(f"mask {name!r} is not on the prior's grid")
    rng = np.random.default_rng(seed)
    dir_m = _direction_matrix(direction)
    centre = _fov_centre(prior)
    rigid = _rigid(centre, rotation_deg, translation_mm)

    field, deform_info = _build_deformation(prior, masks, shrink, rng, float(deformation_mm),
                                            float(deformation_scale_mm), float(field_spacing_mm))
    deformation = sitk.DisplacementFieldTransform(field)
    transform = sitk.CompositeTransform([deformation, sitk.Euler3DTransform(rigid)])  # D(A(x))

    ref = _followup_grid(prior, masks, rigid, spacing, size, dir_m, origin)
    sentinel = -1.0e6
    ct = sitk.Resample(sitk.Cast(prior, sitk.sitkFloat32), ref, transform, sitk.sitkLinear, sentinel,
                       sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(ct)
    inside = arr > sentinel / 2
    noise_rng = np.random.default_rng([int(seed), 1])
    if noise_hu > 0:
        arr[inside] += (noise_rng.standard_normal(int(inside.sum())) * float(noise_hu)).astype(np.float32)
    arr[~inside] = OUTSIDE_HU
    followup = sitk.GetImageFromArray(arr.astype(np.float32))
    followup.CopyInformation(ref)

    pad = 10.0 + 2.0 * float(deformation_mm) + max(s["core_radius_mm"] for s in deform_info["structures"].values()) \
        if deform_info["structures"] else 10.0 + 2.0 * float(deformation_mm)
    out_masks, ratio, soft_ratio = {}, {}, {}
    for name, m in masks.items():
        out_masks[name], soft_ml = _warp_binary(m, followup, transform, rigid, pad)
        v0 = _volume_ml(m)
        ratio[name] = _volume_ml(out_masks[name]) / v0 if v0 > 0 else float("nan")
        soft_ratio[name] = soft_ml / v0 if v0 > 0 else float("nan")

    info = {
        "notice": NOTICE,
        "seed": int(seed),
        "rotation_deg": [float(v) for v in rotation_deg],
        "translation_mm": [float(v) for v in translation_mm],
        "rotation_centre_mm": [float(v) for v in centre],
        "rigid_transform": rigid,
        "transform": transform,
        "shrink_asked": {k: float(v) for k, v in shrink.items()},
        "volume_ratio": ratio,
        "volume_ratio_soft": soft_ratio,
        "shrink_achieved": {k: 1.0 - ratio[k] for k in shrink},
        "deformation_mm": float(deformation_mm),
        "deformation_scale_mm": float(deformation_scale_mm),
        "deformation": deform_info,
        "noise_hu": float(noise_hu),
        "geometry": {"size": list(followup.GetSize()), "origin": list(followup.GetOrigin()),
                     "spacing": list(followup.GetSpacing()), "direction": list(followup.GetDirection())},
    }
    return followup, out_masks, info


def json_info(info: dict) -> dict:
    """``info`` without its SimpleITK transforms (JSON-serialisable)."""
    return {k: v for k, v in info.items() if k not in ("rigid_transform", "transform")}


# --------------------------------------------------------------------------- CLI

def _parse_pairs(items, cast):
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key] = cast(value)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a SIMULATED follow-up CT (with true masks and the true transform) from a prior CT "
                    "and its labelmap. Simulation only: not patient data.")
    parser.add_argument("--prior", required=True, type=Path, help="prior CT (nrrd, nii, mha...)")
    parser.add_argument("--labels", required=True, type=Path, help="prior labelmap on the prior's grid")
    parser.add_argument("--names", nargs="*", default=["1=GTV", "2=VertebralBody"],
                        help="label value names, VALUE=NAME (default: %(default)s); other labels become labelV")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rotation-deg", nargs=3, type=float, default=(1.0, -1.5, 4.0))
    parser.add_argument("--translation-mm", nargs=3, type=float, default=(12.0, -8.0, 6.0))
    parser.add_argument("--shrink", nargs="*", default=None,
                        help="NAME=FRACTION volume fraction lost (default: GTV=0.25 when a GTV exists)")
    parser.add_argument("--deformation-mm", type=float, default=2.0)
    parser.add_argument("--spacing", nargs=3, type=float, default=(0.7, 0.7, 3.0))
    parser.add_argument("--size", nargs=3, type=int, default=None)
    parser.add_argument("--direction", nargs=9, type=float, default=None, help="9 direction cosines, row-major")
    parser.add_argument("--noise-hu", type=float, default=10.0)
    args = parser.parse_args(argv)

    prior = sitk.ReadImage(str(args.prior))
    labels = sitk.ReadImage(str(args.labels))
    names = {int(k): v for k, v in _parse_pairs(args.names, str).items()}
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v != 0]
    masks = {names.get(v, f"label{v}"): sitk.Cast(labels == v, sitk.sitkUInt8) for v in values}
    shrink = None if args.shrink is None else _parse_pairs(args.shrink, float)
    followup, fmasks, info = simulate_followup(
        prior, masks, seed=args.seed, rotation_deg=args.rotation_deg, translation_mm=args.translation_mm,
        shrink=shrink, deformation_mm=args.deformation_mm, spacing=args.spacing, size=args.size,
        direction=args.direction, noise_hu=args.noise_hu)

    args.output.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(followup), sitk.sitkInt16), str(args.output / "followup_ct.nrrd"),
                    useCompression=True)
    lab = sitk.Image(followup.GetSize(), sitk.sitkUInt8)
    lab.CopyInformation(followup)
    value_of = {names.get(v, f"label{v}"): v for v in values}
    for name, m in fmasks.items():
        lab = sitk.Mask(lab, sitk.Cast(m == 0, sitk.sitkUInt8)) + sitk.Cast(m * value_of[name], sitk.sitkUInt8)
    sitk.WriteImage(lab, str(args.output / "followup_labels.nrrd"), useCompression=True)
    sitk.WriteTransform(info["rigid_transform"], str(args.output / "rigid_followup_to_prior.tfm"))
    sitk.WriteTransform(info["transform"], str(args.output / "transform_followup_to_prior.h5"))
    meta = json_info(info)
    meta["labels"] = {str(v): n for n, v in value_of.items()}
    (args.output / "simulation.json").write_text(json.dumps(meta, indent=2))
    print(f"{NOTICE}.\nwrote {args.output}: followup_ct.nrrd, followup_labels.nrrd, "
          f"rigid_followup_to_prior.tfm, transform_followup_to_prior.h5, simulation.json")
    print("volume ratio (follow-up / prior):", {k: round(v, 3) for k, v in info["volume_ratio"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
