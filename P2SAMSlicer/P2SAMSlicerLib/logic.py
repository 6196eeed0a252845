"""The P2SAMSlicer module's computation, usable without the GUI (scripts, tests, slicer-core).

:class:`PropagationLogic` turns MRML nodes into the engine's inputs (through
:mod:`.mrml_bridge`), checks them, runs :func:`P2SAMLogic.propagation.pipeline.propagate` (through
:func:`.runner.run_propagation`, the same code the background process runs) and writes the
result into a new segmentation node next to the follow-up. It never imports Qt; the module's
``P2SAMSlicerLogic`` adds Slicer's ``ScriptedLoadableModuleLogic`` on top of it.

Nothing is added to or changed in the scene before the engine has succeeded: a bad input,
a failure or a cancelled run leaves the scene as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, TYPE_CHECKING, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import mrml_bridge
from .mrml_bridge import BridgeError
from .runner import run_propagation

if TYPE_CHECKING:  # annotations only (the Lib imports Slicer where it runs)
    import slicer

    from .followups import Followup

#: one result: (output segmentation, report, follow-up volume or None)
Output = Tuple["slicer.vtkMRMLSegmentationNode", dict, Optional["slicer.vtkMRMLScalarVolumeNode"]]
#: defaults shown in the GUI and used by :meth:`PropagationLogic.process`
DEFAULT_PARAMETERS = {"max_parts": 5, "negative_parts": 1, "roi_margin_mm": 15.0, "slice_margin_mm": 5.0}


@dataclass
class PreparedInputs:
    """The engine's inputs taken from the scene (copies: the nodes are not referenced).

    Attributes:
        prior_image, followup_image: 3D SimpleITK images (LPS geometry).
        prior_segments: the selected prior segments, masks on ``prior_image``'s grid.
        prior_name, followup_name, segmentation_name: node names (messages, output name).
    """

    prior_image: sitk.Image
    prior_segments: List
    followup_image: sitk.Image
    prior_name: str = "prior"
    followup_name: str = "follow-up"
    segmentation_name: str = "segmentation"
    warnings: List[str] = field(default_factory=list)


@dataclass
class ProcessOutcome:
    """What :meth:`PropagationLogic.process` returns: the new node and the engine's report (dict)."""

    output_node: slicer.vtkMRMLSegmentationNode
    report: dict
    result: object = None


@dataclass
class SeriesOutcome:
    """What :meth:`PropagationLogic.processSeries` returns: one new node per follow-up, the combined report."""

    output_nodes: List[slicer.vtkMRMLSegmentationNode]
    report: dict
    result: object = None


