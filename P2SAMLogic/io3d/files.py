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
from ..volume import same_geometry


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
    source_mm3 = float(np.count_nonzero(arr)) * float(np.prod(mask.GetSpacing()))
    if kept * float(np.prod(reference.GetSpacing())) < 0.5 * source_mm3:
        warnings.warn(f"{path}: segment '{name}' lies partly outside the prior image; only the part inside is used",
                      stacklevel=3)
    out = sitk.Cast(out > 0, sitk.sitkUInt8)
    out.CopyInformation(reference)
    return out


def _mask_like(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(reference)
    return img
