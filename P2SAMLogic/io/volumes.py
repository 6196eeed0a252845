"""Reading a 3D volume: an image file, a DICOM series folder, or one DICOM file of a series."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Tuple

import SimpleITK as sitk

from ..errors import InputError
from .sanity import check_file, check_volume
from .volume import VolumeSource, guess_modality
from .dicom_series import _NON_IMAGE_MODALITIES, _read_dicom_header, _read_dicom_series, _read_multiframe
from .files import PathLike, _check_3d, _looks_like_dicom, _lower_name, _sitk_reason


def read_volume(path: PathLike, series_uid: Optional[str] = None,
                role: str = "image") -> Tuple[sitk.Image, VolumeSource]:
    """Read a 3D volume: an image file or a DICOM series folder.

    Args:
        path: a SimpleITK-readable file (``.nrrd .nhdr .nii .nii.gz .mha .mhd``), a DICOM
            series folder (searched recursively), or one DICOM file (its series is read
            from its folder; a multi-frame file is read on its own).
        series_uid: the series to read when the folder holds several.
        role: what the volume is for (``"prior image"``, ``"follow-up"``...), used in messages.

    Returns:
        ``(image, source)``: a 3D ``sitkFloat32`` image (values as stored after rescale,
        e.g. HU; LPS geometry) and its :class:`VolumeSource`. For DICOM series the slices
        are ordered along the slice normal (``cross(row, column)`` of ImageOrientationPatient),
        so slice ``k`` of the image is ``source.dicom_files[k]``.

    Raises:
        InputError: missing path, unreadable, truncated or corrupt file, 2D image, no or ambiguous
            DICOM series, unknown ``series_uid``, incomplete or inconsistent series, sheared voxel
            axes, NaN or infinite voxels (see :mod:`P2SAMLogic.io.sanity`).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(path, f"{role} not found: no such file or folder")
    if p.is_dir():
        image, source = _read_dicom_series(p, series_uid, role)
        check_volume(image, path)
        return image, source
    if _looks_like_dicom(p) or _lower_name(p).endswith((".dcm", ".ima")):
        try:
            ds = _read_dicom_header(p)
        except Exception as exc:  # noqa: BLE001
            raise InputError(path, f"is not a readable DICOM file ({exc.__class__.__name__}: {exc})") from None
        modality = str(ds.get("Modality", "") or "").upper()
        if modality in _NON_IMAGE_MODALITIES:
            raise InputError(path, f"is a DICOM {modality} object, not an image; give the image series folder")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            image, source = _read_multiframe(p, ds, role)
            check_volume(image, path)
            return image, source
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if series_uid and uid and series_uid != uid:
            raise InputError(path, f"belongs to series {uid}, not {series_uid}")
        image, source = _read_dicom_series(p.parent, series_uid or uid or None, role)
        source.path = str(path)
        check_volume(image, path)
        return image, source
    return _read_volume_file(p, role)


def _read_volume_file(p: Path, role: str) -> Tuple[sitk.Image, VolumeSource]:
    check_file(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(p, f"is not a readable image file ({_sitk_reason(exc)})") from None
    keys = set(reader.GetMetaDataKeys())
    if any(re.match(r"Segment\d+_ID$", k) for k in keys):
        raise InputError(p, f"is a Slicer segmentation (.seg.nrrd), not an image; give the {role} volume")
    _check_3d(p, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents())
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(p, f"is not a readable image file ({_sitk_reason(exc)})") from None
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    check_volume(image, p)
    image = sitk.Cast(image, sitk.sitkFloat32)
    return image, VolumeSource(path=str(p), kind="file", modality=guess_modality(image))