class PropagationLogic:
    """Propagate a prior segmentation onto a follow-up volume, node in, node out.

    Args:
        scene: the MRML scene (default ``slicer.mrmlScene``, resolved when first needed).
    """

    def __init__(self, scene: Optional[slicer.vtkMRMLScene] = None) -> None:
        self._scene = scene

    @property
    def scene(self) -> slicer.vtkMRMLScene:
        if self._scene is None:
            import slicer

            self._scene = slicer.mrmlScene
        return self._scene

    # -- inputs ---------------------------------------------------------------------------------
    def prepareInputs(self, priorVolume: slicer.vtkMRMLScalarVolumeNode,
                      priorSegmentation: slicer.vtkMRMLSegmentationNode, followupVolume: slicer.vtkMRMLScalarVolumeNode,
                      segmentIds: Optional[Sequence[str]] = None,
                      outputSegmentation: Optional[slicer.vtkMRMLSegmentationNode] = None) -> PreparedInputs:
        """Check the nodes and copy them into the engine's types.

        Raises:
            BridgeError: with a message naming the node and what to do, for: a missing
                node, no segment selected, follow-up = prior (same node or same voxels),
                output = prior segmentation, a segment not on the prior volume, a
                transformed node, a non-scalar volume.
        """
        if priorVolume is None:
            raise BridgeError("select the prior volume (the scan the prior segmentation was drawn on)")
        if priorSegmentation is None:
            raise BridgeError("select the prior segmentation")
        if followupVolume is None:
            raise BridgeError("select the follow-up volume")
        if followupVolume is priorVolume or followupVolume.GetID() == priorVolume.GetID():
            raise BridgeError(f"the follow-up volume '{followupVolume.GetName()}' is the prior volume; "
                              "select the follow-up scan")
        if outputSegmentation is not None and outputSegmentation.GetID() == priorSegmentation.GetID():
            raise BridgeError(f"the output segmentation '{outputSegmentation.GetName()}' is the prior segmentation; "
                              "the prior is never modified: choose 'Create new segmentation' as output")
        if segmentIds is not None and len(segmentIds) == 0:
            raise BridgeError(f"no segment of '{priorSegmentation.GetName()}' is selected; tick at least one")
        prior = mrml_bridge.volume_node_to_image(priorVolume, "prior volume")
        followup = mrml_bridge.volume_node_to_image(followupVolume, "follow-up volume")
        if _identical(prior, followup):
            raise BridgeError(f"the follow-up volume '{followupVolume.GetName()}' is identical to the prior volume "
                              f"'{priorVolume.GetName()}' (same grid, same voxels); select the follow-up scan")
        segments = mrml_bridge.segments_from_segmentation_node(
            priorSegmentation, prior, segmentIds, reference_name=f"the prior volume '{priorVolume.GetName()}'")
        return PreparedInputs(prior, segments, followup, priorVolume.GetName(), followupVolume.GetName(),
                              priorSegmentation.GetName())

    # -- run ------------------------------------------------------------------------------------
    def process(self, priorVolume: slicer.vtkMRMLScalarVolumeNode, priorSegmentation: slicer.vtkMRMLSegmentationNode,
                followupVolume: slicer.vtkMRMLScalarVolumeNode,
                outputSegmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
                segmentIds: Optional[Sequence[str]] = None, model: Union[str, object] = "litemedsam",
                modelType: Optional[str] = None, device: str = "auto", parameters: Optional[dict] = None,
                progress: Optional[Callable[[float, str], None]] = None, cancel: Optional[Callable[[], bool]] = None,
                outputName: Optional[str] = None, save_state: Optional[Callable[[], None]] = None) -> ProcessOutcome:
        """Propagate (blocking) and return the output segmentation node.

        Args:
            priorVolume, followupVolume: ``vtkMRMLScalarVolumeNode``.
            priorSegmentation: ``vtkMRMLSegmentationNode`` drawn on ``priorVolume`` (not modified).
            outputSegmentation: the user's node to write into (see :meth:`createOutput`), or None: a new node.
            segmentIds: prior segment IDs to propagate, in this order (None: all).
            model: ``"litemedsam"`` (embedded), a SAM checkpoint path, or a loaded model.
            modelType: ``vit_b``/``vit_l``/``vit_h`` for a checkpoint (None or ``"auto"``: inferred).
            device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
            parameters: :class:`P2SAMLogic.propagation.pipeline.PropagationConfig` fields (defaults otherwise).
            progress: ``(fraction 0-1, message)`` callback; cancel: polled, True stops the run.
            outputName: name of the output node (default: ``"<follow-up> P2SAM"`` for a new node; a
                given ``outputSegmentation`` keeps its name).
            save_state: called once before the proposal is written into ``outputSegmentation`` (undo).
        Returns:
            :class:`ProcessOutcome` with the node (reference geometry = the follow-up's,
            placed next to the follow-up in the subject hierarchy, the report on the node).
        Raises:
            BridgeError / P2SAMLogic.errors.InputError: bad input (message names it);
            P2SAMLogic.errors.CancelledError: ``cancel`` returned True (scene unchanged).
        """
        inputs = self.prepareInputs(priorVolume, priorSegmentation, followupVolume, segmentIds, outputSegmentation)
        result = run_propagation(inputs.prior_image, inputs.prior_segments, inputs.followup_image, model=model,
                                 model_type=modelType, device=device, config=parameters, progress=progress,
                                 cancel=cancel)
        if cancel is not None and cancel():  # asked to stop (e.g. the scene closed) after the engine's last check
            from P2SAMLogic.errors import CancelledError

            raise CancelledError("cancelled by the caller; nothing was added to the scene")
        report = result.report_dict()
        choice = {"model": model if isinstance(model, str) else "litemedsam", "model_type": modelType,
                  "device": device}
        node = self.createOutput(result.segments, report, inputs.followup_image, followupVolume, outputSegmentation,
                                 outputName, choice, save_state=save_state, priorSegments=inputs.prior_segments,
                                 registered=result.registered_prior)
        return ProcessOutcome(node, report, result)

    # -- several follow-ups ---------------------------------------------------------------------
    def prepareSeries(self, priorVolume: slicer.vtkMRMLScalarVolumeNode,
                      priorSegmentation: slicer.vtkMRMLSegmentationNode, followups: Sequence,
                      segmentIds: Optional[Sequence[str]] = None) -> PreparedInputs:
        """Check the prior and copy it (like :meth:`prepareInputs`) for a run on several follow-ups.

        Args:
            followups: :class:`.followups.Followup` items (:func:`.followups.followup_list`).
        Raises:
            BridgeError: as :meth:`prepareInputs`; a follow-up identical to the prior (names it).
        """
        if priorVolume is None:
            raise BridgeError("select the prior volume (the scan the prior segmentation was drawn on)")
        if priorSegmentation is None:
            raise BridgeError("select the prior segmentation")
        if not followups:
            raise BridgeError("select the follow-up volume (or a follow-up sequence)")
        if segmentIds is not None and len(segmentIds) == 0:
            raise BridgeError(f"no segment of '{priorSegmentation.GetName()}' is selected; tick at least one")
        prior = mrml_bridge.volume_node_to_image(priorVolume, "prior volume")
        for f in followups:
            if (f.volume_node is not None and f.volume_node.GetID() == priorVolume.GetID()) or _identical(prior, f.image):
                raise BridgeError(f"the follow-up '{f.name}' is the prior volume '{priorVolume.GetName()}'; "
                                  "remove it from the follow-ups")
        segments = mrml_bridge.segments_from_segmentation_node(
            priorSegmentation, prior, segmentIds, reference_name=f"the prior volume '{priorVolume.GetName()}'")
        return PreparedInputs(prior, segments, followups[0].image, priorVolume.GetName(), followups[0].name,
                              priorSegmentation.GetName())

    def processSeries(self, priorVolume: slicer.vtkMRMLScalarVolumeNode,
                      priorSegmentation: slicer.vtkMRMLSegmentationNode, followups: Sequence,
                      segmentIds: Optional[Sequence[str]] = None, model: Union[str, object] = "litemedsam",
                      modelType: Optional[str] = None, device: str = "auto", parameters: Optional[dict] = None,
                      chain: bool = False, progress: Optional[Callable[[float, str], None]] = None,
                      cancel: Optional[Callable[[], bool]] = None) -> "SeriesOutcome":
        """Propagate onto several follow-ups in one run (the model loaded once), one new node each.

        Args:
            followups: :class:`.followups.Followup` items, in visit order.
            chain: each follow-up from the previous one's result instead of from the prior.
            (the others as :meth:`process`)
        Returns:
            :class:`SeriesOutcome`: one new segmentation node per follow-up (named
            ``"<follow-up> P2SAM"``), the combined report, the engine's result.
        Raises:
            as :meth:`process`; nothing is added to the scene unless every follow-up succeeded.
        """
        from .runner import run_series

        inputs = self.prepareSeries(priorVolume, priorSegmentation, followups, segmentIds)
        series = run_series(inputs.prior_image, inputs.prior_segments, [f.image for f in followups],
                            names=[f.name for f in followups], chain=chain, model=model, model_type=modelType,
                            device=device, config=parameters, progress=progress, cancel=cancel)
        if cancel is not None and cancel():
            from P2SAMLogic.errors import CancelledError

            raise CancelledError("cancelled by the caller; nothing was added to the scene")
        for f in followups:
            if f.volume_node is not None and not self.scene.IsNodePresent(f.volume_node):
                raise BridgeError(f"the follow-up volume '{f.name}' was removed from the scene during the run; "
                                  "nothing was written")
        choice = {"model": model if isinstance(model, str) else "litemedsam", "model_type": modelType,
                  "device": device}
        nodes = [self.createOutput(r.segments, r.report_dict(), f.image, self.followupVolumeNode(f), None,
                                   f"{f.name} P2SAM", choice, priorSegments=inputs.prior_segments,
                                   registered=r.registered_prior) for f, r in zip(followups, series.results)]
        return SeriesOutcome(nodes, series.report_dict(), series)

    def followupVolumeNode(self, followup: "Followup") -> slicer.vtkMRMLScalarVolumeNode:
        """The follow-up's volume node; for a Sequence item (none yet) a new volume node of its voxels.

        The Sequence item's node, named like the item (``"<sequence> [<index>]"``) and placed next
        to the sequence in the subject hierarchy, is the result's reference volume: "Go" shows
        that visit and the Segment Editor corrects on it. Kept in ``followup.volume_node``.
        """
        if followup.volume_node is None:
            node = mrml_bridge.image_to_volume_node(followup.image, self.scene, followup.name)
            if followup.sequence_node is not None:
                mrml_bridge.place_next_to(self.scene, node, followup.sequence_node)
            followup.volume_node = node
        return followup.volume_node

    def createOutput(self, segments: Sequence, report: dict, followupImage: sitk.Image,
                     followupVolume: Optional[slicer.vtkMRMLScalarVolumeNode],
                     outputSegmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
                     outputName: Optional[str] = None, modelChoice: Optional[dict] = None,
                     save_state: Optional[Callable[[], None]] = None, masking=None,
                     priorSegments: Optional[Sequence] = None,
                     registered: Optional[Sequence] = None) -> slicer.vtkMRMLSegmentationNode:
        """Write the engine's segments into a new node, or into the node the user chose; returns the node.

        A new node (``outputSegmentation`` None) is named ``"<follow-up> P2SAM"`` (or ``outputName``),
        has the follow-up's geometry and sits next to it. A chosen node keeps its name and its other
        segments: the proposal is written as a Segment Editor edit (:func:`.editing.write_proposal`:
        the editor's overwrite, editable-area and intensity settings apply; ``save_state`` is called
        once before, for one undo step). ``followupVolume`` may be None for a Sequence item: the
        geometry then comes from ``followupImage``.

        The node also keeps the report, the follow-up geometry it refers to and the model
        choice (node attributes), for the flagged-slice list and the Segment Editor effect.
        ``priorSegments``: the prior's segments, whose standard terminology each proposal keeps.
        ``registered``: the registered prior (registration alone), added as a segmentation of its
        own shown as outlines, for comparison (:func:`.review.add_registered_prior`; new nodes only).
        """
        if priorSegments:
            segments = mrml_bridge.carry_prior_tags(segments, priorSegments)
        if followupVolume is not None and not self.scene.IsNodePresent(followupVolume):
            raise BridgeError("the follow-up volume was removed from the scene during the run; nothing was written")
        if outputSegmentation is None:
            base = followupVolume.GetName() if followupVolume is not None else "follow-up"
            node = mrml_bridge.segments_to_segmentation_node(self.scene, segments, followupImage,
                                                             outputName or f"{base} P2SAM",
                                                             reference_volume_node=followupVolume)
        else:
            from . import editing

            node = outputSegmentation
            masking = masking or editing.EditorMasking.from_scene(self.scene, node)
            source = None
            if masking.intensity_range is not None and followupVolume is not None:
                source = mrml_bridge.oriented_image_of_volume(followupVolume)
            editing.write_proposal(node, segments, followupImage, masking, source, save_state)
            source = None
        mrml_bridge.store_report(node, report, followupImage)
        node.SetAttribute(mrml_bridge.MODEL_ATTRIBUTE, json.dumps(modelChoice or {"model": "litemedsam"}))
        if registered and outputSegmentation is None:
            from .review import add_registered_prior

            add_registered_prior(self.scene, node, registered, followupImage, followupVolume)
        return node

    @staticmethod
    def flaggedSliceLocations(outputNode: slicer.vtkMRMLSegmentationNode) -> List[dict]:
        """Flagged slices of an output node's report, each with the RAS point to jump to.

        Returns:
            ``[{"segment", "index", "reason", "qa", "window", "ras": (r, a, s)}]`` in report order.
        """
        report = mrml_bridge.stored_report(outputNode)
        geometry = mrml_bridge.stored_geometry(outputNode)
        if not report or not geometry:
            return []
        out = []
        for entry, ras in mrml_bridge.iter_flagged_points(report, geometry):
            item = dict(entry)
            item["ras"] = ras
            out.append(item)
        return out


