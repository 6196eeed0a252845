"""Writing a proposal into a segmentation the user already has, as the Segment Editor would (no Qt).

When the module's output is an existing segmentation node (the user chose it), the proposal
must not wipe or overwrite the user's other segments, and must respect the Segment Editor's
masking settings, like any edit made in the Segment Editor:

* **overwrite mode** (Segment Editor > Masking > "Modify other segments"): by default
  (:data:`OVERWRITE_NONE`, "Allow overlap") no other segment loses a voxel; with "Overwrite
  all" / "Overwrite visible" the proposal's voxels are removed from those segments;
* **editable area** (mask mode, e.g. "Outside all segments", "Inside <segment>"): the proposal
  changes voxels only there; its segment keeps its old voxels elsewhere;
* **editable intensity range**: only voxels whose source-volume value is in the range change.

:func:`write_proposal` follows ``qSlicerSegmentEditorAbstractEffect::modifySegmentByLabelmap``
(mode "set") of Slicer 5.8.1, with the same MRML calls (``GenerateEditMask``,
``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment``), and calls ``save_state``
once before its first change: with the Segment Editor's ``saveStateForUndo`` (or a
``vtkSegmentationHistory``), the whole propagation is one undo step.

Frames: proposal masks are ``sitk.Image`` on the follow-up grid (LPS); everything written to
the node is a ``vtkOrientedImageData`` in RAS, converted by :mod:`.mrml_bridge`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

import slicer

from P2SAMLogic.io.volume import PROPOSAL_STATUS

from . import mrml_bridge

#: "Allow overlap": other segments never lose voxels
OVERWRITE_NONE = slicer.vtkMRMLSegmentEditorNode.OverwriteNone
#: the Segment Editor module's parameter node: a vtkMRMLSegmentEditorNode with this singleton tag
SEGMENT_EDITOR_SINGLETON_TAG = "SegmentEditor"


@dataclass
class EditorMasking:
    """The Segment Editor settings that limit where a write may change voxels.

    Attributes:
        mask_mode: ``vtkMRMLSegmentationNode.EditAllowed*`` (editable area).
        mask_segment_id: the segment of ``EditAllowedInsideSingleSegment``.
        overwrite_mode: ``vtkMRMLSegmentEditorNode.Overwrite*`` (default: allow overlap).
        intensity_range: ``(low, high)`` source-volume values that may change, or None.
    """

    mask_mode: int = 0
    mask_segment_id: str = ""
    overwrite_mode: int = OVERWRITE_NONE
    intensity_range: Optional[Tuple[float, float]] = None

    @classmethod
    def from_editor_node(cls, editor_node: slicer.vtkMRMLSegmentEditorNode,
                         segmentation_node: Optional[slicer.vtkMRMLSegmentationNode] = None) -> "EditorMasking":
        """The settings of a ``vtkMRMLSegmentEditorNode``. A segment-based editable area only applies to
        the segmentation that editor node edits (other segmentations: everywhere)."""
        if editor_node is None:
            return cls()
        mode = int(editor_node.GetMaskMode())
        if segmentation_node is not None and editor_node.GetSegmentationNode() is not segmentation_node:
            mode = slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
        intensity = None
        if editor_node.GetSourceVolumeIntensityMask():
            low, high = editor_node.GetSourceVolumeIntensityMaskRange()
            intensity = (float(low), float(high))
        return cls(mode, str(editor_node.GetMaskSegmentID() or ""), int(editor_node.GetOverwriteMode()), intensity)

    @classmethod
    def from_scene(cls, scene: slicer.vtkMRMLScene, segmentation_node: Optional[slicer.vtkMRMLSegmentationNode] = None
                   ) -> "EditorMasking":
        """The Segment Editor module's settings in ``scene`` (defaults when it was never opened)."""
        editor_node = scene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
        return cls.from_editor_node(editor_node, segmentation_node)

    def describe(self) -> str:
        """For the log: what these settings do to a proposal."""
        overwrite = {slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments: "overwrites all other segments",
                     slicer.vtkMRMLSegmentEditorNode.OverwriteVisibleSegments: "overwrites visible other segments"
                     }.get(self.overwrite_mode, "leaves other segments unchanged (overlap allowed)")
        parts = [overwrite]
        if self.mask_mode != slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere:
            parts.append("editable area: " + slicer.vtkMRMLSegmentationNode.ConvertMaskModeToString(self.mask_mode))
        if self.intensity_range is not None:
            parts.append("editable intensities {:g} to {:g}".format(*self.intensity_range))
        return "; ".join(parts)


