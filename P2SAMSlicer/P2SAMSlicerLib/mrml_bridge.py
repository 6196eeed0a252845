"""MRML nodes <-> SimpleITK images and :class:`P2SAMLogic.io.volume.Segment`.

Uses only MRML / VTK / vtkSegmentationCore classes that exist both in Slicer (5.8) and in
the PyPI package ``slicer-core`` (``vtkMRMLScalarVolumeNode``, ``vtkMRMLSegmentationNode``,
``vtkOrientedImageData``, ``vtkOrientedImageDataResample``, ``vtkSegment``,
``vtkSegmentationConverter``, ``vtkSlicerSegmentationsModuleLogic``'s static methods,
``vtkMRMLSubjectHierarchyNode``), and never ``slicer.util`` functions that need
``slicer.mrmlScene`` or Qt: every function takes its scene or node explicitly.

Frames
------
Slicer stores geometry as the 4 x 4 ``IJKToRAS`` matrix (RAS: +x right, +y anterior);
SimpleITK as origin, spacing and direction in LPS (+x left, +y posterior). With
``F = diag(-1, -1, 1)``: ``IJKToRAS[:3, :3] = F @ D @ diag(spacing)`` and
``IJKToRAS[:3, 3] = F @ origin``, where ``D`` is SimpleITK's row-major direction matrix.
Voxel arrays are ``[k, j, i]`` in both (VTK's point order is i fastest), so the voxel
data is copied as is; only the geometry is converted.
"""
from __future__ import annotations

import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

from P2SAMLogic.io.volume import PROPOSAL_STATUS, Segment

from .runner import json_default

#: RAS <-> LPS (its own inverse)
FLIP_RAS_LPS = np.diag([-1.0, -1.0, 1.0])
BINARY_LABELMAP = "Binary labelmap"
#: node attribute holding the propagation report (JSON) on an output segmentation node
REPORT_ATTRIBUTE = "P2SAM.Report"
#: node attribute holding the follow-up volume's geometry (JSON) the report's slice indices refer to
GEOMETRY_ATTRIBUTE = "P2SAM.FollowupGeometry"
#: node attribute with the model the propagation used (JSON: model, model_type, device)
MODEL_ATTRIBUTE = "P2SAM.ModelChoice"
#: node attribute identifying the follow-up's voxels the report refers to (:func:`content_key`)
CONTENT_ATTRIBUTE = "P2SAM.FollowupContent"


class BridgeError(ValueError):
    """An MRML node cannot be used as asked; the message names the node and what to do."""


# ------------------------------------------------------------------------------------------
# geometry


def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The ``4 x 4`` IJKToRAS matrix of a 3D SimpleITK image (LPS geometry)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    out = np.eye(4)
    out[:3, :3] = FLIP_RAS_LPS @ direction @ np.diag(image.GetSpacing())
    out[:3, 3] = FLIP_RAS_LPS @ np.array(image.GetOrigin(), dtype=np.float64)
    return out


def set_image_geometry_from_ijk_to_ras(image: sitk.Image, ijk_to_ras: np.ndarray) -> sitk.Image:
    """Set origin, spacing and direction of ``image`` (LPS) from an IJKToRAS matrix; returns ``image``."""
    lps = FLIP_RAS_LPS @ ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if np.any(spacing <= 0):
        raise BridgeError(f"IJKToRAS matrix has a zero-length axis: {ijk_to_ras.tolist()}")
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (lps / spacing).ravel()])
    image.SetOrigin([float(v) for v in FLIP_RAS_LPS @ ijk_to_ras[:3, 3]])
    return image


