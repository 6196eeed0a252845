"""What a planner needs while reviewing a proposal slice by slice (no Qt).

* :func:`click_is_positive` and :func:`negative_modifier_label`: which clicks are negative.
  The effect has a positive/negative toggle (key N); the modifier key flips a click. On
  macOS Qt reports the Cmd key as "Control" (and Ctrl+click arrives as a right click), so
  the modifier is Cmd+click there, Ctrl+click elsewhere; right clicks stay Slicer's (zoom,
  context menu).
* :class:`ClickMarkers`: the clicks of the slice being corrected, as locked markups points
  (green: positive, red: negative) so the planner sees what the model was told.
* :class:`SliceReview`: the flagged slices of a segment (from the propagation report kept
  on the node), a per-slice "reviewed" mark kept on the node (saved with the scene), and
  next/previous flagged slice (keys J / K; M marks the slice reviewed).
* :func:`add_registered_prior` / :func:`registered_prior_node`: the prior as registration
  alone carried it onto the follow-up, in a segmentation of its own shown as outlines, to
  compare with the proposal.

Frames: slice indices ``k`` and pixel positions ``(x, y)`` = ``(i, j)`` are array indices of
the follow-up (the segmentation's geometry); markers are placed in RAS through its IJKToRAS.
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

import slicer

from . import mrml_bridge

#: node attribute with the reviewed slices, JSON ``{segment name: [k, ...]}``
REVIEWED_ATTRIBUTE = "P2SAM.ReviewedSlices"
#: node reference role from a proposal to its registered-prior segmentation
REGISTERED_PRIOR_ROLE = "P2SAMRegisteredPrior"
#: node attribute telling what a segmentation P²SAM made is, and its value for a registered prior
ROLE_ATTRIBUTE = "P2SAM.Role"
REGISTERED_PRIOR = "registered prior"
POSITIVE_COLOUR = (0.1, 0.85, 0.2)
NEGATIVE_COLOUR = (0.95, 0.15, 0.15)


def click_is_positive(negative_mode: bool, modifier_held: bool) -> bool:
    """A click is positive unless exactly one of "negative clicks" (the toggle) and the modifier key is on."""
    return bool(negative_mode) == bool(modifier_held)


def negative_modifier_label(platform: str = sys.platform) -> str:
    """The key that flips a click, as the user presses it: ``"Cmd"`` on macOS, ``"Ctrl"`` elsewhere."""
    return "Cmd" if platform == "darwin" else "Ctrl"


class ClickMarkers:
    """Two locked markups point lists in ``scene``: the positive (green) and negative (red) clicks shown.

    Args:
        scene: the MRML scene; the nodes are created on first use, hidden from the Data module's
            editing (locked), and reused.
    """

    NAMES = ("P2SAM positive clicks", "P2SAM negative clicks")

    def __init__(self, scene: slicer.vtkMRMLScene) -> None:
        self.scene = scene
        self.nodes: List[Optional[slicer.vtkMRMLMarkupsFiducialNode]] = [None, None]

    def _node(self, positive: bool) -> slicer.vtkMRMLMarkupsFiducialNode:
        index = 0 if positive else 1
        node = self.nodes[index]
        if node is None or not self.scene.IsNodePresent(node):
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", self.NAMES[index])
            node.CreateDefaultDisplayNodes()
            node.SetLocked(True)
            display = node.GetDisplayNode()
            if display is not None:
                colour = POSITIVE_COLOUR if positive else NEGATIVE_COLOUR
                display.SetColor(*colour)
                display.SetSelectedColor(*colour)
                display.SetPointLabelsVisibility(False)
            self.nodes[index] = node
        return node

    def show(self, clicks: Sequence[Tuple[float, float, bool]], k: int, ijk_to_ras: np.ndarray) -> None:
        """Show these clicks of slice ``k`` (``(x, y, positive)`` in slice pixels) and nothing else."""
        m = np.asarray(ijk_to_ras, dtype=np.float64)
        for positive in (True, False):
            node = self._node(positive)
            node.RemoveAllControlPoints()
            for x, y, p in clicks:
                if bool(p) == positive:
                    ras = m @ np.array([float(x), float(y), float(k), 1.0])
                    node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]), "")

    def points(self, positive: bool) -> List[Tuple[float, float, float]]:
        """The RAS positions shown in one colour."""
        node = self.nodes[0 if positive else 1]
        if node is None:
            return []
        out = []
        for n in range(node.GetNumberOfControlPoints()):
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPosition(n, p)
            out.append((p[0], p[1], p[2]))
        return out

    def clear(self) -> None:
        self.show([], 0, np.eye(4))


class SliceReview:
    """Flagged slices and "reviewed" marks of one proposal segmentation.

    Args:
        segmentation_node: the proposal (its report, from :func:`.mrml_bridge.store_report`,
            lists each segment's flagged slices; the marks are kept in :data:`REVIEWED_ATTRIBUTE`).
    """

    def __init__(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> None:
        self.node = segmentation_node

    def flagged(self, segment_name: str) -> List[int]:
        """Flagged slices of a segment, in slice order (none without a report)."""
        report = mrml_bridge.stored_report(self.node) or {}
        return sorted({int(e["index"]) for e in mrml_bridge.flagged_slices(report) if e["segment"] == segment_name})

    def _marks(self) -> Dict[str, List[int]]:
        text = self.node.GetAttribute(REVIEWED_ATTRIBUTE)
        try:
            value = json.loads(text) if text else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def reviewed(self, segment_name: str) -> List[int]:
        return sorted(int(k) for k in self._marks().get(segment_name, []))

    def is_reviewed(self, segment_name: str, k: int) -> bool:
        return int(k) in self.reviewed(segment_name)

    def set_reviewed(self, segment_name: str, k: int, reviewed: bool = True) -> None:
        """Mark (or unmark) slice ``k`` of a segment as reviewed; one attribute write."""
        marks = self._marks()
        ks = set(int(v) for v in marks.get(segment_name, []))
        ks = ks | {int(k)} if reviewed else ks - {int(k)}
        marks[segment_name] = sorted(ks)
        self.node.SetAttribute(REVIEWED_ATTRIBUTE, json.dumps(marks, sort_keys=True))

    def next_flagged(self, segment_name: str, k: int, step: int = 1, unreviewed_only: bool = True) -> Optional[int]:
        """The next (``step`` 1) or previous (-1) flagged slice after ``k``, wrapping round; None when none is left."""
        flagged = self.flagged(segment_name)
        if unreviewed_only:
            done = set(self.reviewed(segment_name))
            flagged = [f for f in flagged if f not in done]
        if not flagged:
            return None
        if step > 0:
            later = [f for f in flagged if f > k]
            return later[0] if later else flagged[0]
        earlier = [f for f in flagged if f < k]
        return earlier[-1] if earlier else flagged[-1]

    def progress(self, segment_name: str) -> Tuple[int, int]:
        """``(flagged slices reviewed, flagged slices)`` of a segment."""
        flagged = self.flagged(segment_name)
        done = set(self.reviewed(segment_name))
        return sum(1 for f in flagged if f in done), len(flagged)


def add_registered_prior(scene: slicer.vtkMRMLScene, output_node: slicer.vtkMRMLSegmentationNode,
                         segments: Sequence, reference: sitk.Image,
                         volume_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None
                         ) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation "<output> registered prior" with the registered prior segments, drawn as outlines only
    (2D fill off, not in 3D), hidden until shown (:func:`show_registered_prior`), referenced from
    ``output_node`` (:func:`registered_prior_node`) and tagged :data:`ROLE_ATTRIBUTE`."""
    node = mrml_bridge.segments_to_segmentation_node(scene, segments, reference,
                                                     f"{output_node.GetName()} registered prior",
                                                     reference_volume_node=volume_node)
    node.SetAttribute(ROLE_ATTRIBUTE, REGISTERED_PRIOR)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAllSegmentsOpacity2DFill(0.0)
        display.SetAllSegmentsOpacity2DOutline(1.0)
        display.SetVisibility3D(False)
        display.SetVisibility(False)
    output_node.SetNodeReferenceID(REGISTERED_PRIOR_ROLE, node.GetID())
    return node


def is_registered_prior(node: slicer.vtkMRMLNode) -> bool:
    """True for a segmentation made by :func:`add_registered_prior` (not a proposal)."""
    return node.GetAttribute(ROLE_ATTRIBUTE) == REGISTERED_PRIOR


def count_segmentations(scene: slicer.vtkMRMLScene) -> int:
    """Segmentation nodes in ``scene``, the registered priors made for comparison left out."""
    nodes = [scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
             for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    return sum(1 for node in nodes if not is_registered_prior(node))


def registered_prior_node(output_node: Optional[slicer.vtkMRMLSegmentationNode]
                          ) -> Optional[slicer.vtkMRMLSegmentationNode]:
    """The registered-prior segmentation of a proposal, or None."""
    if output_node is None:
        return None
    return output_node.GetNodeReference(REGISTERED_PRIOR_ROLE)


def show_registered_prior(output_node: Optional[slicer.vtkMRMLSegmentationNode], visible: bool) -> bool:
    """Show or hide a proposal's registered prior; False when it has none."""
    node = registered_prior_node(output_node)
    if node is None:
        return False
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetVisibility(bool(visible))
    return True