def _segment_id_by_name(segmentation: slicer.vtkSegmentation, name: str) -> Optional[str]:
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        if segmentation.GetSegment(sid).GetName() == name:
            return sid
    return None


def _overwritable(segmentation_node: slicer.vtkMRMLSegmentationNode, written: Sequence[str], mode: int) -> List[str]:
    """Segments (not written by this proposal) whose voxels the proposal may take over."""
    segmentation = segmentation_node.GetSegmentation()
    others = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    others = [s for s in others if s not in written]
    if mode == slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments:
        return others
    if mode == slicer.vtkMRMLSegmentEditorNode.OverwriteVisibleSegments:
        display = slicer.vtkMRMLSegmentationDisplayNode.SafeDownCast(segmentation_node.GetDisplayNode())
        return [s for s in others if display is None or display.GetSegmentVisibility(s)]
    return []


def non_editable(segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str, reference: sitk.Image,
                 masking: EditorMasking, source_image: Optional[slicer.vtkOrientedImageData] = None
                 ) -> Optional[np.ndarray]:
    """bool ``[k, j, i]`` on ``reference``: voxels the editable area / intensity range protect, or None (none).

    Args:
        source_image: ``vtkOrientedImageData`` of the source volume on ``reference``'s grid (needed for
            an intensity range).
    """
    everywhere = slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
    if masking.mask_mode == everywhere and masking.intensity_range is None:
        return None
    geometry = mrml_bridge.empty_oriented_image_like(reference)
    mask = slicer.vtkOrientedImageData()
    if masking.intensity_range is not None and source_image is None:
        raise mrml_bridge.BridgeError("the Segment Editor limits edits to an intensity range, but no source "
                                      "volume was given to apply it")
    ok = segmentation_node.GenerateEditMask(mask, masking.mask_mode, geometry, segment_id, masking.mask_segment_id,
                                            source_image if masking.intensity_range is not None else None,
                                            list(masking.intensity_range) if masking.intensity_range else None)
    if not ok:
        raise mrml_bridge.BridgeError("the Segment Editor's masking settings could not be applied (mask segment "
                                      f"'{masking.mask_segment_id}' missing?); check Segment Editor > Masking")
    return mrml_bridge.oriented_image_to_mask(mask, reference)


def write_proposal(segmentation_node: slicer.vtkMRMLSegmentationNode, segments: Sequence, reference: sitk.Image,
                   masking: Optional[EditorMasking] = None, source_image: Optional[slicer.vtkOrientedImageData] = None,
                   save_state: Optional[Callable[[], None]] = None) -> List[str]:
    """Write proposal segments into an existing segmentation node like a Segment Editor edit.

    Args:
        segmentation_node: the user's ``vtkMRMLSegmentationNode`` (binary labelmap source).
        segments: :class:`P2SAMLogic.io.volume.Segment` proposals, masks on ``reference``'s grid.
        reference: the follow-up image the masks lie on (LPS geometry).
        masking: the Segment Editor's settings (default: allow overlap, edit everywhere).
        source_image: the source volume as ``vtkOrientedImageData`` on ``reference``'s grid
            (for an editable intensity range).
        save_state: called once, before the first change (one undo step for the whole proposal).
    Returns:
        The IDs of the segments written, in ``segments`` order. A proposal goes into the
        segment of the same name (its voxels are set where editing is allowed, kept elsewhere)
        or into a new segment with the proposal's name, colour, tags and status "in progress".
    """
    masking = masking or EditorMasking()
    segmentation = segmentation_node.GetSegmentation()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    targets = []
    for s in segments:
        if tuple(s.mask.GetSize()) != tuple(reference.GetSize()):
            raise mrml_bridge.BridgeError(f"segment '{s.name}' is not on the follow-up grid")
        targets.append(_segment_id_by_name(segmentation, s.name))
    if save_state is not None:
        save_state()
    written: List[str] = []
    for s, target in zip(segments, targets):
        if target is None:
            segment = slicer.vtkSegment()
            segment.SetName(s.name)
            segment.SetColor(*[float(c) for c in s.color])
            segment.AddRepresentation(mrml_bridge.BINARY_LABELMAP, mrml_bridge.oriented_image_from_mask(
                np.zeros(s.array().shape, dtype=np.uint8), reference))
            target = segmentation.GenerateUniqueSegmentID(s.segment_id or s.name)
            segmentation.AddSegment(segment, target)
        segment = segmentation.GetSegment(target)
        for key, value in (s.tags or {}).items():
            segment.SetTag(str(key), str(value))
        if (s.tags or {}).get("P2SAM.Status") == PROPOSAL_STATUS:
            logic.SetSegmentStatus(segment, logic.InProgress)
        written.append(target)
        proposal = s.array()
        protected = non_editable(segmentation_node, target, reference, masking, source_image)
        if protected is not None:
            current = mrml_bridge.segment_mask(segmentation_node, target, reference)
            proposal = (proposal & ~protected) | (current & protected)
        overwrite = _overwritable(segmentation_node, [*written, *[t for t in targets if t]], masking.overwrite_mode)
        labelmap = mrml_bridge.oriented_image_from_mask(proposal, reference)
        if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, target, logic.MODE_REPLACE, None, False,
                                                overwrite):
            raise mrml_bridge.BridgeError(f"segment '{s.name}' could not be written into "
                                          f"'{segmentation_node.GetName()}'")
        if overwrite and proposal.any():
            keep = mrml_bridge.oriented_image_from_mask(np.where(proposal, 0, 255).astype(np.uint8), reference)
            for other in overwrite:  # segments in other layers: take the proposal's voxels out of them
                logic.SetBinaryLabelmapToSegment(keep, segmentation_node, other, logic.MODE_MERGE_MIN, None, False, [])
    return written