def node_ijk_to_ras(volume_node: slicer.vtkMRMLScalarVolumeNode) -> np.ndarray:
    """The volume node's IJKToRAS as a ``4 x 4`` array."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _matrix_to_array(matrix)


def geometry_of(image: sitk.Image) -> dict:
    """JSON-able geometry: ``size`` (i, j, k) and ``ijk_to_ras`` (4 x 4, row-major)."""
    return {"size": [int(v) for v in image.GetSize()],
            "ijk_to_ras": [[round(float(v), 6) for v in row] for row in ijk_to_ras_from_image(image)]}


def _require_untransformed(transformable_node: slicer.vtkMRMLTransformableNode, role: str) -> None:
    if transformable_node is not None and transformable_node.GetParentTransformNode() is not None:
        raise BridgeError(f"{role} '{transformable_node.GetName()}' is under the transform "
                          f"'{transformable_node.GetParentTransformNode().GetName()}'; harden the transform "
                          "(Data module: right-click > Harden transform) or remove it, then try again")


# ------------------------------------------------------------------------------------------
# volumes


def volume_node_to_image(volume_node: slicer.vtkMRMLScalarVolumeNode, role: str = "volume") -> sitk.Image:
    """A scalar volume node as a SimpleITK image (voxels copied, full geometry, LPS).

    Args:
        volume_node: ``vtkMRMLScalarVolumeNode`` (labelmap nodes are scalar volumes too).
        role: how to call the node in error messages (``"prior volume"``...).
    Returns:
        3D ``sitk.Image`` of the node's scalar type, ``GetArrayFromImage`` = ``[k, j, i]``.
    """
    if volume_node is None:
        raise BridgeError(f"no {role} selected")
    _require_untransformed(volume_node, role)
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetPointData() is None or image_data.GetPointData().GetScalars() is None:
        raise BridgeError(f"{role} '{volume_node.GetName()}' holds no voxels")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise BridgeError(f"{role} '{volume_node.GetName()}' has {image_data.GetNumberOfScalarComponents()} "
                          "components per voxel; a scalar (grey-level) volume is needed")
    dims = image_data.GetDimensions()
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[::-1])
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    ijk_to_ras = node_ijk_to_ras(volume_node)
    # an image data with a non-zero extent start shifts the IJK origin
    extent = image_data.GetExtent()
    if extent[0] or extent[2] or extent[4]:
        ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ np.array([extent[0], extent[2], extent[4]], float) + ijk_to_ras[:3, 3]
    return set_image_geometry_from_ijk_to_ras(image, ijk_to_ras)


def image_to_volume_node(image: sitk.Image, scene: slicer.vtkMRMLScene, name: str,
                         node: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
                         class_name: str = "vtkMRMLScalarVolumeNode") -> slicer.vtkMRMLScalarVolumeNode:
    """A SimpleITK 3D scalar image in a (new or given) volume node of ``scene``; returns the node."""
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(int(array.shape[2]), int(array.shape[1]), int(array.shape[0]))
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image_data.GetPointData().SetScalars(vtk_array)
    node.SetAndObserveImageData(image_data)
    node.SetIJKToRASMatrix(_array_to_matrix(ijk_to_ras_from_image(image)))
    node.CreateDefaultDisplayNodes()
    return node


def oriented_image_of_volume(volume_node: slicer.vtkMRMLScalarVolumeNode) -> "slicer.vtkOrientedImageData":
    """The volume's voxels and geometry as a ``vtkOrientedImageData`` (a copy), owned by Python alone.

    ``vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode`` returns a new
    object the caller owns; VTK's Python wrapping adds its own reference, so without the
    ``UnRegister`` here (what Slicer's own Python code does) every call leaks a full copy.
    """
    oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume_node)
    if oriented is None:
        raise BridgeError(f"volume '{volume_node.GetName()}' holds no voxels")
    oriented.UnRegister(None)
    return oriented


# ------------------------------------------------------------------------------------------
# oriented image data (segment labelmaps)


def oriented_image_from_mask(mask: np.ndarray, reference: sitk.Image) -> "slicer.vtkOrientedImageData":
    """``vtkOrientedImageData`` (unsigned char 0/1) from a ``[k, j, i]`` array on ``reference``'s grid."""
    array = np.ascontiguousarray(np.asarray(mask).astype(np.uint8))
    if tuple(array.shape[::-1]) != tuple(reference.GetSize()):
        raise BridgeError(f"mask of shape {array.shape} does not fit the reference grid {list(reference.GetSize())}")
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(int(array.shape[2]), int(array.shape[1]), int(array.shape[0]))
    oriented.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                                                  array_type=vtk.VTK_UNSIGNED_CHAR))
    oriented.SetImageToWorldMatrix(_array_to_matrix(ijk_to_ras_from_image(reference)))
    return oriented


def empty_oriented_image_like(reference: sitk.Image) -> "slicer.vtkOrientedImageData":
    """Geometry-only ``vtkOrientedImageData`` of ``reference`` (extent and IJKToRAS, one voxel type)."""
    size = reference.GetSize()
    oriented = slicer.vtkOrientedImageData()
    oriented.SetExtent(0, int(size[0]) - 1, 0, int(size[1]) - 1, 0, int(size[2]) - 1)
    oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    oriented.GetPointData().GetScalars().Fill(0)
    oriented.SetImageToWorldMatrix(_array_to_matrix(ijk_to_ras_from_image(reference)))
    return oriented


