"""DICOM RTSTRUCT and DICOM SEG: reading them onto a reference image, and writing them.

pydicom and highdicom are imported lazily, inside the functions that need them."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from .sanity import check_direction
from .volume import DEFAULT_COLORS, PROPOSAL_STATUS, Segment, VolumeSource
from .files import _float_list, _index_to_lps, _mask_like, _select, _to_reference, require_overlap


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
    check_direction(direction, p, "its plane orientation's row and column axes")
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
        require_overlap(p, mask, reference)
        out.append(Segment(name=s["name"], color=s["color"], mask=_to_reference(p, s["name"], mask, reference),
                           segment_id=str(s["number"]), tags={}))
    return out


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


# ----------------------------------------------------------------------------------------------
# RTSTRUCT output
# ----------------------------------------------------------------------------------------------

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: DICOM Study Root / Detached Study Management SOP class referenced by RTReferencedStudySequence
_STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"


def pixel_outlines(mask: np.ndarray) -> List[np.ndarray]:
    """Closed outlines of a 2D mask along its pixels' edges.

    Args:
        mask: bool ``[rows j, columns i]``.
    Returns:
        ``[N, 2]`` float arrays of vertices ``(x, y)`` = (column, row) in continuous index
        coordinates (pixel centres at integers, so every vertex is a pixel corner at half-integers);
        collinear vertices are dropped. Outer outlines and hole outlines run in opposite
        directions (the foreground is always on the same side), and a pixel centre lies inside
        an odd number of outlines exactly when the pixel is set: even-odd filling (what RTSTRUCT
        readers do with a contour inside another) gives back ``mask`` exactly, rings included.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    edges: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
    # corners (R, C) of the padded grid: pixel (r, c) has corners (r, c) .. (r + 1, c + 1)
    for (dr, dc), (a, b) in (((-1, 0), ((0, 1), (0, 0))), ((1, 0), ((1, 0), (1, 1))),
                             ((0, -1), ((0, 0), (1, 0))), ((0, 1), ((1, 1), (0, 1)))):
        side = m & ~np.roll(np.roll(m, -dr, axis=0), -dc, axis=1)  # foreground with a background neighbour there
        for r, c in zip(*np.nonzero(side)):
            edges.setdefault((int(r) + a[0], int(c) + a[1]), []).append((int(r) + b[0], int(c) + b[1]))
    outlines = []
    while edges:
        start = next(iter(edges))
        loop = [start]
        here = start
        while True:
            targets = edges[here]
            nxt = targets.pop()
            if not targets:
                del edges[here]
            if nxt == start:
                break
            loop.append(nxt)
            here = nxt
        pts = np.array(loop, dtype=np.float64)
        prev, post = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        turn = (pts[:, 0] - prev[:, 0]) * (post[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (post[:, 0] - pts[:, 0])
        pts = pts[turn != 0]
        if len(pts) >= 3:
            outlines.append(np.stack([pts[:, 1] - 1.5, pts[:, 0] - 1.5], axis=1))  # (x = column, y = row), unpadded
    return outlines


def _provenance_text(provenance: dict, limit: int = 1024) -> str:
    """One line for the structure set description (ST, at most 1024 characters)."""
    model_name, model_sha = _provenance_model(provenance)
    parts = [f"P2SAM {provenance.get('version') or __version__}: {PROPOSAL_STATUS.upper()}, review before use",
             f"model {model_name}" + (f" sha256 {model_sha}" if model_sha else "")]
    for key in ("method", "date"):
        if provenance.get(key):
            parts.append(f"{key} {provenance[key]}")
    params = provenance.get("parameters")
    if isinstance(params, dict):
        parts.append("parameters " + ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if v is not None))
    return "; ".join(parts)[:limit]


def _write_rtstruct(tmp: str, target: str, segments: List[Segment], reference: sitk.Image, provenance: dict,
                    reference_source: VolumeSource) -> None:
    """An RT Structure Set on the follow-up DICOM series: per segment (ROI: name, colour) and per slice,
    its pixel outlines as CLOSED_PLANAR contours in patient coordinates (LPS mm, the series' frame of
    reference), each referencing its slice's image; holes are inner contours. The set is marked as an
    unreviewed proposal (series description, structure set label/description, approval UNAPPROVED,
    ROI generation algorithm AUTOMATIC with the model)."""
    import datetime

    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    files = list(reference_source.dicom_files)
    nx, ny, nz = reference.GetSize()
    if len(files) != nz:
        raise InputError(target, f"the follow-up DICOM series has {len(files)} slices but the follow-up image has {nz}")
    try:
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as exc:  # noqa: BLE001
        raise InputError(target, f"the follow-up DICOM files ({reference_source.path}) cannot be re-read "
                                 f"({exc})") from None
    first = sources[0]
    frame_of_reference = str(first.get("FrameOfReferenceUID", "") or reference_source.frame_of_reference_uid or "")
    if not frame_of_reference:
        raise InputError(target, "the follow-up DICOM series has no FrameOfReferenceUID; RTSTRUCT output needs one")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(tmp, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, keyword, first.get(keyword, "") or "")
    now = datetime.datetime.now()
    version = str(provenance.get("version") or __version__)
    model_name, model_sha = _provenance_model(provenance)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    try:
        ds.SeriesNumber = int(first.get("SeriesNumber") or 0) + 1001
    except (TypeError, ValueError):
        ds.SeriesNumber = 1001
    ds.SeriesDescription = f"P2SAM {PROPOSAL_STATUS}"[:64]
    ds.InstanceNumber = 1
    ds.Manufacturer = "P2SAM"
    ds.ManufacturerModelName = "P2SAM for 3D Slicer"
    ds.SoftwareVersions = version[:64]
    ds.StructureSetLabel = "P2SAM proposal"
    ds.StructureSetName = f"P2SAM {PROPOSAL_STATUS}"[:64]
    ds.StructureSetDescription = _provenance_text(provenance)
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"  # RT Approval: a proposal nobody has reviewed yet

    def image_item(k: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = sources[k].SOPClassUID
        item.ReferencedSOPInstanceUID = sources[k].SOPInstanceUID
        return item

    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = DicomSequence([image_item(k) for k in range(nz)])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = _STUDY_COMPONENT_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = DicomSequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = frame_of_reference
    for_item.RTReferencedStudySequence = DicomSequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([for_item])

    index_to_lps, origin = _index_to_lps(reference)
    rois, roi_contours, observations = [], [], []
    for number, seg in enumerate(segments, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = (seg.name or f"Segment {number}")[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = (f"P2SAM {PROPOSAL_STATUS}: {model_name}"
                                        + (f" {model_sha[:16]}" if model_sha else ""))[:64]
        rois.append(roi)
        arr = seg.array()
        contours = []
        for k in np.flatnonzero(arr.reshape(arr.shape[0], -1).any(axis=1)):
            for outline in pixel_outlines(arr[k]):
                ijk = np.column_stack([outline, np.full(len(outline), float(k))])
                points = ijk @ index_to_lps.T + origin
                item = Dataset()
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item.ContourData = [f"{v:.4f}" for v in points.ravel()]
                item.ContourImageSequence = DicomSequence([image_item(int(k))])
                contours.append(item)
        rc_item = Dataset()
        rc_item.ReferencedROINumber = number
        rc_item.ROIDisplayColor = [int(round(255 * float(np.clip(c, 0, 1)))) for c in seg.color]
        if contours:
            rc_item.ContourSequence = DicomSequence(contours)
        roi_contours.append(rc_item)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = roi.ROIName
        obs.RTROIInterpretedType = ""
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.save_as(tmp, enforce_file_format=True)
