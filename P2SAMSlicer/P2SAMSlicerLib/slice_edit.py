"""Read and replace slices of one segment through the Segment Editor (no Qt).

The click correction changes one slice of the selected segment (re-propagation a few);
every other slice, every other segment's voxels outside those slices, and edits the user
made with other effects must stay. Slicer's ``ModificationModeSet`` cannot do that with a
slice-sized extent: it first clears the whole segment (``MODE_MERGE_MIN`` of the inverted
segment, without extent) and then writes the modifier inside the extent, so a Set of one
slice leaves a segment on that slice only (``qSlicerSegmentEditorAbstractEffect::
modifySegmentByLabelmap`` in Slicer 5.8.1, ``vtkSlicerSegmentEditorLogic::
ModifySegmentByLabelmap`` later). :func:`write_slices` therefore writes the *difference*:

* the voxels to take out of the slices with ``ModificationModeRemove``, then
* the voxels to add with ``ModificationModeAdd``,

each with the extent of the changed slices only. Both modes change the segment inside the
extent and nowhere else; the editor's masking (editable area, editable intensity range)
applies to both, and with "Overwrite other segments" only the voxels added are taken from
the other segments, on those slices. One ``saveStateForUndo`` before the first write makes
the whole change one undo step; nothing is written (and no undo step saved) when nothing
changes.

``effect`` is the Segment Editor's effect object: in Slicer the
``qSlicerSegmentEditorScriptedEffect`` (``self.scriptedEffect`` of the P²SAM effect), whose
``defaultModifierLabelmap``, ``saveStateForUndo`` and ``modifySelectedSegmentByLabelmap``
run Slicer's own write code.

Frames: a slice is bool ``[j, i]`` of array index ``k`` of the modifier labelmap (the
segmentation's reference geometry, equal to the source volume's grid); ``k`` = 0 is the
modifier extent's first slice.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np
from vtk.util import numpy_support

import slicer

from . import mrml_bridge


def modification_modes():
    """The class holding ``ModificationModeAdd`` / ``ModificationModeRemove``: the effects' base class."""
    return slicer.qSlicerSegmentEditorAbstractEffect


def _array_of(oriented: slicer.vtkOrientedImageData) -> np.ndarray:
    """The voxels of a single-component ``vtkOrientedImageData`` as a ``[k, j, i]`` view (empty extent: size 0)."""
    ext = oriented.GetExtent()
    dims = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    scalars = oriented.GetPointData().GetScalars() if oriented.GetPointData() is not None else None
    if min(dims) <= 0 or scalars is None:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    return numpy_support.vtk_to_numpy(scalars).reshape(dims)


def read_slices(segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str,
                geometry: slicer.vtkOrientedImageData, ks: Iterable[int]) -> Dict[int, np.ndarray]:
    """Slices of one segment on the grid of ``geometry``: ``{k: bool [j, i]}``.

    Args:
        segmentation_node: ``vtkMRMLSegmentationNode`` with a binary-labelmap source representation.
        segment_id: the segment (shared labelmap layers are handled: only its label counts).
        geometry: ``vtkOrientedImageData`` whose extent and IJKToRAS define the grid (the modifier labelmap).
        ks: array indices ``k`` (0 = ``geometry``'s first slice).
    """
    ks = sorted({int(k) for k in ks})
    g_ext = geometry.GetExtent()
    shape = (g_ext[3] - g_ext[2] + 1, g_ext[1] - g_ext[0] + 1)
    out = {k: np.zeros(shape, dtype=bool) for k in ks}
    labelmap = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
        raise mrml_bridge.BridgeError(f"segment '{segment_id}' of '{segmentation_node.GetName()}' has no binary "
                                      "labelmap")
    values = _array_of(labelmap)
    if values.size == 0:
        return out
    if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(labelmap, geometry):
        # another grid (rare: a segment imported on its own geometry): resample it whole
        whole = mrml_bridge.oriented_image_to_mask(labelmap, _sitk_grid(geometry))
        return {k: whole[k].copy() for k in ks}
    l_ext = labelmap.GetExtent()
    j0, j1 = max(g_ext[2], l_ext[2]), min(g_ext[3], l_ext[3])
    i0, i1 = max(g_ext[0], l_ext[0]), min(g_ext[1], l_ext[1])
    for k in ks:
        z = g_ext[4] + k
        if not l_ext[4] <= z <= l_ext[5] or j0 > j1 or i0 > i1:
            continue
        piece = values[z - l_ext[4], j0 - l_ext[2]:j1 - l_ext[2] + 1, i0 - l_ext[0]:i1 - l_ext[0] + 1]
        out[k][j0 - g_ext[2]:j1 - g_ext[2] + 1, i0 - g_ext[0]:i1 - g_ext[0] + 1] = piece != 0
    return out


