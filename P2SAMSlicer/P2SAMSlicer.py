"""P²SAM module for 3D Slicer: carry prior-visit segments onto a follow-up scan.

All computation lives in the pure-Python engine package ``P2SAMLogic`` (shipped next to
this file in the extension's qt-scripted-modules directory; it never imports Slicer, Qt or
VTK). The glue to Slicer's scene, which runs without Qt, is in ``P2SAMSlicerLib``:
``mrml_bridge`` (nodes <-> SimpleITK images and segments), ``logic`` (the blocking
``process()``), ``background`` + ``runner`` (a run in a separate process), ``dependencies``
(the Python-package installer) and ``correction`` (the Segment Editor effect's logic).

The engine, its dependencies (PyTorch...) and the Lib are imported lazily, inside methods,
so that Slicer can always load and list this module; problems are reported in the panel.
"""

import json
import logging
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Annotated, List, Optional, Tuple

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSequenceNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

if TYPE_CHECKING:  # annotations only: the Lib is imported lazily (see _ensureEngineImportable)
    import types

    from P2SAMSlicerLib.editing import ProposalUndo
    from P2SAMSlicerLib.followups import NodeSelection
    from P2SAMSlicerLib.logic import ProcessOutcome, PropagationLogic, SeriesOutcome
    from P2SAMSlicerLib.panel_state import SegmentSelection

MODEL_LITEMEDSAM = "LiteMedSAM (embedded)"
MODEL_SAM = "SAM checkpoint"
#: name of the Segment Editor effect registered by the SegmentEditorP2SAM module
EFFECT_NAME = "P2SAM"


def _ensureEngineImportable() -> None:
    """Make ``P2SAMLogic`` importable when the module runs from a source checkout.

    In a built or installed extension the engine package is copied next to this file, and
    that directory is already on ``sys.path``. When a developer adds the source folder
    ``<repository>/P2SAMSlicer`` to Slicer's additional module paths, the engine sits one
    level up (``<repository>/P2SAMLogic``): only then is the repository root appended.
    """
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    if moduleDir not in sys.path:
        sys.path.append(moduleDir)  # P2SAMSlicerLib
    if os.path.isfile(os.path.join(moduleDir, "P2SAMLogic", "__init__.py")):
        return  # built/installed layout
    repositoryRoot = os.path.dirname(moduleDir)
    if os.path.isfile(os.path.join(repositoryRoot, "P2SAMLogic", "__init__.py")) and repositoryRoot not in sys.path:
        sys.path.append(repositoryRoot)


#
# P2SAMSlicer
#


#: QLineEdit::EchoMode values (qlineedit.h: Normal = 0, Password = 2), passed as integers, which PythonQt accepts
#: for enum arguments (the vendored Qt names carry no QLineEdit enum keys)
_ECHO_NORMAL = 0
_ECHO_PASSWORD = 2

