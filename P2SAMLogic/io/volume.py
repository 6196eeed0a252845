"""Volumes and segments in physical space: the types every 3D module shares.

Frames
------
Every image here is a ``SimpleITK.Image``: it carries origin, spacing and direction
(ITK/DICOM **LPS** patient coordinates, millimetres). Arrays taken from it with
``sitk.GetArrayFromImage`` are indexed ``[k, j, i]`` = ``[slice, row, column]``
(``z, y, x`` in voxel index order); "slice ``k``" always means index ``k`` along the
image's third axis, whatever its direction (oblique and flipped axes are allowed).

A :class:`Segment` holds a binary ``sitkUInt8`` mask (0/1) on the geometry of the
image it was drawn on (prior segments: the prior image; results: the follow-up).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

#: status written into every generated segment (Slicer tag, DICOM SEG, reports)
PROPOSAL_STATUS = "unreviewed proposal"


@dataclass
class Segment:
    """One structure: name, display colour and binary mask.

    Attributes:
        name: display name (``"GTV"``, ``"Heart"``...).
        color: RGB in ``[0, 1]``.
        mask: ``sitkUInt8`` image with values {0, 1}, geometry = the image it belongs to.
        segment_id: identifier in the source file (Slicer segment ID, DICOM segment number...).
        tags: free ``str -> str`` metadata (Slicer segment tags; provenance on outputs).
    """

    name: str
    color: Tuple[float, float, float]
    mask: sitk.Image
    segment_id: str = ""
    tags: Dict[str, str] = field(default_factory=dict)

    def array(self) -> np.ndarray:
        """The mask as a ``bool`` array ``[k, j, i]``."""
        return sitk.GetArrayViewFromImage(self.mask).astype(bool)

    def volume_ml(self) -> float:
        """Mask volume in millilitres (voxel count x voxel volume)."""
        voxel_mm3 = float(np.prod(self.mask.GetSpacing()))
        return float(self.array().sum()) * voxel_mm3 / 1000.0


@dataclass
class VolumeSource:
    """Where a volume came from (for messages, provenance and DICOM output).

    Attributes:
        path: the file or folder the user gave.
        kind: ``"file"`` (nrrd/nii/mha...) or ``"dicom"`` (a series folder).
        modality: ``"CT"``, ``"MR"``... when known (DICOM tag, or guessed from the
            intensities for files: see :func:`guess_modality`), else ``None``.
        series_uid, study_uid, frame_of_reference_uid: DICOM identifiers (DICOM only).
        dicom_files: the series' slice files sorted along the slice axis (DICOM only).
    """

    path: str
    kind: str = "file"
    modality: Optional[str] = None
    series_uid: Optional[str] = None
    study_uid: Optional[str] = None
    frame_of_reference_uid: Optional[str] = None
    dicom_files: List[str] = field(default_factory=list)


def guess_modality(image: sitk.Image) -> str:
    """``"CT"`` when the intensities look like Hounsfield units (air near -1000), else ``"MR"``."""
    arr = sitk.GetArrayViewFromImage(image)
    lo = float(np.percentile(arr[:: max(1, arr.shape[0] // 8)], 1))
    return "CT" if lo < -500 else "MR"


def geometry(image: sitk.Image) -> dict:
    """Size, origin, spacing and direction as plain lists (for reports and comparisons)."""
    return {
        "size": list(image.GetSize()),
        "origin": [float(v) for v in image.GetOrigin()],
        "spacing": [float(v) for v in image.GetSpacing()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
    """True when ``a`` and ``b`` share size, origin, spacing and direction (within tolerance)."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    return (np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def mask_image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A ``sitkUInt8`` 0/1 image from a ``[k, j, i]`` array, with ``reference``'s geometry."""
    img = sitk.GetImageFromArray(np.asarray(array).astype(np.uint8))
    img.CopyInformation(reference)
    return img


#: default colours for segments whose source has none (Slicer's generic anatomy palette order)
DEFAULT_COLORS: Sequence[Tuple[float, float, float]] = (
    (0.502, 0.682, 0.502), (0.945, 0.839, 0.569), (0.694, 0.478, 0.396), (0.435, 0.722, 0.824),
    (0.847, 0.396, 0.310), (0.867, 0.510, 0.396), (0.565, 0.933, 0.565), (0.753, 0.408, 0.345),
)