class ProposalUndo:
    """One undo step for a proposal written into the user's segmentation, leaving every undo history intact.

    The Segment Editor keeps one undo history, for the segmentation it edits; pointing it at
    another segmentation erases that history (``vtkSegmentationHistory::SetSegmentation``
    removes all states). So the editor is never switched:

    * when the editor edits the output segmentation, the proposal is one step of the editor's
      own history (Ctrl+Z there takes it back, after the user's earlier steps);
    * otherwise the state before the proposal is kept in a history of its own, which
      :meth:`undo` restores.

    :meth:`undo` refuses when the segmentation changed after the proposal (restoring would
    discard those changes; the Segment Editor's undo steps back through them in order).

    Args:
        editor: the Segment Editor (``qMRMLSegmentEditorWidget``: ``segmentationNode()``,
            ``saveStateForUndo()``, ``undo()``), or None.
    """

    def __init__(self, editor: Optional[slicer.qMRMLSegmentEditorWidget] = None) -> None:
        self.editor = editor
        self.node = None
        self._history = None
        self._in_editor = False
        self._after = None

    def save_state_for(self, output_node: slicer.vtkMRMLSegmentationNode) -> Optional[Callable[[], None]]:
        """The ``save_state`` argument of :meth:`.logic.PropagationLogic.createOutput` for ``output_node``
        (None for a new node: deleting it undoes the run). Call :meth:`written` after the write."""
        if output_node is None:
            return None

        def save_state() -> None:
            self.node, self._after = output_node, None
            editor_node = self.editor.segmentationNode() if self.editor is not None else None
            self._in_editor = editor_node is not None and editor_node is output_node
            if self._in_editor:
                self._history = None
                self.editor.saveStateForUndo()
                return
            self._history = slicer.vtkSegmentationHistory()
            self._history.SetMaximumNumberOfStates(2)
            self._history.SetSegmentation(output_node.GetSegmentation())
            self._history.SaveState()

        return save_state

    def written(self) -> None:
        """The proposal is in the node: remember the node's state (see :meth:`undo`)."""
        from .slice_edit import segmentation_signature

        if self.node is not None:
            self._after = segmentation_signature(self.node)

    def can_undo(self) -> bool:
        from .slice_edit import segmentation_signature

        return (self.node is not None and self._after is not None
                and segmentation_signature(self.node) == self._after)

    def undo(self) -> str:
        """Restore the output segmentation as it was before the proposal; a message for the log."""
        if self.node is None or self._after is None:
            return "No proposal to undo."
        name = self.node.GetName()
        if not self.can_undo():
            return (f"'{name}' was changed after the proposal was written; use the Segment Editor's Undo to "
                    "step back through those changes.")
        if self._in_editor:
            if self.editor.segmentationNode() is not self.node:
                return (f"The Segment Editor no longer edits '{name}', so its undo step for the proposal is gone; "
                        "remove the proposal's segments by hand.")
            self.editor.undo()
        else:
            self._history.RestorePreviousState()
        from .slice_edit import segmentation_signature

        undone = segmentation_signature(self.node) != self._after
        self.node, self._history, self._after = None, None, None
        if not undone:
            return (f"The Segment Editor's undo history no longer holds the proposal's step for '{name}'; remove "
                    "the proposal's segments by hand.")
        return f"The proposal was taken out of '{name}'."