def oriented_image_to_mask(oriented: slicer.vtkOrientedImageData, reference: sitk.Image,
                           label_value: Optional[int] = None) -> np.ndarray:
    """Resample a labelmap onto ``reference``'s grid (nearest neighbour): bool ``[k, j, i]``.

    Args:
        oriented: ``vtkOrientedImageData`` in RAS (a segment's binary labelmap, possibly shared).
        label_value: voxels equal to this are the structure (shared labelmaps); None: any non-zero.
    """
    target = empty_oriented_image_like(reference)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            oriented, target, resampled, False, False):
        raise BridgeError("cannot resample a segment onto the reference geometry")
    size = reference.GetSize()
    out = np.zeros((int(size[2]), int(size[1]), int(size[0])), dtype=bool)
    scalars = resampled.GetPointData().GetScalars() if resampled.GetPointData() else None
    if scalars is None:
        return out
    ext = resampled.GetExtent()
    dims = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    if min(dims) <= 0:
        return out
    values = numpy_support.vtk_to_numpy(scalars).reshape(dims)
    hit = values == label_value if label_value is not None else values != 0
    # the resampled extent may be a sub-box of (or reach beyond) the reference's
    k0, k1 = max(0, ext[4]), min(out.shape[0], ext[5] + 1)
    j0, j1 = max(0, ext[2]), min(out.shape[1], ext[3] + 1)
    i0, i1 = max(0, ext[0]), min(out.shape[2], ext[1] + 1)
    if k1 > k0 and j1 > j0 and i1 > i0:
        out[k0:k1, j0:j1, i0:i1] = hit[k0 - ext[4]:k1 - ext[4], j0 - ext[2]:j1 - ext[2], i0 - ext[0]:i1 - ext[0]]
    return out


def _oriented_voxel_count(oriented: slicer.vtkOrientedImageData, label_value: Optional[int]) -> Tuple[int, float]:
    """(voxels of the structure, voxel volume in mm³) of a labelmap in its own geometry."""
    if oriented is None or oriented.GetPointData() is None or oriented.GetPointData().GetScalars() is None:
        return 0, 0.0
    values = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())
    count = int((values == label_value).sum()) if label_value is not None else int(np.count_nonzero(values))
    matrix = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(matrix)
    voxel = abs(float(np.linalg.det(_matrix_to_array(matrix)[:3, :3])))
    return count, voxel


# ------------------------------------------------------------------------------------------
# segmentation nodes -> segments


