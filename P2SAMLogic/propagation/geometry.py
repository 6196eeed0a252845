"""Geometry of registration: points and voxel indices, fields of view, linear transforms, crops, and
images and masks carried through a transform.

Conventions (as in :mod:`.registration`): images are ``SimpleITK.Image`` in LPS millimetres, arrays
``[k, j, i]``; every transform maps FOLLOW-UP (fixed) physical points to PRIOR (moving) physical points.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError


def _check_3d(image: sitk.Image, name: str) -> None:
    if image.GetDimension() != 3:
        raise InputError(name, f"expected a 3-D image, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(name, "expected a scalar (grey-level) image, got a vector/colour image")
    if min(image.GetSize()) < 2:
        raise InputError(name, f"image too small to register: size {image.GetSize()}")


def _as_float(image: sitk.Image) -> sitk.Image:
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def _shrink_to(image: sitk.Image, target_mm: float) -> sitk.Image:
    """``BinShrink`` (block average) each axis to about ``target_mm`` (never finer than native)."""
    factors = [max(1, int(round(target_mm / s))) for s in image.GetSpacing()]
    factors = [min(f, max(1, n // 4)) for f, n in zip(factors, image.GetSize())]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _centroid(mask: sitk.Image) -> Optional[np.ndarray]:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return None
    return np.array(stats.GetCentroid(1))


def _index_to_physical(image: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """``N x 3`` LPS points (mm) of voxel indices given as ``N x 3`` ``[k, j, i]`` rows."""
    ijk = np.asarray(kji, dtype=float)[:, ::-1]
    d = np.array(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (ijk * np.asarray(image.GetSpacing())) @ d.T


def _physical_to_continuous_index(image: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """``N x 3`` continuous ``(i, j, k)`` indices of ``N x 3`` LPS points."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    return ((np.asarray(pts, dtype=float) - np.asarray(image.GetOrigin())) @ d) / np.asarray(image.GetSpacing())


def _inside_fov(image: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """``bool [N]``: LPS points inside ``image``'s field of view (voxel centres +- half a voxel)."""
    idx = _physical_to_continuous_index(image, pts)
    size = np.asarray(image.GetSize(), dtype=float)
    return np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1)


def _linear_parts(transform: sitk.Transform) -> Tuple[np.ndarray, np.ndarray]:
    """``(M, b)`` with ``transform(x) = M @ x + b`` (exact for linear transforms)."""
    b = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    m = np.stack([np.array(transform.TransformPoint(tuple(float(v) for v in e))) - b for e in np.eye(3)], axis=1)
    return m, b


def _apply_linear(transform: sitk.Transform, pts: np.ndarray) -> np.ndarray:
    """``transform`` applied to ``N x 3`` points (vectorised; linear transforms only)."""
    mat, off = _linear_parts(transform)
    return np.asarray(pts, dtype=float) @ mat.T + off


def _mask_corners(mask: sitk.Image) -> Optional[np.ndarray]:
    """``8 x 3`` LPS corners of the bounding box of the non-zero voxels of ``mask`` (or ``None``)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return None
    bb = stats.GetBoundingBox(1)  # i0, j0, k0, si, sj, sk
    lo = np.array(bb[:3], dtype=float)
    hi = lo + np.array(bb[3:], dtype=float) - 1
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return _index_to_physical(mask, corners[:, ::-1])


def _crop_around(image: sitk.Image, pts: np.ndarray, margin_mm: float) -> Optional[sitk.Image]:
    """``image`` cropped to the index box holding LPS points ``pts`` plus ``margin_mm`` (``None`` if outside)."""
    idx = _physical_to_continuous_index(image, pts)
    pad = margin_mm / np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    lo = np.maximum(np.floor(idx.min(0) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(0) + pad), size - 1).astype(int)
    if np.any(hi - lo < 3):
        return None
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo + 1], [int(v) for v in lo])


def _recentred(tx: sitk.Euler3DTransform, centre: Sequence[float]) -> sitk.Euler3DTransform:
    """The same mapping as ``tx`` with its rotation centre moved to ``centre`` (fixed space, mm)."""
    c = np.asarray(centre, dtype=float)
    out = sitk.Euler3DTransform()
    out.SetCenter([float(v) for v in c])
    out.SetRotation(tx.GetAngleX(), tx.GetAngleY(), tx.GetAngleZ())
    out.SetTranslation([float(v) for v in np.asarray(tx.TransformPoint([float(v) for v in c])) - c])
    return out


def resample_to(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                interpolator=sitk.sitkLinear, default: float = 0.0) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid: output voxel at follow-up point ``x`` = ``image(transform(x))``.

    The output keeps ``image``'s pixel type; voxels mapping outside ``image`` get ``default``.
    """
    return sitk.Resample(image, reference, transform, interpolator, float(default), image.GetPixelID())


