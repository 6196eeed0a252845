"""Reading and writing segmentations: the kind is detected from the content (reading) or the
file name (writing); outputs are checked before any computation and written atomically."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import SimpleITK as sitk

from ..errors import InputError, OutputError
from .outputs import atomic_path
from .volume import Segment, VolumeSource, same_geometry
from .dicom_objects import _read_dicom_seg, _read_rtstruct, _write_dicom_seg, _write_rtstruct
from .files import (
    OUTPUT_EXTENSIONS, OUTPUT_KINDS, VOLUME_EXTENSIONS, PathLike, _dicom_candidate, _looks_like_dicom, _lower_name)
from .slicer_nifti import (
    _read_labelmap, _read_nrrd_header, _read_seg_nrrd, _sidecar_path, _write_nifti, _write_seg_nrrd)


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


def output_kind(path: PathLike, kind: Optional[str] = None) -> str:
    """The kind of segmentation file to write at ``path``.

    Without ``kind``, from the extension: ``"seg.nrrd"`` (``.seg.nrrd``), ``"nifti"`` (``.nii``,
    ``.nii.gz``) or ``"dicom-seg"`` (``.dcm``). With ``kind`` (one of :data:`OUTPUT_KINDS`, e.g.
    ``"rtstruct"`` for a ``.dcm``), checked against the extension.
    """
    low = _lower_name(path)
    if kind is not None:
        if kind not in OUTPUT_KINDS:
            raise InputError(kind, "unknown output format; use one of: " + ", ".join(OUTPUT_KINDS))
        if not low.endswith(OUTPUT_KINDS[kind]):
            raise InputError(path, f"a {kind} output needs the extension {' or '.join(OUTPUT_KINDS[kind])}")
        return kind
    for ext, found in OUTPUT_EXTENSIONS:
        if low.endswith(ext):
            return found
    raise InputError(path, "unsupported output type; use one of: " + ", ".join(e for e, _ in OUTPUT_EXTENSIONS))


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


def check_output_path(path: PathLike, overwrite: bool = False, reference_source: Optional[VolumeSource] = None,
                      kind: Optional[str] = None) -> str:
    """Check, before any computation, that ``path`` can be written; return its :func:`output_kind`.

    Raises:
        InputError: unsupported extension or ``kind``, file exists and not ``overwrite``, folder
            missing or not writable, DICOM output (SEG or RTSTRUCT) but the follow-up is not a
            DICOM series of single-frame slices.
    """
    kind = output_kind(path, kind)
    p = os.path.abspath(str(path))
    check_writable_file(path, overwrite)
    if kind == "nifti" and os.path.exists(_sidecar_path(p)) and not overwrite:
        raise InputError(path, f"its label table {os.path.basename(_sidecar_path(p))} already exists; "
                               "pass --overwrite to replace it")
    what = {"dicom-seg": "DICOM SEG", "rtstruct": "RTSTRUCT"}.get(kind)
    if what and (reference_source is None or reference_source.kind != "dicom" or not reference_source.dicom_files):
        raise InputError(path, f"{what} output needs the follow-up as a DICOM series; "
                               "write .seg.nrrd or .nii.gz instead")
    if what and len(reference_source.dicom_files) < 2:
        raise InputError(path, f"{what} output needs the follow-up as a series of single-frame slices "
                               "(a multi-frame follow-up is not supported); write .seg.nrrd or .nii.gz instead")
    return kind


def write_segmentation(path: PathLike, segments: List[Segment], reference: sitk.Image, provenance: dict,
                       reference_source: Optional[VolumeSource] = None, overwrite: bool = False,
                       kind: Optional[str] = None) -> str:
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
    * ``.dcm`` with ``kind="rtstruct"``: DICOM RT Structure Set on the follow-up series: one ROI
      per segment (name, colour), per slice the segment's pixel outlines as CLOSED_PLANAR
      contours in patient coordinates (the series' frame of reference; holes as inner contours,
      even-odd rule), approval status UNAPPROVED and the provenance in the structure set
      description.

    Args:
        kind: the output kind when the extension allows several (``"rtstruct"``); default: by extension.

    Returns:
        The path written (as given).

    Raises:
        InputError: see :func:`check_output_path`; no segments; a segment not on
            ``reference``'s geometry.
        OutputError: the file could not be written (disk full...); the old file is intact.
    """
    kind = check_output_path(path, overwrite=overwrite, reference_source=reference_source, kind=kind)
    target = str(path)
    if not segments:
        raise InputError(path, "no segments to write")
    for s in segments:
        if not same_geometry(s.mask, reference):
            raise InputError(path, f"segment '{s.name}' is not on the follow-up image's grid "
                                   f"(size {list(s.mask.GetSize())} vs {list(reference.GetSize())})")
    try:
        if kind == "seg.nrrd":
            with atomic_path(target) as tmp:
                _write_seg_nrrd(tmp, segments, reference, provenance)
        elif kind == "nifti":
            suffix = ".nii.gz" if _lower_name(target).endswith(".nii.gz") else ".nii"
            sidecar = _sidecar_path(target)
            # the image is moved into place first, then its label table
            with atomic_path(sidecar) as tmp_json, atomic_path(target, suffix) as tmp:
                _write_nifti(tmp, tmp_json, segments, reference, provenance)
        elif kind == "rtstruct":
            with atomic_path(target) as tmp:
                _write_rtstruct(tmp, target, segments, reference, provenance, reference_source)
        else:
            with atomic_path(target) as tmp:
                _write_dicom_seg(tmp, target, segments, reference, provenance, reference_source)
    except InputError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise OutputError(path, f"could not be written ({exc.__class__.__name__}: {exc}); nothing was "
                                "replaced") from None
    return target