class P2SAMSlicer(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("P²SAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["P2SAM for 3D Slicer developers (independent open-source project)"]
        self.parent.helpText = _("""
Carries a patient's prior-visit tumour and organ segmentations onto a follow-up CT with P²SAM:
one-shot, part-aware prompting of frozen Segment-Anything models, using the prior scan and its
segmentation as the single reference example.<br>
Select the prior volume, its segmentation (tick the segments) and the follow-up volume, then Apply.
The result is a new segmentation next to the follow-up, marked <b>"unreviewed proposal"</b>: review the
flagged slices and correct them in the Segment Editor (effect "P²SAM") before any clinical use.
See the <a href="https://github.com/p2sam-slicer/SlicerP2SAM">project page</a> for documentation.
""")
        self.parent.acknowledgementText = _("""
This extension is developed by the P2SAM for 3D Slicer developers and is distributed under the
Apache License 2.0. It implements the P²SAM method (part-aware personalised prompting of
Segment-Anything models); see the project page for the publication to cite.
""")


#
# P2SAMSlicerParameterNode
#


@parameterNodeWrapper
class P2SAMSlicerParameterNode:
    """The module's settings, saved with the scene.

    priorVolume, priorSegmentation, followupVolume - the inputs. The ticked prior segments are
    kept in the same node by P2SAMSlicerLib.panel_state.SegmentSelection (one parameter), the
    "More follow-ups" ticks by P2SAMSlicerLib.followups.NodeSelection.
    followupSequence - every volume of this sequence is a follow-up (instead of the volumes).
    chainFollowups - several follow-ups: each from the previous one's result, not from the prior.
    outputSegmentation - one follow-up: the user's node to write into (as a Segment Editor edit);
        None creates a new node (the default). Several follow-ups: always new nodes.
    model - MODEL_LITEMEDSAM or MODEL_SAM; samCheckpoint / samModelType - for MODEL_SAM.
    maxParts, negativeParts, roiMarginMm, sliceMarginMm - P²SAM parameters.
    device - auto, cpu (force CPU), cuda or mps.
    runInBackground - run in a separate process (GUI stays responsive).
    runOnServer / serverUrl - send the job to a P2SAM MONAI Label server (apps/p2sam) instead; the
        server's engine version and model checksum are checked first (one follow-up per run).
    """

    priorVolume: vtkMRMLScalarVolumeNode
    priorSegmentation: vtkMRMLSegmentationNode
    followupVolume: vtkMRMLScalarVolumeNode
    followupSequence: vtkMRMLSequenceNode
    chainFollowups: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    model: Annotated[str, Choice([MODEL_LITEMEDSAM, MODEL_SAM])] = MODEL_LITEMEDSAM
    samCheckpoint: pathlib.Path
    samModelType: Annotated[str, Choice(["auto", "vit_b", "vit_l", "vit_h"])] = "auto"
    maxParts: Annotated[int, WithinRange(1, 16)] = 5
    negativeParts: Annotated[int, WithinRange(0, 16)] = 1
    roiMarginMm: Annotated[float, WithinRange(0.0, 100.0)] = 15.0
    sliceMarginMm: Annotated[float, WithinRange(0.0, 50.0)] = 5.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    runInBackground: bool = True
    runOnServer: bool = False
    serverUrl: str = "http://127.0.0.1:8000"


def modelArguments(parameterNode) -> dict:
    """``{"model", "modelType", "device"}`` for :meth:`P2SAMSlicerLogic.process` from the settings."""
    if parameterNode.model == MODEL_SAM:
        path = str(parameterNode.samCheckpoint or "")
        if not path or path == "." or not os.path.isfile(path):
            raise ValueError(_("Select an existing SAM checkpoint file (Model section), or choose the embedded "
                               "LiteMedSAM model."))
        modelType = None if parameterNode.samModelType == "auto" else parameterNode.samModelType
        return {"model": path, "modelType": modelType, "device": parameterNode.device}
    return {"model": "litemedsam", "modelType": None, "device": parameterNode.device}


def propagationParameters(parameterNode) -> dict:
    """:class:`P2SAMLogic.propagation.pipeline.PropagationConfig` fields from the settings."""
    return {"max_parts": int(parameterNode.maxParts), "negative_parts": int(parameterNode.negativeParts),
            "roi_margin_mm": float(parameterNode.roiMarginMm), "slice_margin_mm": float(parameterNode.sliceMarginMm)}


#
# P2SAMSlicerWidget
#


class P2SAMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedSegmentation = None
        self._updatingSegmentList = False
        self._job = None  # running BackgroundPropagation
        self._serverLogins = {}  # server URL -> {"username", "password"}: in memory only, never saved
        self._jobContext = None  # (inputs, followupVolume, outputSegmentation, modelChoice)
        _ensureEngineImportable()
        from P2SAMSlicerLib.panel_state import BusyState

        self._busy = BusyState()  # a blocking run in progress (see _runBlocking)
        self._lastOutput = None
        self._lastOutputs = []  # [(output node, report, follow-up volume or None)] of the last run
        self._timer = None
        self._segmentListSignature = None
        self._updatingMoreFollowups = False
        from P2SAMSlicerLib.editing import ProposalUndo

        self._proposalUndo: "ProposalUndo" = ProposalUndo()  # the last proposal written into the user's segmentation

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)
        _ensureEngineImportable()

        uiWidget: "slicer.qMRMLWidget" = slicer.util.loadUI(self.resourcePath("UI/P2SAMSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = P2SAMSlicerLogic()

        self.ui.progressBar.setVisible(False)
        self.ui.reportTableWidget.setColumnCount(7)
        self.ui.reportTableWidget.setHorizontalHeaderLabels(
            [_("Follow-up"), _("Segment"), _("Prior mL"), _("Follow-up mL"), _("Change %"), _("Slices"), _("Flagged")])
        self.ui.reportTableWidget.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        self.ui.flaggedTableWidget.setColumnCount(5)
        self.ui.flaggedTableWidget.setHorizontalHeaderLabels([_("Follow-up"), _("Segment"), _("Slice"), _("Why"), ""])
        self.ui.flaggedTableWidget.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)

        self._timer = qt.QTimer()
        self._timer.setInterval(250)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.segmentsListWidget.connect("itemChanged(QListWidgetItem*)", self.onSegmentItemChanged)
        self.ui.selectAllSegmentsButton.connect("clicked()", lambda: self.setAllSegmentsChecked(True))
        self.ui.selectNoSegmentsButton.connect("clicked()", lambda: self.setAllSegmentsChecked(False))
        self.ui.moreFollowupsComboBox.connect("checkedNodesChanged()", self.onMoreFollowupsChanged)
        self.ui.openSegmentEditorButton.connect("clicked()", self.onOpenSegmentEditor)
        self.ui.undoProposalButton.connect("clicked()", self.onUndoProposal)
        self.ui.installDependenciesButton.connect("clicked()", self.onInstallDependencies)
        self.ui.restartButton.connect("clicked()", self.onRestart)
        self.ui.restartButton.visible = False

        self.initializeParameterNode()
        self.updateDependencyStatus()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._busy.request_cancel()
        if self._job is not None:
            self._job.cleanup()
            self._job = None
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._busy.request_cancel():
            self.log(_("The scene is closing: the propagation stops at its next step."))
        if self._job is not None:
            self._job.cleanup()
            self._job = None
            self._setRunning(False)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ----------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed; preselect inputs to save clicks."""
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.priorSegmentation:
            firstSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentation:
                p.priorSegmentation = firstSegmentation
        if not p.priorVolume and p.priorSegmentation:
            reference = p.priorSegmentation.GetNodeReference(
                slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
            if reference and reference.IsA("vtkMRMLScalarVolumeNode"):
                p.priorVolume = reference

    def setParameterNode(self, inputParameterNode: Optional[P2SAMSlicerParameterNode]) -> None:
        """Set and observe the parameter node (the GUI follows it, through SlicerParameterName)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        self._observeSegmentation(p.priorSegmentation if p else None)
        self.updateSegmentList()
        self.updateMoreFollowups()
        useSequence = bool(p) and p.followupSequence is not None
        self.ui.followupVolumeSelector.enabled = not useSequence
        self.ui.moreFollowupsComboBox.enabled = not useSequence
        isSam = bool(p) and p.model == MODEL_SAM
        self.ui.checkpointPathLineEdit.enabled = isSam
        self.ui.modelTypeComboBox.enabled = isSam
        self._checkCanApply()

    def _observeSegmentation(self, segmentationNode) -> None:
        """Refresh the segment checklist when segments of the prior segmentation change."""
        if segmentationNode is self._observedSegmentation:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self.onSegmentsChanged)
        self._observedSegmentation = segmentationNode
        if segmentationNode is not None:
            for event in events:
                self.addObserver(segmentationNode, event, self.onSegmentsChanged)

    def onSegmentsChanged(self, caller=None, event=None) -> None:
        self.updateSegmentList()
        self._checkCanApply()

    # -- segment checklist -------------------------------------------------------------------
    def _selection(self) -> "SegmentSelection":
        """The ticked segments, kept in the parameter node (:class:`P2SAMSlicerLib.panel_state.SegmentSelection`)."""
        from P2SAMSlicerLib.panel_state import SegmentSelection

        return SegmentSelection(self._parameterNode.parameterNode if self._parameterNode else None)

    def updateSegmentList(self) -> None:
        """Show the prior segmentation's segments, ticked as the stored selection says.

        The list is rebuilt only when the segmentation or its segments' names or colours
        change; otherwise only the ticks are set. Ticks changed here never echo back into
        the selection (``_updatingSegmentList``).
        """
        p = self._parameterNode
        widget = self.ui.segmentsListWidget
        segmentationNode = p.priorSegmentation if p else None
        signature = None
        ids = []
        if segmentationNode is not None:
            segmentation = segmentationNode.GetSegmentation()
            ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
            signature = (segmentationNode.GetID(), tuple((i, segmentation.GetSegment(i).GetName(),
                                              tuple(segmentation.GetSegment(i).GetColor())) for i in ids))
        checked = set(self._selection().checked(segmentationNode))
        self._updatingSegmentList = True
        try:
            if signature != self._segmentListSignature:
                self._segmentListSignature = signature
                widget.clear()
                for segmentId in ids:
                    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
                    item = qt.QListWidgetItem(segment.GetName())
                    item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                    item.setData(qt.Qt.UserRole, segmentId)
                    color = segment.GetColor()
                    item.setData(qt.Qt.DecorationRole, qt.QColor.fromRgbF(color[0], color[1], color[2]))
                    item.setCheckState(qt.Qt.Checked if segmentId in checked else qt.Qt.Unchecked)
                    widget.addItem(item)
            else:
                for row in range(widget.count):
                    item = widget.item(row)
                    item.setCheckState(qt.Qt.Checked if item.data(qt.Qt.UserRole) in checked else qt.Qt.Unchecked)
        finally:
            self._updatingSegmentList = False

    def checkedSegmentIds(self) -> List[str]:
        """The segment IDs Apply propagates (the stored selection, in the segmentation's order)."""
        p = self._parameterNode
        return self._selection().checked(p.priorSegmentation) if p else []

    def onSegmentItemChanged(self, item) -> None:
        """A checkbox was clicked: store the ticks shown (one parameter write, see SegmentSelection)."""
        if self._updatingSegmentList or not self._parameterNode or self._busy.busy:
            return
        widget = self.ui.segmentsListWidget
        shown = [widget.item(row).data(qt.Qt.UserRole) for row in range(widget.count)
                 if widget.item(row).checkState() == qt.Qt.Checked]
        self._selection().store(self._parameterNode.priorSegmentation, shown)
        self._checkCanApply()

    def setAllSegmentsChecked(self, checked: bool) -> None:
        if not self._parameterNode or self._busy.busy:
            return
        self._selection().set_all(self._parameterNode.priorSegmentation, checked)
        self.updateSegmentList()
        self._checkCanApply()

    # -- follow-ups --------------------------------------------------------------------------
    def _moreFollowupsSelection(self) -> "NodeSelection":
        from P2SAMSlicerLib.followups import NodeSelection

        return NodeSelection(self._parameterNode.parameterNode if self._parameterNode else None)

    def updateMoreFollowups(self) -> None:
        """Tick the "More follow-ups" volumes stored in the parameter node (no echo into the selection)."""
        if not self._parameterNode:
            return
        wanted = set(self._moreFollowupsSelection().ids())
        combo = self.ui.moreFollowupsComboBox
        self._updatingMoreFollowups = True
        try:
            for n in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
                node = slicer.mrmlScene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
                combo.setCheckState(node, qt.Qt.Checked if node.GetID() in wanted else qt.Qt.Unchecked)
        finally:
            self._updatingMoreFollowups = False

    def onMoreFollowupsChanged(self) -> None:
        if self._updatingMoreFollowups or not self._parameterNode or self._busy.busy:
            return
        self._moreFollowupsSelection().store(list(self.ui.moreFollowupsComboBox.checkedNodes()))

    def followups(self) -> list:
        """What Apply propagates onto, in visit order (:func:`P2SAMSlicerLib.followups.followup_list`)."""
        from P2SAMSlicerLib.followups import followup_list

        p = self._parameterNode
        return followup_list(p.followupVolume, self._moreFollowupsSelection().nodes(slicer.mrmlScene),
                             p.followupSequence, p.priorVolume)

    # -- apply / cancel ----------------------------------------------------------------------
    def _isRunning(self) -> bool:
        return self._job is not None or self._busy.busy

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._isRunning():
            self.ui.applyButton.enabled = True
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the propagation; nothing is added to the scene.")
            return
        self.ui.applyButton.text = _("Apply")
        p = self._parameterNode
        if not p or not p.priorVolume or not p.priorSegmentation or not (p.followupVolume or p.followupSequence):
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("Select the prior volume, its segmentation and the follow-up volume.")
        elif not self.checkedSegmentIds():
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("Tick at least one segment to propagate.")
        else:
            self.ui.applyButton.enabled = True
            self.ui.applyButton.toolTip = _("Propagate the ticked segments onto the follow-up volume.")

    def _setRunning(self, running: bool) -> None:
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                       self.ui.modelCollapsibleButton, self.ui.advancedCollapsibleButton,
                       self.ui.dependenciesCollapsibleButton):
            widget.enabled = not running
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.setValue(0)
        self._checkCanApply()

    def log(self, message: str) -> None:
        self.ui.statusTextEdit.appendPlainText(message)
        logging.info("P2SAM: " + message)

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * max(0.0, min(1.0, fraction)))))
        if message:
            self.ui.progressBar.setFormat(f"%p% {message}")

    def onApplyButton(self) -> None:
        """Start a propagation, or cancel the running one."""
        if self._job is not None:
            self.log(_("Cancelling..."))
            self._job.cancel()
            self.ui.applyButton.enabled = False
            return
        if self._busy.busy:  # this button is "Cancel" during a run
            self._busy.request_cancel()
            self.ui.applyButton.enabled = False
            return
        if not self.ensureDependencies():
            return
        p = self._parameterNode
        self.ui.statusTextEdit.clear()
        with slicer.util.tryWithErrorDisplay(_("P²SAM could not start."), waitCursor=True):
            args = modelArguments(p)
            parameters = propagationParameters(p)
            segmentIds = self.checkedSegmentIds()
            followups = self.followups()
            several = followups if len(followups) > 1 or p.followupSequence is not None else None
            if several and p.outputSegmentation is not None:
                self.log(_("Several follow-ups: each result goes into a new segmentation (the chosen output "
                           "segmentation is not used)."))
            if p.runOnServer:
                if several:
                    raise ValueError(_("Run on server takes one follow-up per run; untick the other follow-ups or "
                                       "run locally."))
                self._startBackground(p, segmentIds, args, parameters, None, server=p.serverUrl)
            elif p.runInBackground:
                self._startBackground(p, segmentIds, args, parameters, several)
            else:
                self._runBlocking(p, segmentIds, args, parameters, several)

    def _startBackground(self, p, segmentIds, args, parameters, followups=None, server=None) -> None:
        """Start the run in a separate process, or on a P2SAM server (``server``: its URL; one follow-up);
        ``followups`` (several) or the follow-up volume (one)."""
        from P2SAMSlicerLib.background import BackgroundPropagation

        if followups:
            inputs = self.logic.propagationLogic().prepareSeries(p.priorVolume, p.priorSegmentation, followups,
                                                                 segmentIds)
            images, names, output = [f.image for f in followups], [f.name for f in followups], None
            self.log(_("Propagating {n} segment(s) of '{seg}' onto {k} follow-ups{chain} in the background...").format(
                n=len(inputs.prior_segments), seg=inputs.segmentation_name, k=len(followups),
                chain=_(" (chained)") if p.chainFollowups else ""))
        else:
            inputs = self.logic.prepareInputs(p.priorVolume, p.priorSegmentation, p.followupVolume, segmentIds,
                                              p.outputSegmentation)
            images, names, output = inputs.followup_image, [inputs.followup_name], p.outputSegmentation
            self.log(_("Propagating {n} segment(s) of '{seg}' onto '{fu}' in the background...").format(
                n=len(inputs.prior_segments), seg=inputs.segmentation_name, fu=inputs.followup_name))
        if server:
            from P2SAMSlicerLib.server_client import ServerPropagation

            self.log(_("... on the server {url}").format(url=server))
            job = ServerPropagation(inputs.prior_image, inputs.prior_segments, inputs.followup_image, url=server,
                                    model=args["model"], config=parameters, **self._serverLogins.get(server, {}))
        else:
            job = BackgroundPropagation(inputs.prior_image, inputs.prior_segments, images, names=names,
                                        chain=bool(followups) and p.chainFollowups, model=args["model"],
                                        model_type=args["modelType"], device=args["device"], config=parameters)
        job.start()
        self._job = job
        choice = {"model": args["model"], "model_type": args["modelType"], "device": args["device"]}
        self._jobContext = (inputs, followups, p.followupVolume, output, choice)
        self._setRunning(True)
        self._timer.start()

    def onTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        for fraction, message in job.poll():
            self.onProgress(fraction, message)
        if job.running:
            return
        self._timer.stop()
        self._job = None
        inputs, followups, followupVolume, outputSegmentation, choice = self._jobContext
        self._jobContext = None
        try:
            error = job.error()
            if error is not None:
                if error.get("type") == "CancelledError":
                    self.log(_("Cancelled: the scene was not changed."))
                elif error.get("type") == "AuthenticationError":  # the server requires signing in
                    self.log(_("The server refused: {message}").format(message=error.get("message", "")))
                    if self.askServerLogin(getattr(job, "url", ""), error.get("message", "")):
                        qt.QTimer.singleShot(0, self.onApplyButton)  # the same run again, signed in
                elif error.get("type") == "VersionMismatchError":  # the message names both versions
                    self.log(_("Refused by the server: {message}").format(message=error.get("message", "")))
                    slicer.util.errorDisplay(error.get("message", ""))
                else:
                    from P2SAMSlicerLib.background import failure_text

                    tail = job.log_tail() if hasattr(job, "log_tail") else ""
                    self.log(failure_text(error, tail))
                    if error.get("traceback"):
                        logging.error(error["traceback"])
                    slicer.util.errorDisplay(_("P²SAM failed:\n{message}").format(message=error.get("message", "")),
                                             detailedText=failure_text(error, tail))
                return
            with slicer.util.tryWithErrorDisplay(_("P²SAM could not create the output segmentation."), waitCursor=True):
                outcome = job.results()
                logic = self.logic.propagationLogic()
                if followups:
                    outputs = [(logic.createOutput(done["segments"], done["report"], f.image,
                                                   logic.followupVolumeNode(f), None, f"{f.name} P2SAM", choice,
                                                   priorSegments=inputs.prior_segments,
                                                   registered=done.get("registered")),
                                done["report"], f.volume_node) for f, done in zip(followups, outcome["followups"])]
                    self.showResults(outputs, outcome["report"])
                else:
                    done = outcome["followups"][0]
                    node = logic.createOutput(done["segments"], done["report"], inputs.followup_image, followupVolume,
                                              outputSegmentation, None, choice,
                                              save_state=self.undoCheckpoint(outputSegmentation),
                                              priorSegments=inputs.prior_segments, registered=done.get("registered"))
                    self._proposalUndo.written()
                    self.showResults([(node, done["report"], followupVolume)])
        finally:
            job.cleanup()
            self._setRunning(False)

    def askServerLogin(self, url: str, reason: str) -> bool:
        """Ask for a user name and password for the P2SAM server ``url`` (kept in memory for this session, as
        MONAI Label's module does); False when the user cancels. PythonQt's ``getText`` returns the text only
        (empty when cancelled)."""
        known = self._serverLogins.get(url, {})
        title = _("Sign in to the P2SAM server")
        username = qt.QInputDialog.getText(slicer.util.mainWindow(), title,
                                           _("{reason}\n\nUser name on {url}:").format(reason=reason, url=url),
                                           _ECHO_NORMAL, known.get("username", ""))
        if not username or not username.strip():
            return False
        password = qt.QInputDialog.getText(slicer.util.mainWindow(), title,
                                           _("Password for {user}:").format(user=username.strip()),
                                           _ECHO_PASSWORD, "")
        if not password:
            return False
        self._serverLogins[url] = {"username": username.strip(), "password": password}
        return True

    def _runBlocking(self, p, segmentIds, args, parameters, followups=None) -> None:
        """Run inside Slicer's process; the GUI processes events at every progress step.

        While it runs, Slicer delivers user events from inside ``processEvents``: every
        handler asks ``self._busy`` first, so nothing starts a second run; Cancel and a
        closing scene stop this one at its next step (nothing is added to the scene).
        """
        from P2SAMLogic.errors import CancelledError

        with self._busy.running(_("a propagation")):
            self._setRunning(True)
            try:
                self.log(_("Propagating inside Slicer (the window reacts between steps)..."))
                progress = self._busy.progress_callback(self.onProgress, slicer.app.processEvents)
                if followups:
                    outcome = self.logic.processSeries(
                        p.priorVolume, p.priorSegmentation, followups, segmentIds, model=args["model"],
                        modelType=args["modelType"], device=args["device"], parameters=parameters,
                        chain=p.chainFollowups, progress=progress, cancel=self._busy.should_cancel)
                    reports = outcome.report["followups"]
                    self.showResults([(node, r["report"], f.volume_node)
                                      for node, r, f in zip(outcome.output_nodes, reports, followups)], outcome.report)
                else:
                    followupVolume, output = p.followupVolume, p.outputSegmentation
                    outcome = self.logic.process(p.priorVolume, p.priorSegmentation, followupVolume, output,
                                                 segmentIds, model=args["model"], modelType=args["modelType"],
                                                 device=args["device"], parameters=parameters, progress=progress,
                                                 cancel=self._busy.should_cancel,
                                                 save_state=self.undoCheckpoint(output))
                    self._proposalUndo.written()
                    self.showResults([(outcome.output_node, outcome.report, followupVolume)])
            except CancelledError:
                self.log(_("Cancelled: the scene was not changed."))
            finally:
                self._setRunning(False)

    def undoCheckpoint(self, outputSegmentation):
        """For a proposal written into the user's segmentation: the function that saves its undo step
        (:class:`P2SAMSlicerLib.editing.ProposalUndo`; the Segment Editor is never switched to that node,
        which would erase the undo history of the segmentation it edits). None for a new node."""
        from P2SAMSlicerLib.editing import ProposalUndo

        self._proposalUndo = ProposalUndo(self._segmentEditor())
        return self._proposalUndo.save_state_for(outputSegmentation)

    def _segmentEditor(self):
        """The Segment Editor module's editor widget, or None (e.g. the module is not available)."""
        try:
            return slicer.modules.segmenteditor.widgetRepresentation().self().editor
        except Exception:
            return None

    def onUndoProposal(self) -> None:
        """Take the last proposal out of the user's segmentation (see ProposalUndo)."""
        if self._isRunning():
            return
        self.log(self._proposalUndo.undo())
        self.ui.undoProposalButton.enabled = self._proposalUndo.can_undo()

    # -- results -------------------------------------------------------------------------------
    def showResults(self, outputs: "List[Tuple[slicer.vtkMRMLSegmentationNode, dict, slicer.vtkMRMLScalarVolumeNode]]",
                    seriesReport: Optional[dict] = None) -> None:
        """Show the new segmentations, fill the report and flagged-slice tables.

        Args:
            outputs: ``[(output node, report, follow-up volume node or None)]``, one per follow-up.
            seriesReport: the combined report of a run on several follow-ups.
        """
        from P2SAMSlicerLib.logic import flagged_rows, summary_rows

        self._lastOutputs = list(outputs)
        self._lastOutput = outputs[0][0]
        for outputNode, report, followupVolume in outputs:
            outputNode.CreateDefaultDisplayNodes()
            outputNode.GetDisplayNode().SetVisibility(True)
            for warning in report.get("warnings", []):
                self.log(_("Warning: {w}").format(w=warning))
            self.log(_("Done: '{name}' ({status}).").format(name=outputNode.GetName(), status=report.get("status", "")))
        if outputs[0][2] is not None:
            slicer.util.setSliceViewerLayers(background=outputs[0][2], fit=True)
        status = (seriesReport or outputs[0][1]).get("status", "")
        self.ui.resultsStatusLabel.text = _(
            "{names} hold the proposal (status: {status}). Review the flagged slices, correct them with the "
            "Segment Editor, and set each segment's status to Completed when done.").format(
            names=", ".join(f"'{outputNode.GetName()}'" for outputNode, _report, _volume in outputs), status=status)
        table = self.ui.reportTableWidget
        rows = summary_rows(outputs)
        table.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for col, text in enumerate(cells):
                table.setItem(row, col, qt.QTableWidgetItem(text))
        flagged = flagged_rows(self.logic.propagationLogic(), outputs)
        ftable = self.ui.flaggedTableWidget
        ftable.setRowCount(len(flagged))
        for row, entry in enumerate(flagged):
            for col, key in enumerate(("followup", "segment", "index", "reason")):
                ftable.setItem(row, col, qt.QTableWidgetItem(str(entry.get(key, ""))))
            button = qt.QPushButton(_("Go"))
            button.toolTip = _("Show slice {k} of '{fu}' in the slice views").format(k=entry["index"],
                                                                                     fu=entry["followup"])
            button.connect("clicked()", lambda e=entry: self.jumpTo(e["ras"], e.get("volume")))
            ftable.setCellWidget(row, 4, button)
        self.ui.flaggedLabel.text = (_("Slices to review (click Go to show one):") if flagged
                                     else _("No slice was flagged; still review the proposal before use."))
        from P2SAMSlicerLib.logic import review_choices

        self.ui.reviewResultComboBox.clear()
        for label in review_choices(outputs):
            self.ui.reviewResultComboBox.addItem(label)
        self.ui.openSegmentEditorButton.enabled = True
        self.ui.undoProposalButton.enabled = self._proposalUndo.can_undo()
        self.ui.resultsCollapsibleButton.collapsed = False

    def jumpTo(self, ras, volume=None) -> None:
        """Centre every slice view on a RAS point (a flagged slice), showing ``volume`` (that visit) when given;
        the visit's result becomes the one "Review and correct" opens."""
        from P2SAMSlicerLib.logic import result_index_for_volume

        if volume is not None and slicer.mrmlScene.IsNodePresent(volume):
            slicer.util.setSliceViewerLayers(background=volume)
            self.ui.reviewResultComboBox.setCurrentIndex(result_index_for_volume(self._lastOutputs, volume))
        slicer.modules.markups.logic().JumpSlicesToLocation(float(ras[0]), float(ras[1]), float(ras[2]), True)

    def onOpenSegmentEditor(self) -> None:
        from P2SAMSlicerLib.logic import review_target

        if self._busy.busy:
            self.log(_("Wait for the propagation to finish (or cancel it) before opening the Segment Editor."))
            return
        try:
            outputNode, followup = review_target(self._lastOutputs, self.ui.reviewResultComboBox.currentIndex)
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(outputNode)
        if followup is not None:
            editor.setSourceVolumeNode(followup)
        editor.setActiveEffectByName(EFFECT_NAME)

    # -- dependencies --------------------------------------------------------------------------
    def updateDependencyStatus(self) -> None:
        try:
            from P2SAMSlicerLib import dependencies

            status = dependencies.status()
        except Exception as e:
            self.ui.dependencyStatusLabel.text = _("Cannot check the Python packages: {e}").format(e=e)
            return
        missing = ([dependencies.TORCH.name] if status["torch"] else []) + [r.name for r in status["pip"]]
        if status["bundled"]:
            self.ui.dependencyStatusLabel.text = "; ".join(status["bundled"])
        elif missing:
            self.ui.dependencyStatusLabel.text = _("Missing: {names}. They are installed (after asking) when you "
                                                   "click Apply or the button below.").format(names=", ".join(missing))
            self.ui.dependenciesCollapsibleButton.collapsed = False
        else:
            self.ui.dependencyStatusLabel.text = _("All packages P²SAM needs are installed.")

    def onRestart(self) -> None:
        """Restart Slicer (after packages that were already loaded were replaced); Slicer asks to save first."""
        slicer.util.restart()

    def ensureDependencies(self) -> bool:
        """True when everything is installed; otherwise offer to install (asks first)."""
        from P2SAMSlicerLib import dependencies

        if dependencies.everything_installed():
            return True
        return self.onInstallDependencies()

    def onInstallDependencies(self) -> bool:
        from P2SAMSlicerLib import dependencies

        if self._busy.busy:
            return False

        outcome = None
        with slicer.util.tryWithErrorDisplay(_("Installing P²SAM's Python packages failed."), waitCursor=True):
            outcome = dependencies.slicer_install_missing(ask=True)
        self.updateDependencyStatus()
        if outcome is None:
            return False
        if outcome.declined:
            self.log(outcome.message)
            return False
        if outcome.restart_needed:
            self.ui.restartButton.visible = True
            self.log(outcome.message)
            slicer.util.infoDisplay(outcome.message + "\n\n" + _("Click 'Restart Slicer' in the module's Python "
                                                                 "packages section when you are ready."),
                                    windowTitle=_("Restart Slicer"))
            return False
        if outcome.installed:
            self.log(outcome.message)
        return True


