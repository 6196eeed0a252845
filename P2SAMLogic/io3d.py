"""3D input and output: volumes (files, DICOM series) and segmentations (Slicer, NIfTI, DICOM).

Frames and conventions
----------------------
* Images are ``SimpleITK.Image`` objects in **LPS** patient coordinates (mm): origin,
  spacing and a 3 x 3 direction matrix whose columns are the ``i``, ``j``, ``k`` axes
  (oblique and flipped axes allowed). Arrays from them are indexed ``[k, j, i]``.
* Volumes are returned as ``sitkFloat32`` with their stored values kept (CT: Hounsfield
  units with RescaleSlope/RescaleIntercept applied).
* Segments (:class:`~P2SAMLogic.volume.Segment`) hold ``sitkUInt8`` 0/1 masks. Every
  segment returned by :func:`read_segmentation` lies on the ``reference`` image's grid;
  sources on another grid are resampled in physical space (identity transform, nearest
  neighbour).

Readers raise :class:`~P2SAMLogic.errors.InputError` whose message starts with the path.
Writers are atomic: they write a temporary file in the destination folder and
``os.replace`` it; on failure nothing is left behind and an existing file is untouched.

pydicom and highdicom are imported lazily, only by the functions that need them.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import os
import re
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import InputError
from .volume import DEFAULT_COLORS, PROPOSAL_STATUS, Segment, VolumeSource, guess_modality, same_geometry

PathLike = Union[str, Path]

#: file volumes SimpleITK reads (besides DICOM series folders)
VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: segmentation outputs: extension -> kind returned by :func:`output_kind`
OUTPUT_EXTENSIONS = ((".seg.nrrd", "seg.nrrd"), (".nii.gz", "nifti"), (".nii", "nifti"), (".dcm", "dicom-seg"))

#: DICOM modalities that are never image series (structure sets, segmentations, plans, reports...)
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "SEG", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "REG", "RWV",
                         "DOC", "FID", "PLAN", "AU", "ECG"}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

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


def _float_list(value) -> List[float]:
    return [float(v) for v in value]


# ----------------------------------------------------------------------------------------------
# DICOM series discovery
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# reading volumes
# ----------------------------------------------------------------------------------------------

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
        InputError: missing path, unreadable file, 2D image, no or ambiguous DICOM series,
            unknown ``series_uid``, incomplete or inconsistent series.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(path, f"{role} not found: no such file or folder")
    if p.is_dir():
        return _read_dicom_series(p, series_uid, role)
    if _looks_like_dicom(p) or _lower_name(p).endswith((".dcm", ".ima")):
        try:
            ds = _read_dicom_header(p)
        except Exception as exc:  # noqa: BLE001
            raise InputError(path, f"is not a readable DICOM file ({exc.__class__.__name__}: {exc})") from None
        modality = str(ds.get("Modality", "") or "").upper()
        if modality in _NON_IMAGE_MODALITIES:
            raise InputError(path, f"is a DICOM {modality} object, not an image; give the image series folder")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return _read_multiframe(p, ds, role)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if series_uid and uid and series_uid != uid:
            raise InputError(path, f"belongs to series {uid}, not {series_uid}")
        image, source = _read_dicom_series(p.parent, series_uid or uid or None, role)
        source.path = str(path)
        return image, source
    return _read_volume_file(p, role)


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


def _read_volume_file(p: Path, role: str) -> Tuple[sitk.Image, VolumeSource]:
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
    image = sitk.Cast(image, sitk.sitkFloat32)
    return image, VolumeSource(path=str(p), kind="file", modality=guess_modality(image))


def _sitk_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        line = line.strip()
        if line:
            return line[:200]
    return exc.__class__.__name__


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


# ----------------------------------------------------------------------------------------------
# NRRD (own minimal reader/writer: exact header control, UTF-8 names, no extra dependency)
# ----------------------------------------------------------------------------------------------

def _nrrd_type_table() -> Dict[str, str]:
    """NRRD ``type`` spellings -> numpy dtype codes."""
    spellings = (
        (("signed char", "int8", "int8_t"), "i1"),
        (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
        (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
        (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
        (("int", "signed int", "int32", "int32_t"), "i4"),
        (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
        (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
         "i8"),
        (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
        (("float",), "f4"),
        (("double",), "f8"),
    )
    return {name: code for names, code in spellings for name in names}


_NRRD_TYPES = _nrrd_type_table()


def _read_nrrd_header(path: PathLike) -> Tuple[Dict[str, str], Dict[str, str], int]:
    """``(fields, custom key/values, data byte offset)`` of a NRRD file (attached or detached header)."""
    with open(path, "rb") as f:
        magic = f.readline()
        if not magic.startswith(b"NRRD"):
            raise ValueError("not a NRRD file")
        fields: Dict[str, str] = {}
        custom: Dict[str, str] = {}
        while True:
            line = f.readline()
            if not line:
                break
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if text == "":
                break
            if text.startswith("#"):
                continue
            colon = text.find(":")
            if colon < 0:
                continue
            key = text[:colon]
            if text[colon + 1: colon + 2] == "=":
                custom[key] = text[colon + 2:]
            else:
                fields[key.strip().lower()] = text[colon + 1:].strip()
        return fields, custom, f.tell()


def _read_nrrd(path: PathLike) -> Tuple[Dict[str, str], Dict[str, str], np.ndarray]:
    """Header fields, custom fields, and the data as a C-order array of shape ``reversed(sizes)``."""
    fields, custom, offset = _read_nrrd_header(path)
    dtype = _NRRD_TYPES.get(fields.get("type", "").lower())
    if dtype is None:
        raise ValueError(f"unsupported NRRD type {fields.get('type')!r}")
    sizes = [int(v) for v in fields.get("sizes", "").split()]
    if not sizes:
        raise ValueError("NRRD header has no sizes")
    endian = fields.get("endian", "little").lower()
    dt = np.dtype(dtype).newbyteorder("<" if endian == "little" else ">")
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        target = data_file if os.path.isabs(data_file) else os.path.join(os.path.dirname(str(path)), data_file)
        with open(target, "rb") as f:
            raw = f.read()
    else:
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read()
    if int(fields.get("line skip", fields.get("lineskip", "0")) or 0):
        raise ValueError("NRRD 'line skip' is not supported")
    encoding = fields.get("encoding", "raw").lower()
    count = int(np.prod(sizes))
    nbytes = count * dt.itemsize
    if encoding in ("gzip", "gz"):
        raw = gzip.decompress(raw)
    elif encoding in ("bzip2", "bz2"):
        raw = bz2.decompress(raw)
    elif encoding in ("ascii", "text", "txt"):
        arr = np.array(raw.decode("ascii").split(), dtype=np.float64).astype(dt.newbyteorder("="))
        if arr.size != count:
            raise ValueError("NRRD data is incomplete")
        return fields, custom, arr.reshape(sizes[::-1])
    elif encoding != "raw":
        raise ValueError(f"unsupported NRRD encoding {encoding!r}")
    skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
    if skip == -1:
        raw = raw[len(raw) - nbytes:] if len(raw) >= nbytes else raw
    elif skip > 0:
        raw = raw[skip:]
    if len(raw) < nbytes:
        raise ValueError(f"NRRD data is incomplete ({len(raw)} of {nbytes} bytes)")
    arr = np.frombuffer(raw[:nbytes], dtype=dt).astype(dt.newbyteorder("="))
    return fields, custom, arr.reshape(sizes[::-1])


def _parse_vector(text: str) -> Optional[List[float]]:
    text = text.strip()
    if text.lower() == "none":
        return None
    return [float(v) for v in text.strip("()").split(",")]


def _nrrd_space_matrix(space: str) -> np.ndarray:
    """Matrix taking the file's space to LPS."""
    s = space.strip().lower()
    table = {"left-posterior-superior": (1, 1, 1), "lps": (1, 1, 1),
             "right-anterior-superior": (-1, -1, 1), "ras": (-1, -1, 1),
             "left-anterior-superior": (1, -1, 1), "las": (1, -1, 1),
             "": (1, 1, 1)}
    if s not in table:
        raise ValueError(f"unsupported NRRD space {space!r}")
    return np.diag(np.array(table[s], dtype=np.float64))


