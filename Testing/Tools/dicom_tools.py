"""Builders of small synthetic DICOM test data (tests only).

* :func:`write_ct_series`: a SimpleITK volume -> one CT slice file per index ``k``
  (int16 stored values with RescaleSlope/RescaleIntercept, ImagePositionPatient and
  ImageOrientationPatient taken from the image's LPS geometry, oblique or flipped).
* :func:`write_rtstruct`: binary segments -> an RTSTRUCT whose closed planar contours
  (LPS mm) outline each slice of each mask; holes are separate contours (even-odd rule).
* :func:`write_dicom_seg`: binary segments -> a BINARY DICOM SEG (highdicom).

Masks given to the RTSTRUCT/SEG builders must be on the geometry of the image that
was written with :func:`write_ct_series` into ``ct_folder``.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _base_dataset(sop_class_uid: str, sop_instance_uid: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _patient_study(ds, study_uid: str) -> None:
    ds.PatientName = "P2SAM^Test"
    ds.PatientID = "P2SAM-TEST"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = "1"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""


def write_ct_series(image: sitk.Image, folder, *, series_uid: Optional[str] = None,
                    study_uid: Optional[str] = None, frame_of_reference_uid: Optional[str] = None,
                    modality: str = "CT", description: str = "P2SAM test series",
                    rescale_slope: float = 1.0, rescale_intercept: float = -1024.0,
                    series_number: int = 1) -> Dict[str, str]:
    """Write ``image`` (3D, values e.g. HU) as one DICOM file per slice ``k`` into ``folder``.

    Stored value = round((value - intercept) / slope) as int16. Slice ``k``'s
    ImagePositionPatient is the LPS position of voxel ``(0, 0, k)``; ImageOrientationPatient
    the image's first two direction columns. Files are named ``slice_<k>.dcm``.

    Returns:
        ``{"series_uid", "study_uid", "frame_of_reference_uid", "files": [paths in k order]}``.
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    arr = sitk.GetArrayFromImage(image).astype(np.float64)  # [k, j, i]
    stored = np.round((arr - rescale_intercept) / rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("values do not fit int16 with this rescale")
    stored = stored.astype(np.int16)
    d = np.array(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    files = []
    for k in range(arr.shape[0]):
        sop_uid = generate_uid()
        ds = _base_dataset(CT_IMAGE_STORAGE if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4", sop_uid)
        _patient_study(ds, study_uid)
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "P2SAM tests"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in list(d[:, 0]) + list(d[:, 1])]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing (along j), column spacing (along i)
        ds.SliceThickness = f"{sz:.6f}"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"slice_{k:04d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(str(path))
    return {"series_uid": series_uid, "study_uid": study_uid,
            "frame_of_reference_uid": frame_of_reference_uid, "files": files}


def _series_datasets(ct_folder) -> List:
    """The slice datasets of ``ct_folder`` (no pixels) in slice-index ``k`` order (InstanceNumber)."""
    import pydicom

    dss = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(Path(ct_folder).glob("*.dcm"))]
    dss = [ds for ds in dss if getattr(ds, "Modality", "") not in ("RTSTRUCT", "SEG")]
    return sorted(dss, key=lambda ds: int(ds.InstanceNumber))


def _mask_geometry_check(segments, dss) -> None:
    for s in segments:
        if s.mask.GetSize()[2] != len(dss):
            raise ValueError(f"segment {s.name!r} has {s.mask.GetSize()[2]} slices, the series {len(dss)}")


def write_rtstruct(segments, ct_folder, path, *, description: str = "P2SAM test structures") -> str:
    """Write ``segments`` (masks on the geometry of the series in ``ct_folder``) as an RTSTRUCT.

    Each slice ``k`` of each mask is outlined with ``skimage.measure.find_contours`` at
    level 0.5 (on a zero-padded slice, so every contour is closed); contour vertices
    ``(row j, column i)`` become LPS mm via the mask's geometry. Holes are separate
    contours: readers must use the even-odd rule.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid
    from skimage import measure

    dss = _series_datasets(ct_folder)
    _mask_geometry_check(segments, dss)
    first = dss[0]
    ds = _base_dataset(RT_STRUCTURE_SET_STORAGE, generate_uid())
    _patient_study(ds, first.StudyInstanceUID)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.SeriesDescription = description
    ds.InstanceNumber = 1
    ds.Manufacturer = "P2SAM tests"
    ds.StructureSetLabel = "P2SAM"
    now = datetime.datetime.now()
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID

    def contour_image(k):
        item = Dataset()
        item.ReferencedSOPClassUID = dss[k].SOPClassUID
        item.ReferencedSOPInstanceUID = dss[k].SOPInstanceUID
        return item

    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = Sequence([contour_image(k) for k in range(len(dss))])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = first.FrameOfReferenceUID
    for_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([for_item])

    rois, roi_contours, observations = [], [], []
    for number, seg in enumerate(segments, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = seg.name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        arr = sitk.GetArrayViewFromImage(seg.mask).astype(np.uint8)
        contours = []
        for k in range(arr.shape[0]):
            if not arr[k].any():
                continue
            padded = np.pad(arr[k], 1)
            for c in measure.find_contours(padded.astype(float), 0.5):
                rc = c - 1.0  # back to unpadded (row j, column i)
                if len(rc) > 1 and np.allclose(rc[0], rc[-1]):
                    rc = rc[:-1]
                if len(rc) < 3:
                    continue
                pts = [seg.mask.TransformContinuousIndexToPhysicalPoint((float(col), float(row), float(k)))
                       for row, col in rc]
                item = Dataset()
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(pts)
                item.ContourData = [f"{v:.4f}" for p in pts for v in p]
                item.ContourImageSequence = Sequence([contour_image(k)])
                contours.append(item)
        rc_item = Dataset()
        rc_item.ReferencedROINumber = number
        rc_item.ROIDisplayColor = [int(round(255 * c)) for c in seg.color]
        rc_item.ContourSequence = Sequence(contours)
        roi_contours.append(rc_item)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def write_dicom_seg(segments, ct_folder, path, *, omit_empty_frames: bool = True) -> str:
    """Write ``segments`` (masks on the geometry of the series in ``ct_folder``) as a BINARY DICOM SEG."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    dss = _series_datasets(ct_folder)
    _mask_geometry_check(segments, dss)
    pixels = np.stack([sitk.GetArrayViewFromImage(s.mask).astype(bool) for s in segments], axis=-1)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=s.name,
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            display_color=hd.color.CIELabColor.from_rgb(*[int(round(255 * c)) for c in s.color]))
        for n, s in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=dss, pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=98, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="P2SAM tests", manufacturer_model_name="tests",
        software_versions="0", device_serial_number="0", omit_empty_frames=omit_empty_frames)
    seg.save_as(str(path))
    return str(path)