#
# P2SAMSlicerLogic
#


class P2SAMSlicerLogic(ScriptedLoadableModuleLogic):
    """The module's logic: :class:`P2SAMSlicerLib.logic.PropagationLogic` on ``slicer.mrmlScene``,
    plus the parameter node. ``process()`` is a plain blocking call, for scripts and tests.

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._propagation = None

    def getParameterNode(self):
        return P2SAMSlicerParameterNode(super().getParameterNode())

    def propagationLogic(self) -> "PropagationLogic":
        if self._propagation is None:
            _ensureEngineImportable()
            from P2SAMSlicerLib.logic import PropagationLogic

            self._propagation = PropagationLogic(slicer.mrmlScene)
        return self._propagation

    def engineVersion(self) -> str:
        """The version of the bundled P2SAMLogic engine (imported here, not at module load)."""
        _ensureEngineImportable()
        import P2SAMLogic

        return P2SAMLogic.__version__

    def prepareInputs(self, *args, **kwargs):
        """See :meth:`P2SAMSlicerLib.logic.PropagationLogic.prepareInputs`."""
        return self.propagationLogic().prepareInputs(*args, **kwargs)

    def process(self, priorVolume, priorSegmentation, followupVolume, outputSegmentation=None, segmentIds=None,
                model="litemedsam", modelType=None, device="auto", parameters=None, progress=None, cancel=None,
                outputName=None, save_state=None) -> "ProcessOutcome":
        """Propagate (blocking); returns ``ProcessOutcome(output_node, report, result)``.

        See :meth:`P2SAMSlicerLib.logic.PropagationLogic.process` for the arguments and errors.
        """
        return self.propagationLogic().process(priorVolume, priorSegmentation, followupVolume, outputSegmentation,
                                               segmentIds, model=model, modelType=modelType, device=device,
                                               parameters=parameters, progress=progress, cancel=cancel,
                                               outputName=outputName, save_state=save_state)

    def processSeries(self, priorVolume, priorSegmentation, followups, segmentIds=None, model="litemedsam",
                      modelType=None, device="auto", parameters=None, chain=False, progress=None,
                      cancel=None) -> "SeriesOutcome":
        """Propagate onto several follow-ups (blocking); returns ``SeriesOutcome(output_nodes, report, result)``.

        See :meth:`P2SAMSlicerLib.logic.PropagationLogic.processSeries`.
        """
        return self.propagationLogic().processSeries(priorVolume, priorSegmentation, followups, segmentIds,
                                                     model=model, modelType=modelType, device=device,
                                                     parameters=parameters, chain=chain, progress=progress,
                                                     cancel=cancel)

    def createOutput(self, *args, **kwargs):
        """See :meth:`P2SAMSlicerLib.logic.PropagationLogic.createOutput`."""
        return self.propagationLogic().createOutput(*args, **kwargs)

    def flaggedSliceLocations(self, outputNode):
        """See :meth:`P2SAMSlicerLib.logic.PropagationLogic.flaggedSliceLocations`."""
        return self.propagationLogic().flaggedSliceLocations(outputNode)


#
# P2SAMSlicerTest
#


class P2SAMSlicerTest(ScriptedLoadableModuleTest):
    """Self-test on the bundled lung CT crop and a simulated follow-up of it.

    The data (``Testing/Data/lung1_crop``) and the follow-up simulator
    (``Testing/Tools/simulate_followup.py``) are copied into the module's
    ``Resources/P2SAMSlicerTestData`` at build time. Tests that run the model are skipped
    (with the reason) when the Python packages P²SAM needs are not installed.
    """

    #: measured 0.92 on this case (GTV, LiteMedSAM, CPU); the floor leaves room for platform differences
    DICE_FLOOR = 0.7

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Every test, each after setUp(); a skipped test is reported as skipped, not failed
        ("Reload and Test" calls this method directly, outside unittest's runner)."""
        _ensureEngineImportable()
        from P2SAMSlicerLib.selftest import run_test_methods

        run_test_methods(self, ["test_EngineImports", "test_BadInputsAreRefused", "test_PropagationReachesDiceFloor",
                                "test_WidgetRunsInBackground", "test_SeveralFollowupsInOneRun",
                                "test_ProposalIntoExistingSegmentationIsOneUndoStep"], report=self.delayDisplay)

    # -- helpers -------------------------------------------------------------------------------
    def _dataDir(self) -> str:
        moduleDir = os.path.dirname(os.path.abspath(slicer.modules.p2samslicer.path))
        for candidate in (os.path.join(moduleDir, "Resources", "P2SAMSlicerTestData"),
                          os.path.join(os.path.dirname(moduleDir), "Testing", "Data", "lung1_crop")):
            if os.path.isfile(os.path.join(candidate, "prior_ct.nrrd")):
                return candidate
        raise RuntimeError("P2SAMSlicer test data (prior_ct.nrrd) not found next to the module")

    def _simulator(self, dataDir: str) -> "types.ModuleType":
        import importlib.util

        moduleDir = os.path.dirname(os.path.abspath(slicer.modules.p2samslicer.path))
        for path in (os.path.join(dataDir, "simulate_followup.py"),
                     os.path.join(os.path.dirname(moduleDir), "Testing", "Tools", "simulate_followup.py")):
            if os.path.isfile(path):
                spec = importlib.util.spec_from_file_location("p2sam_simulate_followup", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
        raise RuntimeError("simulate_followup.py not found")

    def _loadCase(self) -> Tuple["slicer.vtkMRMLScalarVolumeNode", "slicer.vtkMRMLSegmentationNode",
                                 "slicer.vtkMRMLScalarVolumeNode", "sitk.Image", dict]:
        """Prior CT + segmentation (GTV, VertebralBody) and a SIMULATED follow-up with its true masks."""
        import SimpleITK as sitk

        _ensureEngineImportable()
        from P2SAMLogic.io.volume import Segment
        from P2SAMSlicerLib import mrml_bridge

        dataDir = self._dataDir()
        ct = sitk.ReadImage(os.path.join(dataDir, "prior_ct.nrrd"), sitk.sitkFloat32)
        labels = sitk.ReadImage(os.path.join(dataDir, "prior_labels.nrrd"))
        masks = {"GTV": sitk.Cast(labels == 1, sitk.sitkUInt8), "VertebralBody": sitk.Cast(labels == 2, sitk.sitkUInt8)}
        followup, truth, _info = self._simulator(dataDir).simulate_followup(ct, masks, seed=0, spacing=(0.7, 0.7, 5.0))
        priorNode = slicer.util.loadVolume(os.path.join(dataDir, "prior_ct.nrrd"))
        segments = [Segment("GTV", (0.9, 0.2, 0.2), masks["GTV"], "GTV"),
                    Segment("VertebralBody", (0.95, 0.85, 0.55), masks["VertebralBody"], "VertebralBody")]
        segmentationNode = mrml_bridge.segments_to_segmentation_node(slicer.mrmlScene, segments, ct, "prior contours",
                                                                     reference_volume_node=priorNode)
        followupNode = mrml_bridge.image_to_volume_node(followup, slicer.mrmlScene, "follow-up (SIMULATED)")
        return priorNode, segmentationNode, followupNode, followup, truth

    def _skipWithoutDependencies(self):
        _ensureEngineImportable()
        from P2SAMSlicerLib import dependencies

        if not dependencies.everything_installed():
            self.skipTest("P²SAM's Python packages are not installed (P²SAM module > Python packages)")

    # -- tests ---------------------------------------------------------------------------------
    def test_EngineImports(self):
        """The engine package bundled with the extension can be imported from Slicer's Python."""
        self.delayDisplay("Engine import")
        version = P2SAMSlicerLogic().engineVersion()
        self.assertTrue(version.strip(), "P2SAMLogic.__version__ is empty")

    def test_BadInputsAreRefused(self):
        """Each bad input gives a clear error and leaves the scene unchanged (no model needed)."""
        self.delayDisplay("Bad inputs")
        from P2SAMSlicerLib.mrml_bridge import BridgeError

        priorNode, segmentationNode, followupNode, _followup, _truth = self._loadCase()
        logic = P2SAMSlicerLogic()
        before = slicer.mrmlScene.GetNumberOfNodes()
        cases = [
            (dict(segmentIds=[]), "no segment"),
            (dict(followupVolume=priorNode), "is the prior volume"),
            (dict(outputSegmentation=segmentationNode), "is the prior segmentation"),
        ]
        for overrides, expected in cases:
            kwargs = dict(priorVolume=priorNode, priorSegmentation=segmentationNode, followupVolume=followupNode)
            kwargs.update(overrides)
            with self.assertRaises(BridgeError) as raised:
                logic.process(**kwargs)
            self.assertIn(expected, str(raised.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_PropagationReachesDiceFloor(self):
        """Logic.process on the GTV of the bundled case reaches the Dice floor, on the follow-up's grid."""
        self._skipWithoutDependencies()
        self.delayDisplay("Propagation (about a minute on a CPU)")
        import numpy as np
        import SimpleITK as sitk
        from P2SAMSlicerLib import mrml_bridge

        priorNode, segmentationNode, followupNode, followup, truth = self._loadCase()
        outcome = P2SAMSlicerLogic().process(priorNode, segmentationNode, followupNode, segmentIds=["GTV"],
                                             device="cpu", parameters={"slice_margin_mm": 0.0, "max_parts": 2})
        outputNode = outcome.output_node
        masks = mrml_bridge.masks_from_segmentation_node(outputNode, followup)
        expected = sitk.GetArrayFromImage(truth["GTV"]).astype(bool)
        got = masks["GTV"]
        dice = 2.0 * float((got & expected).sum()) / max(1, int(got.sum() + expected.sum()))
        self.assertGreaterEqual(dice, self.DICE_FLOOR)
        self.assertEqual(outputNode.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()),
                         followupNode)
        segment = outputNode.GetSegmentation().GetSegment(outputNode.GetSegmentation().GetNthSegmentID(0))
        self.assertEqual(segment.GetName(), "GTV")
        self.assertEqual(slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentStatus(segment),
                         slicer.vtkSlicerSegmentationsModuleLogic.InProgress)
        self.assertTrue(np.allclose(segment.GetColor(), (0.9, 0.2, 0.2)))
        self.delayDisplay(f"Dice {dice:.3f} >= {self.DICE_FLOOR}")

    def test_SeveralFollowupsInOneRun(self):
        """Two follow-ups (one a copy moved by 3 mm) in one blocking run: two new segmentation nodes, one report."""
        self._skipWithoutDependencies()
        self.delayDisplay("Several follow-ups (registration only)")
        import SimpleITK as sitk
        from P2SAMSlicerLib import mrml_bridge
        from P2SAMSlicerLib.followups import followup_list
        from P2SAMSlicerLib.review import count_segmentations

        priorNode, segmentationNode, followupNode, followup, _truth = self._loadCase()
        moved = sitk.Image(followup)
        moved.SetOrigin([v + d for v, d in zip(moved.GetOrigin(), (3.0, 0.0, 0.0))])
        secondNode = mrml_bridge.image_to_volume_node(moved, slicer.mrmlScene, "second follow-up (SIMULATED)")
        before = count_segmentations(slicer.mrmlScene)
        outcome = P2SAMSlicerLogic().processSeries(priorNode, segmentationNode, followup_list(followupNode, [secondNode]),
                                                   segmentIds=["GTV"], parameters={"method": "rigid"})
        self.assertEqual(count_segmentations(slicer.mrmlScene), before + 2)
        self.assertEqual([outputNode.GetName() for outputNode in outcome.output_nodes],
                         ["follow-up (SIMULATED) P2SAM", "second follow-up (SIMULATED) P2SAM"])
        self.assertEqual(len(outcome.report["followups"]), 2)

    def test_ProposalIntoExistingSegmentationIsOneUndoStep(self):
        """A proposal written into the user's segmentation keeps its other segment and is one undo step; the
        Segment Editor, busy with another segmentation, keeps that segmentation and its undo history."""
        self._skipWithoutDependencies()
        self.delayDisplay("Proposal into an existing segmentation, undo")
        from P2SAMSlicerLib import mrml_bridge

        priorNode, segmentationNode, followupNode, followup, _truth = self._loadCase()
        outcome = P2SAMSlicerLogic().process(priorNode, segmentationNode, followupNode, segmentIds=["VertebralBody"],
                                             parameters={"method": "rigid"})
        mine = outcome.output_node  # "my" segmentation on the follow-up, holding VertebralBody
        before = mrml_bridge.masks_from_segmentation_node(mine, followup)["VertebralBody"]
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)  # the user is editing the prior, with one undo step
        editor.saveStateForUndo()
        segmentationNode.GetSegmentation().AddEmptySegment("added by the user")
        self.assertTrue(editor.undoEnabled)
        widget: "P2SAMSlicerWidget" = slicer.util.getModuleWidget("P2SAMSlicer")
        P2SAMSlicerLogic().process(priorNode, segmentationNode, followupNode, mine, segmentIds=["GTV"],
                                   parameters={"method": "rigid"}, save_state=widget.undoCheckpoint(mine))
        widget._proposalUndo.written()
        masks = mrml_bridge.masks_from_segmentation_node(mine, followup)
        self.assertEqual(sorted(masks), ["GTV", "VertebralBody"])
        self.assertTrue((masks["VertebralBody"] == before).all(), "the user's segment was changed")
        self.assertIs(editor.segmentationNode(), segmentationNode, "the Segment Editor was switched")
        editor.undo()  # the user's own step, on the prior segmentation
        self.assertIsNone(segmentationNode.GetSegmentation().GetSegment("added by the user"))
        widget.onUndoProposal()
        self.assertEqual(sorted(mrml_bridge.masks_from_segmentation_node(mine, followup)), ["VertebralBody"])

    def test_WidgetRunsInBackground(self):
        """The module panel's Apply runs in a background process and creates the output node."""
        self._skipWithoutDependencies()
        self.delayDisplay("Background run from the module panel")
        import time

        from P2SAMSlicerLib.review import count_segmentations

        priorNode, segmentationNode, followupNode, _followup, _truth = self._loadCase()
        widget: "P2SAMSlicerWidget" = slicer.util.getModuleWidget("P2SAMSlicer")
        widget.initializeParameterNode()
        p = widget._parameterNode
        p.priorVolume = priorNode
        p.priorSegmentation = segmentationNode
        p.followupVolume = followupNode
        p.outputSegmentation = None
        widget._selection().store(segmentationNode, ["GTV"])
        p.runInBackground = True
        p.device = "cpu"
        p.maxParts = 2
        p.sliceMarginMm = 0.0
        nodesBefore = count_segmentations(slicer.mrmlScene)
        widget.onApplyButton()
        self.assertIsNotNone(widget._job, "the background process did not start")
        deadline = time.time() + 600
        while widget._job is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertIsNone(widget._job, "the background run did not finish within 10 minutes")
        self.assertEqual(count_segmentations(slicer.mrmlScene), nodesBefore + 1)
        outputNode: "slicer.vtkMRMLSegmentationNode" = widget._lastOutput
        self.assertIsNotNone(outputNode)
        self.assertIsNotNone(json.loads(outputNode.GetAttribute("P2SAM.Report")))
