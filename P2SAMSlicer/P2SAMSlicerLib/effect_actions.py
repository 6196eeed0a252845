"""What the P²SAM Segment Editor effect does on a click or a button, without Qt.

:class:`EffectActions` holds the effect's :class:`.correction.CorrectionSession` and runs each
action against the Segment Editor's effect object (``self.scriptedEffect`` in the effect: its
parameter node, source volume, ``defaultModifierLabelmap``, ``saveStateForUndo`` and
``modifySelectedSegmentByLabelmap``):

* :meth:`EffectActions.click`: read the selected segment's slice as it is now, let the session
  follow any change made since the last click (Slicer's undo, another effect), add the click,
  and write the slice back with :func:`.slice_edit.write_slices` (that slice only, one undo step);
* :meth:`EffectActions.undo_last_click`: one step of the Segment Editor's own undo, when the
  last change of the segmentation was that click; the session then drops the click;
* :meth:`EffectActions.repropagate`: the neighbouring slices from the last corrected slice, as
  one undo step.

Every message returned is for the effect's status line. Frames: ``k, j, i`` are array indices
of the source volume (slice, row, column), which the segmentation's geometry must equal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

import slicer

from . import correction, mrml_bridge, review, slice_edit
from .mrml_bridge import BridgeError

GEOMETRY_DIFFERS = ("The segmentation's geometry differs from the source volume's; set the segmentation geometry "
                    "to the source volume (Segment Editor: Specify geometry).")


@dataclass
class ClickResult:
    """What a click did.

    Attributes:
        segment_name, k: the slice clicked.
        written: bool ``[j, i]``, the slice as it is in the segment afterwards.
        changed: False when the click left the slice as it was (no undo step was added).
        sync: how the slice's click history met the segment (:meth:`.correction.CorrectionSession.sync`).
        message: for the status line.
    """

    segment_name: str
    k: int
    written: np.ndarray
    changed: bool
    sync: str
    message: str


class EffectActions:
    """The effect's actions on the Segment Editor's selected segment (see the module docstring).

    Args:
        effect: the Segment Editor effect object (``qSlicerSegmentEditorScriptedEffect``).
        session_factory: ``(segmentation node, source vtkOrientedImageData) -> CorrectionSession``.
    """

    def __init__(self, effect: slicer.qSlicerSegmentEditorScriptedEffect,
                 session_factory: Callable = correction.session_for) -> None:
        self.effect = effect
        self.session_factory = session_factory
        self.session: Optional[correction.CorrectionSession] = None
        self._key = None
        #: the segmentation's :func:`.slice_edit.segmentation_signature` right after the last click's write
        self._after_last_write = None
        self._markers: Optional[review.ClickMarkers] = None

    def forget(self) -> None:
        """Drop the session (the next click starts a new one) and its click markers."""
        self.session = None
        self._key = None
        self._after_last_write = None
        if self._markers is not None:
            self._markers.clear()

    # -- what is edited --------------------------------------------------------------------------
    def _nodes(self) -> Tuple[slicer.vtkMRMLSegmentEditorNode, slicer.vtkMRMLSegmentationNode,
                              slicer.vtkOrientedImageData]:
        node = self.effect.parameterSetNode()
        segmentation_node = node.GetSegmentationNode() if node is not None else None
        source = self.effect.sourceVolumeImageData()
        if segmentation_node is None or source is None:
            raise BridgeError("Select a segmentation and a source volume first.")
        return node, segmentation_node, source

    def current_session(self) -> correction.CorrectionSession:
        """The session for the editor's segmentation and source volume (a new one when either changed)."""
        node, segmentation_node, source = self._nodes()
        source_node = node.GetSourceVolumeNode()
        geometry = segmentation_node.GetSegmentation().GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
        image = source_node.GetImageData() if source_node is not None else None
        key = (segmentation_node.GetID(), source_node.GetID() if source_node is not None else None,
               image.GetMTime() if image is not None else None, geometry,
               segmentation_node.GetAttribute("P2SAM.Report") is not None)
        if self.session is None or self._key != key:
            self.session = self.session_factory(segmentation_node, source)
            self._key = key
            self._after_last_write = None
        return self.session

    def selected_segment(self) -> Tuple[slicer.vtkMRMLSegmentationNode, str, str]:
        """``(segmentation node, segment ID, segment name)`` of the editor's selection."""
        node, segmentation_node, _ = self._nodes()
        segment_id = node.GetSelectedSegmentID()
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
        if segment is None:
            raise BridgeError("Select a segment first.")
        return segmentation_node, segment_id, segment.GetName()

    def _modifier_grid(self) -> slicer.vtkOrientedImageData:
        """The modifier labelmap (segmentation geometry), checked against the source volume's grid."""
        modifier = self.effect.defaultModifierLabelmap()
        if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(modifier, self.effect.sourceVolumeImageData()) \
                or not slicer.vtkOrientedImageDataResample.DoExtentsMatch(modifier,
                                                                          self.effect.sourceVolumeImageData()):
            raise BridgeError(GEOMETRY_DIFFERS)
        return modifier

    def read_slice(self, k: int) -> np.ndarray:
        """The selected segment's slice ``k`` now: bool ``[j, i]``."""
        segmentation_node, segment_id, _ = self.selected_segment()
        return slice_edit.read_slices(segmentation_node, segment_id, self._modifier_grid(), [k])[k]

    # -- actions ---------------------------------------------------------------------------------
    def click(self, k: int, j: int, i: int, positive: bool = True) -> ClickResult:
        """A click on voxel ``(i, j)`` of slice ``k``: the selected segment's slice ``k`` is re-computed."""
        session = self.current_session()
        segmentation_node, segment_id, name = self.selected_segment()
        shape = session.volume.shape
        if not (0 <= k < shape[0] and 0 <= j < shape[1] and 0 <= i < shape[2]):
            raise BridgeError(f"voxel ({i}, {j}, {k}) is outside the source volume")
        current = self.read_slice(k)
        state = session.sync(name, k, current)
        mask = session.click(name, k, float(i), float(j), bool(positive), current)
        written = slice_edit.write_slices(self.effect, {k: mask})[k]
        session.commit(name, k, written)
        changed = not np.array_equal(written, current)
        if changed:
            self._after_last_write = slice_edit.segmentation_signature(segmentation_node)
        self.update_markers()
        pos, neg = session.clicks(name, k)
        note = {"undone": " (your undo was applied to the clicks too)",
                "edited": " (the slice had been edited: the clicks start again from it)"}.get(state, "")
        prompt = "" if session.uses_report else " (no P²SAM report for this volume: box from the segment)"
        message = (f"Slice {k} of '{name}': {pos} positive, {neg} negative click(s){prompt}{note}."
                   + ("" if changed else " The click did not change the slice."))
        return ClickResult(name, int(k), written, changed, state, message)

    def undo_last_click(self, editor_undo: Optional[Callable[[], None]]) -> str:
        """Take back the last click: one step of the Segment Editor's undo (``editor_undo``), so that the
        segment, Slicer's undo history and the session agree. Refused (nothing changes) when the
        segmentation was edited after that click: then Slicer's undo would take back that edit.
        The click markers follow the session."""
        try:
            return self._undo_last_click(editor_undo)
        finally:
            if self.session is not None:
                self.update_markers()

    def _undo_last_click(self, editor_undo: Optional[Callable[[], None]]) -> str:
        session = self.session
        if session is None or session.last is None:
            return "No click to undo."
        name, k = session.last
        segmentation_node, _, selected_name = self.selected_segment()
        if selected_name != name:
            return f"The last click was on '{name}'; select that segment to undo it."
        state = session.sync(name, k, self.read_slice(k))
        changed = session.last_click_changed_slice(name, k)
        if changed is None:
            return f"No click on slice {k} of '{name}' to undo" + (
                " (the slice was edited after it: use the Segment Editor's Undo)." if state == "edited" else ".")
        if not changed:
            session.drop_last_click(name, k)
            return f"Last click on slice {k} of '{name}' forgotten (it had not changed the slice)."
        if state != "same" or slice_edit.segmentation_signature(segmentation_node) != self._after_last_write:
            return ("The segmentation was changed after your last click; use the Segment Editor's Undo (Ctrl+Z) "
                    "to step back through the changes in order.")
        if editor_undo is None:
            return "The Segment Editor's undo is not available here; use Ctrl+Z."
        editor_undo()
        after = session.sync(name, k, self.read_slice(k))
        # the segmentation is now as the click before left it: a further "Undo last click" may follow
        self._after_last_write = slice_edit.segmentation_signature(segmentation_node) if after == "undone" else None
        if after != "undone":
            return ("The Segment Editor's undo did not restore the slice as it was before the click (is undo "
                    "enabled?); the clicks start again from the slice as it is.")
        pos, neg = session.clicks(name, k)
        return f"Last click undone: slice {k} of '{name}' has {pos} positive, {neg} negative click(s)."

    def repropagate(self, neighbours: int, progress=None, cancel=None) -> Dict[int, np.ndarray]:
        """Re-compute ``neighbours`` slices on each side of the last corrected slice from it; one undo step.

        Returns ``{k: bool [j, i]}`` as written. Raises :class:`P2SAMLogic.errors.CancelledError`
        (nothing written) when ``cancel`` returns True.
        """
        session = self.current_session()
        segmentation_node, segment_id, name = self.selected_segment()
        if session.last is None or session.last[0] != name:
            raise BridgeError(f"Correct a slice of '{name}' with a click first: that slice becomes the reference.")
        k = session.last[1]
        reference = self.read_slice(k)
        masks = session.repropagate(k, reference, neighbours=int(neighbours),
                                    spacing_xy=correction.pixel_spacing(session.ijk_to_ras), progress=progress,
                                    cancel=cancel)
        written = slice_edit.write_slices(self.effect, masks)
        self._after_last_write = None
        return written

    # -- review ----------------------------------------------------------------------------------
    def markers(self) -> review.ClickMarkers:
        """The green / red markers of the clicks (created in the segmentation's scene on first use)."""
        if self._markers is None:
            _, segmentation_node, _ = self._nodes()
            self._markers = review.ClickMarkers(segmentation_node.GetScene())
        return self._markers

    def update_markers(self) -> None:
        """Show the clicks of the last corrected slice as they are in the session."""
        session = self.session
        if session is None or session.last is None:
            self.markers().clear()
            return
        name, k = session.last
        self.markers().show(session.click_points(name, k), k, session.ijk_to_ras)

    def slice_review(self) -> Tuple[review.SliceReview, str]:
        """``(SliceReview of the edited segmentation, selected segment's name)``; the report's flagged slices are
        used only when they refer to the source volume's voxels (the session's check)."""
        session = self.current_session()
        segmentation_node, _, name = self.selected_segment()
        if not session.uses_report:
            raise BridgeError(f"No P²SAM report for this source volume: '{segmentation_node.GetName()}' has no "
                              "flagged slices to go through here.")
        return review.SliceReview(segmentation_node), name

    def next_flagged(self, k: Optional[int], step: int = 1) -> Tuple[int, Tuple[float, float, float], str]:
        """The next (``step`` 1) or previous (-1) flagged slice not yet reviewed, from slice ``k`` (None: the
        start): ``(k, RAS point to show, message)``. Raises BridgeError when none is left."""
        slices, name = self.slice_review()
        target = slices.next_flagged(name, -1 if k is None else int(k), step)
        if target is None:
            done, total = slices.progress(name)
            raise BridgeError(f"Every flagged slice of '{name}' is marked reviewed ({done} of {total}).")
        window, _ = mrml_bridge.slice_prompts(self.session.report, name, target)
        shape = self.session.volume.shape
        ras = mrml_bridge.slice_point_ras(self.session.ijk_to_ras, target, window, (shape[2], shape[1], shape[0]))
        reason = next((e["reason"] for e in mrml_bridge.flagged_slices(self.session.report)
                       if e["segment"] == name and e["index"] == target), "")
        done, total = slices.progress(name)
        return target, ras, f"Flagged slice {target} of '{name}' ({reason}); {done} of {total} reviewed."

    def toggle_reviewed(self, k: int) -> str:
        """Mark slice ``k`` of the selected segment reviewed (or not, when it was); a message."""
        slices, name = self.slice_review()
        now = not slices.is_reviewed(name, k)
        slices.set_reviewed(name, k, now)
        done, total = slices.progress(name)
        return (f"Slice {k} of '{name}' marked {'reviewed' if now else 'not reviewed'}; {done} of {total} flagged "
                "slices reviewed.")