def warp_mask(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Binary ``mask`` (prior space) carried onto ``reference``'s geometry through ``transform`` (reference -> mask points).

    Linear interpolation of the 0/1 mask as ``float32``, then ``>= 0.5``. Returns ``sitkUInt8`` 0/1
    with exactly ``reference``'s size, origin, spacing and direction.
    """
    binary = sitk.Cast(mask > 0, sitk.sitkFloat32)
    warped = sitk.Resample(binary, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(warped >= 0.5, sitk.sitkUInt8)


def _invert_points(transform: sitk.Transform, fixed: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """Follow-up points ``x`` with ``transform(x) ~ pts`` (``N x 3`` LPS), for any (smooth) transform.

    Linear transforms are inverted exactly. Otherwise the transform is sampled on a coarse grid over the
    follow-up (``TransformToDisplacementField``), an affine fit gives a first guess, and a fixed-point
    iteration ``x += A^-1 (p - T(x))`` refines it (mapping outside the grid uses its nearest edge).
    """
    if transform.IsLinear():
        mat, off = _linear_parts(transform)
        return np.linalg.solve(mat, (pts - off).T).T
    from scipy import ndimage  # local: only this path needs it

    size = np.asarray(fixed.GetSize())
    factor = np.maximum(1, np.ceil(size / 48.0)).astype(int)
    csize = (size - 1) // factor + 2
    spacing = np.asarray(fixed.GetSpacing()) * factor
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, [int(v) for v in csize],
                                              fixed.GetOrigin(), [float(v) for v in spacing], fixed.GetDirection())
    disp = sitk.GetArrayFromImage(field)  # [k, j, i, 3]
    kji = np.argwhere(np.ones(disp.shape[:3], dtype=bool))
    grid = _index_to_physical(field, kji)
    mapped = grid + disp.reshape(-1, 3)
    design = np.hstack([grid, np.ones((len(grid), 1))])
    coef = np.linalg.lstsq(design, mapped, rcond=None)[0]  # mapped ~ grid @ A.T + b
    a_mat, b_vec = coef[:3].T, coef[3]
    a_inv = np.linalg.inv(a_mat)
    x = (pts - b_vec) @ a_inv.T
    for _ in range(20):
        idx = _physical_to_continuous_index(field, x)
        coords = [idx[:, 2], idx[:, 1], idx[:, 0]]
        d = np.stack([ndimage.map_coordinates(disp[..., c], coords, order=1, mode="nearest") for c in range(3)], 1)
        resid = pts - (x + d)
        x = x + resid @ a_inv.T
        if np.abs(resid).max() < 1e-3:
            break
    return x


def overlap_fraction(moving_mask: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> float:
    """Fraction of ``moving_mask``'s voxels that fall inside ``fixed``'s field of view through ``transform``.

    ``transform`` maps fixed (follow-up) points to moving (prior) points, so voxels are carried back by its
    inverse (exact for linear transforms, numerical otherwise: see :func:`_invert_points`); "inside" means
    within half a voxel of the follow-up's voxel centres. Returns ``0.0`` for an empty mask.
    """
    kji = np.argwhere(sitk.GetArrayViewFromImage(moving_mask) > 0)
    if kji.size == 0:
        return 0.0
    kji = kji[:: max(1, len(kji) // 200000)]
    back = _invert_points(transform, fixed, _index_to_physical(moving_mask, kji))
    return float(_inside_fov(fixed, back).mean())
