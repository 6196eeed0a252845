"""DICOM image series: finding the series in a folder, ordering and checking the slices, reading them.

pydicom is imported lazily, inside the functions that need it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import VolumeSource, guess_modality
from .files import PathLike, _check_3d, _dicom_candidate, _float_list, _looks_like_dicom, _sitk_reason


#: DICOM modalities that are never image series (structure sets, segmentations, plans, reports...)
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "SEG", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "REG", "RWV",
                         "DOC", "FID", "PLAN", "AU", "ECG"}


_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def _read_dicom_header(path: PathLike):
    """pydicom dataset without loading large values (pixel data stays on disk); raises on failure."""
    import pydicom

    force = not _looks_like_dicom(path)
    ds = pydicom.dcmread(str(path), defer_size=1024, force=force)
    if force and "SOPClassUID" not in ds and "Modality" not in ds:
        raise ValueError("not a DICOM file")
    return ds


def _pixel_data_truncated(ds, path: PathLike) -> bool:
    """True when the file ends before the end of its (native) pixel data."""
    tag = 0x7FE00010
    if tag not in ds:
        return True
    try:
        elem = ds.get_item(tag, keep_deferred=True)  # pydicom >= 3: do not read the pixels
    except TypeError:
        elem = ds.get_item(tag)
    if elem is None:
        return True
    length = getattr(elem, "length", None)
    if length == 0xFFFFFFFF:  # encapsulated (compressed): left to the decoder
        return False
    value = elem.value
    if value is None:  # deferred: the value was not read; compare with the file size
        tell = getattr(elem, "value_tell", None)
        if tell is not None and length is not None and tell + length > os.path.getsize(path):
            return True
        size = length
    else:
        size = len(value) if isinstance(value, (bytes, bytearray)) else None
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if size is None or (syntax is not None and getattr(syntax, "is_compressed", False)):
        return False
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
        expected = (expected * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError):
        return False
    return size < expected


class _Series:
    def __init__(self, uid: str):
        self.uid = uid
        self.modality = ""
        self.description = ""
        self.study_uid = ""
        self.frame_of_reference_uid = ""
        self.series_number: Optional[int] = None
        self.entries: List[Tuple[str, object]] = []  # (path, dataset without pixel values)

    def info(self) -> dict:
        return {"series_uid": self.uid, "modality": self.modality, "description": self.description,
                "files": len(self.entries), "study_uid": self.study_uid, "series_number": self.series_number}


def _scan_dicom_folder(folder: Path) -> Tuple[Dict[str, _Series], List[str]]:
    """Image series found under ``folder`` (recursively) and the DICOM-looking files that could not be read."""
    series: Dict[str, _Series] = {}
    unreadable: List[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if not _dicom_candidate(path):
                continue
            try:
                ds = _read_dicom_header(path)
            except Exception:  # noqa: BLE001 - any parse failure means "not readable"
                if _looks_like_dicom(path) or name.lower().endswith(".dcm"):
                    unreadable.append(path)
                continue
            meta = getattr(ds, "file_meta", None)
            sop_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
            if str(sop_class or "") == _DICOMDIR_CLASS:
                continue
            modality = str(ds.get("Modality", "") or "").upper()
            if _looks_like_dicom(path) and ("SOPClassUID" not in ds or "SeriesInstanceUID" not in ds or (
                    modality not in _NON_IMAGE_MODALITIES and "Image Storage" in getattr(sop_class, "name", "")
                    and ("Rows" not in ds or "PixelData" not in ds))):
                unreadable.append(path)  # cut short inside its header
                continue
            if modality in _NON_IMAGE_MODALITIES or "Rows" not in ds or "SeriesInstanceUID" not in ds:
                continue
            uid = str(ds.SeriesInstanceUID)
            s = series.get(uid)
            if s is None:
                s = series[uid] = _Series(uid)
                s.modality = modality
                s.description = str(ds.get("SeriesDescription", "") or "")
                s.study_uid = str(ds.get("StudyInstanceUID", "") or "")
                s.frame_of_reference_uid = str(ds.get("FrameOfReferenceUID", "") or "")
                try:
                    s.series_number = int(ds.get("SeriesNumber")) if ds.get("SeriesNumber") is not None else None
                except (TypeError, ValueError):
                    s.series_number = None
            s.entries.append((path, ds))
    return series, unreadable


def list_dicom_series(folder: PathLike) -> List[dict]:
    """Every DICOM image series under ``folder`` (searched recursively).

    RTSTRUCT, SEG, RT plans/doses, reports and other non-image objects are ignored.

    Returns:
        One dict per series, sorted by series number then UID:
        ``{"series_uid", "modality", "description", "files" (int count), "study_uid", "series_number"}``.
    """
    p = Path(folder)
    if not p.exists():
        raise InputError(folder, "folder does not exist")
    if not p.is_dir():
        raise InputError(folder, "is not a folder")
    series, _ = _scan_dicom_folder(p)
    return [s.info() for s in _sorted_series(series)]


def _sorted_series(series: Dict[str, _Series]) -> List[_Series]:
    return sorted(series.values(), key=lambda s: (s.series_number if s.series_number is not None else 1 << 40, s.uid))


def _series_listing(series: Dict[str, _Series]) -> str:
    lines = []
    for s in _sorted_series(series):
        desc = s.description or "(no description)"
        lines.append(f"  {s.uid}  {s.modality or '?'}  {desc!r}  {len(s.entries)} file(s)")
    return "\n".join(lines)


def _read_multiframe(p: Path, ds, role: str) -> Tuple[sitk.Image, VolumeSource]:
    if _pixel_data_truncated(ds, p):
        raise InputError(p, "DICOM file is truncated (its pixel data is incomplete)")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(p, f"is not a readable DICOM image ({_sitk_reason(exc)})") from None
    _check_3d(p, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel())
    image = sitk.Cast(image, sitk.sitkFloat32)
    src = VolumeSource(path=str(p), kind="dicom", modality=str(ds.get("Modality", "") or "") or guess_modality(image),
                       series_uid=str(ds.get("SeriesInstanceUID", "") or "") or None,
                       study_uid=str(ds.get("StudyInstanceUID", "") or "") or None,
                       frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or "") or None,
                       dicom_files=[str(p)])
    return image, src


def _read_dicom_series(folder: Path, series_uid: Optional[str], role: str) -> Tuple[sitk.Image, VolumeSource]:
    series, unreadable = _scan_dicom_folder(folder)
    if not series:
        extra = ""
        if unreadable:
            extra = f"; {len(unreadable)} DICOM file(s) could not be read: " + _names(unreadable, folder)
        raise InputError(folder, f"contains no DICOM image series{extra} (the {role} must be an image file "
                                 "or a DICOM series folder)")
    if series_uid:
        if series_uid not in series:
            raise InputError(folder, f"has no DICOM image series {series_uid}; available series:\n"
                                     + _series_listing(series))
        chosen = series[series_uid]
    elif len(series) > 1:
        raise InputError(folder, f"contains {len(series)} DICOM image series; pass --series-uid with one of:\n"
                                 + _series_listing(series))
    else:
        chosen = next(iter(series.values()))
    if unreadable:
        raise InputError(folder, f"incomplete DICOM series: {len(unreadable)} file(s) could not be read "
                                 f"(truncated or corrupt): {_names(unreadable, folder)}")
    entries = chosen.entries
    truncated = [path for path, ds in entries if _pixel_data_truncated(ds, path)]
    if truncated:
        raise InputError(folder, f"incomplete DICOM series {chosen.uid}: {len(truncated)} slice file(s) are "
                                 f"truncated or have no pixel data: {_names(truncated, folder)}")
    if len(entries) == 1:
        path, ds = entries[0]
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            image, src = _read_multiframe(Path(path), ds, role)
            src.path = str(folder)
            return image, src
        raise InputError(folder, f"series {chosen.uid} has a single slice: it is a 2D image; a volume is needed")
    files, geom = _sort_and_check_slices(folder, chosen)
    arrays = []
    for f in files:
        try:
            sl = sitk.ReadImage(f)
        except RuntimeError as exc:
            raise InputError(folder, f"incomplete DICOM series {chosen.uid}: slice file "
                                     f"{_names([f], folder)} could not be decoded ({_sitk_reason(exc)})") from None
        a = sitk.GetArrayFromImage(sl).astype(np.float32)
        if a.ndim == 3:
            if a.shape[0] != 1:
                raise InputError(folder, f"slice file {_names([f], folder)} holds {a.shape[0]} frames")
            a = a[0]
        if a.ndim != 2:
            raise InputError(folder, f"slice file {_names([f], folder)} is not a grey-level image")
        arrays.append(a)
    image = sitk.GetImageFromArray(np.stack(arrays, axis=0))
    image.SetOrigin(geom["origin"])
    image.SetSpacing(geom["spacing"])
    image.SetDirection(geom["direction"])
    first = entries[0][1]
    src = VolumeSource(path=str(folder), kind="dicom", modality=chosen.modality or guess_modality(image),
                       series_uid=chosen.uid, study_uid=chosen.study_uid or None,
                       frame_of_reference_uid=chosen.frame_of_reference_uid or
                       (str(first.get("FrameOfReferenceUID", "")) or None),
                       dicom_files=files)
    return image, src


def _names(paths: Sequence[str], folder: Path, limit: int = 8) -> str:
    rel = []
    for p in paths[:limit]:
        try:
            rel.append(os.path.relpath(p, folder))
        except ValueError:
            rel.append(str(p))
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(rel) + more


def _sort_and_check_slices(folder: Path, s: _Series) -> Tuple[List[str], dict]:
    """Order the slices along their normal and check they form one regular grid.

    Returns the sorted file list and ``{"origin", "spacing", "direction"}`` (LPS).
    """
    uid = s.uid
    rows_cols: Dict[Tuple[int, int], List[str]] = {}
    iops, ipps, spacings, paths = [], [], [], []
    for path, ds in s.entries:
        missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
                   if t not in ds]
        if missing:
            raise InputError(folder, f"DICOM series {uid}: slice file {_names([path], folder)} lacks "
                                     f"{', '.join(missing)}; cannot place it in space")
        rows_cols.setdefault((int(ds.Rows), int(ds.Columns)), []).append(path)
        iops.append(_float_list(ds.ImageOrientationPatient))
        ipps.append(_float_list(ds.ImagePositionPatient))
        spacings.append(_float_list(ds.PixelSpacing))
        paths.append(path)
    if len(rows_cols) > 1:
        groups = sorted(rows_cols.items(), key=lambda kv: -len(kv[1]))
        desc = "; ".join(f"{r}x{c}: {len(v)} file(s) e.g. {_names(v, folder, 2)}" for (r, c), v in groups)
        raise InputError(folder, f"inconsistent DICOM series {uid}: slices have different rows/columns ({desc})")
    iops_a = np.array(iops)
    bad = np.where(np.abs(iops_a - iops_a[0]).max(axis=1) > 1e-3)[0]
    if len(bad):
        raise InputError(folder, f"inconsistent DICOM series {uid}: slice orientation (ImageOrientationPatient) "
                                 f"differs between files, e.g. {_names([paths[0]], folder)} and "
                                 f"{_names([paths[i] for i in bad], folder, 3)}")
    sp = np.array(spacings)
    if np.abs(sp - sp[0]).max() > 1e-3:
        raise InputError(folder, f"inconsistent DICOM series {uid}: pixel spacing differs between slices")
    row_dir = np.array(iops[0][:3])
    col_dir = np.array(iops[0][3:])
    row_dir /= np.linalg.norm(row_dir)
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    ipp = np.array(ipps)
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    ipp = ipp[order]
    files = [paths[i] for i in order]
    diffs = np.diff(pos)
    dup = np.where(diffs < 1e-3)[0]
    if len(dup):
        i = int(dup[0])
        raise InputError(folder, f"inconsistent DICOM series {uid}: several slices at the same position "
                                 f"({pos[i]:.3f} mm along the slice normal): {_names(files[i:i + 2], folder)}")
    step = float(np.median(diffs))
    tol = max(0.02 * step, 0.01)
    off = np.where(np.abs(diffs - step) > tol)[0]
    if len(off):
        i = int(off[0])
        d = float(diffs[i])
        if d > 1.5 * step:
            n_missing = int(round(d / step)) - 1
            raise InputError(folder, f"incomplete DICOM series {uid}: missing slice(s): a gap of {d:.3f} mm between "
                                     f"{_names([files[i]], folder)} and {_names([files[i + 1]], folder)} where the "
                                     f"slice spacing is {step:.3f} mm (about {n_missing} slice(s) missing)")
        raise InputError(folder, f"inconsistent DICOM series {uid}: non-uniform slice spacing "
                                 f"({float(diffs.min()):.3f} to {float(diffs.max()):.3f} mm)")
    # slices must be stacked along their normal (no gantry tilt / shear)
    inplane = ipp - np.outer(pos, normal)
    shear = float(np.abs(inplane - inplane[0]).max())
    if shear > 0.1 * float(min(sp[0])):
        raise InputError(folder, f"DICOM series {uid}: slice positions are sheared relative to the slice normal "
                                 f"(gantry tilt?, up to {shear:.2f} mm); resample it to a regular grid first")
    direction = np.column_stack([row_dir, col_dir, normal])
    geom = {"origin": [float(v) for v in ipp[0]],
            "spacing": [float(sp[0][1]), float(sp[0][0]), step],  # PixelSpacing = [row spacing (j), column spacing (i)]
            "direction": [float(v) for v in direction.flatten()]}
    return files, geom