def _identical(a: sitk.Image, b: sitk.Image) -> bool:
    """Same grid and the same voxel values."""
    from P2SAMLogic.io.volume import same_geometry

    if not same_geometry(a, b):
        return False
    return bool(np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))


def _fmt(value) -> str:
    return "" if value is None else f"{float(value):.2f}"


def _followup_label(output: Tuple[slicer.vtkMRMLSegmentationNode, dict, slicer.vtkMRMLScalarVolumeNode]) -> str:
    outputNode, _report, followupVolume = output
    return followupVolume.GetName() if followupVolume is not None else outputNode.GetName()


def summary_rows(outputs: Sequence[Output]) -> List[List[str]]:
    """The panel's report table: one row per (follow-up, segment).

    Args:
        outputs: ``[(output node, report dict, follow-up volume node or None)]``.
    Returns:
        Rows of text: follow-up, segment, prior mL, follow-up mL, change % (``n/a (cut by FOV)`` or
        ``n/a (registration failed)`` when the report says why it cannot be measured), slices processed,
        slices flagged.
    """
    from P2SAMLogic.propagation.regcheck import change_cell

    rows = []
    for output in outputs:
        for s in output[1].get("segments", []):
            change = s.get("change_percent")
            cell = change_cell(float("nan") if change is None else float(change), s.get("change_not_measurable") or "")
            rows.append([_followup_label(output), str(s.get("name", "")), _fmt(s.get("prior_volume_ml")),
                         _fmt(s.get("followup_volume_ml")), cell,
                         str(s.get("slices_processed", "")), str(s.get("slices_flagged", ""))])
    return rows