def _sitk_grid(oriented: slicer.vtkOrientedImageData):
    from .correction import geometry_image

    return geometry_image(oriented)


def _selected(effect: slicer.qSlicerSegmentEditorScriptedEffect) -> Tuple[slicer.vtkMRMLSegmentationNode, str]:
    node = effect.parameterSetNode()
    segmentation_node = node.GetSegmentationNode() if node is not None else None
    segment_id = node.GetSelectedSegmentID() if node is not None else None
    if segmentation_node is None or not segment_id:
        raise mrml_bridge.BridgeError("select a segmentation and a segment in the Segment Editor first")
    return segmentation_node, segment_id


def _modify(effect: slicer.qSlicerSegmentEditorScriptedEffect, modifier: slicer.vtkOrientedImageData, mode: int,
            ks: Sequence[int], masks: Mapping[int, np.ndarray]) -> None:
    """Fill ``modifier`` with ``masks`` on their slices (zeros elsewhere) and apply ``mode`` within those slices."""
    array = _array_of(modifier)
    array[:] = 0
    for k in ks:
        array[k] = masks[k]
    modifier.Modified()
    ext = modifier.GetExtent()
    extent = [ext[0], ext[1], ext[2], ext[3], ext[4] + min(ks), ext[4] + max(ks)]
    effect.modifySelectedSegmentByLabelmap(modifier, mode, extent)


def write_slices(effect: slicer.qSlicerSegmentEditorScriptedEffect, masks: Mapping[int, np.ndarray]
                 ) -> Dict[int, np.ndarray]:
    """Replace slices of the Segment Editor's selected segment; every other voxel of it stays.

    Args:
        effect: the Segment Editor effect (``self.scriptedEffect``; see the module docstring).
        masks: ``{k: bool [j, i]}`` the wanted content of slice ``k`` of the modifier grid.
    Returns:
        ``{k: bool [j, i]}``: those slices as they are in the segment afterwards (the editor's
        masking may have kept voxels the masks wanted changed).
    Raises:
        BridgeError: no segment selected; a mask whose shape is not a slice of the modifier grid.
    """
    segmentation_node, segment_id = _selected(effect)
    modifier = effect.defaultModifierLabelmap()
    ext = modifier.GetExtent()
    n_k, shape = ext[5] - ext[4] + 1, (ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    wanted = {}
    for k, mask in masks.items():
        mask = np.asarray(mask).astype(bool)
        if not 0 <= int(k) < n_k or mask.shape != shape:
            raise mrml_bridge.BridgeError(f"slice {k} of shape {mask.shape} does not fit the segmentation's "
                                          f"{n_k} slices of {shape[1]} x {shape[0]}")
        wanted[int(k)] = mask
    if not wanted:
        return {}
    current = read_slices(segmentation_node, segment_id, modifier, wanted)
    removed = {k: current[k] & ~wanted[k] for k in wanted}
    added = {k: wanted[k] & ~current[k] for k in wanted}
    remove_ks = [k for k in sorted(wanted) if removed[k].any()]
    add_ks = [k for k in sorted(wanted) if added[k].any()]
    if not remove_ks and not add_ks:
        return current
    modes = modification_modes()
    effect.saveStateForUndo()
    if remove_ks:
        _modify(effect, modifier, modes.ModificationModeRemove, remove_ks, removed)
    if add_ks:
        modifier = effect.defaultModifierLabelmap()
        _modify(effect, modifier, modes.ModificationModeAdd, add_ks, added)
    return read_slices(segmentation_node, segment_id, modifier, wanted)


def segmentation_signature(segmentation_node: slicer.vtkMRMLSegmentationNode) -> tuple:
    """Changes whenever a segment of the node is added, removed, renamed, recoloured or has its labelmap
    modified (an edit, an undo): ``(segment IDs, (segment, labelmap) modification times)``."""
    segmentation = segmentation_node.GetSegmentation()
    ids = tuple(segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments()))
    times = []
    for sid in ids:
        segment = segmentation.GetSegment(sid)
        rep = segment.GetRepresentation(mrml_bridge.BINARY_LABELMAP)
        times.append((int(segment.GetMTime()), int(rep.GetMTime()) if rep is not None else -1))
    return ids, tuple(times)