def segment_ids(segmentation_node: slicer.vtkMRMLSegmentationNode) -> List[str]:
    """Segment IDs of a segmentation node, in display order."""
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def segment_names(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Dict[str, str]:
    """``{segment ID: name}`` of a segmentation node, in display order."""
    seg = segmentation_node.GetSegmentation()
    return {sid: seg.GetSegment(sid).GetName() for sid in segment_ids(segmentation_node)}


def ensure_conversion_rules() -> None:
    """Register the standard labelmap <-> closed-surface conversion rules when none is registered.

    Slicer's Segmentations module registers them at start-up; a headless MRML environment
    (PyPI ``slicer-core``) starts with none, and then cannot convert a closed-surface
    segmentation (e.g. from an RTSTRUCT) to a labelmap. Does nothing when rules exist.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    try:
        existing = factory.GetConverterRules()
    except (AttributeError, TypeError):  # not wrapped: assume a full Slicer, which has them
        return
    if existing:
        return
    for rule_class in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                       "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                       "vtkFractionalLabelmapToClosedSurfaceConversionRule"):
        rule = getattr(slicer, rule_class, None)
        if rule is not None:
            factory.RegisterConverterRule(rule())


def _labelmap_segmentation(segmentation_node: slicer.vtkMRMLSegmentationNode,
                            reference: sitk.Image) -> slicer.vtkSegmentation:
    """The node's ``vtkSegmentation`` with a binary labelmap representation.

    Segmentations whose source representation is not a labelmap (e.g. closed surfaces from
    an RTSTRUCT) are converted in a copy, at the reference image's resolution: the node
    itself is never modified.
    """
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.ContainsRepresentation(BINARY_LABELMAP):
        return segmentation
    ensure_conversion_rules()
    work = slicer.vtkSegmentation()
    work.DeepCopy(segmentation)
    work.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                slicer.vtkSegmentationConverter.SerializeImageGeometry(
                                    empty_oriented_image_like(reference)))
    if not work.CreateRepresentation(BINARY_LABELMAP):
        raise BridgeError(f"segmentation '{segmentation_node.GetName()}' cannot be converted to a binary labelmap")
    return work


def segments_from_segmentation_node(segmentation_node: slicer.vtkMRMLSegmentationNode, reference: sitk.Image,
                                    selected_ids: Optional[Sequence[str]] = None,
                                    reference_name: str = "the prior volume",
                                    min_inside: float = 0.5) -> List[Segment]:
    """Segments of a segmentation node as :class:`Segment` masks on ``reference``'s grid.

    Args:
        segmentation_node: ``vtkMRMLSegmentationNode`` (not modified).
        reference: the image the masks must lie on (the prior volume).
        selected_ids: segment IDs to take, in this order (None: all).
        reference_name: how error messages call ``reference``.
        min_inside: fraction of each segment's volume that must land inside ``reference``;
            less means the segmentation was not drawn on that volume.
    Returns:
        One :class:`Segment` per ID: name, colour, ``segment_id`` = the Slicer segment ID,
        a uint8 0/1 mask with ``reference``'s geometry.
    Raises:
        BridgeError: no segment, unknown ID, empty segment, or segment outside ``reference``.
    """
    if segmentation_node is None:
        raise BridgeError("no prior segmentation selected")
    _require_untransformed(segmentation_node, "prior segmentation")
    node_name = segmentation_node.GetName()
    all_ids = segment_ids(segmentation_node)
    ids = list(all_ids if selected_ids is None else selected_ids)
    if not ids:
        raise BridgeError(f"no segment of '{node_name}' is selected; tick at least one segment to propagate")
    unknown = [s for s in ids if s not in all_ids]
    if unknown:
        raise BridgeError(f"segmentation '{node_name}' has no segment with ID {', '.join(unknown)}")
    segmentation = _labelmap_segmentation(segmentation_node, reference)
    ref_voxel_mm3 = float(np.prod(reference.GetSpacing()))
    out: List[Segment] = []
    for sid in ids:
        segment = segmentation.GetSegment(sid)
        name = segment.GetName()
        oriented = segment.GetRepresentation(BINARY_LABELMAP)
        label = int(segment.GetLabelValue()) if _is_shared(segmentation, sid) else None
        native_count, native_voxel = _oriented_voxel_count(oriented, label)
        if native_count == 0:
            raise BridgeError(f"segment '{name}' of '{node_name}' is empty; paint it or untick it")
        mask = oriented_image_to_mask(oriented, reference, label)
        inside = float(mask.sum()) * ref_voxel_mm3 / max(1e-9, native_count * native_voxel)
        if not mask.any() or inside < min_inside:
            raise BridgeError(f"segment '{name}' of '{node_name}' is not on {reference_name}: only "
                              f"{100 * min(inside, 1.0):.0f}% of it lies inside that volume; pick the volume the "
                              "segmentation was drawn on")
        r, g, b = segment.GetColor()
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(reference)
        out.append(Segment(name=name, color=(float(r), float(g), float(b)), mask=image, segment_id=sid,
                           tags=kept_tags(segment)))
    return out


def kept_tags(segment: slicer.vtkSegment) -> Dict[str, str]:
    """The tags of a prior segment a proposal keeps: its standard terminology (``TerminologyEntry``: category,
    type, modifier, anatomic region as DICOM / SNOMED CT codes), so the proposal is the same structure."""
    out = {}
    for key in (slicer.vtkSegment.GetTerminologyEntryTagName(),):
        value = segment_tag(segment, key)
        if value:
            out[key] = value
    return out


def carry_prior_tags(segments: Sequence[Segment], prior_segments: Sequence[Segment]) -> List[Segment]:
    """Proposals with the tags of the prior segment of the same name added (the proposal's own tags win)."""
    by_name = {p.name: dict(p.tags or {}) for p in prior_segments}
    out = []
    for s in segments:
        tags = dict(by_name.get(s.name, {}))
        tags.update(s.tags or {})
        out.append(Segment(s.name, s.color, s.mask, s.segment_id, tags))
    return out


def _is_shared(segmentation: slicer.vtkSegmentation, segment_id: str) -> bool:
    """True when the segment's labelmap object is shared with other segments (voxel value = label value)."""
    rep = segmentation.GetSegment(segment_id).GetRepresentation(BINARY_LABELMAP)
    if rep is None:
        return False
    for other in segmentation.GetSegmentIDs():
        if other != segment_id and segmentation.GetSegment(other).GetRepresentation(BINARY_LABELMAP) is rep:
            return True
    return False


# ------------------------------------------------------------------------------------------
# segments -> segmentation node


def fill_segmentation_node(segmentation_node: slicer.vtkMRMLSegmentationNode, segments: Sequence[Segment],
                           reference: sitk.Image, reference_volume_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None
                           ) -> None:
    """Replace every segment of ``segmentation_node`` by ``segments`` (masks on ``reference``'s grid).

    Names, colours and tags are copied; each segment's ID is its ``segment_id`` (made
    unique), and its Slicer status is "in progress" when its tags mark it as an unreviewed
    proposal. The node's reference geometry becomes ``reference_volume_node`` (when given)
    or ``reference``.
    """
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    if reference_volume_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    else:
        segmentation.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                            slicer.vtkSegmentationConverter.SerializeImageGeometry(
                                                empty_oriented_image_like(reference)))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for s in segments:
        mask = sitk.GetArrayViewFromImage(s.mask)
        if tuple(s.mask.GetSize()) != tuple(reference.GetSize()):
            raise BridgeError(f"segment '{s.name}' is not on the reference grid")
        segment = slicer.vtkSegment()
        segment.SetName(s.name)
        segment.SetColor(*[float(c) for c in s.color])
        segment.AddRepresentation(BINARY_LABELMAP, oriented_image_from_mask(mask, reference))
        for key, value in (s.tags or {}).items():
            segment.SetTag(str(key), str(value))
        if (s.tags or {}).get("P2SAM.Status") == PROPOSAL_STATUS:
            logic.SetSegmentStatus(segment, logic.InProgress)
        segment_id = segmentation.GenerateUniqueSegmentID(s.segment_id or s.name)
        segmentation.AddSegment(segment, segment_id)


def segments_to_segmentation_node(scene: slicer.vtkMRMLScene, segments: Sequence[Segment], reference: sitk.Image,
                                  name: Optional[str],
                                  reference_volume_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
                                  node: Optional[slicer.vtkMRMLSegmentationNode] = None
                                  ) -> slicer.vtkMRMLSegmentationNode:
    """A new (or the given, emptied) segmentation node holding ``segments``; returns the node.

    The node is added to ``scene`` with display nodes, and placed in the subject hierarchy
    next to ``reference_volume_node`` (same parent, e.g. the follow-up's study). A given
    ``node`` is renamed only when ``name`` is given.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or "P2SAM")
    elif name:
        node.SetName(name)
    node.CreateDefaultDisplayNodes()
    fill_segmentation_node(node, segments, reference, reference_volume_node)
    if reference_volume_node is not None:
        place_next_to(scene, node, reference_volume_node)
    return node


def place_next_to(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode, sibling: slicer.vtkMRMLNode) -> None:
    """Put ``node`` under the subject-hierarchy parent of ``sibling`` (its study, or the scene)."""
    sh = scene.GetSubjectHierarchyNode()
    if sh is None:
        return
    sibling_item = sh.GetItemByDataNode(sibling)
    parent = sh.GetItemParent(sibling_item) if sibling_item else sh.GetSceneItemID()
    if not parent:
        parent = sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    if not item:
        sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)


def masks_from_segmentation_node(segmentation_node: slicer.vtkMRMLSegmentationNode, reference: sitk.Image
                                 ) -> Dict[str, np.ndarray]:
    """``{segment name: bool [k, j, i]}`` of every segment, resampled on ``reference``'s grid."""
    segmentation = _labelmap_segmentation(segmentation_node, reference)
    out = {}
    for sid in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(sid)
        oriented = segment.GetRepresentation(BINARY_LABELMAP)
        label = int(segment.GetLabelValue()) if _is_shared(segmentation, sid) else None
        out[segment.GetName()] = oriented_image_to_mask(oriented, reference, label)
    return out


def segment_mask(segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str, reference: sitk.Image
                 ) -> np.ndarray:
    """One segment as bool ``[k, j, i]`` on ``reference``'s grid (shared labelmap layers handled)."""
    segmentation = _labelmap_segmentation(segmentation_node, reference)
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise BridgeError(f"segmentation '{segmentation_node.GetName()}' has no segment with ID {segment_id}")
    label = int(segment.GetLabelValue()) if _is_shared(segmentation, segment_id) else None
    return oriented_image_to_mask(segment.GetRepresentation(BINARY_LABELMAP), reference, label)


def segment_tag(segment: slicer.vtkSegment, key: str) -> Optional[str]:
    """The value of a segment tag, or None."""
    value = vtk.reference("")
    if segment.GetTag(key, value):
        return str(value)
    return None


# ------------------------------------------------------------------------------------------
# report on the node, and where flagged slices are


def content_key(voxels: np.ndarray) -> str:
    """An identity of a volume's voxels (``[k, j, i]``, any dtype): two visits on the same grid differ.

    A SHA-1 of the shape and of every 61st voxel as float64 (fast on large volumes; the same
    voxels give the same key whatever their storage type).
    """
    import hashlib

    array = np.asarray(voxels)
    sample = np.ascontiguousarray(array.reshape(-1)[::61], dtype=np.float64)
    digest = hashlib.sha1(repr(tuple(int(v) for v in array.shape)).encode("ascii"))
    digest.update(sample.tobytes())
    return digest.hexdigest()


def store_report(segmentation_node: slicer.vtkMRMLSegmentationNode, report: dict, followup: sitk.Image) -> None:
    """Keep the propagation report (JSON), the follow-up geometry it refers to and the identity of the
    follow-up's voxels (:func:`content_key`) on the node."""
    segmentation_node.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report, separators=(",", ":"), default=json_default))
    segmentation_node.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(geometry_of(followup)))
    segmentation_node.SetAttribute(CONTENT_ATTRIBUTE, content_key(sitk.GetArrayViewFromImage(followup)))


