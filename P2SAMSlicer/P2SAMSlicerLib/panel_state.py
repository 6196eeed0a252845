"""What the module panel and the Segment Editor effect decide, in plain classes (no Qt).

* :class:`SegmentSelection` -- which prior segments are ticked, kept in the module's
  parameter node (a ``vtkMRMLScriptedModuleNode``, saved with the scene).
* :class:`BusyState` -- whether a blocking run is in progress: Slicer delivers clicks,
  button presses and scene-close requests while a blocking run calls
  ``slicer.app.processEvents()``; every handler that starts work asks this first.

The widget and the effect only wire Qt signals to these classes; the classes are tested
on slicer-core's real MRML nodes (Testing/Python/test_panel_state.py).
"""
from __future__ import annotations

import contextlib
import json
from typing import Callable, Iterator, List, Optional, Sequence, TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (the Lib imports Slicer where it runs)
    import slicer


class SegmentSelection:
    """The ticked prior segments, stored in one parameter of the module's parameter node.

    The whole selection is ONE parameter, ``{"segmentation": node ID, "ids": [...]}``, so a
    change is a single ``SetParameter`` call: the node's ModifiedEvent (which the widget
    observes to refresh the checklist) fires only once the new selection is complete.
    (Storing a "touched" flag and the list as two parameters let the first event re-apply
    the old list: the first untick was undone.)

    Without a stored selection for the current segmentation node, every segment is ticked.

    Args:
        parameter_node: the module's ``vtkMRMLScriptedModuleNode``.
    """

    PARAMETER = "P2SAM.SegmentSelection"

    def __init__(self, parameter_node: slicer.vtkMRMLScriptedModuleNode) -> None:
        self.parameter_node = parameter_node

    def _stored(self) -> Optional[dict]:
        text = self.parameter_node.GetParameter(self.PARAMETER) if self.parameter_node is not None else ""
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def is_stored(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> bool:
        """True when the user chose the ticks of this segmentation node (else: all are ticked)."""
        stored = self._stored()
        return bool(stored and segmentation_node is not None and stored.get("segmentation") == segmentation_node.GetID())

    def checked(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> List[str]:
        """Segment IDs to tick, in the segmentation's order (unknown stored IDs are dropped)."""
        if segmentation_node is None:
            return []
        segmentation = segmentation_node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        if not self.is_stored(segmentation_node):
            return ids
        wanted = set(self._stored().get("ids") or [])
        return [i for i in ids if i in wanted]

    def store(self, segmentation_node: slicer.vtkMRMLSegmentationNode, segment_ids: Sequence[str]) -> bool:
        """Keep ``segment_ids`` as the selection of ``segmentation_node`` (one parameter write).

        Returns True when the stored value changed (then the node fired one ModifiedEvent).
        """
        if self.parameter_node is None or segmentation_node is None:
            return False
        text = json.dumps({"segmentation": segmentation_node.GetID(), "ids": [str(s) for s in segment_ids]})
        if self.parameter_node.GetParameter(self.PARAMETER) == text:
            return False
        self.parameter_node.SetParameter(self.PARAMETER, text)
        return True

    def set_all(self, segmentation_node: slicer.vtkMRMLSegmentationNode, checked: bool) -> bool:
        """Tick every segment (``checked``) or none."""
        if segmentation_node is None:
            return False
        segmentation = segmentation_node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        return self.store(segmentation_node, ids if checked else [])


class BusyError(RuntimeError):
    """A second run was asked for while one is in progress."""


class BusyState:
    """Whether a blocking run is in progress, and whether it was asked to stop.

    A blocking run keeps Slicer's window alive by calling ``process_events`` between steps
    (:meth:`progress_callback`); during that call Slicer may deliver any user event. Event
    handlers therefore check :attr:`busy` and refuse to start anything; "Cancel" and a
    closing scene call :meth:`request_cancel`, and the run stops at its next step
    (:meth:`should_cancel` is the engine's ``cancel`` callback).
    """

    def __init__(self) -> None:
        self.task: Optional[str] = None
        self.cancel_requested = False

    @property
    def busy(self) -> bool:
        return self.task is not None

    @contextlib.contextmanager
    def running(self, task: str) -> Iterator["BusyState"]:
        """Mark ``task`` as running for the ``with`` block.

        Raises:
            BusyError: another task is running (nothing is started).
        """
        if self.task is not None:
            raise BusyError(f"{self.task} is still running; wait for it or cancel it first")
        self.task = task
        self.cancel_requested = False
        try:
            yield self
        finally:
            self.task = None
            self.cancel_requested = False

    def request_cancel(self) -> bool:
        """Ask the running task to stop at its next step; False when nothing runs."""
        if self.task is None:
            return False
        self.cancel_requested = True
        return True

    def should_cancel(self) -> bool:
        """The engine's ``cancel`` callback."""
        return self.cancel_requested

    def progress_callback(self, report: Callable[[float, str], None],
                          process_events: Optional[Callable[[], None]] = None) -> Callable[[float, str], None]:
        """A ``(fraction, message)`` callback that reports, then lets the GUI process its events."""

        def progress(fraction: float, message: str) -> None:
            report(fraction, message)
            if process_events is not None:
                process_events()

        return progress
