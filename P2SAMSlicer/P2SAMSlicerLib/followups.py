"""Which follow-ups a run propagates onto: volume nodes, or every volume of a Sequence node (no Qt).

* :class:`NodeSelection` keeps the module panel's "More follow-ups" ticks in the parameter node
  (one parameter, like :class:`.panel_state.SegmentSelection`).
* :func:`followup_list` turns the panel's choices into :class:`Followup` items, in visit order:
  the follow-up volume, then the ticked volumes in the scene's order; or, when a Sequence node is
  chosen, each of its volumes in index order (weekly CBCTs recorded as one sequence).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Optional, Sequence, TYPE_CHECKING

import SimpleITK as sitk

from . import mrml_bridge
from .mrml_bridge import BridgeError

if TYPE_CHECKING:  # annotations only (the Lib imports Slicer where it runs)
    import slicer


@dataclass
class Followup:
    """One follow-up of a run.

    Attributes:
        name: for messages, the report and the output node's name.
        image: its voxels and geometry (a copy; LPS).
        volume_node: the ``vtkMRMLScalarVolumeNode`` in the scene; None for a Sequence item until
            its result is written (:meth:`.logic.PropagationLogic.followupVolumeNode` then adds
            a volume node of the item, the result's reference volume).
        sequence_node: the ``vtkMRMLSequenceNode`` a Sequence item comes from (else None).
    """

    name: str
    image: sitk.Image
    volume_node: Optional[slicer.vtkMRMLScalarVolumeNode] = None
    sequence_node: Optional[slicer.vtkMRMLSequenceNode] = None


class NodeSelection:
    """Node IDs ticked in a checkable node list, kept in one parameter of the module's parameter node.

    Args:
        parameter_node: the module's ``vtkMRMLScriptedModuleNode``.
        parameter: the parameter's name.
    """

    def __init__(self, parameter_node: slicer.vtkMRMLScriptedModuleNode, parameter: str = "P2SAM.MoreFollowups"
                 ) -> None:
        self.parameter_node = parameter_node
        self.parameter = parameter

    def ids(self) -> List[str]:
        text = self.parameter_node.GetParameter(self.parameter) if self.parameter_node is not None else ""
        try:
            value = json.loads(text) if text else []
        except ValueError:
            return []
        return [str(v) for v in value] if isinstance(value, list) else []

    def nodes(self, scene: slicer.vtkMRMLScene) -> List:
        """The stored nodes still in ``scene``, in the scene's order."""
        wanted = set(self.ids())
        out = []
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
            if node.GetID() in wanted:
                out.append(node)
        return out

    def store(self, nodes: Sequence) -> bool:
        """Keep these nodes (one parameter write); True when the stored value changed."""
        if self.parameter_node is None:
            return False
        text = json.dumps([n.GetID() for n in nodes])
        if self.parameter_node.GetParameter(self.parameter) == text:
            return False
        self.parameter_node.SetParameter(self.parameter, text)
        return True


def sequence_followups(sequence_node: slicer.vtkMRMLSequenceNode) -> List[Followup]:
    """Every volume of a ``vtkMRMLSequenceNode``, in index order, named ``"<sequence> [<index value>]"``.

    Raises:
        BridgeError: the sequence holds no scalar volume.
    """
    out = []
    for n in range(sequence_node.GetNumberOfDataNodes()):
        node = sequence_node.GetNthDataNode(n)
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            continue
        name = f"{sequence_node.GetName()} [{sequence_node.GetNthIndexValue(n)}]"
        out.append(Followup(name, mrml_bridge.volume_node_to_image(node, f"follow-up {name}"), None, sequence_node))
    if not out:
        raise BridgeError(f"the sequence '{sequence_node.GetName()}' holds no scalar volume to propagate onto")
    return out


def followup_list(followup_volume: Optional[slicer.vtkMRMLScalarVolumeNode] = None, more_volumes: Sequence = (),
                  sequence_node: Optional[slicer.vtkMRMLSequenceNode] = None,
                  prior_volume: Optional[slicer.vtkMRMLScalarVolumeNode] = None) -> List[Followup]:
    """The follow-ups of a run, in visit order (see the module docstring); duplicates and the prior are dropped.

    Raises:
        BridgeError: nothing to propagate onto.
    """
    if sequence_node is not None:
        return sequence_followups(sequence_node)
    nodes, seen = [], set()
    for node in [followup_volume, *more_volumes]:
        if node is None or node.GetID() in seen or (prior_volume is not None and node.GetID() == prior_volume.GetID()):
            continue
        seen.add(node.GetID())
        nodes.append(node)
    if not nodes:
        raise BridgeError("select the follow-up volume (or a follow-up sequence)")
    return [Followup(node.GetName(), mrml_bridge.volume_node_to_image(node, f"follow-up volume '{node.GetName()}'"),
                     node) for node in nodes]