def stored_content_key(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[str]:
    """The :func:`content_key` kept by :func:`store_report`, or None."""
    return segmentation_node.GetAttribute(CONTENT_ATTRIBUTE) if segmentation_node is not None else None


def stored_report(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[dict]:
    """The report kept by :func:`store_report`, or None."""
    text = segmentation_node.GetAttribute(REPORT_ATTRIBUTE) if segmentation_node is not None else None
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def stored_geometry(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[dict]:
    text = segmentation_node.GetAttribute(GEOMETRY_ATTRIBUTE) if segmentation_node is not None else None
    return json.loads(text) if text else None


def slice_point_ras(ijk_to_ras: np.ndarray, k: int, window: Optional[Sequence[float]] = None,
                    size: Optional[Sequence[int]] = None) -> Tuple[float, float, float]:
    """RAS point to jump to for follow-up slice ``k``: the ROI window's centre, else the slice centre.

    Args:
        ijk_to_ras: follow-up IJKToRAS (4 x 4).
        window: ``(x0, y0, x1, y1)`` in slice pixels (column, row), or None.
        size: follow-up size ``(i, j, k)`` (needed when ``window`` is None).
    """
    if window is not None:
        i, j = (window[0] + window[2]) / 2.0 - 0.5, (window[1] + window[3]) / 2.0 - 0.5
    elif size is not None:
        i, j = (size[0] - 1) / 2.0, (size[1] - 1) / 2.0
    else:
        raise ValueError("need a window or the volume size")
    p = ijk_to_ras @ np.array([i, j, float(k), 1.0])
    return float(p[0]), float(p[1]), float(p[2])


def flagged_slices(report: dict) -> List[dict]:
    """Every flagged slice of a report: ``{"segment", "index", "reason", "qa", "window"}``, in report order."""
    out = []
    for seg in report.get("segments", []):
        for s in seg.get("slices", []):
            if s.get("flagged"):
                out.append({"segment": seg.get("name"), "index": int(s["index"]), "reason": s.get("reason", ""),
                            "qa": s.get("qa"), "window": s.get("window")})
    return out


def slice_prompts(report: Optional[dict], segment_name: str, k: int
                  ) -> Tuple[Optional[List[float]], Optional[List[float]]]:
    """``(window, box)`` P²SAM used on slice ``k`` of ``segment_name`` (slice pixels), or ``(None, None)``."""
    if not report:
        return None, None
    for seg in report.get("segments", []):
        if seg.get("name") != segment_name:
            continue
        for s in seg.get("slices", []):
            if int(s.get("index", -1)) == int(k):
                return s.get("window"), s.get("box")
    return None, None


def iter_flagged_points(report: dict, followup_geometry: dict) -> Iterable[Tuple[dict, Tuple[float, float, float]]]:
    """Pairs ``(flagged slice entry, RAS point)`` for the jump buttons."""
    m = np.array(followup_geometry["ijk_to_ras"], dtype=np.float64)
    size = followup_geometry["size"]
    for entry in flagged_slices(report):
        yield entry, slice_point_ras(m, entry["index"], entry.get("window"), size)
