"""3D input and output: volumes (files, DICOM series) and segmentations (Slicer, NIfTI, DICOM).

One module per format family:

* :mod:`.volumes` -- :func:`read_volume`: volume files, and the dispatch to DICOM series;
* :mod:`.dicom_series` -- DICOM image series: discovery (:func:`list_dicom_series`), slice
  ordering and consistency checks;
* :mod:`.slicer_nifti` -- Slicer ``.seg.nrrd`` (the package's own NRRD reader and writer),
  labelmap volumes, NIfTI labelmaps with their ``.labels.json`` table;
* :mod:`.dicom_objects` -- DICOM RTSTRUCT and DICOM SEG, read and written;
* :mod:`.segmentations` -- :func:`read_segmentation` / :func:`write_segmentation` (the kind is
  detected from the content or the file name), output checks before any computation;
* :mod:`.files` -- what they share: extensions, index-to-LPS geometry, masks onto a grid.

Frames and conventions
----------------------
* Images are ``SimpleITK.Image`` objects in **LPS** patient coordinates (mm): origin,
  spacing and a 3 x 3 direction matrix whose columns are the ``i``, ``j``, ``k`` axes
  (oblique and flipped axes allowed). Arrays from them are indexed ``[k, j, i]``.
* Volumes are returned as ``sitkFloat32`` with their stored values kept (CT: Hounsfield
  units with RescaleSlope/RescaleIntercept applied).
* Segments (:class:`~P2SAMLogic.io.volume.Segment`) hold ``sitkUInt8`` 0/1 masks. Every
  segment returned by :func:`read_segmentation` lies on the ``reference`` image's grid;
  sources on another grid are resampled in physical space (identity transform, nearest
  neighbour).

Readers raise :class:`~P2SAMLogic.errors.InputError` whose message starts with the path.
Writers are atomic (:func:`P2SAMLogic.io.outputs.atomic_path`): on failure nothing is left
behind and an existing file is untouched.

pydicom and highdicom are imported lazily, only by the functions that need them.
"""
from .dicom_series import list_dicom_series
from .files import OUTPUT_EXTENSIONS, OUTPUT_KINDS, VOLUME_EXTENSIONS, PathLike
from .segmentations import (check_output_path, check_writable_file, output_kind, read_segmentation,
                            write_segmentation)
from .slicer_nifti import reference_geometry_string
from .volumes import read_volume

__all__ = ["OUTPUT_EXTENSIONS", "OUTPUT_KINDS", "VOLUME_EXTENSIONS", "PathLike", "check_output_path", "check_writable_file",
           "list_dicom_series", "output_kind", "read_segmentation", "read_volume", "reference_geometry_string",
           "write_segmentation"]