def flagged_rows(logic: PropagationLogic, outputs: Sequence[Output]) -> List[dict]:
    """Every flagged slice of every output: :meth:`PropagationLogic.flaggedSliceLocations` entries plus
    ``"followup"`` (name) and ``"volume"`` (the follow-up volume node to show, or None)."""
    out = []
    for output in outputs:
        for entry in logic.flaggedSliceLocations(output[0]):
            out.append(dict(entry, followup=_followup_label(output), volume=output[2]))
    return out


def review_choices(outputs: Sequence[Output]) -> List[str]:
    """Labels of the results to review, one per follow-up: ``"<follow-up>: <segmentation>"``."""
    return [f"{_followup_label(output)}: {output[0].GetName()}" for output in outputs]


def review_target(outputs: Sequence[Output], index: int
                  ) -> Tuple[slicer.vtkMRMLSegmentationNode, Optional[slicer.vtkMRMLScalarVolumeNode]]:
    """``(segmentation node, follow-up volume node or None)`` of result ``index`` (for the Segment Editor).

    Raises:
        BridgeError: no such result, or its segmentation was removed from the scene.
    """
    if not 0 <= int(index) < len(outputs):
        raise BridgeError("no result to review: run P²SAM first")
    node, _report, volume = outputs[int(index)]
    scene = node.GetScene()
    if scene is None or not scene.IsNodePresent(node):
        raise BridgeError(f"the result segmentation '{node.GetName()}' is no longer in the scene")
    if volume is not None and not scene.IsNodePresent(volume):
        volume = None
    return node, volume


def result_index_for_volume(outputs: Sequence[Output], volume: Optional[slicer.vtkMRMLScalarVolumeNode]) -> int:
    """The index of the result on follow-up ``volume`` (0 when none matches)."""
    for index, output in enumerate(outputs):
        if volume is not None and output[2] is volume:
            return index
    return 0