def _fmt(v: float) -> str:
    v = float(v)
    return "0" if v == 0 else repr(v)


def _fmt_vec(values) -> str:
    return "(" + ",".join(_fmt(v) for v in values) + ")"


def _header_text(value: str) -> str:
    return str(value).replace("\r", " ").replace("\n", " ")


def _slicer_tag_text(key: str, value: str) -> Tuple[str, str]:
    k = _header_text(key).replace("|", "/").replace(":", "_")
    v = _header_text(value)
    if "|" in v:
        warnings.warn(f"segment tag {key!r}: '|' (Slicer's tag separator) replaced by '/'", stacklevel=3)
        v = v.replace("|", "/")
    return k, v


# ----------------------------------------------------------------------------------------------
# reading segmentations
# ----------------------------------------------------------------------------------------------

def read_segmentation(path: PathLike, reference: sitk.Image, reference_source: Optional[VolumeSource] = None,
                      names: Optional[Sequence[str]] = None) -> List[Segment]:
    """Read segments and put them on ``reference``'s grid.

    The kind is detected from the content: a Slicer ``.seg.nrrd`` (NRRD header with
    ``Segment<N>_ID`` fields; 3D shared labelmap or 4D layers, overlapping segments
    allowed), a DICOM RTSTRUCT (closed planar contours in LPS mm, rasterised on
    ``reference`` with the even-odd rule, each contour on its nearest slice), a DICOM
    SEG (frames placed by their plane positions), or a labelmap volume (each nonzero
    value a segment ``"Label <v>"``, or the names/colours of a ``<name>.labels.json``
    sidecar or ``<name>.ctbl`` colour table next to it).

    Args:
        path: the segmentation file.
        reference: the image the segments are wanted on (LPS geometry).
        reference_source: where ``reference`` came from; when it is a DICOM series, an
            RTSTRUCT/SEG must reference the same series and frame of reference.
        names: keep only these segments, in this order.

    Returns:
        Segments whose ``mask`` is ``sitkUInt8`` 0/1 with ``reference``'s geometry, in file
        order (or in ``names`` order); ``color`` RGB in [0, 1]; ``segment_id`` and ``tags``
        from the file.

    Raises:
        InputError: unreadable file, unknown name (lists the available ones), empty
            segment, segment outside the reference image, RTSTRUCT/SEG of another series.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(path, "segmentation not found: no such file")
    if p.is_dir():
        raise InputError(path, "is a folder; give a segmentation file (.seg.nrrd, labelmap, RTSTRUCT or SEG .dcm)")
    low = _lower_name(p)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc})") from None
    if magic == b"NRRD" or low.endswith((".nrrd", ".nhdr")):
        try:
            fields, custom, _ = _read_nrrd_header(p)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"is not a readable NRRD file ({exc})") from None
        if any(re.match(r"Segment\d+_ID$", k) for k in custom):
            return _read_seg_nrrd(p, reference, names)
        return _read_labelmap(p, reference, names)
    if _looks_like_dicom(p) or (_dicom_candidate(p) and not low.endswith(tuple(VOLUME_EXTENSIONS))):
        try:
            import pydicom

            ds = pydicom.dcmread(str(p), force=not _looks_like_dicom(p))
            modality = str(ds.get("Modality", "") or "").upper()
        except Exception as exc:  # noqa: BLE001
            raise InputError(path, f"is not a readable DICOM file ({exc.__class__.__name__}: {exc})") from None
        if modality == "RTSTRUCT":
            return _read_rtstruct(p, ds, reference, reference_source, names)
        if modality == "SEG":
            return _read_dicom_seg(p, ds, reference, reference_source, names)
        raise InputError(path, f"is a DICOM {modality or 'object'} file, not a segmentation (RTSTRUCT or SEG)")
    return _read_labelmap(p, reference, names)


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


def _read_seg_nrrd(p: Path, reference: sitk.Image, names: Optional[Sequence[str]]) -> List[Segment]:
    try:
        fields, custom, data = _read_nrrd(p)
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise InputError(p, f"is not a readable segmentation file ({exc})") from None
    sizes = [int(v) for v in fields["sizes"].split()]
    ndim = len(sizes)
    dirs = [_parse_vector(t) for t in re.findall(r"\([^)]*\)|none", fields.get("space directions", ""))]
    if len(dirs) != ndim:
        raise InputError(p, "segmentation header has no usable 'space directions'")
    domain = [a for a in range(ndim) if dirs[a] is not None]
    lists = [a for a in range(ndim) if dirs[a] is None]
    if len(domain) != 3 or len(lists) > 1:
        raise InputError(p, f"segmentation has {len(domain)} spatial axes; 3 are needed")
    to_lps = _nrrd_space_matrix(fields.get("space", "left-posterior-superior"))
    vecs = [to_lps @ np.array(dirs[a]) for a in domain]
    spacing = [float(np.linalg.norm(v)) for v in vecs]
    direction = np.column_stack([v / s for v, s in zip(vecs, spacing)])
    origin = to_lps @ np.array(_parse_vector(fields.get("space origin", "(0,0,0)")) or [0, 0, 0])
    axes = [ndim - 1 - domain[2], ndim - 1 - domain[1], ndim - 1 - domain[0]]
    if lists:
        data = np.transpose(data, axes + [ndim - 1 - lists[0]])
    else:
        data = np.transpose(data, axes)[..., None]  # [k, j, i, layer]
    indices = sorted({int(m.group(1)) for k in custom for m in [re.match(r"Segment(\d+)_", k)] if m})
    infos = []
    for n in indices:
        def g(field: str, default: str = "", n: int = n) -> str:
            return custom.get(f"Segment{n}_{field}", default)

        name = g("Name") or g("ID") or f"Segment_{n}"
        try:
            color = tuple(float(v) for v in g("Color").split()[:3])
            if len(color) != 3:
                raise ValueError
        except ValueError:
            color = tuple(DEFAULT_COLORS[n % len(DEFAULT_COLORS)])
        layer = int(g("Layer", str(n if data.shape[3] > 1 else 0)) or 0)
        label = int(g("LabelValue", "1") or 1)
        extent = None
        try:
            e = [int(v) for v in g("Extent").split()]
            if len(e) == 6:
                extent = e
        except ValueError:
            extent = None
        tags = {}
        for item in g("Tags").split("|"):
            if ":" in item:
                k, v = item.split(":", 1)
                tags[k] = v
        infos.append(dict(name=name, color=color, layer=layer, label=label, extent=extent, tags=tags, id=g("ID")))
    chosen = _select(p, [i["name"] for i in infos], names)
    out = []
    for idx in chosen:
        info = infos[idx]
        if info["layer"] >= data.shape[3]:
            raise InputError(p, f"segment '{info['name']}' refers to layer {info['layer']}, "
                                f"but the file has {data.shape[3]}")
        arr = data[..., info["layer"]] == info["label"]
        e = info["extent"]
        if e is not None:
            keep = np.zeros_like(arr)
            if e[1] >= e[0] and e[3] >= e[2] and e[5] >= e[4]:
                keep[max(e[4], 0): e[5] + 1, max(e[2], 0): e[3] + 1, max(e[0], 0): e[1] + 1] = True
            arr = arr & keep
        mask = sitk.GetImageFromArray(arr.astype(np.uint8))
        mask.SetOrigin([float(v) for v in origin])
        mask.SetSpacing(spacing)
        mask.SetDirection([float(v) for v in direction.flatten()])
        out.append(Segment(name=info["name"], color=info["color"], mask=_to_reference(p, info["name"], mask, reference),
                           segment_id=info["id"] or info["name"], tags=info["tags"]))
    return out


def _sidecar_labels(p: Path) -> Dict[int, dict]:
    """Names/colours/tags per label value from ``<name>.labels.json`` or ``<name>.ctbl`` next to ``p``."""
    stem = _strip_volume_extension(p)
    out: Dict[int, dict] = {}
    js = stem + ".labels.json"
    if os.path.isfile(js):
        try:
            with open(js, "r", encoding="utf-8") as f:
                doc = json.load(f)
            for k, v in (doc.get("labels") or {}).items():
                out[int(k)] = {"name": str(v.get("name") or f"Label {k}"),
                               "color": tuple(float(c) for c in (v.get("color") or [])[:3]) or None,
                               "tags": {str(a): str(b) for a, b in (v.get("tags") or {}).items()},
                               "id": str(v.get("segment_id") or "")}
            return out
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            warnings.warn(f"{js}: ignored, not a readable label table ({exc})", stacklevel=3)
            return {}
    ctbl = stem + ".ctbl"
    if os.path.isfile(ctbl):
        try:
            with open(ctbl, "r", encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if not parts or parts[0].startswith("#") or len(parts) < 5:
                        continue
                    out[int(parts[0])] = {"name": parts[1], "tags": {}, "id": "",
                                          "color": tuple(float(c) / 255.0 for c in parts[2:5])}
        except (OSError, ValueError) as exc:
            warnings.warn(f"{ctbl}: ignored, not a readable colour table ({exc})", stacklevel=3)
            return {}
    return out


def _read_labelmap(p: Path, reference: sitk.Image, names: Optional[Sequence[str]]) -> List[Segment]:
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(p, f"is not a readable labelmap or segmentation file ({_sitk_reason(exc)})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, "is a multi-component image, not a labelmap")
    if img.GetDimension() != 3:
        raise InputError(p, f"is a {img.GetDimension()}D image; a 3D labelmap is needed")
    arr = sitk.GetArrayFromImage(img)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(p, "has non-integer values: it is an image, not a labelmap")
    arr = arr.astype(np.int64)
    values = [int(v) for v in np.unique(arr) if v != 0]
    if not values:
        raise InputError(p, "labelmap is empty (no nonzero voxel)")
    if len(values) > 1000:
        raise InputError(p, f"has {len(values)} distinct values: it looks like an image, not a labelmap")
    table = _sidecar_labels(p)
    infos = []
    for n, v in enumerate(values):
        t = table.get(v, {})
        infos.append({"value": v, "name": t.get("name") or f"Label {v}",
                      "color": t.get("color") or tuple(DEFAULT_COLORS[n % len(DEFAULT_COLORS)]),
                      "tags": t.get("tags") or {}, "id": t.get("id") or str(v)})
    chosen = _select(p, [i["name"] for i in infos], names)
    out = []
    for idx in chosen:
        info = infos[idx]
        mask = sitk.GetImageFromArray((arr == info["value"]).astype(np.uint8))
        mask.CopyInformation(img)
        out.append(Segment(name=info["name"], color=tuple(info["color"]),
                           mask=_to_reference(p, info["name"], mask, reference),
                           segment_id=info["id"], tags=dict(info["tags"])))
    return out


def _check_dicom_reference(p: Path, ds, reference_source: Optional[VolumeSource]) -> None:
    """Error when a DICOM RTSTRUCT/SEG references another series or frame of reference than ``reference_source``."""
    if reference_source is None or reference_source.kind != "dicom":
        return
    series_uids: List[str] = []
    fors: List[str] = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        if fr.get("FrameOfReferenceUID"):
            fors.append(str(fr.FrameOfReferenceUID))
        for st in fr.get("RTReferencedStudySequence", []) or []:
            for se in st.get("RTReferencedSeriesSequence", []) or []:
                if se.get("SeriesInstanceUID"):
                    series_uids.append(str(se.SeriesInstanceUID))
    for se in ds.get("ReferencedSeriesSequence", []) or []:  # DICOM SEG
        if se.get("SeriesInstanceUID"):
            series_uids.append(str(se.SeriesInstanceUID))
    if ds.get("FrameOfReferenceUID"):
        fors.append(str(ds.FrameOfReferenceUID))
    series_uids = list(dict.fromkeys(series_uids))
    fors = list(dict.fromkeys(fors))
    ref_series = reference_source.series_uid
    if ref_series and series_uids and ref_series not in series_uids:
        raise InputError(p, f"references series {', '.join(series_uids)}, not the prior image's series {ref_series}")
    ref_for = reference_source.frame_of_reference_uid
    if ref_for and fors and ref_for not in fors:
        raise InputError(p, f"references frame of reference {', '.join(fors)}, not the prior image's "
                            f"frame of reference {ref_for}")


def _read_rtstruct(p: Path, ds, reference: sitk.Image, reference_source: Optional[VolumeSource],
                   names: Optional[Sequence[str]]) -> List[Segment]:
    _check_dicom_reference(p, ds, reference_source)
    rois = []
    contours_by_number: Dict[int, object] = {}
    for rc in ds.get("ROIContourSequence", []) or []:
        try:
            contours_by_number[int(rc.ReferencedROINumber)] = rc
        except (AttributeError, TypeError, ValueError):
            continue
    for n, roi in enumerate(ds.get("StructureSetROISequence", []) or []):
        try:
            number = int(roi.ROINumber)
        except (AttributeError, TypeError, ValueError):
            continue
        rc = contours_by_number.get(number)
        color = None
        closed = []
        if rc is not None:
            if rc.get("ROIDisplayColor") is not None and len(rc.ROIDisplayColor) >= 3:
                color = tuple(float(v) / 255.0 for v in list(rc.ROIDisplayColor)[:3])
            for c in rc.get("ContourSequence", []) or []:
                kind = str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
                if kind == "CLOSED_PLANAR" and c.get("ContourData") is not None:
                    closed.append(np.array(_float_list(c.ContourData)).reshape(-1, 3))
        rois.append({"name": str(roi.get("ROIName", "") or f"ROI {number}"), "number": number,
                     "color": color or tuple(DEFAULT_COLORS[n % len(DEFAULT_COLORS)]), "contours": closed})
    if names is None:
        rois = [r for r in rois if r["contours"]]  # point / marker ROIs are not structures
        if not rois:
            raise InputError(p, "RTSTRUCT has no closed planar contours")
    chosen = _select(p, [r["name"] for r in rois], names)
    M, origin = _index_to_lps(reference)
    inv = np.linalg.inv(M)
    nx, ny, nz = reference.GetSize()
    out = []
    for idx in chosen:
        roi = rois[idx]
        if not roi["contours"]:
            raise InputError(p, f"segment '{roi['name']}' is empty")
        per_slice: Dict[int, List[np.ndarray]] = {}
        outside = 0
        tilted = False
        for pts in roi["contours"]:
            if len(pts) < 3:
                continue
            ijk = (pts - origin) @ inv.T
            kf = ijk[:, 2]
            if float(kf.max() - kf.min()) > 0.5:
                tilted = True
            k = int(np.floor(float(kf.mean()) + 0.5))
            if k < 0 or k >= nz:
                outside += 1
                continue
            per_slice.setdefault(k, []).append(ijk[:, :2])
        if tilted:
            warnings.warn(f"{p}: contours of '{roi['name']}' are not parallel to the prior image's slices; "
                          "each is drawn on its nearest slice", stacklevel=3)
        arr = np.zeros((nz, ny, nx), dtype=bool)
        for k, polys in per_slice.items():
            arr[k] = _fill_even_odd(polys, (ny, nx))
        if not arr.any():
            if outside or per_slice:
                raise InputError(p, f"segment '{roi['name']}' lies outside the prior image")
            raise InputError(p, f"segment '{roi['name']}' is empty")
        if outside:
            warnings.warn(f"{p}: {outside} contour(s) of '{roi['name']}' lie beyond the prior image's slices "
                          "and were left out", stacklevel=3)
        out.append(Segment(name=roi["name"], color=roi["color"], mask=_mask_like(arr, reference),
                           segment_id=str(roi["number"]), tags={}))
    return out


def _mask_like(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(reference)
    return img


def _fill_even_odd(polys: List[np.ndarray], shape: Tuple[int, int]) -> np.ndarray:
    """Rasterise closed polygons (``[N, 2]`` arrays of continuous ``(i, j)`` = (column, row))
    into a ``shape = (rows, columns)`` bool array with the even-odd rule: a pixel is inside
    when a ray from its centre crosses the polygons' edges an odd number of times
    (so a contour inside another one makes a hole)."""
    ny, nx = shape
    out = np.zeros(shape, dtype=bool)
    x0 = np.concatenate([p[:, 0] for p in polys])
    y0 = np.concatenate([p[:, 1] for p in polys])
    x1 = np.concatenate([np.roll(p[:, 0], -1) for p in polys])
    y1 = np.concatenate([np.roll(p[:, 1], -1) for p in polys])
    keep = y0 != y1
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    if x0.size == 0:
        return out
    lo = np.minimum(y0, y1)
    hi = np.maximum(y0, y1)
    r0 = max(0, int(np.ceil(lo.min())))
    r1 = min(ny - 1, int(np.floor(hi.max())))
    if r1 < r0:
        return out
    slope = (x1 - x0) / (y1 - y0)
    for start in range(r0, r1 + 1, 64):  # blocks of rows bound the memory used
        rows = np.arange(start, min(r1, start + 63) + 1, dtype=np.float64)[:, None]
        active = (lo[None, :] <= rows) & (rows < hi[None, :])  # half-open: vertices counted once
        xs = np.where(active, x0[None, :] + (rows - y0[None, :]) * slope[None, :], np.inf)
        xs.sort(axis=1)
        counts = active.sum(axis=1)
        diff = np.zeros((rows.shape[0], nx + 1), dtype=np.int32)
        for r in range(rows.shape[0]):
            c = int(counts[r]) - int(counts[r]) % 2
            if c == 0:
                continue
            a = np.ceil(xs[r, 0:c:2])
            b = np.floor(xs[r, 1:c:2]) + 1
            a = np.clip(a, 0, nx).astype(np.int64)
            b = np.clip(b, 0, nx).astype(np.int64)
            ok = b > a
            np.add.at(diff[r], a[ok], 1)
            np.add.at(diff[r], b[ok], -1)
        out[start: start + rows.shape[0]] = np.cumsum(diff, axis=1)[:, :nx] > 0
    return out


def _lab_to_rgb(value) -> Optional[Tuple[float, float, float]]:
    """DICOM CIELab (three uint16) -> RGB in [0, 1] (via highdicom)."""
    try:
        import highdicom as hd

        rgb = hd.color.CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb()
        return tuple(float(np.clip(c, 0, 255)) / 255.0 for c in rgb)
    except Exception:  # noqa: BLE001 - colour is cosmetic
        return None


def _read_dicom_seg(p: Path, ds, reference: sitk.Image, reference_source: Optional[VolumeSource],
                    names: Optional[Sequence[str]]) -> List[Segment]:
    _check_dicom_reference(p, ds, reference_source)
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    segs = []
    for n, item in enumerate(ds.get("SegmentSequence", []) or []):
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", "") or item.get("SegmentDescription", "") or f"Segment {number}")
        color = None
        if item.get("RecommendedDisplayCIELabValue") is not None:
            color = _lab_to_rgb(item.RecommendedDisplayCIELabValue)
        segs.append({"number": number, "name": label,
                     "color": color or tuple(DEFAULT_COLORS[n % len(DEFAULT_COLORS)])})
    if not segs:
        raise InputError(p, "DICOM SEG has no segments")
    chosen = _select(p, [s["name"] for s in segs], names)
    try:
        pix = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise InputError(p, f"DICOM SEG pixel data cannot be decoded ({exc.__class__.__name__}: {exc})") from None
    rows, cols = int(ds.Rows), int(ds.Columns)
    pix = np.asarray(pix).reshape(-1, rows, cols)
    nframes = pix.shape[0]
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", []) or []
    if len(per_frame) != nframes:
        raise InputError(p, f"DICOM SEG has {nframes} frames but {len(per_frame)} per-frame descriptions")

    def group(frame_item, name):
        for g in (frame_item, shared):
            if g is not None and g.get(name) is not None and len(g.get(name)):
                return g.get(name)[0]
        return None

    iop = group(per_frame[0] if per_frame else None, "PlaneOrientationSequence")
    measures = group(per_frame[0] if per_frame else None, "PixelMeasuresSequence")
    if iop is None or measures is None or measures.get("PixelSpacing") is None:
        raise InputError(p, "DICOM SEG lacks plane orientation or pixel spacing")
    o = np.array(_float_list(iop.ImageOrientationPatient))
    row_dir, col_dir = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    normal = np.cross(row_dir, col_dir)
    pixel_spacing = _float_list(measures.PixelSpacing)
    frame_seg = np.zeros(nframes, dtype=np.int64)
    ipps = np.zeros((nframes, 3))
    for f, item in enumerate(per_frame):
        pos = group(item, "PlanePositionSequence")
        if pos is None:
            raise InputError(p, f"DICOM SEG frame {f + 1} has no plane position")
        ipps[f] = _float_list(pos.ImagePositionPatient)
        ident = group(item, "SegmentIdentificationSequence")
        frame_seg[f] = int(ident.ReferencedSegmentNumber) if ident is not None else 0
    d = ipps @ normal
    inplane = ipps - np.outer(d, normal)
    if nframes and np.abs(inplane - inplane[0]).max() > 0.01 * min(pixel_spacing):
        raise InputError(p, "DICOM SEG frames are not on one stack of parallel slices; cannot place them")
    uniq = np.unique(np.round(d, 4)) if nframes else np.array([0.0])
    step = None
    if measures.get("SpacingBetweenSlices") is not None:
        step = abs(float(measures.SpacingBetweenSlices)) or None
    if step is None and len(uniq) > 1:
        step = float(np.diff(uniq).min())
        thick = float(measures.get("SliceThickness") or 0)
        if 0 < thick < 0.99 * step and abs(step / thick - round(step / thick)) < 0.01:
            step = thick  # sparse frames (empty ones omitted): the slice thickness is the spacing
    if step is None:
        step = float(measures.get("SliceThickness") or min(reference.GetSpacing()))
    dmin = float(uniq.min())
    nslices = int(round((float(uniq.max()) - dmin) / step)) + 1
    kk = np.rint((d - dmin) / step).astype(np.int64)
    origin = (inplane[0] if nframes else np.zeros(3)) + dmin * normal
    direction = np.column_stack([row_dir, col_dir, normal])
    if seg_type == "FRACTIONAL":
        threshold = float(ds.get("MaximumFractionalValue", 255)) / 2.0
    out = []
    for idx in chosen:
        s = segs[idx]
        arr = np.zeros((nslices, rows, cols), dtype=np.uint8)
        if seg_type == "LABELMAP":
            frames = range(nframes)
        else:
            frames = np.where(frame_seg == s["number"])[0]
        for f in frames:
            if seg_type == "LABELMAP":
                on = pix[f] == s["number"]
            elif seg_type == "FRACTIONAL":
                on = pix[f] > threshold
            else:
                on = pix[f] > 0
            arr[kk[f]] |= on.astype(np.uint8)
        mask = sitk.GetImageFromArray(arr)
        mask.SetOrigin([float(v) for v in origin])
        mask.SetSpacing([pixel_spacing[1], pixel_spacing[0], step])
        mask.SetDirection([float(v) for v in direction.flatten()])
        out.append(Segment(name=s["name"], color=s["color"], mask=_to_reference(p, s["name"], mask, reference),
                           segment_id=str(s["number"]), tags={}))
    return out


# ----------------------------------------------------------------------------------------------
# output paths
# ----------------------------------------------------------------------------------------------

def output_kind(path: PathLike) -> str:
    """``"seg.nrrd"`` (``.seg.nrrd``), ``"nifti"`` (``.nii``, ``.nii.gz``) or ``"dicom-seg"`` (``.dcm``)."""
    low = _lower_name(path)
    for ext, kind in OUTPUT_EXTENSIONS:
        if low.endswith(ext):
            return kind
    raise InputError(path, "unsupported output type; use one of: " + ", ".join(e for e, _ in OUTPUT_EXTENSIONS))


def _sidecar_path(path: PathLike) -> str:
    return _strip_volume_extension(path) + ".labels.json"


def check_writable_file(path: PathLike, overwrite: bool = False, source: Optional[str] = None) -> None:
    """Check, before any computation, that the file ``path`` may be (re)written.

    Raises:
        InputError (named ``source``, default the path): ``path`` is a folder, exists and not
        ``overwrite``, or its folder is missing or not writable.
    """
    name = path if source is None else source
    p = os.path.abspath(str(path))
    if os.path.isdir(p):
        raise InputError(name, "is a folder; give an output file name")
    if os.path.exists(p) and not overwrite:
        raise InputError(name, "already exists; pass --overwrite to replace it")
    parent = os.path.dirname(p)
    if not os.path.isdir(parent):
        raise InputError(name, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(name, f"output folder {parent} is not writable")


def check_output_path(path: PathLike, overwrite: bool = False, reference_source: Optional[VolumeSource] = None) -> str:
    """Check, before any computation, that ``path`` can be written; return its :func:`output_kind`.

    Raises:
        InputError: unsupported extension, file exists and not ``overwrite``, folder
            missing or not writable, ``.dcm`` requested but the follow-up is not a DICOM series.
    """
    kind = output_kind(path)
    p = os.path.abspath(str(path))
    check_writable_file(path, overwrite)
    if kind == "nifti" and os.path.exists(_sidecar_path(p)) and not overwrite:
        raise InputError(path, f"its label table {os.path.basename(_sidecar_path(p))} already exists; "
                               "pass --overwrite to replace it")
    if kind == "dicom-seg" and (reference_source is None or reference_source.kind != "dicom"
                                or not reference_source.dicom_files):
        raise InputError(path, "DICOM SEG output needs the follow-up as a DICOM series; "
                               "write .seg.nrrd or .nii.gz instead")
    if kind == "dicom-seg" and len(reference_source.dicom_files) < 2:
        raise InputError(path, "DICOM SEG output needs the follow-up as a series of single-frame slices "
                               "(a multi-frame follow-up is not supported); write .seg.nrrd or .nii.gz instead")
    return kind


@contextlib.contextmanager
def _atomic_file(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on failure it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            if os.path.exists(tmp):
                os.remove(tmp)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------------------------------
# writing segmentations
# ----------------------------------------------------------------------------------------------

def write_segmentation(path: PathLike, segments: List[Segment], reference: sitk.Image, provenance: dict,
                       reference_source: Optional[VolumeSource] = None, overwrite: bool = False) -> str:
    """Write ``segments`` (masks on ``reference``'s grid, the follow-up) atomically.

    * ``.seg.nrrd``: Slicer segmentation on ``reference``'s full grid (LPS space
      directions/origin, oblique or flipped), segment names, colours, IDs and tags
      (Slicer's ``key:value|`` serialisation), overlapping segments in separate layers,
      the reference image geometry as conversion parameter, and ``provenance`` as JSON
      in the custom header field ``P2SAM_Provenance``.
    * ``.nii`` / ``.nii.gz``: labelmap (uint8, uint16 beyond 255 segments), label ``i+1`` =
      ``segments[i]`` (overlaps: later segment wins, with a warning), plus a sidecar
      ``<name>.labels.json`` (label -> name, colour, tags; provenance).
    * ``.dcm``: BINARY DICOM SEG (highdicom) referencing the follow-up series
      ``reference_source.dicom_files``; algorithm ``P2SAM`` with the model name, its
      SHA-256 and the status from ``provenance`` (keys ``model`` = ``{"name", "sha256"}``,
      ``version``); SeriesDescription contains ``"P2SAM unreviewed proposal"``.

    Returns:
        The path written (as given).

    Raises:
        InputError: see :func:`check_output_path`; no segments; a segment not on
            ``reference``'s geometry; the file could not be written.
    """
    kind = check_output_path(path, overwrite=overwrite, reference_source=reference_source)
    target = str(path)
    if not segments:
        raise InputError(path, "no segments to write")
    for s in segments:
        if not same_geometry(s.mask, reference):
            raise InputError(path, f"segment '{s.name}' is not on the follow-up image's grid "
                                   f"(size {list(s.mask.GetSize())} vs {list(reference.GetSize())})")
    try:
        if kind == "seg.nrrd":
            with _atomic_file(target) as tmp:
                _write_seg_nrrd(tmp, segments, reference, provenance)
        elif kind == "nifti":
            suffix = ".nii.gz" if _lower_name(target).endswith(".nii.gz") else ".nii"
            sidecar = _sidecar_path(target)
            # the image is moved into place first, then its label table
            with _atomic_file(sidecar) as tmp_json, _atomic_file(target, suffix) as tmp:
                _write_nifti(tmp, tmp_json, segments, reference, provenance)
        else:
            with _atomic_file(target) as tmp:
                _write_dicom_seg(tmp, target, segments, reference, provenance, reference_source)
    except InputError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise InputError(path, f"could not be written ({exc.__class__.__name__}: {exc})") from None
    return target


def _layers(arrays: List[np.ndarray]) -> Tuple[List[np.ndarray], List[Tuple[int, int]]]:
    """Pack masks into as few uint8 label layers as possible without overlap: (layers, [(layer, label)])."""
    layers: List[np.ndarray] = []
    counts: List[int] = []
    where: List[Tuple[int, int]] = []
    for a in arrays:
        for li, layer in enumerate(layers):
            if counts[li] < 255 and not np.any(layer[a]):
                break
        else:
            layers.append(np.zeros(a.shape, dtype=np.uint8))
            counts.append(0)
            li = len(layers) - 1
        counts[li] += 1
        layers[li][a] = counts[li]
        where.append((li, counts[li]))
    return layers, where


def reference_geometry_string(reference: sitk.Image) -> str:
    """Slicer's serialised image geometry of ``reference``: the 4 x 4 IJK-to-RAS matrix (row major)
    then the extent ``0;nx-1;0;ny-1;0;nz-1;`` (as in ``vtkSegmentationConverter::SerializeImageGeometry``)."""
    M, o = _index_to_lps(reference)
    M_ras = _LPS_FROM_RAS @ M
    o_ras = _LPS_FROM_RAS @ o
    m4 = np.eye(4)
    m4[:3, :3] = M_ras
    m4[:3, 3] = o_ras
    nx, ny, nz = reference.GetSize()
    return "".join(_fmt(v) + ";" for v in m4.flatten()) + f"0;{nx - 1};0;{ny - 1};0;{nz - 1};"


def _write_seg_nrrd(tmp: str, segments: List[Segment], reference: sitk.Image, provenance: dict) -> None:
    arrays = [s.array() for s in segments]
    layers, where = _layers(arrays)
    nx, ny, nz = reference.GetSize()
    M, origin = _index_to_lps(reference)
    dir_text = " ".join(_fmt_vec(M[:, a]) for a in range(3))
    if len(layers) == 1:
        data = layers[0]  # [k, j, i]
        header = ["dimension: 3", f"sizes: {nx} {ny} {nz}", f"space directions: {dir_text}",
                  "kinds: domain domain domain"]
    else:
        data = np.stack(layers, axis=-1)  # [k, j, i, layer]: the layer index varies fastest in the file
        header = ["dimension: 4", f"sizes: {len(layers)} {nx} {ny} {nz}", f"space directions: none {dir_text}",
                  "kinds: list domain domain domain"]
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html", "type: unsigned char",
             header[0], "space: left-posterior-superior", header[1], header[2], header[3],
             "encoding: gzip", f"space origin: {_fmt_vec(origin)}"]
    custom = {"P2SAM_Provenance": json.dumps(provenance, sort_keys=True, default=str, ensure_ascii=True)}
    used_ids = set()
    for n, (s, (li, label)) in enumerate(zip(segments, where)):
        sid = _header_text(s.segment_id or "").strip()
        if not sid or sid in used_ids:
            sid = f"Segment_{n + 1}"
            while sid in used_ids:
                sid += "_"
        used_ids.add(sid)
        tags = [_slicer_tag_text(k, v) for k, v in s.tags.items()]
        c = [float(np.clip(v, 0.0, 1.0)) for v in s.color]
        custom.update({
            f"Segment{n}_Color": " ".join(_fmt(v) for v in c),
            f"Segment{n}_ColorAutoGenerated": "0",
            f"Segment{n}_Extent": f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}",
            f"Segment{n}_ID": sid,
            f"Segment{n}_LabelValue": str(label),
            f"Segment{n}_Layer": str(li),
            f"Segment{n}_Name": _header_text(s.name),
            f"Segment{n}_NameAutoGenerated": "0",
            f"Segment{n}_Tags": "".join(f"{k}:{v}|" for k, v in tags),
        })
    custom["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    custom["Segmentation_ConversionParameters"] = (
        "Reference image geometry|" + reference_geometry_string(reference)
        + "|Image geometry description string determining the geometry of the labelmap that is created in "
          "course of conversion. Can be copied from a volume, using the button.&")
    custom["Segmentation_MasterRepresentation"] = "Binary labelmap"
    custom["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    lines += [f"{k}:={v}" for k, v in custom.items()]
    head = ("\n".join(lines) + "\n\n").encode("utf-8")
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(gzip.compress(np.ascontiguousarray(data, dtype=np.uint8).tobytes(), compresslevel=1))


def _write_nifti(tmp: str, tmp_json: str, segments: List[Segment], reference: sitk.Image, provenance: dict) -> None:
    dtype = np.uint8 if len(segments) <= 255 else np.uint16
    labels = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=dtype)
    overlapping = []
    for n, s in enumerate(segments, start=1):
        a = s.array()
        if np.any(labels[a] != 0):
            overlapping.append(s.name)
        labels[a] = n
    if overlapping:
        warnings.warn("NIfTI labelmaps hold one label per voxel: where segments overlap, the later one wins "
                      f"({', '.join(repr(n) for n in overlapping)}); write .seg.nrrd to keep overlaps", stacklevel=3)
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(reference)
    sitk.WriteImage(img, tmp, useCompression=tmp.endswith(".gz"))
    doc = {"labels": {str(n): {"name": s.name, "color": [float(c) for c in s.color], "segment_id": s.segment_id,
                               "tags": {str(k): str(v) for k, v in s.tags.items()}}
                      for n, s in enumerate(segments, start=1)},
           "provenance": provenance}
    with open(tmp_json, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def _provenance_model(provenance: dict) -> Tuple[str, str]:
    model = provenance.get("model")
    if isinstance(model, dict):
        return str(model.get("name") or "unknown"), str(model.get("sha256") or "")
    if model:
        return str(model), str(provenance.get("model_sha256") or provenance.get("sha256") or "")
    return "none (registration only)", ""


def _write_dicom_seg(tmp: str, target: str, segments: List[Segment], reference: sitk.Image, provenance: dict,
                     reference_source: VolumeSource) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    files = list(reference_source.dicom_files)
    nx, ny, nz = reference.GetSize()
    if len(files) != nz:
        raise InputError(target, f"the follow-up DICOM series has {len(files)} slices but the "
                                                f"follow-up image has {nz}")
    try:
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as exc:  # noqa: BLE001
        raise InputError(target, f"the follow-up DICOM files ({reference_source.path}) cannot be re-read "
                                 f"({exc})") from None
    if int(sources[0].Rows) != ny or int(sources[0].Columns) != nx:
        raise InputError(target, "the follow-up DICOM slices do not match the follow-up image size")
    model_name, model_sha = _provenance_model(provenance)
    version = str(provenance.get("version") or __version__)
    status = str(provenance.get("status") or PROPOSAL_STATUS)
    params = {"model": model_name[:200], "model_sha256": model_sha, "status": status}
    if provenance.get("method"):
        params["method"] = str(provenance["method"])[:200]
    algorithm = hd.AlgorithmIdentificationSequence(name="P2SAM", family=codes.cid7162.ArtificialIntelligence,
                                                   version=version[:64], source="P2SAM for 3D Slicer",
                                                   parameters=params)
    descriptions = []
    for n, s in enumerate(segments, start=1):
        rgb = [int(round(255 * float(np.clip(c, 0, 1)))) for c in s.color]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=(s.name or f"Segment {n}")[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    pixels = np.stack([s.array() for s in segments], axis=-1).astype(np.uint8)  # [k, j, i, segment]
    try:
        series_number = int(sources[0].get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        series_number = 1000
    description = f"P2SAM {PROPOSAL_STATUS}"
    if model_name and len(description) + len(model_name) + 3 <= 64:
        description += f" ({model_name})"
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="P2SAM",
        manufacturer_model_name="P2SAM for 3D Slicer", software_versions=version[:64],
        device_serial_number="P2SAM", content_description=f"P2SAM {PROPOSAL_STATUS}"[:64],
        content_label="P2SAM", series_description=description,
        omit_empty_frames=bool(pixels.any()))
    seg.save_as(tmp)
