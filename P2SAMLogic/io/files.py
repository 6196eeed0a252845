"""Helpers shared by the 3D readers and writers: file names and extensions, index-to-LPS
geometry, and putting a mask on the reference image's grid."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import same_geometry


PathLike = Union[str, Path]


#: file volumes SimpleITK reads (besides DICOM series folders)
VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


#: segmentation outputs: extension -> kind returned by :func:`output_kind` (the default for that extension)
OUTPUT_EXTENSIONS = ((".seg.nrrd", "seg.nrrd"), (".nii.gz", "nifti"), (".nii", "nifti"), (".dcm", "dicom-seg"))
#: every output kind -> the extensions it may be written with (``rtstruct``: asked for explicitly)
OUTPUT_KINDS = {"seg.nrrd": (".seg.nrrd",), "nifti": (".nii.gz", ".nii"), "dicom-seg": (".dcm",),
                "rtstruct": (".dcm",)}


_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _lower_name(path: PathLike) -> str:
    return os.path.basename(str(path)).lower()


def _strip_volume_extension(path: PathLike) -> str:
    """``path`` without its image extension (``.seg.nrrd``, ``.nii.gz``, ``.nrrd``...)."""
    p = str(path)
    low = p.lower()
    for ext in (".seg.nrrd", ".nii.gz") + VOLUME_EXTENSIONS + (".dcm",):
        if low.endswith(ext):
            return p[: -len(ext)]
    return os.path.splitext(p)[0]


def _index_to_lps(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """``(M, o)`` with ``lps = M @ [i, j, k] + o``: M = direction x diag(spacing) (3 x 3), o the origin."""
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return d * np.array(image.GetSpacing(), dtype=np.float64)[None, :], np.array(image.GetOrigin(), dtype=np.float64)


def _looks_like_dicom(path: PathLike) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_candidate(path: PathLike) -> bool:
    """DICOM preamble, or a ``.dcm``/``.ima``/extension-less file (tried with pydicom)."""
    if _looks_like_dicom(path):
        return True
    name = _lower_name(path)
    return name.endswith((".dcm", ".ima", ".dicom")) or "." not in name


def _float_list(value) -> List[float]:
    return [float(v) for v in value]


def _sitk_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        line = line.strip()
        if line:
            return line[:200]
    return exc.__class__.__name__


def _check_3d(path: PathLike, dimension: int, size: Sequence[int], components: int) -> None:
    if dimension == 2 or (dimension >= 3 and size[2] == 1 and (dimension == 3 or size[3] == 1)):
        raise InputError(path, "is a 2D image; a volume is needed")
    if dimension == 4 and size[3] > 1:
        raise InputError(path, f"is a 4D image ({size[3]} volumes); a single 3D volume is needed")
    if dimension not in (3, 4):
        raise InputError(path, f"is a {dimension}D image; a 3D volume is needed")
    if components != 1:
        raise InputError(path, f"has {components} values per voxel (colour or vector image); "
                               "a scalar volume is needed")


def _select(path: PathLike, available: List[str], names: Optional[Sequence[str]]) -> List[int]:
    """Indices into ``available`` for ``names`` (all when None)."""
    if names is None:
        return list(range(len(available)))
    out = []
    for n in names:
        if n not in available:
            raise InputError(path, f"has no segment {n!r}; available segments: "
                                   + ", ".join(repr(a) for a in available))
        out.append(available.index(n))
    return out


def _to_reference(path: PathLike, name: str, mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``mask`` (sitkUInt8 0/1, any geometry) on ``reference``'s grid; errors when empty or outside."""
    arr = sitk.GetArrayViewFromImage(mask)
    if not arr.any():
        raise InputError(path, f"segment '{name}' is empty")
    if same_geometry(mask, reference):
        out = sitk.Cast(mask, sitk.sitkUInt8)
    else:
        out = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    kept = int(np.count_nonzero(sitk.GetArrayViewFromImage(out)))
    if not kept:
        raise InputError(path, f"segment '{name}' lies outside the prior image (none of its voxels falls "
                               "inside the prior image's grid)")
    outside = outside_fraction(arr, mask, reference)
    if outside > 0.0:
        warnings.warn(f"{path}: segment '{name}' lies partly outside the prior image ({100 * outside:.0f}% of its "
                      "voxels fall beyond the prior image's grid); only the part inside is used, so the structure "
                      "is cut there", stacklevel=3)
    out = sitk.Cast(out > 0, sitk.sitkUInt8)
    out.CopyInformation(reference)
    return out


def outside_fraction(array: np.ndarray, grid: sitk.Image, reference: sitk.Image) -> float:
    """Share of the non-zero voxels of ``array`` (``[k, j, i]`` on ``grid``) whose centres fall outside
    ``reference``'s voxel grid (beyond half a voxel from its outer voxel centres); 0.0 when all are inside."""
    kji = np.argwhere(np.asarray(array) != 0)
    if kji.size == 0:
        return 0.0
    if same_geometry(grid, reference):
        return 0.0
    m, o = _index_to_lps(grid)
    pts = kji[:, ::-1].astype(np.float64) @ m.T + o
    rm, ro = _index_to_lps(reference)
    idx = (pts - ro) @ np.linalg.inv(rm).T
    size = np.asarray(reference.GetSize(), dtype=np.float64)
    inside = np.all((idx >= -0.5 - 1e-6) & (idx <= size - 0.5 + 1e-6), axis=1)
    return float(1.0 - inside.mean())


def _physical_box(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS box (mm) around the voxels of ``image`` (their outer faces, not their centres)."""
    size = np.array(image.GetSize(), dtype=np.float64)
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (np.array(bits) * size - 0.5)])
               for bits in np.ndindex(2, 2, 2)]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def grid_overlap(source: sitk.Image, reference: sitk.Image) -> Tuple[float, float]:
    """``(share of source's box inside reference's, share of reference's box covered by source's)``, 0..1."""
    (a0, a1), (b0, b1) = _physical_box(source), _physical_box(reference)
    inter = np.prod(np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None))
    return float(inter / max(np.prod(a1 - a0), 1e-12)), float(inter / max(np.prod(b1 - b0), 1e-12))


def _describe_grid(image: sitk.Image) -> str:
    size = "x".join(str(v) for v in image.GetSize())
    spacing = "x".join(f"{v:g}" for v in image.GetSpacing())
    origin = ", ".join(f"{v:g}" for v in image.GetOrigin())
    return f"{size} voxels of {spacing} mm at ({origin})"


def check_segmentation_grid(path: PathLike, source: sitk.Image, reference: sitk.Image,
                            coverage_warning: bool = True) -> float:
    """Check a segmentation's voxel grid against the prior image's, once per file.

    Same grid: nothing. Another grid that overlaps the prior image in physical space: a warning
    naming the file (its masks are resampled onto the prior image, nearest neighbour), saying how
    much of the prior image it covers when that is not all (structures outside it are missing).
    No overlap at all: an error naming the file.

    Returns:
        The share of the prior image's box the grid covers (1.0 for the same grid).
    Raises:
        InputError: the grid does not overlap the prior image.
    """
    if same_geometry(source, reference):
        return 1.0
    inside, covered = grid_overlap(source, reference)
    if inside <= 0.0:
        raise InputError(path, f"its voxel grid ({_describe_grid(source)}) does not overlap the prior image "
                               f"({_describe_grid(reference)}) in physical space; give the segmentation drawn on "
                               "the prior image")
    note = ""
    if coverage_warning and covered < 0.99:
        note = (f"; it covers only {100 * covered:.0f}% of the prior image: structures outside it are missing "
                "from this segmentation")
    warnings.warn(f"{path}: on another voxel grid than the prior image ({_describe_grid(source)} vs "
                  f"{_describe_grid(reference)}); resampled onto the prior image (nearest neighbour){note}",
                  stacklevel=3)
    return covered


def require_overlap(path: PathLike, source: sitk.Image, reference: sitk.Image) -> None:
    """Error naming the file when a segmentation's grid does not overlap the prior image in physical space.

    (For files whose grid may legitimately be a crop of the image's, such as Slicer's .seg.nrrd.)
    """
    if not same_geometry(source, reference) and grid_overlap(source, reference)[0] <= 0.0:
        raise InputError(path, f"its voxel grid ({_describe_grid(source)}) does not overlap the prior image "
                               f"({_describe_grid(reference)}) in physical space; give the segmentation drawn on "
                               "the prior image")


def touches_grid_edge(mask: np.ndarray) -> bool:
    """True when a ``[k, j, i]`` mask has a voxel on a face of its own grid (the structure may be cut there)."""
    m = np.asarray(mask, dtype=bool)
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any()
                or m[:, :, -1].any())


def _mask_like(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(reference)
    return img
